"""Weight conversion from/to torchvision and Caffe, and prediction.

Every test writes random weights in the source format itself (no
download). The torchvision reference below is torchvision's own `AlexNet`
class, copied, so the tests need only `torch` (the `torch` extra), not
torchvision; the Caffe reference is a functional PyTorch forward pass with
Caffe's semantics. Weights are drawn with He scaling and inputs on the
conventions' scales so that activations, and LRN, stay in their working
range rather than vanishing.
"""

import dataclasses
import functools
import io
import os
import struct
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import defaults
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import pretrained
from alexnet_jax import train
from alexnet_jax.analysis import inference

import experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(input_size=67, conv_features=(8, 16, 24, 24, 16),
             fc_features=(32, 32), num_classes=16)


@functools.cache
def _apply(spec: models.AlexNetSpec):
  model = models.AlexNet(spec)
  return jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))


def _logits(params, spec, images_nhwc):
  return np.asarray(_apply(spec)(params, images_nhwc))


def _he_params(spec: models.AlexNetSpec, seed: int):
  """Our parameters for `spec`, N(0, 2 / fan_in) kernels, N(0, 0.1) biases."""
  rng = np.random.default_rng(seed)
  def draw(x):
    fan_in = np.prod(x.shape[1:-1]) if x.ndim > 2 else 1
    std = np.sqrt(2.0 / fan_in) if x.ndim > 2 else 0.1
    return rng.standard_normal(x.shape, np.float32) * np.float32(std)
  return jax.tree.map(draw, parallel.abstract_params(spec))


def _assert_logits_close(ours, theirs):
  scale = np.abs(theirs).max()
  assert scale > 0.1, 'logits vanished; the comparison would prove nothing'
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


def _torch():
  return pytest.importorskip('torch')


def _torchvision_alexnet(torch, num_classes=1000):
  """torchvision.models.AlexNet, verbatim (torchvision 0.2x)."""
  nn = torch.nn

  class AlexNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
          nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(64, 192, kernel_size=5, padding=2),
          nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(192, 384, kernel_size=3, padding=1),
          nn.ReLU(inplace=True),
          nn.Conv2d(384, 256, kernel_size=3, padding=1),
          nn.ReLU(inplace=True),
          nn.Conv2d(256, 256, kernel_size=3, padding=1),
          nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
      )
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(p=0.5),
          nn.Linear(256 * 6 * 6, 4096),
          nn.ReLU(inplace=True),
          nn.Dropout(p=0.5),
          nn.Linear(4096, 4096),
          nn.ReLU(inplace=True),
          nn.Linear(4096, num_classes),
      )

    def forward(self, x):
      x = self.features(x)
      x = self.avgpool(x)
      x = torch.flatten(x, 1)
      return self.classifier(x)

  return AlexNet().eval()


def _he_init_(torch, module, seed):
  torch.manual_seed(seed)
  for p in module.parameters():
    if p.ndim > 1:
      torch.nn.init.normal_(p, std=float(np.sqrt(2.0 / np.prod(p.shape[1:]))))
    else:
      torch.nn.init.normal_(p, std=0.1)


def _torch_logits(torch, module, images_nhwc):
  with torch.no_grad():
    return module(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2))).numpy()


# ---------------------------------------------------------------------------
# torchvision.


@pytest.fixture(scope='module')
def torchvision_files(tmp_path_factory):
  """A random torchvision alexnet, our checkpoint of its .pth, restored."""
  torch = _torch()
  module = _torchvision_alexnet(torch)
  _he_init_(torch, module, seed=0)
  root = tmp_path_factory.mktemp('torchvision')
  pth, ckpt = str(root / 'alexnet.pth'), str(root / 'ckpt')
  torch.save(module.state_dict(), pth)
  pretrained.convert_from('torchvision', pth, ckpt)
  return module, ckpt, checkpoint.load_params(ckpt)


