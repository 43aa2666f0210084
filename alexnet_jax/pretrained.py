"""Pretrained AlexNet weights from and to other frameworks (torchvision,
Caffe), and the input conventions they were trained in.

Our parameters carry a leading tower axis: conv kernels [T, kh, kw, in, out]
(tower t reads its own or, at conv3, every tower's channels) and dense
kernels [T, in, out], with fc6's input flattened in (h, w, channel) order.
PyTorch and Caffe hold one tensor per layer: conv weights [T * out, in, kh,
kw] with `groups=T` where a tower reads only its own channels, and dense
weights [out, in] with fc6's input flattened in (channel, h, w) order. Both
share that "dense" layout, so one pair of functions (`to_dense`,
`from_dense`) covers both; each source only names its tensors.

A converted checkpoint is step 0 of an orbax directory (see checkpoint.py);
its meta carries the model spec and the input conventions of the source
(`pretrained_config`, which `configs/pretrained_*.py` evaluate with), and
`main --eval_only` and `predict` use them.
"""

import pickle
from typing import Any

import jax
import numpy as np

from alexnet_jax import checkpoint
from alexnet_jax import defaults
from alexnet_jax import models
from alexnet_jax import parallel

# Caffe's ImageNet mean in BGR on the 0..255 scale, as the pipeline wants it:
# RGB on the [0, 1] scale.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
CAFFE_MEAN_RGB = tuple(v / 255.0 for v in CAFFE_MEAN_BGR[::-1])
# torchvision's `alexnet`: module names of our layers in its state_dict.
TORCHVISION_NAMES = {
    'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
    'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
    'fc7': 'classifier.4', 'fc8': 'classifier.6'}
# Spec fields that must match `owt` for torchvision's module to compute the
# same function (the classifier width may differ: num_classes is free).
_TORCHVISION_FIELDS = ('num_towers', 'conv_features', 'fc_features',
                       'input_size', 'conv1_padding', 'lrn', 'pool_window',
                       'pool_stride', 'activation')

Dense = dict[str, tuple[np.ndarray, np.ndarray]]  # layer -> (weight, bias).


def _receptive_shape(spec: models.AlexNetSpec, layer: str,
                     kernel_shape: tuple[int, ...]) -> tuple[int, int, int]:
  """(kh, kw, in channels) a layer's output unit sees; fc6 sees pool5."""
  if layer in models.CONV_LAYERS:
    return kernel_shape[1:4]
  if layer == 'fc6':
    side = spec.feature_size(spec.input_size)
    return side, side, spec.num_towers * spec.conv_features[-1]
  return 1, 1, kernel_shape[1]


def to_dense(params: Any, spec: models.AlexNetSpec) -> Dense:
  """Our tower-axis parameters in PyTorch's/Caffe's layout (float32 numpy)."""
  dense = {}
  for layer in (*models.CONV_LAYERS, *models.FC_LAYERS):
    kernel = np.asarray(params[layer]['kernel'], np.float32)
    bias = np.asarray(params[layer]['bias'], np.float32)
    towers, out = kernel.shape[0], kernel.shape[-1]
    kh, kw, cin = _receptive_shape(spec, layer, kernel.shape)
    weight = kernel.reshape(towers, kh, kw, cin, out).transpose(0, 4, 3, 1, 2)
    weight = weight.reshape(towers * out, cin, kh, kw)
    if layer in models.FC_LAYERS:
      weight = weight.reshape(towers * out, -1)
    dense[layer] = (np.ascontiguousarray(weight), bias.reshape(-1))
  return dense


def dense_shapes(spec: models.AlexNetSpec) -> dict[str, tuple[tuple, tuple]]:
  """The (weight, bias) shapes `to_dense` gives for `spec`."""
  abstract = parallel.abstract_params(spec)
  shapes = {}
  for layer, p in abstract.items():
    towers, out = p['kernel'].shape[0], p['kernel'].shape[-1]
    kh, kw, cin = _receptive_shape(spec, layer, p['kernel'].shape)
    weight = ((towers * out, cin, kh, kw) if layer in models.CONV_LAYERS
              else (towers * out, kh * kw * cin))
    shapes[layer] = (weight, (towers * out,))
  return shapes


