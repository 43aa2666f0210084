"""The network's shapes, parameter counts, MACs, LRN and configuration."""

import dataclasses
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax import defaults
from alexnet_jax import models
from alexnet_jax import parallel

# docs/paper.md, Architecture.
PAPER_LAYER_PARAMS = {'conv1': 34_944, 'conv2': 307_456, 'conv3': 885_120,
                      'conv4': 663_936, 'conv5': 442_624, 'fc6': 37_752_832,
                      'fc7': 16_781_312, 'fc8': 4_097_000}
PAPER_LAYER_MMACS = {'conv1': 105.4, 'conv2': 223.9, 'conv3': 149.5,
                     'conv4': 112.1, 'conv5': 74.8, 'fc6': 37.7, 'fc7': 16.8,
                     'fc8': 4.1}
PAPER_SHAPES = {'conv1': (55, 55, 48), 'pool1': (27, 27, 48),
                'conv2': (27, 27, 128), 'pool2': (13, 13, 128),
                'conv3': (13, 13, 192), 'conv4': (13, 13, 192),
                'conv5': (13, 13, 128), 'pool5': (6, 6, 128), 'fc6': (2048,),
                'fc7': (2048,), 'fc8': (500,)}


def _rows(spec):
  return {r['layer']: r for r in models.layer_stats(spec)}


def _count(spec) -> int:
  return sum(x.size for x in jax.tree.leaves(parallel.abstract_params(spec)))