@pytest.mark.slow
def test_torchvision_conversion_matches_torch_logits(torchvision_files):
  torch = _torch()
  module, _, (params, spec, meta) = torchvision_files
  assert spec == models.VARIANTS['owt']
  assert meta['input']['channel_order'] == 'RGB'
  assert tuple(meta['input']['std_rgb']) == (0.229, 0.224, 0.225)
  images = np.random.default_rng(1).standard_normal(
      (2, 224, 224, 3)).astype(np.float32)
  _assert_logits_close(_logits(params, spec, images),
                       _torch_logits(torch, module, images))


@pytest.mark.slow
def test_ours_to_torchvision_and_back_is_exact(torchvision_files):
  _, _, (params, spec, _) = torchvision_files
  back = pretrained.from_torchvision(pretrained.to_torchvision(params, spec),
                                    spec)
  jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.slow
def test_to_torchvision_cli_writes_the_original_file(torchvision_files,
                                                     tmp_path):
  """torchvision -> checkpoint -> torchvision gives back the same tensors,
  so the exported file is right, not only invertible."""
  torch = _torch()
  module, ckpt, _ = torchvision_files
  pretrained.convert_to_torchvision(ckpt, str(tmp_path / 'back.pth'))
  back = torch.load(str(tmp_path / 'back.pth'))
  original = module.state_dict()
  assert list(back) == list(original)
  for key, value in original.items():
    assert torch.equal(back[key], value), key


def test_to_torchvision_refuses_other_architectures():
  spec = models.VARIANTS['paper']
  with pytest.raises(ValueError, match=r'^model\.num_towers: 2 .* needs 1'):
    pretrained.to_torchvision(_he_params(dataclasses.replace(
        spec, **SMALL), seed=0), dataclasses.replace(spec, **SMALL))


def _torchvision_like_state():
  """Zero arrays of torchvision alexnet's keys and shapes (no memory used)."""
  return {f'{pretrained.TORCHVISION_NAMES[layer]}.{kind}': np.zeros(shape,
                                                                 np.float32)
          for layer, shapes in pretrained.dense_shapes(
              models.VARIANTS['owt']).items()
          for kind, shape in zip(('weight', 'bias'), shapes)}


@pytest.mark.parametrize('change,message', [
    (lambda s: s.pop('features.3.weight'),
     r'^features\.3\.weight: missing; expected shape \(192, 64, 5, 5\)'),
    (lambda s: s.update({'features.0.weight': np.zeros((96, 3, 11, 11))}),
     r'^features\.0\.weight: shape \(96, 3, 11, 11\), expected '
     r'\(64, 3, 11, 11\)'),
    (lambda s: s.update({'features.12.weight': np.zeros(3)}),
     r'^features\.12\.weight: unexpected key'),
])
def test_bad_torchvision_state_dict_names_key_and_shape(change, message):
  state = _torchvision_like_state()
  change(state)
  with pytest.raises(ValueError, match=message) as error:
    pretrained.from_torchvision(state, models.VARIANTS['owt'])
  assert '\n' not in str(error.value)


def test_resnet_state_dict_is_refused():
  state = {'conv1.weight': np.zeros((64, 3, 7, 7)), 'fc.bias': np.zeros(1000)}
  with pytest.raises(ValueError, match=r'^features\.0\.weight: missing; '
                     r'expected shape \(64, 3, 11, 11\)'):
    pretrained.from_torchvision(state, models.VARIANTS['owt'])


# ---------------------------------------------------------------------------
# Caffe.


# bvlc_alexnet's weight shapes, from its deploy.prototxt.
CAFFE_SHAPES = {'conv1': (96, 3, 11, 11), 'conv2': (256, 48, 5, 5),
                'conv3': (384, 256, 3, 3), 'conv4': (384, 192, 3, 3),
                'conv5': (256, 192, 3, 3), 'fc6': (4096, 9216),
                'fc7': (4096, 4096), 'fc8': (1000, 4096)}


def _caffe_blobs(seed: int):
  """Random bvlc_alexnet blobs in Caffe's layout, He-scaled."""
  rng = np.random.default_rng(seed)
  return {name: [(rng.standard_normal(shape, np.float32) *
                  np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32),
                 (rng.standard_normal(shape[0], np.float32) * 0.1)]
          for name, shape in CAFFE_SHAPES.items()}