def from_dense(dense: Dense, spec: models.AlexNetSpec) -> dict[str, Any]:
  """Inverse of `to_dense`; shapes must already match `dense_shapes`."""
  abstract = parallel.abstract_params(spec)
  params = {}
  for layer, p in abstract.items():
    weight, bias = (np.asarray(a, np.float32) for a in dense[layer])
    towers, out = p['kernel'].shape[0], p['kernel'].shape[-1]
    kh, kw, cin = _receptive_shape(spec, layer, p['kernel'].shape)
    kernel = weight.reshape(towers, out, cin, kh, kw).transpose(0, 3, 4, 2, 1)
    params[layer] = {
        'kernel': np.ascontiguousarray(kernel.reshape(p['kernel'].shape)),
        'bias': bias.reshape(p['bias'].shape)}
  return params


def check_shape(key: str, array: Any, expected: tuple[int, ...],
                what: str) -> None:
  """Raises a one-line ValueError when `array` is missing or misshapen."""
  if array is None:
    raise ValueError(f'{key}: missing; expected shape {expected} ({what})')
  if tuple(array.shape) != tuple(expected):
    raise ValueError(f'{key}: shape {tuple(array.shape)}, expected '
                     f'{tuple(expected)} ({what})')


# ---------------------------------------------------------------------------
# torchvision.


def from_torchvision(state_dict: dict[str, Any],
                     spec: models.AlexNetSpec) -> dict[str, Any]:
  """Our parameters from a torchvision `alexnet` state_dict (numpy values)."""
  what = 'torchvision alexnet'
  expected = {f'{TORCHVISION_NAMES[layer]}.{kind}': shape
              for layer, shapes in dense_shapes(spec).items()
              for kind, shape in zip(('weight', 'bias'), shapes)}
  for key, shape in expected.items():
    check_shape(key, state_dict.get(key), shape, what)
  unexpected = sorted(set(state_dict) - set(expected))
  if unexpected:
    raise ValueError(f'{unexpected[0]}: unexpected key ({what} has only '
                     f'{", ".join(expected)})')
  return from_dense({layer: (state_dict[f'{name}.weight'],
                             state_dict[f'{name}.bias'])
                     for layer, name in TORCHVISION_NAMES.items()}, spec)


def to_torchvision(params: Any, spec: models.AlexNetSpec
                   ) -> dict[str, np.ndarray]:
  """A torchvision `alexnet` state_dict (numpy values) of `owt` weights."""
  owt = models.VARIANTS['owt']
  for field in _TORCHVISION_FIELDS:
    if getattr(spec, field) != getattr(owt, field):
      raise ValueError(
          f'model.{field}: {getattr(spec, field)!r} in the checkpoint, but '
          f'torchvision alexnet needs {getattr(owt, field)!r} (variant owt)')
  state = {}
  for layer, (weight, bias) in to_dense(params, spec).items():
    state[f'{TORCHVISION_NAMES[layer]}.weight'] = weight
    state[f'{TORCHVISION_NAMES[layer]}.bias'] = bias
  return state


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError('torchvision files need PyTorch: pip install '
                     "'alexnet_jax[torch]'") from None
  return torch


def load_torchvision(path: str) -> dict[str, np.ndarray]:
  """A .pth state_dict as float32 numpy arrays (tensors only, no code run)."""
  try:
    state = _torch().load(path, map_location='cpu', weights_only=True)
  except (RuntimeError, pickle.UnpicklingError):
    raise ValueError(f'{path}: torch.load(weights_only=True) cannot read it; '
                     'expected a state_dict of tensors') from None
  if not isinstance(state, dict):
    raise ValueError(f'{path}: holds a {type(state).__name__}, not a '
                     'state_dict')
  return {k: v.float().numpy() for k, v in state.items()
          if hasattr(v, 'numpy')}


def save_torchvision(state: dict[str, np.ndarray], path: str) -> None:
  torch = _torch()
  torch.save({k: torch.tensor(v) for k, v in state.items()}, path)


# ---------------------------------------------------------------------------
# Caffe.


