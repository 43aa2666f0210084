"""Evaluates Caffe's `bvlc_alexnet` weights after conversion.

  python -m alexnet_jax.convert --from=caffe bvlc_alexnet.npy --out=CKPT_DIR
  python -m alexnet_jax.main --config=configs/pretrained_caffe.py \
      --eval_only --checkpoint=CKPT_DIR --workdir=DIR

The `caffe` variant (two groups = our two towers, 227 crops, unpadded conv1,
LRN across all 96 channels with k=1) on Caffe's input convention: BGR on the
0..255 scale minus Caffe's mean (104, 117, 123 in BGR), no std division.
Caffe reports 42.9% / 19.8% top-1 / top-5 error with the centre crop
(SPEC.md section 4); Caffe subtracts a mean image and squashes images to
256x256, where this pipeline subtracts the per-channel mean and keeps the
aspect ratio, so the figures can differ slightly.
"""

from configs import default

# Caffe's ImageNet mean in BGR on the 0..255 scale, as the pipeline wants it:
# RGB on the [0, 1] scale.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
CAFFE_MEAN_RGB = tuple(v / 255.0 for v in CAFFE_MEAN_BGR[::-1])


def get_config():
  config = default.get_config()
  config.model.variant = 'caffe'
  config.input.channel_order = 'BGR'
  config.input.value_scale = 255.0
  config.input.mean_rgb = CAFFE_MEAN_RGB
  # Both towers on one device; --config.mode=tower --config.num_devices=2
  # splits them as the paper did.
  config.mode = 'single'
  config.num_devices = 1
  config.eval_ten_crop = True
  return config