def _caffe_forward(torch, blobs, images_nchw):
  """bvlc_alexnet's deploy net, functionally: groups=2, LRN over 96 ch."""
  F = torch.nn.functional  # pylint: disable=invalid-name
  t = {k: [torch.from_numpy(a) for a in v] for k, v in blobs.items()}
  lrn = lambda x: F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)
  pool = lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True)
  with torch.no_grad():
    x = pool(lrn(F.relu(F.conv2d(images_nchw, *t['conv1'], stride=4))))
    x = pool(lrn(F.relu(F.conv2d(x, *t['conv2'], padding=2, groups=2))))
    x = F.relu(F.conv2d(x, *t['conv3'], padding=1))
    x = F.relu(F.conv2d(x, *t['conv4'], padding=1, groups=2))
    x = pool(F.relu(F.conv2d(x, *t['conv5'], padding=1, groups=2)))
    x = x.flatten(1)  # Caffe's (c, h, w) order.
    x = F.relu(F.linear(x, *t['fc6']))
    x = F.relu(F.linear(x, *t['fc7']))
    return F.linear(x, *t['fc8']).numpy()


def _to_caffe_tensorflow_layout(blobs):
  """What caffe-tensorflow writes: HWIO convs, [in, out] FCs, fc6 in HWC."""
  out = {}
  for name, (w, b) in blobs.items():
    if w.ndim == 4:
      w = w.transpose(2, 3, 1, 0)
    elif name == 'fc6':
      w = w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
    else:
      w = w.T
    out[name] = [np.ascontiguousarray(w), b]
  return out


@pytest.fixture(scope='module')
def caffe_files(tmp_path_factory):
  """Random bvlc_alexnet blobs written as the shared files are (a pickled
  dict in a 0-d object array, by np.save), and our checkpoint of them."""
  blobs = _caffe_blobs(seed=5)
  root = tmp_path_factory.mktemp('caffe')
  npy, ckpt = str(root / 'bvlc_alexnet.npy'), str(root / 'ckpt')
  np.save(npy, blobs, allow_pickle=True)
  pretrained.convert_from('caffe', npy, ckpt)
  return blobs, ckpt, checkpoint.load_params(ckpt)


@pytest.mark.slow
def test_caffe_conversion_matches_caffe_semantics(caffe_files):
  torch = _torch()
  blobs, _, (params, spec, _) = caffe_files
  assert spec == models.VARIANTS['caffe']
  # Caffe's input range: BGR, 0..255 minus the mean; LRN is far from linear.
  images = np.random.default_rng(6).uniform(
      -120, 130, (2, 227, 227, 3)).astype(np.float32)
  theirs = _caffe_forward(torch, blobs, torch.from_numpy(
      images.transpose(0, 3, 1, 2).copy()))
  _assert_logits_close(_logits(params, spec, images), theirs)


@pytest.mark.slow
def test_caffe_tensorflow_layout_file_gives_the_same_params(caffe_files,
                                                            tmp_path):
  blobs, _, (params, spec, _) = caffe_files
  np.save(tmp_path / 'tf.npy', _to_caffe_tensorflow_layout(blobs),
          allow_pickle=True)
  from_tf = pretrained.from_caffe(
      pretrained.load_caffe(str(tmp_path / 'tf.npy')), spec)
  jax.tree.map(np.testing.assert_array_equal, from_tf, params)


@pytest.mark.slow
def test_caffe_checkpoint_restores_with_its_conventions(caffe_files):
  _, ckpt, _ = caffe_files
  config = experiment_config.load('pretrained_caffe')
  spec = parallel.spec_of(config)
  mngr = checkpoint.manager(ckpt)
  one_device = parallel.create_strategy('single', 1, spec, 1)
  restored = checkpoint.restore(
      mngr, 0, params_like=parallel.abstract_params(spec, one_device))
  checkpoint.check_compatible(restored['meta'], spec, ckpt)
  meta_input = restored['meta']['input']
  assert meta_input['channel_order'] == 'BGR'
  assert meta_input['value_scale'] == 255.0
  np.testing.assert_allclose(np.array(meta_input['mean_rgb']) * 255,
                             (123, 117, 104))
  assert restored['meta']['model']['input_size'] == 227
  assert restored['meta']['dataset'] == 'imagenet2012'