def _tf_to_caffe_layout(layer: str, weight: np.ndarray,
                        spec: models.AlexNetSpec) -> np.ndarray:
  """caffe-tensorflow's [kh, kw, in, out] / [in (h, w, c), out] to Caffe's."""
  if layer in models.CONV_LAYERS:
    return weight.transpose(3, 2, 0, 1)
  kh, kw, cin = _receptive_shape(spec, layer, (0, weight.shape[0]))
  return weight.reshape(kh, kw, cin, -1).transpose(3, 2, 0, 1).reshape(
      weight.shape[1], -1)


def _caffe_tf_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The caffe-tensorflow shape of a Caffe-layout weight shape."""
  return (*shape[2:], shape[1], shape[0]) if len(shape) == 4 else shape[::-1]


def from_caffe(blobs: dict[str, Any], spec: models.AlexNetSpec
               ) -> dict[str, Any]:
  """Our parameters from a `bvlc_alexnet` NumPy export: layer -> [W, b].

  Accepts Caffe's own layout (conv [out, in/groups, kh, kw], fc [out, in],
  fc6 reading (c, h, w)) and caffe-tensorflow's, in which the widely shared
  `bvlc_alexnet.npy` comes (conv [kh, kw, in/groups, out], fc [in, out],
  fc6 reading (h, w, c)); conv1's shape tells which.
  """
  shapes = dense_shapes(spec)
  conv1 = blobs.get('conv1')
  tf_layout = (conv1 is not None and len(conv1) == 2 and
               np.shape(conv1[0]) == _caffe_tf_shape(shapes['conv1'][0]))
  what = 'caffe-tensorflow layout' if tf_layout else 'Caffe layout'
  dense = {}
  for layer, (weight_shape, bias_shape) in shapes.items():
    blob = blobs.get(layer)
    if blob is not None and len(blob) != 2:
      raise ValueError(f'{layer}: {len(blob)} blobs, expected 2 [weights, '
                       'biases]')
    weight, bias = (None, None) if blob is None else map(np.asarray, blob)
    expected = _caffe_tf_shape(weight_shape) if tf_layout else weight_shape
    check_shape(f'{layer}[0]', weight, expected, f'bvlc_alexnet, {what}')
    check_shape(f'{layer}[1]', bias, bias_shape, 'bvlc_alexnet')
    if tf_layout:
      weight = _tf_to_caffe_layout(layer, weight, spec)
    dense[layer] = (weight, bias)
  return from_dense(dense, spec)


# The only globals the pickle of a Caffe NumPy export refers to: NumPy's
# array, dtype and scalar reconstruction, under NumPy 1's module names (and
# Python 2 NumPy's, in which the shared files were written) and NumPy 2's.
_NUMPY_PICKLE_GLOBALS = frozenset(
    [(f'numpy.{core}.multiarray', name) for core in ('core', '_core')
     for name in ('_reconstruct', 'scalar')] +
    [('numpy', 'ndarray'), ('numpy', 'dtype')])
_NUMERIC_KINDS = 'biuf'  # bool, signed and unsigned integers, floats.


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Unpickles NumPy arrays and plain containers, and refuses anything else.

  Dicts, lists, tuples, strings and numbers need no global; every other
  object is built by calling a global the pickle names, which is refused
  here, before it is looked up, unless it is one of NumPy's reconstructors.
  """

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _NUMPY_PICKLE_GLOBALS:
      raise pickle.UnpicklingError(
          f'holds a reference to {module}.{name}, which a weights file never '
          'needs (it could run code)')
    return super().find_class(module, name)


