"""Every execution mode runs the same function: equal logits, loss, grads.

From the batch the host sends (uint8 crops, lighting offsets, crop
positions) through the device's normalisation, with every convention at
once: a per-pixel mean image, std division, a value scale and BGR. Also
checks, from the compiled programs, where parameters live and which
collectives each mode issues.
"""

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax.analysis import hlo
from alexnet_jax.data import device

BATCH = 8
# (mode, devices): every mode on 2 simulated devices, and the modes that
# scale past two on 4.
MODES = [('data', 2), ('tower', 2), ('hybrid', 2), ('data', 4),
         ('data_tower', 4), ('hybrid', 4), ('hybrid_2d', 4)]
# hybrid_2d as a 2 x 2 mesh; its default `fc` axis (one host's devices)
# would make it 1 x 4 on one host.
FC_SHARDS = {'hybrid_2d': 2}


RESIZE = 76  # Base images, from which the batch's crops were cut.


def _norm():
  rng = np.random.default_rng(3)
  mean_image = rng.uniform(0.3, 0.7, (RESIZE, RESIZE, 3)).astype(np.float32)
  return device.Normalization(mean_image,
                              np.array([0.2, 0.25, 0.3], np.float32), 2.0,
                              bgr=True)


def _batch(spec, strategy):
  """A global training batch (device.TRAIN_KEYS) and the images it gives."""
  batch = device.random_train_batch(np.random.default_rng(0), BATCH,
                                    spec.input_size, RESIZE,
                                    spec.num_classes)
  return {k: jax.device_put(v, strategy.batch_sharding())
          for k, v in batch.items()}


def _loss_fn(apply):
  def loss_fn(p, batch, rng):
    logits = apply(p, device.train_images(batch, _norm()), rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           batch['label'])
    return loss.mean(), logits
  return loss_fn


def _loss_logits_grads(spec, mode, num_devices):
  """Dropout-on loss, logits and grads, and dropout-off logits."""
  strategy = parallel.create_strategy(mode, num_devices, spec, BATCH,
                                      fc_shards=FC_SHARDS.get(mode))
  params = parallel.init_params(spec, strategy, jax.random.key(1))
  train_apply = parallel.make_apply(spec, strategy, params, train=True)
  eval_apply = parallel.make_apply(spec, strategy, params, train=False)
  loss_fn = _loss_fn(train_apply)

  @jax.jit
  def run(p, batch, rng):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        p, batch, rng)
    images = device.train_images(batch, _norm())
    return loss, logits, grads, eval_apply(p, images, rng)

  out = run(params, _batch(spec, strategy), jax.random.key(2))
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope='module')
def single(small_spec):
  return _loss_logits_grads(small_spec, 'single', 1)


# The core suite keeps the paper's mode; the others compile for longer.
@pytest.mark.parametrize('mode,num_devices', [
    pytest.param(*mode, marks=[] if mode == ('tower', 2) else pytest.mark.slow)
    for mode in MODES])
def test_modes_are_one_function(small_spec, single, mode, num_devices):
  loss, logits, grads, eval_logits = _loss_logits_grads(
      small_spec, mode, num_devices)
  ref_loss, ref_logits, ref_grads, ref_eval = single
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(eval_logits, ref_eval, rtol=1e-4, atol=1e-5)
  assert not np.allclose(logits, eval_logits)  # Dropout really was on.
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    ref = ref_grads
    for key in path:
      ref = ref[key.key]
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def _compiled_grad(spec, strategy, params):
  loss_fn = _loss_fn(parallel.make_apply(spec, strategy, params, train=True))
  return jax.jit(jax.grad(lambda *args: loss_fn(*args)[0])).lower(
      params, _batch(spec, strategy), jax.random.key(0)).compile()


@pytest.mark.slow
def test_tower_mode_places_one_tower_per_device(small_spec):
  strategy = parallel.create_strategy('tower', 2, small_spec, BATCH)
  params = parallel.init_params(small_spec, strategy, jax.random.key(1))
  for leaf in jax.tree.leaves(params):
    full = np.asarray(leaf)
    shards = leaf.addressable_shards
    assert len(shards) == 2
    for shard in shards:
      tower = strategy.mesh.devices.tolist().index(shard.device)
      assert shard.data.shape == (1, *full.shape[1:])  # A slice, no replica.
      np.testing.assert_array_equal(np.asarray(shard.data)[0], full[tower])


