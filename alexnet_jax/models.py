"""AlexNet (Krizhevsky, Sutskever, Hinton 2012), written once for every mode.

Every parameter carries a leading tower axis of size `num_towers`. Inside a
tower, layers map tower t to tower t; at the exchange points (the inputs of
conv3, fc6, fc7 and fc8, and the logits) the towers' activations are
gathered. A `Layout` (alexnet_jax/layout.py) says which mesh axes, if any,
the module runs under and does every exchange; with an empty one (one
device) the same code runs all towers locally. Shapes declared here are the
shapes each device holds.
"""

import dataclasses
import functools
import math
import typing
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.layout import Layout

CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
FC_LAYERS = ('fc6', 'fc7', 'fc8')
LAYERS = ('conv1', 'pool1', 'conv2', 'pool2', 'conv3', 'conv4', 'conv5',
          'pool5', 'fc6', 'fc7', 'fc8')
# Layers whose input is every tower's output, not only their own tower's.
EXCHANGE_LAYERS = ('conv3', 'fc6', 'fc7', 'fc8')

# conv1 padding (low, high) per spatial dim. 224 crops need padding to give
# 55x55: cuda-convnet's ceil-mode sizing equals (0, 3); torchvision pads 2;
# Caffe feeds 227 crops unpadded.
CONV1_PADDINGS = {'convnet': (0, 3), 'torchvision': (2, 2), 'valid': (0, 0)}
ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh}
INITS = ('paper', 'caffe', 'torchvision', 'he')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class AlexNetSpec:
  """Everything that defines the network; see docs/paper.md, Architecture."""
  num_towers: int = 2
  conv_features: tuple[int, ...] = (48, 128, 192, 192, 128)  # Per tower.
  fc_features: tuple[int, ...] = (2048, 2048)  # Hidden FC, per tower.
  num_classes: int = 1000  # In total, split evenly over the towers.
  input_size: int = 224
  conv1_padding: str = 'convnet'
  lrn: bool = True
  lrn_k: float = 2.0
  lrn_n: int = 5
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  # cuda-convnet2, Caffe and PyTorch divide alpha by n; the paper's formula
  # and TensorFlow do not.
  lrn_alpha_over_n: bool = True
  # The paper normalises within a tower; Caffe across all channels.
  lrn_across_towers: bool = False
  pool_window: int = 3  # 3 with stride 2 overlaps; 2 does not.
  pool_stride: int = 2
  activation: str = 'relu'
  dropout_rate: float = 0.5
  # 'after_fc': outputs of fc6 and fc7 (the paper); 'before_fc': inputs of
  # fc6 and fc7 (torchvision).
  dropout_placement: str = 'after_fc'
  # 'paper': N(0, 0.01), biases 1 in conv2/4/5, fc6/7. 'caffe': as the paper
  # but biases 0.1 and std 0.005 in fc6/7, which avoids the long plateau at
  # ln(1000). 'torchvision': PyTorch's default uniform(+-1/sqrt(fan_in)).
  # 'he': N(0, 2/fan_in), biases 0; keeps the signal's scale through the
  # ReLUs, so small nets leave the ln(classes) plateau at once.
  init: str = 'paper'
  dtype: str = 'float32'  # Compute dtype; parameters stay float32.

  def __post_init__(self):
    checks = (
        (self.conv1_padding in CONV1_PADDINGS, 'conv1_padding',
         f'{self.conv1_padding!r} not in {sorted(CONV1_PADDINGS)}'),
        (self.activation in ACTIVATIONS, 'activation',
         f'{self.activation!r} not in {sorted(ACTIVATIONS)}'),
        (self.init in INITS, 'init', f'{self.init!r} not in {INITS}'),
        (self.dtype in DTYPES, 'dtype',
         f'{self.dtype!r} not in {sorted(DTYPES)}'),
        (self.dropout_placement in ('after_fc', 'before_fc'),
         'dropout_placement', f'{self.dropout_placement!r}'),
        (len(self.conv_features) == 5, 'conv_features', 'needs 5 widths'),
        (len(self.fc_features) == 2, 'fc_features', 'needs 2 widths'),
        (self.num_towers >= 1, 'num_towers', 'must be at least 1'),
        (self.num_classes % self.num_towers == 0, 'num_classes',
         f'{self.num_classes} does not split over {self.num_towers} towers'),
        (0.0 <= self.dropout_rate < 1.0, 'dropout_rate', 'must be in [0, 1)'),
    )
    for ok, key, why in checks:
      if not ok:
        raise ValueError(f'config.model.{key}: {why}')
    if self.feature_size(self.input_size) < 1:
      raise ValueError(f'config.model.input_size: {self.input_size} is too '
                       'small; the last pooling layer has no output.')

  def feature_size(self, size: int) -> int:
    """Spatial size after conv5's pooling for a square input of `size`."""
    lo, hi = CONV1_PADDINGS[self.conv1_padding]
    size = (size + lo + hi - 11) // 4 + 1
    for _ in range(3):  # pool1, pool2, pool5; conv2..5 keep the size.
      size = (size - self.pool_window) // self.pool_stride + 1
    return size


