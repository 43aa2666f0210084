"""Every config field and its default: the paper's recipe on ImageNet.

Each experiment file in `configs/` starts from `get_config()` here and
states only what it changes, so it reads as the list of an experiment's
choices (`configs/two_tower.py` runs these defaults as they are). The library
reads its defaults from here, never from `configs/`.
"""

import ml_collections
from ml_collections import config_dict

from alexnet_jax import models

# ImageNet RGB statistics on the [0, 1] pixel scale (docs/paper.md, Data).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)  # What torchvision divides by.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def get_config() -> ml_collections.ConfigDict:
  """The paper's two-tower AlexNet, tower-parallel on two devices."""
  config = ml_collections.ConfigDict()

  # Data. 'imagenet2012' (TFDS, manual download), any TFDS image
  # classification name, 'folder:ROOT', or 'synthetic'.
  config.dataset = 'imagenet2012'
  config.data_dir = config_dict.placeholder(str)  # TFDS data dir.
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.num_classes = 10
  config.synthetic.train_per_class = 300
  config.synthetic.val_per_class = 50
  config.synthetic.seed = 0
  config.synthetic.cache_dir = config_dict.placeholder(str)

  config.input = ml_collections.ConfigDict()
  config.input.resize_size = 256      # Shorter side, then centre 256x256.
  # Antialiased bilinear resizing; False is faster and aliases a little.
  config.input.antialias = True
  config.input.random_crop = True     # Random crop of model.input_size.
  config.input.random_flip = True
  config.input.pca_lighting_sigma = 0.1   # 0 disables PCA lighting noise.
  # 'variance': alpha * eigval on [0, 1] pixels (the common ImageNet form);
  # 'stddev': alpha * sqrt(eigval) on 0..255 pixels (cuda-convnet).
  config.input.pca_convention = 'variance'
  config.input.eigval = IMAGENET_EIGVAL
  config.input.eigvec = IMAGENET_EIGVEC
  config.input.mean_subtraction = 'channel'  # 'channel', 'pixel' or 'none'.
  config.input.mean_rgb = IMAGENET_MEAN_RGB
  # Per-channel std (RGB, [0, 1] scale) to divide by after subtracting the
  # mean, as torchvision's weights expect; None divides by nothing.
  config.input.std_rgb = config_dict.placeholder(tuple)
  config.input.stats_file = config_dict.placeholder(str)  # From data_stats.
  # Decode only the JPEG window the crop needs (approximate; faster).
  config.input.decode_and_crop = False
  config.input.channel_order = 'RGB'  # 'BGR' for Caffe weights.
  # Output units: 1.0 gives pixel/255 - mean; 255.0 gives Caffe's 0..255.
  config.input.value_scale = 1.0
  config.input.shuffle_buffer = 16_384
  config.input.prefetch_batches = 2

  # Model: a variant from models.VARIANTS, and every field of
  # models.AlexNetSpec; a field left as None takes the variant's value.
  config.model = ml_collections.ConfigDict()
  config.model.variant = 'paper'
  for name, kind in models.spec_field_types().items():
    config.model[name] = config_dict.placeholder(kind)

  # Execution: 'single', 'data', 'tower', 'data_tower' (2-D mesh),
  # 'hybrid' (OWT: convs data-parallel, FC layers model-parallel) or
  # 'hybrid_2d' (the hybrid on a 2-D mesh: FCs split within a host, the
  # batch across hosts); parallel.MODES.
  config.mode = 'tower'
  config.num_devices = 2

  # Optimisation (docs/paper.md, Training recipe).
  config.batch_size = 128  # Global.
  config.seed = 0
  # A resumed run continues its checkpoint's data position exactly, on any
  # number of processes; if the global batch, dataset, example count or seed
  # changed it stops instead, unless this accepts restarting the epoch.
  config.accept_data_change = False
  config.num_train_steps = -1   # -1: use num_epochs.
  config.num_epochs = 90.0
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_biases = True
  # 'paper': v <- m v - wd lr w - lr g (lr inside the velocity);
  # 'optax': optax.sgd(lr, momentum) after adding wd * w to the gradient.
  config.optimizer.rule = 'paper'
  # 'plateau' (the paper's: /10 when val error stops improving), 'step'.
  config.optimizer.schedule = 'plateau'
  config.optimizer.plateau_patience = 3    # Evaluations without progress.
  config.optimizer.plateau_max_drops = 3
  config.optimizer.plateau_min_delta = 1e-3
  config.optimizer.step_every_epochs = 30.0
  config.optimizer.step_factor = 0.1
  config.optimizer.warmup_epochs = 0.0

  # Evaluation, logging, checkpoints.
  config.eval_every_steps = 5_000
  config.eval_ten_crop = True
  config.eval_batch_size = 128
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5_000
  config.keep_checkpoints = 3
  # (START, END): trace the steps after step START up to step END into the
  # TensorBoard directory, and their compute/collective split into
  # profile.json (alexnet_jax.tools.profile). None traces nothing.
  config.profile_steps = config_dict.placeholder(tuple)
  return config