def _conv_fc_params(towers, convs, fcs, classes, in_ch=3, spatial=6):
  """Parameter count of a tower net, from the layer table's arithmetic."""
  sizes, fan_in = [], in_ch
  kernels = (11, 5, 3, 3, 3)
  for i, (k, c) in enumerate(zip(kernels, convs)):
    sizes.append(towers * (k * k * fan_in * c + c))
    fan_in = c * (towers if i in (1,) else 1)  # conv3 reads both towers.
  flat = spatial * spatial * convs[-1] * towers
  for width in (*fcs, classes // towers):
    sizes.append(towers * (flat * width + width))
    flat = width * towers
  return sum(sizes)


def test_paper_shapes_params_and_macs_full_size():
  rows = _rows(models.VARIANTS['paper'])
  for layer, shape in PAPER_SHAPES.items():
    assert rows[layer]['output'] == shape, layer
    assert rows[layer]['towers'] == 2
  for layer, count in PAPER_LAYER_PARAMS.items():
    assert rows[layer]['params'] == count, layer
    assert round(rows[layer]['macs'] / 1e6, 1) == PAPER_LAYER_MMACS[layer]
  assert sum(r['params'] for r in rows.values()) == 60_965_224
  assert round(sum(r['macs'] for r in rows.values()) / 1e5) == 7244


@pytest.mark.parametrize('variant,params,mmacs,conv1', [
    ('paper', 60_965_224, 724.4, (55, 55, 48)),
    ('caffe', 60_965_224, 724.4, (55, 55, 48)),
    ('owt', 61_100_840, 714.2, (55, 55, 64)),
])
def test_variant_counts(variant, params, mmacs, conv1):
  spec = models.VARIANTS[variant]
  rows = _rows(spec)
  assert rows['conv1']['output'] == conv1
  assert rows['pool5']['output'][:2] == (6, 6)
  assert _count(spec) == params
  assert round(sum(r['macs'] for r in rows.values()) / 1e6, 1) == mmacs


def test_half_width_one_tower_baseline():
  # The paper's one-GPU net halves conv1-4 but keeps conv5 and the FCs.
  spec = dataclasses.replace(models.VARIANTS['paper'], num_towers=1,
                             conv_features=(48, 128, 192, 192, 256),
                             fc_features=(4096, 4096))
  rows = _rows(spec)
  assert rows['conv3']['output'] == (13, 13, 192)
  assert _count(spec) == _conv_fc_params(1, spec.conv_features,
                                         spec.fc_features, 1000)


@pytest.mark.parametrize('padding,size', [('convnet', 224),
                                          ('torchvision', 224),
                                          ('valid', 227)])
def test_conv1_paddings_give_55(padding, size):
  spec = dataclasses.replace(models.VARIANTS['paper'], conv1_padding=padding,
                             input_size=size)
  assert _rows(spec)['conv1']['output'] == (55, 55, 48)


def test_non_overlapping_pooling_keeps_shapes():
  spec = dataclasses.replace(models.VARIANTS['paper'], pool_window=2)
  rows = _rows(spec)
  assert rows['pool1']['output'] == (27, 27, 48)
  assert rows['pool5']['output'] == (6, 6, 128)


def _lrn_reference(x, k, n, alpha, beta, alpha_over_n):
  """The formula of docs/paper.md, one channel at a time, in float64."""
  x = x.astype(np.float64)
  channels = x.shape[-1]
  out = np.empty_like(x)
  a = alpha / n if alpha_over_n else alpha
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    s = (x[..., lo:hi + 1] ** 2).sum(-1)
    out[..., i] = x[..., i] / (k + a * s) ** beta
  return out


@pytest.mark.parametrize('alpha_over_n', [True, False])
def test_lrn_matches_formula(alpha_over_n):
  # Large activations so the normaliser differs clearly from k.
  x = np.random.RandomState(0).randn(2, 3, 3, 7).astype(np.float32) * 30
  got = models.local_response_norm(x, k=2.0, n=5, alpha=1e-4, beta=0.75,
                                   alpha_over_n=alpha_over_n)
  want = _lrn_reference(x, 2.0, 5, 1e-4, 0.75, alpha_over_n)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  other = _lrn_reference(x, 2.0, 5, 1e-4, 0.75, not alpha_over_n)
  assert not np.allclose(np.asarray(got), other, rtol=1e-3)


@pytest.mark.parametrize('beta', [0.75, 0.5])
def test_lrn_gradient_matches_autodiff_of_formula(beta):
  """The closed-form backward pass against differentiating the formula."""
  rng = np.random.RandomState(1)
  x = rng.randn(2, 3, 3, 7).astype(np.float32) * 30
  cotangent = rng.randn(*x.shape).astype(np.float32)

  def formula(x):  # One channel at a time, as in _lrn_reference.
    a, channels = 1e-4 / 5, x.shape[-1]
    return jnp.stack([
        x[..., i] / (2.0 + a * jnp.sum(
            x[..., max(0, i - 2):i + 3] ** 2, -1)) ** beta
        for i in range(channels)], -1)

  def ours(x):
    return models.local_response_norm(x, k=2.0, n=5, alpha=1e-4, beta=beta,
                                      alpha_over_n=True)

  want = jax.vjp(formula, x)[1](cotangent)[0]
  got = jax.vjp(ours, x)[1](cotangent)[0]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                             atol=1e-6)
  # The cross-channel term matters at this scale: dropping it is caught.
  assert not np.allclose(np.asarray(want), cotangent * np.asarray(
      ours(x) / x), rtol=1e-3)