VARIANTS = {
    'paper': AlexNetSpec(),
    # Caffe's bvlc_alexnet: 227 crops, unpadded conv1, LRN across all 96
    # channels with k=1, and Caffe's initialisation.
    'caffe': AlexNetSpec(input_size=227, conv1_padding='valid', lrn_k=1.0,
                         lrn_across_towers=True, init='caffe'),
    # The one-tower model of OWT and torchvision: no LRN, dropout on the
    # inputs of fc6 and fc7.
    'owt': AlexNetSpec(num_towers=1, conv_features=(64, 192, 384, 256, 256),
                       fc_features=(4096, 4096), conv1_padding='torchvision',
                       lrn=False, dropout_placement='before_fc',
                       init='torchvision'),
}


def spec_field_types() -> dict[str, type]:
  """Every AlexNetSpec field and its plain type (tuple for the widths).

  alexnet_jax/defaults.py builds `config.model` from this, so every field can be
  set from a config file or the command line.
  """
  return {f.name: typing.get_origin(f.type) or f.type
          for f in dataclasses.fields(AlexNetSpec)}


def spec_from_config(model_config: Any) -> AlexNetSpec:
  """Builds the spec of `config.model`: the variant, then any set field."""
  if model_config.variant not in VARIANTS:
    raise ValueError(f'config.model.variant: unknown {model_config.variant!r};'
                     f' choose from {sorted(VARIANTS)}')
  overrides = {k: v for k, v in model_config.items()
               if k != 'variant' and v is not None}
  unknown = set(overrides) - {f.name for f in dataclasses.fields(AlexNetSpec)}
  if unknown:
    raise ValueError(f'config.model.{sorted(unknown)[0]}: unknown model field')
  for key in ('conv_features', 'fc_features'):
    if key in overrides:
      overrides[key] = tuple(int(v) for v in overrides[key])
  return dataclasses.replace(VARIANTS[model_config.variant], **overrides)


def _channel_window_sum(v: jax.Array, n: int) -> jax.Array:
  """Sum over the n channels centred on each channel, zero beyond the ends."""
  half, channels = n // 2, v.shape[-1]
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(half, half)])
  return sum(padded[..., i:i + channels] for i in range(n))


def _lrn_forward(x, k, n, alpha, beta):
  """(output, residuals) of x / d^beta with d = k + alpha * sum_window x^2."""
  x = x.astype(jnp.float32)
  d = k + alpha * _channel_window_sum(jnp.square(x), n)
  if beta == 0.75:  # d^-3/4 = d^-1/2 * d^-1/4: two rsqrts beat a pow.
    inv = jax.lax.rsqrt(d)
    scale = inv * jnp.sqrt(inv)
  else:
    scale = d ** -beta
  return x * scale, (x, d, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, k, n, alpha, beta):
  return _lrn_forward(x, k, n, alpha, beta)[0].astype(x.dtype)


def _lrn_fwd(x, k, n, alpha, beta):
  y, residuals = _lrn_forward(x, k, n, alpha, beta)
  return y.astype(x.dtype), residuals