def _py2_str(data: bytes) -> bytes:
  """A Python 2 `str` in a pickle (SHORT_BINSTRING or BINSTRING)."""
  if len(data) < 256:
    return b'U' + bytes([len(data)]) + data
  return b'T' + struct.pack('<i', len(data)) + data


def _py2_array(array: np.ndarray, items: bytes = b'') -> bytes:
  """Python 2 NumPy's pickle of `array` (of the objects `items` pickles, if
  it is an object array): numpy.core names, its bytes as a `str`."""
  dtype = (b'cnumpy\ndtype\n(' + _py2_str(array.dtype.str[1:].encode()) +
           b'\x89\x88tR(K\x03' + _py2_str(array.dtype.str[:1].encode()) +
           b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK' +
           (b'?' if array.dtype.hasobject else b'\x00') + b'tb')
  shape = b'(' + b''.join(b'J' + struct.pack('<i', n)
                          for n in array.shape) + b't'
  data = b'](' + items + b'e' if array.dtype.hasobject else _py2_str(
      array.tobytes())
  return (b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n'
          b'K\x00\x85' + _py2_str(b'b') + b'\x87R(K\x01' + shape + dtype +
          b'\x89' + data + b'tb')


def _py2_npy(blobs) -> bytes:
  """A .npy as Python 2 NumPy's np.save wrote a dict: version 1.0 header,
  then a protocol 2 pickle of the 0-d object array holding it."""
  entries = b''.join(
      _py2_str(name.encode()) + b'](' + b''.join(map(_py2_array, blob)) +
      b'es' for name, blob in blobs.items())
  pickled = _py2_array(np.empty((), object), b'}' + entries)
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {'descr': '|O', 'fortran_order': False, 'shape': ()})
  return header.getvalue() + b'\x80\x02' + pickled + b'.'


def test_python2_numpy_file_loads(tmp_path):
  """The shared bvlc_alexnet.npy was written by Python 2 NumPy."""
  blobs = {'conv1': [np.arange(600, dtype=np.float32).reshape(4, 3, 5, 10),
                     np.float32([0.5, -1, 2, 3])],
           'fc8': [np.eye(3, dtype=np.float32), np.zeros(3, np.float32)]}
  (tmp_path / 'py2.npy').write_bytes(_py2_npy(blobs))
  loaded = pretrained.load_caffe(str(tmp_path / 'py2.npy'))
  assert list(loaded) == list(blobs)
  for name, (weight, bias) in blobs.items():
    np.testing.assert_array_equal(loaded[name][0], weight)
    np.testing.assert_array_equal(loaded[name][1], bias)
    assert loaded[name][0].dtype == np.float32


class _Payload:
  """Pickles as a call of `function` with `argument`: what a hostile file
  holds."""

  def __init__(self, function, argument):
    self.function, self.argument = function, argument

  def __reduce__(self):
    return self.function, (self.argument,)


def _hostile_blobs(kind: str, marker) -> dict:
  touch = _Payload(os.system, f'touch {marker}')
  if kind == 'layer':  # Beside genuine-looking weights.
    return {'conv1': [touch, np.zeros(96, np.float32)]}
  if kind == 'object_array':  # Hidden in an object array's items.
    return {'conv1': [np.array([None, touch], object), np.zeros(96)]}
  return {'conv1': [_Payload(exec, f'open({str(marker)!r}, "w").close()'),
                    np.zeros(96)]}


@pytest.mark.parametrize('kind,refused', [
    ('layer', 'posix.system'), ('object_array', 'posix.system'),
    ('exec', 'builtins.exec')])
