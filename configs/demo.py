"""The built-in demo: the two-tower net, tower-parallel on two (simulated)
devices, on the generated synthetic shapes. Small enough for a laptop CPU:
112x112 crops of 128x128 images, narrow layers, 400 steps of 64 (8.5 epochs).
"""

from alexnet_jax import defaults


def get_config():
  config = defaults.get_config()
  config.dataset = 'synthetic'
  config.input.resize_size = 128
  config.input.shuffle_buffer = 4096
  config.model.input_size = 112
  config.model.num_classes = 10
  config.model.conv_features = (24, 64, 96, 96, 64)
  config.model.fc_features = (512, 512)
  # N(0, 0.01) leaves a net this narrow at ln(10) for hundreds of steps.
  config.model.init = 'he'
  config.input.std_rgb = defaults.IMAGENET_STD_RGB
  config.batch_size = 64
  config.eval_batch_size = 100
  config.num_train_steps = 400
  config.optimizer.learning_rate = 0.01
  config.optimizer.schedule = 'step'
  config.optimizer.step_every_epochs = 6.0  # lr / 10 at step 282.
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.log_every_steps = 20
  return config
