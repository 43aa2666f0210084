"""Evaluates Caffe's `bvlc_alexnet` weights after conversion.

  python -m alexnet_jax.tools.convert --from=caffe bvlc_alexnet.npy \
      --out=CKPT_DIR
  python -m alexnet_jax.main --config=configs/pretrained_caffe.py \
      --eval_only --checkpoint=CKPT_DIR --workdir=DIR

The `caffe` variant (two groups = our two towers, 227 crops, unpadded conv1,
LRN across all 96 channels with k=1) on Caffe's input convention: BGR on the
0..255 scale minus Caffe's mean (104, 117, 123 in BGR), no std division.
Caffe reports 42.9% / 19.8% top-1 / top-5 error with the centre crop
(docs/paper.md, Results); Caffe subtracts a mean image and squashes images
to 256x256, where this pipeline subtracts the per-channel mean and keeps the
aspect ratio, so the figures can differ slightly.
"""

from alexnet_jax import pretrained


def get_config():
  # On one device; --config.mode=tower --config.num_devices=2 splits the
  # towers as the paper did.
  config = pretrained.pretrained_config('caffe')
  config.eval_ten_crop = True
  return config
