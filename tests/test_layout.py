"""The layout's collectives alone, under jax.shard_map on simulated devices.

Each is checked against NumPy on the global arrays: what every device gets
back, and that the gathers and the slices undo each other.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from alexnet_jax.layout import Layout

TOWER = Layout(tower_axis='tower', tower_shards=2)
HYBRID = Layout(batch_axis='data', batch_shards=2, fc_axis='data', fc_shards=2)
TOWER_FC = Layout(tower_axis='tower', tower_shards=2, fc_axis='fc',
                  fc_shards=2)


def _run(fn, mesh, in_spec, out_spec, arg):
  """fn under shard_map on `arg`, placed as `in_spec` says; a NumPy result."""
  arg = jax.device_put(arg, NamedSharding(mesh, in_spec))
  return np.asarray(jax.jit(jax.shard_map(
      fn, mesh=mesh, in_specs=in_spec, out_specs=out_spec))(arg))


def _per_device(fn, mesh, in_spec, axes, arg):
  """Each device's result of fn, stacked on a new axis 0."""
  return _run(lambda x: fn(x)[None], mesh, in_spec, P(axes), arg)


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_gather_towers_concatenates_every_tower_and_own_towers_undoes_it():
  # 4 towers of 3 channels over 2 devices: 2 local towers each.
  towers = _random((4, 2, 5, 5, 3))
  mesh = jax.make_mesh((2,), ('tower',))
  gathered = _per_device(lambda local: TOWER.gather_towers(list(local)),
                         mesh, P('tower'), 'tower', towers)
  for device in range(2):
    np.testing.assert_array_equal(gathered[device],
                                  np.concatenate(list(towers), axis=-1))
  back = _run(lambda local: jnp.stack(TOWER.own_towers(
      TOWER.gather_towers(list(local)), 3)), mesh, P('tower'), P('tower'),
              towers)
  np.testing.assert_array_equal(back, towers)


def test_layout_without_axes_is_local():
  towers = [_random((2, 3, 3, 4), seed) for seed in range(2)]
  both = Layout().gather_towers(towers)
  np.testing.assert_array_equal(both, np.concatenate(towers, axis=-1))
  for mine, tower in zip(Layout().own_towers(both, 4), towers):
    np.testing.assert_array_equal(mine, tower)
  y = _random((2, 2, 6))
  np.testing.assert_array_equal(Layout().gather_features(y),
                                y.reshape(2, 12))


def test_gather_features_matches_the_global_flattening():
  y = _random((3, 2, 8))  # [batch, towers, features], split 2 x 2.
  mesh = jax.make_mesh((2, 2), ('tower', 'fc'))
  out = _per_device(TOWER_FC.gather_features, mesh, P(None, 'tower', 'fc'),
                    ('tower', 'fc'), y)
  assert out.shape == (4, 3, 16)
  for device in range(4):
    np.testing.assert_array_equal(out[device], y.reshape(3, 16))


def test_fc_batch_gathers_the_batch_and_local_batch_takes_it_back():
  h = _random((6, 5))
  mesh = jax.make_mesh((2,), ('data',))
  whole = _per_device(HYBRID.fc_batch, mesh, P('data'), 'data', h)
  for device in range(2):
    np.testing.assert_array_equal(whole[device], h)
  back = _run(lambda x: HYBRID.local_batch(HYBRID.fc_batch(x)), mesh,
              P('data'), P('data'), h)
  np.testing.assert_array_equal(back, h)


def test_dropout_masks_are_the_one_device_mask_in_every_layout():
  key = jax.random.key(3)
  shape = (4, 2, 8)  # Global [batch, towers, features].
  one_device = np.asarray(Layout().fc_dropout_keep(key, 0.5, shape))
  assert 0 < one_device.mean() < 1
  cases = [
      (TOWER_FC, ('tower', 'fc'), P(None, 'tower', 'fc'), (4, 1, 4)),
      (Layout(batch_axis='data', batch_shards=2, tower_axis='tower',
              tower_shards=2), ('data', 'tower'), P('data', 'tower'),
       (2, 1, 8)),
      (HYBRID, ('data', 'unused'), P(None, None, 'data'), (4, 2, 4)),
  ]
  for layout, axes, spec, local in cases:
    masks = _run(lambda k, layout=layout, local=local: layout.fc_dropout_keep(
        k, 0.5, local), jax.make_mesh((2, 2), axes), P(), spec, key)
    np.testing.assert_array_equal(masks, one_device)


def test_dropout_on_fc_inputs_draws_every_feature_on_every_device():
  key = jax.random.key(4)
  shape = (4, 1, 8)
  one_device = np.asarray(Layout().fc_dropout_keep(key, 0.5, shape))
  masks = _per_device(
      lambda k: TOWER_FC.fc_dropout_keep(k, 0.5, shape, sharded=False),
      jax.make_mesh((2, 2), ('tower', 'fc')), P(), ('tower', 'fc'), key)
  for device in range(4):
    np.testing.assert_array_equal(masks[device], one_device)