def test_hostile_caffe_file_is_refused_before_its_payload_runs(
    tmp_path, kind, refused):
  marker = tmp_path / 'payload_ran'
  np.save(tmp_path / 'evil.npy', _hostile_blobs(kind, marker),
          allow_pickle=True)
  with pytest.raises(ValueError) as error:
    pretrained.load_caffe(str(tmp_path / 'evil.npy'))
  assert str(error.value) == (
      f'{tmp_path / "evil.npy"}: holds a reference to {refused}, which a '
      'weights file never needs (it could run code); refusing to load')
  assert not marker.exists()


@pytest.mark.slow
def test_hostile_caffe_file_is_refused_by_the_cli(tmp_path):
  marker = tmp_path / 'payload_ran'
  np.save(tmp_path / 'evil.npy', _hostile_blobs('layer', marker),
          allow_pickle=True)
  run = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.convert', '--from=caffe',
       str(tmp_path / 'evil.npy'), f'--out={tmp_path / "ckpt"}'],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert run.returncode == 1
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {tmp_path / "evil.npy"}: holds a '
                         'reference to posix.system')
  assert last.endswith('refusing to load')
  assert not marker.exists()
  assert not (tmp_path / 'ckpt').exists()


def _in_object_array(value) -> np.ndarray:
  """`value` in a 0-d object array, as np.save stores a dict."""
  array = np.empty((), object)
  array[()] = value
  return array


@pytest.mark.parametrize('content,message', [
    (np.zeros((2, 3), np.float32), r'holds a float32 array of shape \(2, 3\)'),
    (_in_object_array({'conv1': [np.array(['a']), np.zeros(3)]}),
     r'conv1\[0\]: <U1, not an array of numbers; refusing to load$'),
    (_in_object_array({'conv1': {'weights': np.zeros(3)}}),
     r"'conv1': a dict, not a list \[W, b\] under a layer name"),
    (_in_object_array([np.zeros(3)]), r'holds a list, not a dict'),
])
def test_caffe_file_of_other_content_is_refused(tmp_path, content, message):
  np.save(tmp_path / 'x.npy', content, allow_pickle=True)
  with pytest.raises(ValueError, match=message):
    pretrained.load_caffe(str(tmp_path / 'x.npy'))


def test_fine_tuned_caffe_model_is_refused():
  blobs = {k: [np.zeros(s, np.float32), np.zeros(s[0], np.float32)]
           for k, s in CAFFE_SHAPES.items()}
  blobs['fc8'] = [np.zeros((10, 4096)), np.zeros(10)]
  with pytest.raises(ValueError, match=(
      r'^fc8\[0\]: shape \(10, 4096\), expected \(1000, 4096\) '
      r'\(bvlc_alexnet, Caffe layout\)$')):
    pretrained.from_caffe(blobs, models.VARIANTS['caffe'])


@pytest.mark.slow
def test_converted_checkpoint_runs_in_eval_only_mode(caffe_files, tmp_path):
  """train.evaluate_checkpoint restores it and evaluates a tiny folder set
  to the errors Caffe's own net gives on the same centre crops."""
  torch = _torch()
  blobs, ckpt, _ = caffe_files
  rng = np.random.default_rng(4)
  # Base-image-sized PNGs: the base image is the file, the centre crop its
  # middle 227 x 227, and Caffe's input that crop in BGR minus the mean.
  images = rng.integers(0, 256, (2, 256, 256, 3), np.uint8)
  crops = images[:, 14:14 + 227, 14:14 + 227].astype(np.float32)
  inputs = (crops - 255 * np.float32(pretrained.CAFFE_MEAN_RGB))[..., ::-1]
  logits = _caffe_forward(torch, blobs, torch.from_numpy(
      inputs.transpose(0, 3, 1, 2).copy()))
  # The first image in the class Caffe predicts, the second in another.
  labels = [int(logits[0].argmax()), (int(logits[1].argmax()) + 1) % 1000]
  root = tmp_path / 'data'
  for c in range(1000):
    os.makedirs(root / 'train' / f'c{c:04d}')
  Image.fromarray(images[0]).save(root / 'train' / 'c0000' / 'a.png')
  for i, (image, label) in enumerate(zip(images, labels)):
    os.makedirs(root / 'val' / f'c{label:04d}', exist_ok=True)
    Image.fromarray(image).save(root / 'val' / f'c{label:04d}' / f'{i}.png')
  config = pretrained.pretrained_config('caffe')
  config.dataset = f'folder:{root}'
  config.eval_batch_size = 2
  config.eval_ten_crop = False
  results = train.evaluate_checkpoint(config, ckpt)
  assert results['eval/num_examples'] == 2
  assert results['eval/top1_error'] == 0.5
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert results['eval/top5_error'] == np.mean(
      [label not in row for label, row in zip(labels, top5)])


