"""Checkpoints with orbax: `WORKDIR/checkpoints/<step>/{params,opt_state,...}`.

Items of a step:
  params     the global parameters (restorable onto any mesh: every mode
             uses the same global shapes).
  opt_state  the optimizer state (training checkpoints only).
  progress   JSON: the data iterator's position and the learning-rate
             policy's state (training checkpoints only).
  meta       JSON: the model spec and input conventions the weights need.

orbax writes a step into a temporary directory and renames it when complete,
so a run killed mid-save leaves no step that `latest_step` would return.
"""

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from alexnet_jax import models

TRAIN_ITEMS = ('params', 'opt_state', 'progress', 'meta')


def manager(directory: str, keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def spec_meta(spec: models.AlexNetSpec, **conventions) -> dict[str, Any]:
  """What a checkpoint records about the network that reads its weights."""
  return {'model': dataclasses.asdict(spec), **conventions}


def save(mngr: ocp.CheckpointManager, step: int, *, params: Any,
         meta: dict[str, Any], opt_state: Any = None,
         progress: dict[str, Any] | None = None) -> None:
  items = {'params': ocp.args.StandardSave(params),
           'meta': ocp.args.JsonSave(meta)}
  if opt_state is not None:
    items['opt_state'] = ocp.args.StandardSave(opt_state)
    items['progress'] = ocp.args.JsonSave(progress)
  mngr.save(step, args=ocp.args.Composite(**items))


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and target shardings of arrays or ShapeDtypeStructs."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), tree)


def check_compatible(meta: dict[str, Any], spec: models.AlexNetSpec,
                     where: str) -> None:
  """Raises if the checkpoint's network differs from `spec` in shape."""
  saved = meta.get('model', {})
  current = dataclasses.asdict(spec)
  for key in ('num_towers', 'conv_features', 'fc_features', 'num_classes'):
    mine, theirs = current[key], saved.get(key)
    if isinstance(mine, tuple):
      theirs = tuple(theirs) if theirs is not None else None
    if theirs != mine:
      raise ValueError(
          f'{where} holds a different model: config.model.{key} is {mine} '
          f'here but {theirs} in the checkpoint')


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']


def restore(mngr: ocp.CheckpointManager, step: int, *, params_like: Any,
            opt_state_like: Any = None) -> dict[str, Any]:
  """Restores a step onto the shardings of the given (abstract) trees."""
  items = {'params': ocp.args.StandardRestore(_abstract(params_like)),
           'meta': ocp.args.JsonRestore()}
  if opt_state_like is not None:
    items['opt_state'] = ocp.args.StandardRestore(_abstract(opt_state_like))
    items['progress'] = ocp.args.JsonRestore()
  return dict(mngr.restore(step, args=ocp.args.Composite(**items)))


def locate(path: str) -> tuple[str, int | None]:
  """(checkpoints directory, step) for a workdir, a checkpoints dir or a step.

  `step` is None when the path names a directory of steps (take the latest).
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, 'params')):
    return os.path.dirname(path), int(base)
  return path, None