def _first_max_pool_grad(x, g, window, stride):
  """Max pooling's gradient, one window at a time: all to the first maximum
  in row-major order, as cuDNN and PyTorch route it."""
  dx = np.zeros_like(x)
  n, h, w, c = x.shape
  for a in range((h - window) // stride + 1):
    for b in range((w - window) // stride + 1):
      win = x[:, a * stride:a * stride + window,
              b * stride:b * stride + window].reshape(n, -1, c)
      first = win.argmax(1)  # [n, c]: the first maximum in the window.
      for k in range(window * window):
        dx[:, a * stride + k // window, b * stride + k % window] += np.where(
            first == k, g[:, a, b], 0)
  return dx


@pytest.mark.parametrize('window,stride', [(3, 2), (2, 2), (3, 1), (2, 3)])
def test_max_pool_values_and_gradient(window, stride):
  rng = np.random.RandomState(0)
  # ReLU-like input with ties, and a window of equal maxima.
  x = np.maximum(rng.randn(2, 11, 11, 3), 0).astype(np.float32)
  x[0, :3, :3, 0] = 1.0
  got, vjp = jax.vjp(lambda x: models.max_pool(x, window, stride), x)
  want = nn.max_pool(x, (window, window), (stride, stride), 'VALID')
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  g = rng.randn(*got.shape).astype(np.float32)
  np.testing.assert_allclose(np.asarray(vjp(g)[0]),
                             _first_max_pool_grad(x, g, window, stride),
                             rtol=1e-5, atol=1e-6)


def _init(spec):
  strategy = parallel.create_strategy('single', 1, spec, 1)
  return parallel.init_params(spec, strategy, jax.random.key(0))


def test_paper_init_statistics():
  params = _init(models.VARIANTS['paper'])
  assert abs(float(np.std(params['fc6']['kernel'])) - 0.01) < 1e-4
  for layer, bias in [('conv1', 0), ('conv2', 1), ('conv3', 0), ('conv4', 1),
                      ('conv5', 1), ('fc6', 1), ('fc7', 1), ('fc8', 0)]:
    np.testing.assert_array_equal(params[layer]['bias'], bias)


def test_caffe_init_alternative():
  params = _init(models.VARIANTS['caffe'])
  assert abs(float(np.std(params['fc7']['kernel'])) - 0.005) < 1e-4
  assert abs(float(np.std(params['conv2']['kernel'])) - 0.01) < 1e-4
  np.testing.assert_array_equal(params['fc6']['bias'], np.float32(0.1))
  np.testing.assert_array_equal(params['conv3']['bias'], 0)


def _model_config(**overrides):
  config = defaults.get_config().model
  with config.unlocked():
    for key, value in overrides.items():
      config[key] = value
  return config


def test_config_overrides_on_top_of_variant():
  spec = models.spec_from_config(_model_config(variant='owt', lrn=True,
                                               num_classes=10))
  assert spec.conv_features == (64, 192, 384, 256, 256)
  assert spec.lrn and spec.num_classes == 10


@pytest.mark.parametrize('overrides,key', [
    ({'variant': 'vgg'}, 'config.model.variant'),
    ({'activation': 'gelu'}, 'config.model.activation'),
    ({'num_classes': 999}, 'config.model.num_classes'),
    ({'input_size': 40}, 'config.model.input_size'),
    ({'conv_features': (1, 2)}, 'config.model.conv_features'),
])
def test_bad_model_config_names_the_key(overrides, key):
  with pytest.raises(ValueError, match=key.replace('.', r'\.')):
    models.spec_from_config(_model_config(**overrides))


def test_unknown_model_field_is_rejected():
  config = ml_collections.ConfigDict({'variant': 'paper', 'widht': 3})
  with pytest.raises(ValueError, match=r'config\.model\.widht'):
    models.spec_from_config(config)


@pytest.mark.slow
def test_summary_cli_prints_exact_totals():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.summary',
       f'--config={repo}/configs/two_tower.py'],
      env=dict(os.environ, PYTHONPATH=repo), capture_output=True, text=True,
      check=True).stdout.splitlines()
  assert 'total params 60965224' in out
  assert 'total macs 724406816' in out
  assert out[1].split() == ['layer', 'towers', 'x', 'HxWxC', 'params', 'fwd',
                            'MACs/image', 'split', 'over']
  conv1 = next(line for line in out if line.startswith('conv1'))
  # 2 towers of 48 kernels of 11x11x3 and their biases; 55x55 outputs.
  assert conv1.split() == ['conv1', '2', 'x', '55x55x48',
                           f'{2 * (11 * 11 * 3 * 48 + 48):,}',
                           f'{2 * 55 * 55 * 48 * 11 * 11 * 3:,}', 'tower']
