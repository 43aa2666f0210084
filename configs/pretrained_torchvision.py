"""Evaluates torchvision's `alexnet` weights (IMAGENET1K_V1) after conversion.

  python -m alexnet_jax.tools.convert --from=torchvision \
      alexnet-owt-7be5be79.pth --out=CKPT_DIR
  python -m alexnet_jax.main --config=configs/pretrained_torchvision.py \
      --eval_only --checkpoint=CKPT_DIR --workdir=DIR

The `owt` variant (one tower, conv1 padded by 2, no LRN) on torchvision's
input convention: RGB, x / 255, minus the ImageNet mean, divided by the
ImageNet std; shorter side 256, centre 224 crop. torchvision reports 43.48%
/ 20.93% top-1 / top-5 error with the centre crop (docs/paper.md, Results).
"""

from alexnet_jax import pretrained


def get_config():
  config = pretrained.pretrained_config('torchvision')
  config.eval_ten_crop = True
  return config