def _read_npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) from a .npy header; `f` is left where the data starts."""
  version = np.lib.format.read_magic(f)
  readers = {(1, 0): np.lib.format.read_array_header_1_0,
             (2, 0): np.lib.format.read_array_header_2_0}
  if version not in readers:
    raise ValueError(f'.npy format version {version} is not supported')
  shape, _, dtype = readers[version](f)
  return shape, dtype


def _check_blobs(blobs: Any, path: str) -> None:
  """Raises unless `blobs` is {layer name: [numeric arrays]}."""
  if not isinstance(blobs, dict):
    raise ValueError(f'{path}: holds a {type(blobs).__name__}, not a dict of '
                     'layer -> [W, b]; refusing to load')
  for layer, blob in blobs.items():
    if not isinstance(layer, str) or not isinstance(blob, (list, tuple)):
      raise ValueError(f'{path}: {layer!r}: a {type(blob).__name__}, not a '
                       'list [W, b] under a layer name; refusing to load')
    for i, array in enumerate(blob):
      if (not isinstance(array, np.ndarray) or
          array.dtype.kind not in _NUMERIC_KINDS):
        what = getattr(array, 'dtype', type(array).__name__)
        raise ValueError(f'{path}: {layer}[{i}]: {what}, not an array of '
                         'numbers; refusing to load')


def load_caffe(path: str) -> dict[str, Any]:
  """The pickled {layer: [weights, biases]} dict of a Caffe NumPy export.

  Such a file is a .npy header and the pickle of a 0-d object array that
  holds the dict. The pickle is read with `_ArraysOnlyUnpickler`, so a file
  that would build any other object (and with it run code) is refused
  before that object exists. Strings are decoded as Latin-1, which Python 2
  NumPy's array data needs.
  """
  with open(path, 'rb') as f:
    try:
      shape, dtype = _read_npy_header(f)
    except ValueError as error:
      raise ValueError(f'{path}: not a NumPy .npy file ({error})') from None
    if not dtype.hasobject or shape != ():
      raise ValueError(f'{path}: holds a {dtype} array of shape {shape}, not '
                       'a pickled dict of layer -> [W, b]')
    try:
      container = _ArraysOnlyUnpickler(f, encoding='latin1').load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
      raise ValueError(f'{path}: {error}; refusing to load') from None
  blobs = (container.item() if isinstance(container, np.ndarray) and
           container.shape == () else container)
  _check_blobs(blobs, path)
  return blobs


# ---------------------------------------------------------------------------
# Checkpoints.


def pretrained_config(source: str) -> Any:
  """The default config in the conventions `source`'s weights were trained in.

  torchvision (IMAGENET1K_V1): the `owt` variant on RGB, x / 255, minus the
  ImageNet mean, divided by the ImageNet std. Caffe (`bvlc_alexnet`): the
  `caffe` variant (two groups = our two towers, 227 crops, unpadded conv1,
  LRN across all 96 channels with k=1) on BGR on the 0..255 scale minus
  Caffe's mean, no std division. Both on one device: any mode restores the
  same checkpoint.
  """
  config = defaults.get_config()
  if source == 'torchvision':
    config.model.variant = 'owt'
    config.input.std_rgb = defaults.IMAGENET_STD_RGB
  elif source == 'caffe':
    config.model.variant = 'caffe'
    config.input.channel_order = 'BGR'
    config.input.value_scale = 255.0
    config.input.mean_rgb = CAFFE_MEAN_RGB
  else:
    raise ValueError(f'no pretrained conventions for {source!r}')
  config.mode = 'single'
  config.num_devices = 1
  return config


def save_checkpoint(params: Any, config: Any, directory: str) -> None:
  """Writes `params` as step 0 of a new checkpoint directory."""
  mngr = checkpoint.manager(directory)
  if mngr.latest_step() is not None:
    raise ValueError(f'--out: {directory} already holds checkpoint step '
                     f'{mngr.latest_step()}; choose an empty directory')
  spec = parallel.spec_of(config)
  params = jax.tree.map(np.asarray, params)
  checkpoint.save(mngr, 0, params=params, meta=checkpoint.spec_meta(
      spec, input=config.input.to_dict(), dataset=config.dataset))
  mngr.wait_until_finished()


def convert_from(source: str, path: str, out: str) -> None:
  """A torchvision or Caffe file into a checkpoint for `main --eval_only`."""
  config = pretrained_config(source)
  spec = parallel.spec_of(config)
  if source == 'torchvision':
    params = from_torchvision(load_torchvision(path), spec)
  else:
    params = from_caffe(load_caffe(path), spec)
  save_checkpoint(params, config, out)


def convert_to_torchvision(path: str, out: str) -> None:
  params, spec, _ = checkpoint.load_params(path)
  save_torchvision(to_torchvision(params, spec), out)