def _lrn_bwd(k, n, alpha, beta, residuals, g):
  """dx = g d^-b - 2ab x * window_sum(g x d^(-b-1)), as cuda-convnet has it.

  The window is symmetric, so the same sum serves forward and backward; the
  closed form runs 2.5x faster than differentiating the pads and slices.
  """
  del k
  x, d, scale = residuals
  dtype, g = g.dtype, g.astype(jnp.float32)  # g is typed like the input.
  dx = g * scale - (2 * alpha * beta) * x * _channel_window_sum(
      g * x * scale / d, n)
  return (dx.astype(dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def local_response_norm(x: jax.Array, *, k: float, n: int, alpha: float,
                        beta: float, alpha_over_n: bool) -> jax.Array:
  """LRN over the last (channel) axis: x / (k + a * sum_window x^2)^beta."""
  return _lrn(x, k, n, alpha / n if alpha_over_n else alpha, beta)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int,
           padding) -> jax.Array:
  """NHWC x HWIO convolution."""
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _window_taps(x: jax.Array, window: int, stride: int,
                 axis: int) -> list[jax.Array]:
  """The `window` strided slices of x along `axis` that a VALID pool reads."""
  out = (x.shape[axis] - window) // stride + 1
  return [jax.lax.slice_in_dim(x, i, i + stride * (out - 1) + 1, stride, axis)
          for i in range(window)]


def _max_1d(x: jax.Array, window: int, stride: int, axis: int) -> jax.Array:
  taps = _window_taps(x, window, stride, axis)
  out = taps[0]
  for tap in taps[1:]:
    out = jnp.maximum(out, tap)
  return out


def _max_1d_grad(x, y, g, window: int, stride: int, axis: int) -> jax.Array:
  """Routes g to the first maximum of each window, as cuDNN and PyTorch do.

  Tap i of output o reads x[stride * o + i], which is element o + q of the
  phase x[r::stride] (i = stride * q + r): each tap's gradient is a shifted
  add into one phase, and the phases interleave back into dx. No scatter,
  and no padding with holes.
  """
  size, out = x.shape[axis], y.shape[axis]
  phase_size = -(-size // stride)
  phases = [None] * stride
  taken = None  # Where an earlier tap already held the maximum.
  for i, tap in enumerate(_window_taps(x, window, stride, axis)):
    hit = tap == y
    if taken is None:
      taken = hit
    else:
      hit = hit & ~taken
      taken = taken | hit
    q, r = divmod(i, stride)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (q, phase_size - q - out)
    tap_grad = jnp.pad(jnp.where(hit, g, 0), pad)
    phases[r] = tap_grad if phases[r] is None else phases[r] + tap_grad
  # With stride > window some phases are read by no tap.
  phases = [jnp.zeros_like(phases[0]) if p is None else p for p in phases]
  interleaved = list(x.shape)
  interleaved[axis] = phase_size * stride
  dx = jnp.stack(phases, axis + 1).reshape(interleaved)
  return jax.lax.slice_in_dim(dx, 0, size, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """VALID max pooling over H and W of NHWC x, as two 1-D passes.

  The same values as `nn.max_pool`. Autodiff of reduce_window (a
  select-and-scatter) or of a maximum over 9 slices made XLA:CPU keep every
  partial maximum and ran 2-3x slower than this custom backward pass
  (measured at pool1 and pool2, batch 32).
  """
  return _max_pool_fwd(x, window, stride)[0]


def _max_pool_fwd(x, window, stride):
  rows = _max_1d(x, window, stride, 2)
  y = _max_1d(rows, window, stride, 1)
  return y, (x, rows, y)


def _max_pool_bwd(window, stride, residuals, g):
  x, rows, y = residuals
  g_rows = _max_1d_grad(rows, y, g, window, stride, 1)
  return (_max_1d_grad(x, rows, g_rows, window, stride, 2),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def _init_for(spec: AlexNetSpec, layer: str, fan_in: int):
  """(kernel_init, bias_init) for `layer` under `spec.init`."""
  if spec.init == 'he':
    return (nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
            nn.initializers.zeros)
  if spec.init == 'torchvision':
    bound = fan_in ** -0.5
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound)
    return uniform, uniform
  ones_bias = layer in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
  if spec.init == 'paper':
    bias = 1.0 if ones_bias else 0.0
    return _normal(0.01), nn.initializers.constant(bias)
  std = 0.005 if layer in ('fc6', 'fc7') else 0.01
  return _normal(std), nn.initializers.constant(0.1 if ones_bias else 0.0)


class TowerWeights(nn.Module):
  """A layer's kernel and bias, both with a leading tower axis."""
  kernel_shape: tuple[int, ...]
  kernel_init: Callable
  bias_init: Callable

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    shape = self.kernel_shape
    return (self.param('kernel', self.kernel_init, shape),
            self.param('bias', self.bias_init, (shape[0], shape[-1])))


class AlexNet(nn.Module):
  """The tower-aware AlexNet. Input NHWC images, output logits [B, C].

  `__call__` is the layer table of docs/paper.md; the `layout` moves
  activations between devices at the exchange points.
  """
  spec: AlexNetSpec
  layout: Layout = Layout()

  @property
  def local_towers(self) -> int:
    return self.layout.local_towers(self.spec.num_towers)

  def _weights(self, name: str, fan_in_shape: tuple[int, ...],
               features: int) -> tuple[jax.Array, jax.Array]:
    """Kernel [local towers, *fan_in_shape, features] and bias of `name`."""
    kinit, binit = _init_for(self.spec, name, math.prod(fan_in_shape))
    return TowerWeights((self.local_towers, *fan_in_shape, features),
                        kinit, binit, name=name)()

  def _conv(self, name: str, xs: list[jax.Array], features: int,
            kernel_size: int, stride: int,
            pad: tuple[int, int]) -> list[jax.Array]:
    """Activated conv per local tower; tower t reads xs[t].

    `pad` is (low, high) on both spatial dims. Where every tower reads the
    same input (conv1, conv3) the towers' kernels run as one convolution
    with all their outputs, which is the same function and uses the
    hardware better than several narrow ones.
    """
    kernel, bias = self._weights(
        name, (kernel_size, kernel_size, xs[0].shape[-1]), features)
    dtype = DTYPES[self.spec.dtype]
    kernel, bias = kernel.astype(dtype), bias.astype(dtype)
    padding = (tuple(pad), tuple(pad))
    act = ACTIVATIONS[self.spec.activation]
    if len(xs) > 1 and all(x is xs[0] for x in xs):
      stacked = jnp.concatenate(list(kernel), axis=-1)
      y = conv2d(xs[0], stacked, stride, padding) + bias.reshape(-1)
      return [act(y) for y in jnp.split(y, len(xs), axis=-1)]
    return [act(conv2d(x, kernel[t], stride, padding) + bias[t])
            for t, x in enumerate(xs)]

  def _lrn(self, xs: list[jax.Array]) -> list[jax.Array]:
    s = self.spec
    if not s.lrn:
      return xs
    norm = lambda x: local_response_norm(
        x, k=s.lrn_k, n=s.lrn_n, alpha=s.lrn_alpha, beta=s.lrn_beta,
        alpha_over_n=s.lrn_alpha_over_n)
    if not s.lrn_across_towers:
      return [norm(x) for x in xs]
    return self.layout.own_towers(norm(self.layout.gather_towers(xs)),
                                  xs[0].shape[-1])

  def _pool(self, xs: list[jax.Array]) -> list[jax.Array]:
    s = self.spec
    return [max_pool(x, s.pool_window, s.pool_stride) for x in xs]

  def _dropout(self, x: jax.Array, train: bool,
               sharded: bool = True) -> jax.Array:
    """Dropout on a [B, T, F] activation, with the mask every mode draws.

    `sharded`: whether T and F are this device's towers and features (FC
    outputs) or already all of them (FC inputs).
    """
    rate = self.spec.dropout_rate
    if not train or rate == 0.0:
      return x
    keep = self.layout.fc_dropout_keep(self.make_rng('dropout'), 1.0 - rate,
                                       x.shape, sharded=sharded)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)

  def _dense(self, name: str, x: jax.Array, features: int) -> jax.Array:
    """x [B, in] (all towers' inputs) -> [B, local towers, local features]."""
    kernel, bias = self._weights(name, (x.shape[-1],),
                                 features // self.layout.fc_shards)
    dtype = DTYPES[self.spec.dtype]
    # One matmul per tower on its contiguous [in, out] kernel: a single
    # 'bi,tio->bto' einsum made XLA:CPU transpose the kernel and its
    # gradient, which tripled the cost of fc6's update (measured).
    y = jnp.stack([x @ k for k in kernel.astype(dtype)], axis=1)
    return y + bias.astype(dtype)

  def _hidden_fc(self, name: str, h: jax.Array, features: int,
                 train: bool) -> jax.Array:
    """fc6 or fc7 with its activation, and dropout where the spec puts it."""
    before = self.spec.dropout_placement == 'before_fc'
    if before:
      h = self._dropout(h[:, None], train, sharded=False)[:, 0]
    y = ACTIVATIONS[self.spec.activation](self._dense(name, h, features))
    return y if before else self._dropout(y, train)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    s, lay = self.spec, self.layout
    c1, c2, c3, c4, c5 = s.conv_features
    fc6, fc7 = s.fc_features
    outputs = {}  # Per-layer outputs, for summaries and shape tests.

    def record(name, value):
      outputs[name] = value
      return value

    image = [images.astype(DTYPES[s.dtype])] * self.local_towers
    xs = record('conv1', self._conv('conv1', image, c1, 11, 4,
                                    CONV1_PADDINGS[s.conv1_padding]))
    xs = record('pool1', self._pool(self._lrn(xs)))
    xs = record('conv2', self._conv('conv2', xs, c2, 5, 1, (2, 2)))
    xs = record('pool2', self._pool(self._lrn(xs)))
    both = [lay.gather_towers(xs)] * self.local_towers
    xs = record('conv3', self._conv('conv3', both, c3, 3, 1, (1, 1)))
    xs = record('conv4', self._conv('conv4', xs, c4, 3, 1, (1, 1)))
    xs = record('conv5', self._conv('conv5', xs, c5, 3, 1, (1, 1)))
    xs = record('pool5', self._pool(xs))

    # [B, h, w, towers * c5] flattened in (h, w, tower, channel) order.
    h = lay.gather_towers(xs)
    h = lay.fc_batch(h.reshape(h.shape[0], -1))
    h = lay.gather_features(record('fc6', self._hidden_fc('fc6', h, fc6,
                                                          train)))
    h = lay.gather_features(record('fc7', self._hidden_fc('fc7', h, fc7,
                                                          train)))
    y = record('fc8', self._dense('fc8', h, s.num_classes // s.num_towers))
    logits = lay.local_batch(lay.gather_features(y, invariant=True))
    self.sow('intermediates', 'layer_outputs', outputs)
    return logits.astype(jnp.float32)


def layer_stats(spec: AlexNetSpec) -> list[dict[str, Any]]:
  """Per layer, in order: towers, output per tower, params, forward MACs.

  MACs are per image; a conv's are its kernel size times its output's
  spatial size, an FC layer's its kernel size. Nothing is allocated.
  """
  model = AlexNet(spec)
  image = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, 3),
                               jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False,
                           mutable=['params', 'intermediates']), image)
  params = variables['params']
  (outputs,) = variables['intermediates']['layer_outputs']
  rows = []
  for name in LAYERS:
    value = outputs[name]
    if isinstance(value, list):  # Conv layers: one [B, H, W, C] per tower.
      towers, per_tower = len(value), value[0].shape[1:]
    else:  # FC layers: [B, towers, features].
      towers, per_tower = value.shape[1], value.shape[2:]
    row = {'layer': name, 'towers': towers, 'output': per_tower,
           'params': 0, 'macs': 0}
    if name in params:
      kernel, bias = params[name]['kernel'], params[name]['bias']
      row['params'] = kernel.size + bias.size
      row['macs'] = kernel.size * math.prod(per_tower[:-1])
    rows.append(row)
  return rows
