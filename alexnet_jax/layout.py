"""Where the model's activations live on the mesh, and what moves them.

The model is written for the arrays one device holds. A `Layout` names the
mesh axes it runs under (all None on one device) and owns every collective
and every per-device slice, so the model itself is layer maths:

  * `tower_axis`: towers split across devices; each device holds
    `local_towers` of them, and the exchange points gather the rest.
  * `batch_axis`: the batch is split across devices (data parallelism).
  * `fc_axis`: the output features of the fully-connected layers are split
    across devices (the FC half of the OWT hybrid). When it is (one of) the
    batch axes, the FC layers see the batch of every device along it:
    `fc_batch` gathers it and `local_batch` takes this device's rows of the
    logits back. With `batch_axis` = (`data`, `fc`) (hybrid_2d) that is the
    batch of one row of the mesh; with `fc` alone, the whole batch.

Every method is the identity (or a plain reshape) along an axis that is
None, and runs inside `jax.shard_map` along one that is set.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Layout:
  """Mesh axes the model runs under, and their sizes (static)."""
  tower_axis: str | None = None
  tower_shards: int = 1
  batch_axis: str | tuple[str, ...] | None = None
  batch_shards: int = 1
  fc_axis: str | None = None
  fc_shards: int = 1

  def local_towers(self, num_towers: int) -> int:
    """How many of the net's `num_towers` towers one device holds."""
    return num_towers // self.tower_shards

  @property
  def fc_gathers_batch(self) -> bool:
    """Whether FC features split over a batch axis (the OWT hybrids)."""
    axes = (self.batch_axis if isinstance(self.batch_axis, tuple)
            else (self.batch_axis,))
    return self.fc_axis is not None and self.fc_axis in axes

  @property
  def _row_axes(self) -> tuple[str, ...] | None:
    """The batch axes other than the FC feature axis (hybrid_2d: `data`)."""
    if not isinstance(self.batch_axis, tuple):
      return None
    return tuple(a for a in self.batch_axis if a != self.fc_axis) or None

  def gather_towers(self, xs: list[jax.Array]) -> jax.Array:
    """This device's towers' activations -> every tower's, on channels."""
    local = jnp.stack(xs)  # [local towers, ...]
    if self.tower_axis:
      local = jax.lax.all_gather(local, self.tower_axis, axis=0, tiled=True,
                                 to='varying')
    return jnp.concatenate(list(local), axis=-1)

  def own_towers(self, x: jax.Array, width: int) -> list[jax.Array]:
    """This device's towers' `width`-channel blocks of an all-tower tensor.

    The inverse of `gather_towers`.
    """
    local_towers = x.shape[-1] // width // self.tower_shards
    first = _index(self.tower_axis) * local_towers
    return [jax.lax.dynamic_slice_in_dim(x, (first + t) * width, width, -1)
            for t in range(local_towers)]

  def fc_batch(self, h: jax.Array) -> jax.Array:
    """The batch the FC layers see: the whole one where they gather it."""
    if self.fc_gathers_batch:
      return jax.lax.all_gather(h, self.fc_axis, axis=0, tiled=True)
    return h

  def local_batch(self, logits: jax.Array) -> jax.Array:
    """This device's rows of the FC layers' batch; the inverse of fc_batch."""
    if not self.fc_gathers_batch:
      return logits
    rows = logits.shape[0] // self.fc_shards
    return jax.lax.dynamic_slice_in_dim(
        logits, _index(self.fc_axis) * rows, rows, 0)

  def gather_features(self, y: jax.Array, invariant: bool = False
                      ) -> jax.Array:
    """FC output [B, local towers, local features] -> [B, all of them].

    `invariant`: the result is the same on every device of the gathered
    axes (the logits), rather than varying over them.
    """
    to = 'invarying' if invariant else 'varying'
    if self.fc_axis:
      y = jax.lax.all_gather(y, self.fc_axis, axis=2, tiled=True, to=to)
    if self.tower_axis:
      y = jax.lax.all_gather(y, self.tower_axis, axis=1, tiled=True, to=to)
    return y.reshape(y.shape[0], -1)

  def fc_dropout_keep(self, key: jax.Array, keep_prob: float,
                      shape: tuple[int, int, int], *,
                      sharded: bool = True) -> jax.Array:
    """This device's block of a Bernoulli keep-mask over an FC activation.

    `shape` is the local [batch, towers, features]; `sharded` says whether
    towers and features are this device's share (FC outputs) or already
    all of them (FC inputs). The mask is drawn for the global shape from
    `key`, replicated on every device, and sliced, so every layout drops
    exactly the units one device would.
    """
    b, t, f = shape
    tower_shards, fc_shards = ((self.tower_shards, self.fc_shards)
                               if sharded else (1, 1))
    if self.fc_gathers_batch:  # b rows: every device of one row of the mesh.
      batch_shards = self.batch_shards // self.fc_shards
      first_row = _index(self._row_axes) * b
    else:
      batch_shards, first_row = self.batch_shards, _index(self.batch_axis) * b
    keep = jax.random.bernoulli(
        key, keep_prob, (b * batch_shards, t * tower_shards, f * fc_shards))
    starts = (first_row,
              _index(self.tower_axis) * t if sharded else 0,
              _index(self.fc_axis) * f if sharded else 0)
    return jax.lax.dynamic_slice(keep, starts, shape)


def _index(axis: str | tuple[str, ...] | None):
  """This device's position along mesh `axis`; 0 without one."""
  return jax.lax.axis_index(axis) if axis else 0