@pytest.mark.slow
def test_tower_mode_exchanges_only_activations(small_spec):
  strategy = parallel.create_strategy('tower', 2, small_spec, BATCH)
  params = parallel.init_params(small_spec, strategy, jax.random.key(1))
  ops = hlo.collectives(_compiled_grad(small_spec, strategy,
                                       params).as_text())
  # Per device, forward: the inputs of conv3 (pool2), fc6 (pool5), fc7, fc8
  # from both towers, and the logits; backward: the same four exchanges
  # reduce-scattered back (the logits' gradient is only sliced).
  c, f = small_spec.conv_features, small_spec.fc_features
  s2, s5 = 3, 1  # pool2 and pool5 sizes at 67x67.
  exchanges = [2 * BATCH * s2 * s2 * c[1], 2 * BATCH * s5 * s5 * c[4],
               2 * BATCH * f[0], 2 * BATCH * f[1]]
  logits = BATCH * small_spec.num_classes
  assert sorted(op.elements for op in ops if op.kind == 'all-gather') == (
      sorted(exchanges + [logits]))
  assert sorted(op.elements for op in ops if op.kind == 'reduce-scatter') == (
      sorted(n // 2 for n in exchanges))
  assert {op.kind for op in ops} == {'all-gather', 'reduce-scatter'}


@pytest.mark.slow
def test_data_mode_all_reduces_every_gradient(small_spec):
  strategy = parallel.create_strategy('data', 2, small_spec, BATCH)
  params = parallel.init_params(small_spec, strategy, jax.random.key(1))
  ops = hlo.collectives(_compiled_grad(small_spec, strategy,
                                       params).as_text())
  reduced = sum(op.elements for op in ops if op.kind == 'all-reduce')
  num_params = sum(x.size for x in jax.tree.leaves(params))
  # Every gradient, plus at most a few scalars (the loss).
  assert num_params <= reduced <= num_params + 16
  assert not any(op.kind == 'all-gather' for op in ops)


@pytest.mark.slow
def test_hybrid_mode_splits_fc_and_replicates_convs(small_spec):
  strategy = parallel.create_strategy('hybrid', 2, small_spec, BATCH)
  params = parallel.init_params(small_spec, strategy, jax.random.key(1))
  fc6 = params['fc6']['kernel']
  assert fc6.addressable_shards[0].data.shape == (
      2, fc6.shape[1], fc6.shape[2] // 2)
  conv1 = params['conv1']['kernel']
  assert conv1.addressable_shards[0].data.shape == conv1.shape
  ops = hlo.collectives(_compiled_grad(small_spec, strategy,
                                       params).as_text())
  conv_params = sum(params[k][w].size for k in models.CONV_LAYERS
                    for w in ('kernel', 'bias'))
  reduced = sum(op.elements for op in ops if op.kind == 'all-reduce')
  # Conv gradients are all-reduced; FC gradients stay where they live.
  assert conv_params <= reduced < conv_params + BATCH * 64


@pytest.mark.parametrize('mode,devices', [('tower', 2), ('hybrid', 2)])
def test_abstract_params_describe_the_placed_params(small_spec, mode,
                                                    devices):
  strategy = parallel.create_strategy(mode, devices, small_spec, BATCH)
  abstract = parallel.abstract_params(small_spec, strategy)
  params = parallel.init_params(small_spec, strategy, jax.random.key(1))
  assert jax.tree.structure(abstract) == jax.tree.structure(params)
  for like, placed in zip(jax.tree.leaves(abstract), jax.tree.leaves(params)):
    assert (like.shape, like.dtype) == (placed.shape, placed.dtype)
    assert like.sharding.is_equivalent_to(placed.sharding, len(like.shape))


@pytest.mark.parametrize('mode,devices,batch,key', [
    ('pipeline', 2, 8, 'config.mode'),
    ('tower', 4, 8, 'config.num_devices'),
    ('tower', 1, 8, 'config.num_devices'),
    ('data', 8, 8, 'config.num_devices'),
    ('data', 4, 6, 'config.batch_size'),
    ('data_tower', 4, 7, 'config.batch_size'),
    ('single', 2, 8, 'config.num_devices'),
    ('hybrid_2d', 4, 6, 'config.batch_size'),
])
def test_bad_execution_config_names_the_key(small_spec, mode, devices, batch,
                                             key):
  with pytest.raises(ValueError, match=key.replace('.', r'\.')) as error:
    parallel.create_strategy(mode, devices, small_spec, batch)
  assert '\n' not in str(error.value)


@pytest.mark.slow
def test_hybrid_2d_splits_fc_within_a_row_and_reduces_fc_over_rows(
    small_spec):
  strategy = parallel.create_strategy('hybrid_2d', 4, small_spec, BATCH,
                                      fc_shards=2)
  assert dict(strategy.mesh.shape) == {'data': 2, 'fc': 2}
  params = parallel.init_params(small_spec, strategy, jax.random.key(1))
  fc6 = params['fc6']['kernel']
  assert fc6.addressable_shards[0].data.shape == (
      2, fc6.shape[1], fc6.shape[2] // 2)
  ops = hlo.collectives(_compiled_grad(small_spec, strategy,
                                       params).as_text())
  conv = sum(params[k][w].size for k in models.CONV_LAYERS
             for w in ('kernel', 'bias'))
  fc = sum(params[k][w].size for k in models.FC_LAYERS
           for w in ('kernel', 'bias'))
  reduced = sum(op.elements for op in ops if op.kind == 'all-reduce')
  # Conv gradients over all 4 devices, this row's half of the FC gradients
  # over the 2 rows, and the logits' gradient within a row.
  assert conv + fc // 2 <= reduced < conv + fc // 2 + BATCH * 64


def test_hybrid_2d_rows_must_fill_the_devices(small_spec):
  with pytest.raises(ValueError, match=r'^config\.num_devices: 4 devices do '
                     'not form rows of 3'):
    parallel.create_strategy('hybrid_2d', 4, small_spec, BATCH, fc_shards=3)
