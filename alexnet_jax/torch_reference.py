"""A PyTorch AlexNet that computes the same function as `models.AlexNet`.

Built from an `AlexNetSpec`, NCHW: the towers are `groups=num_towers` on
conv2, conv4 and conv5 (the layers where a tower reads only its own
channels); conv1, conv3 and the FC layers are single dense layers of
`num_towers * width` outputs, tower-major, which is the same function as
our per-tower kernels that read every tower's input. It serves as the
reference for the weight converters and as the PyTorch side of the
train-step benchmark. It needs PyTorch (`pip install -e '.[torch]'`), which
nothing else in the package imports at the top.

  module = TorchAlexNet.from_spec(spec)
  load_jax_params(module, params)           # Our parameters into it.
  params = jax_params(module)               # And back.
"""

from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from alexnet_jax import models
from alexnet_jax import pretrained


class TorchAlexNet(nn.Module):
  """AlexNet per `spec`; parameters named conv1..conv5, fc6..fc8."""

  def __init__(self, spec: models.AlexNetSpec):
    super().__init__()
    self.spec = spec
    towers = spec.num_towers
    widths = [towers * c for c in spec.conv_features]
    groups = {'conv2': towers, 'conv4': towers, 'conv5': towers}
    kernels = {'conv1': 11, 'conv2': 5, 'conv3': 3, 'conv4': 3, 'conv5': 3}
    fan_in = 3
    for layer, width in zip(models.CONV_LAYERS, widths):
      self.add_module(layer, nn.Conv2d(
          fan_in, width, kernels[layer], stride=4 if layer == 'conv1' else 1,
          padding=0 if layer == 'conv1' else kernels[layer] // 2,
          groups=groups.get(layer, 1)))
      fan_in = width
    side = spec.feature_size(spec.input_size)
    fan_in *= side * side
    for layer, width in zip(models.FC_LAYERS,
                            (*(towers * f for f in spec.fc_features),
                             spec.num_classes)):
      self.add_module(layer, nn.Linear(fan_in, width))
      fan_in = width

  @classmethod
  def from_spec(cls, spec: models.AlexNetSpec) -> 'TorchAlexNet':
    return cls(spec)

  def _act(self, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) if self.spec.activation == 'relu' else torch.tanh(x)

  def _lrn(self, x: torch.Tensor) -> torch.Tensor:
    """LRN within each tower's channels, or across all of them."""
    s = self.spec
    if not s.lrn:
      return x
    alpha = s.lrn_alpha if s.lrn_alpha_over_n else s.lrn_alpha * s.lrn_n
    groups = 1 if s.lrn_across_towers else s.num_towers
    b, c, h, w = x.shape
    y = F.local_response_norm(x.reshape(b * groups, c // groups, h, w),
                              s.lrn_n, alpha, s.lrn_beta, s.lrn_k)
    return y.reshape(b, c, h, w)

  def _pool(self, x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, self.spec.pool_window, self.spec.pool_stride)

  def _dropout(self, x: torch.Tensor) -> torch.Tensor:
    return F.dropout(x, self.spec.dropout_rate, self.training)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] to logits [B, num_classes]."""
    s = self.spec
    left, right = models.CONV1_PADDINGS[s.conv1_padding]
    x = F.pad(images, (left, right, left, right))
    x = self._pool(self._lrn(self._act(self.conv1(x))))
    x = self._pool(self._lrn(self._act(self.conv2(x))))
    x = self._act(self.conv3(x))
    x = self._act(self.conv4(x))
    x = self._pool(self._act(self.conv5(x)))
    x = torch.flatten(x, 1)  # (channel, h, w) order, as torchvision.
    before = s.dropout_placement == 'before_fc'
    for layer in ('fc6', 'fc7'):
      x = self._dropout(x) if before else x
      x = self._act(getattr(self, layer)(x))
      x = x if before else self._dropout(x)
    return self.fc8(x)


def load_jax_params(module: TorchAlexNet, params: Any) -> None:
  """Copies our parameters (any mode's global arrays) into `module`."""
  state = {}
  for layer, (weight, bias) in pretrained.to_dense(params, module.spec).items():
    state[f'{layer}.weight'] = torch.from_numpy(weight)
    state[f'{layer}.bias'] = torch.from_numpy(bias)
  module.load_state_dict(state)


def jax_params(module: TorchAlexNet) -> dict[str, Any]:
  """`module`'s weights as our parameter tree (numpy float32)."""
  state = module.state_dict()
  return pretrained.from_dense(
      {layer: (state[f'{layer}.weight'].detach().float().cpu().numpy(),
               state[f'{layer}.bias'].detach().float().cpu().numpy())
       for layer in (*models.CONV_LAYERS, *models.FC_LAYERS)}, module.spec)