@pytest.mark.slow
def test_caffe_cli_reports_a_missing_layer_in_one_line(tmp_path):
  blobs = {'conv1': [np.zeros(CAFFE_SHAPES['conv1']), np.zeros(96)]}
  np.save(tmp_path / 'bad.npy', blobs, allow_pickle=True)
  run = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.convert', '--from=caffe',
       str(tmp_path / 'bad.npy'), f'--out={tmp_path / "ckpt"}'],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
      'error: conv2[0]: missing; expected shape (256, 48, 5, 5) '
      '(bvlc_alexnet, Caffe layout)')
  assert not os.path.exists(tmp_path / 'ckpt' / '0')


# ---------------------------------------------------------------------------
# The PyTorch mirror (alexnet_jax/torch_reference.py).


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['paper', 'caffe', 'owt'])
def test_torch_mirror_computes_our_function(variant):
  torch = _torch()
  from alexnet_jax import torch_reference  # pylint: disable=g-import-not-at-top
  spec = dataclasses.replace(models.VARIANTS[variant], **SMALL)
  params = _he_params(spec, seed=8)
  module = torch_reference.TorchAlexNet.from_spec(spec).eval()
  torch_reference.load_jax_params(module, params)
  jax.tree.map(np.testing.assert_array_equal,
               torch_reference.jax_params(module), params)
  # Inputs ~100 put LRN (where the variant has it) in its nonlinear range.
  images = 100 * np.random.default_rng(9).standard_normal(
      (2, 67, 67, 3)).astype(np.float32)
  _assert_logits_close(_logits(params, spec, images),
                       _torch_logits(torch, module, images))


def test_torch_mirror_owt_matches_torchvision_key_map():
  torch = _torch()
  from alexnet_jax import torch_reference  # pylint: disable=g-import-not-at-top
  mirror = torch_reference.TorchAlexNet.from_spec(models.VARIANTS['owt']).eval()
  _he_init_(torch, mirror, seed=10)
  reference = _torchvision_alexnet(torch)
  reference.load_state_dict({
      f'{pretrained.TORCHVISION_NAMES[k.split(".")[0]]}.{k.split(".")[1]}': v
      for k, v in mirror.state_dict().items()})
  images = np.random.default_rng(11).standard_normal(
      (2, 224, 224, 3)).astype(np.float32)
  _assert_logits_close(_torch_logits(torch, mirror, images),
                       _torch_logits(torch, reference, images))


# ---------------------------------------------------------------------------
# predict.


@pytest.fixture(scope='module')
def small_caffe_checkpoint(tmp_path_factory):
  """A narrow net in Caffe's conventions (BGR, 0..255, 227 crops)."""
  config = pretrained.pretrained_config('caffe')
  config.model.conv_features = SMALL['conv_features']
  config.model.fc_features = SMALL['fc_features']
  config.model.num_classes = SMALL['num_classes']
  spec = parallel.spec_of(config)
  params = _he_params(spec, seed=12)
  ckpt = str(tmp_path_factory.mktemp('predict') / 'ckpt')
  pretrained.save_checkpoint(params, config, ckpt)
  return params, spec, ckpt


@pytest.mark.slow
def test_predict_cli_uses_the_checkpoints_conventions(small_caffe_checkpoint,
                                                      tmp_path):
  params, spec, ckpt = small_caffe_checkpoint
  rng = np.random.default_rng(13)
  pixels = rng.integers(0, 256, (256, 256, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'a.png')
  # 256x256 needs no resize; centre 227 crop, minus the mean, to BGR.
  expected = (pixels[14:241, 14:241].astype(np.float32) -
              np.array([123.0, 117.0, 104.0], np.float32))[..., ::-1]
  batch = rng.uniform(-100, 100, (3, 227, 227, 3)).astype(np.float32)
  np.save(tmp_path / 'b.npy', batch)
  run = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.predict',
       f'--checkpoint={ckpt}',
       f'--out={tmp_path / "out.npz"}', str(tmp_path / 'b.npy'),
       str(tmp_path / 'a.png')],
      cwd=REPO, capture_output=True, text=True, check=True)
  want = _logits(params, spec, np.concatenate(
      [batch, np.ascontiguousarray(expected)[None]]))
  with np.load(tmp_path / 'out.npz') as out:
    np.testing.assert_allclose(out['logits'], want, rtol=1e-3,
                               atol=1e-3 * np.abs(want).max())
    names = list(out['inputs'])
  assert names == [f'{tmp_path / "b.npy"}[{i}]' for i in range(3)] + [
      str(tmp_path / 'a.png')]
  lines = run.stdout.splitlines()
  assert len(lines) == 4 * (1 + inference.TOP_K)
  assert lines[-6:] == inference.top_k_lines(names[-1], want[-1], None)


def test_torchvision_convention_divides_by_std(tmp_path):
  pixels = np.random.default_rng(14).integers(0, 256, (256, 256, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'a.png')
  config = pretrained.pretrained_config('torchvision')
  meta = {'input': config.input.to_dict(), 'model': {'input_size': 224},
          'dataset': 'imagenet2012'}
  images, _ = inference.load_images([str(tmp_path / 'a.png')],
                                  inference.eval_config(meta))
  # torchvision: ToTensor (x / 255), Normalize(mean, std), centre 224 crop.
  expected = ((pixels[16:240, 16:240] / 255.0 - config.input.mean_rgb) /
              defaults.IMAGENET_STD_RGB)
  np.testing.assert_allclose(images[0], expected, atol=1e-3)


def test_predict_top5_lines():
  logits = np.log(np.array([0.05, 0.4, 0.1, 0.2, 0.15, 0.06, 0.04]))
  lines = inference.top_k_lines('x.jpg', logits, ['a', 'b', 'c', 'd', 'e', 'f',
                                                'g'])
  assert lines == ['x.jpg:', '  0.4000  1 b', '  0.2000  3 d',
                   '  0.1500  4 e', '  0.1000  2 c', '  0.0600  5 f']


def test_predict_rejects_wrong_npy_shape(small_caffe_checkpoint, tmp_path):
  _, _, ckpt = small_caffe_checkpoint
  np.save(tmp_path / 'x.npy', np.zeros((2, 224, 224, 3), np.float32))
  with pytest.raises(ValueError, match=r'shape \(2, 224, 224, 3\), expected '
                     r'\[N, 227, 227, 3\]'):
    inference.predict(ckpt, [str(tmp_path / 'x.npy')])


def test_predict_refuses_a_pickled_npy(small_caffe_checkpoint, tmp_path):
  _, _, ckpt = small_caffe_checkpoint
  marker = tmp_path / 'payload_ran'
  np.save(tmp_path / 'x.npy', np.array([_Payload(os.system, f'touch {marker}')],
                                       object), allow_pickle=True)
  with pytest.raises(ValueError, match=(
      f'^{tmp_path / "x.npy"}: Object arrays cannot be loaded when '
      'allow_pickle=False')):
    inference.predict(ckpt, [str(tmp_path / 'x.npy')])
  assert not marker.exists()


def test_imagenet_class_names_need_no_data():
  names = inference.class_names('imagenet2012', 1000)
  assert names[0] == 'n01440764' and len(names) == 1000
