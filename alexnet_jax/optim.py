"""The paper's SGD as an optax chain, and its learning-rate policies.

The paper's rule (docs/paper.md, Training recipe) keeps the learning rate
inside the velocity:

  v <- 0.9 v - 0.0005 lr w - lr grad;   w <- w + v

optax's and PyTorch's `sgd` scale the velocity by the learning rate instead
(v <- 0.9 v + grad + wd w; w <- w - lr v), which differs after every change
of the learning rate. Both are here; `rule` picks one.

The learning rate is an injected hyperparameter that the host sets every
step from a `LearningRatePolicy`, because the paper's policy (divide by 10
when validation error stops improving) depends on evaluations, not on the
step alone.
"""

import dataclasses
import math
import sys
from typing import Any

import jax
import optax


def _decay_mask(params: Any, decay_biases: bool) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay_biases or path[-1].key == 'kernel', params)


def _paper_sgd(learning_rate, momentum, weight_decay, mask):
  # trace(u) with u = -lr (g + wd w): v <- m v - lr g - lr wd w; update = v.
  return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.scale_by_learning_rate(learning_rate),
                     optax.trace(decay=momentum))


def _optax_sgd(learning_rate, momentum, weight_decay, mask):
  return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.sgd(learning_rate, momentum))


RULES = {'paper': _paper_sgd, 'optax': _optax_sgd}


def create_optimizer(opt_config: Any, params: Any
                     ) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer` for parameters shaped like params."""
  if opt_config.rule not in RULES:
    raise ValueError(f'config.optimizer.rule: unknown {opt_config.rule!r}; '
                     f'choose from {sorted(RULES)}')
  return optax.inject_hyperparams(
      RULES[opt_config.rule], static_args=('mask',))(
          learning_rate=opt_config.learning_rate,
          momentum=opt_config.momentum,
          weight_decay=opt_config.weight_decay,
          mask=_decay_mask(params, opt_config.decay_biases))


def set_learning_rate(opt_state: Any, learning_rate: jax.Array) -> Any:
  """opt_state with its injected learning rate replaced (traceable)."""
  hyperparams = dict(opt_state.hyperparams, learning_rate=learning_rate)
  return opt_state._replace(hyperparams=hyperparams)


@dataclasses.dataclass
class LearningRatePolicy:
  """Host-side learning rate: warm-up, then step decay or the paper's drops.

  Its state (`state_dict`) goes into every checkpoint, so a resumed run
  continues with the same drops.
  """
  base: float
  schedule: str  # 'plateau' or 'step'.
  steps_per_epoch: float
  warmup_epochs: float = 0.0
  step_every_epochs: float = 30.0
  factor: float = 0.1
  patience: int = 3
  max_drops: int = 3
  min_delta: float = 1e-3
  drops: int = 0
  # Above any error before the first evaluation, and finite: JSON (the
  # checkpoint's progress record) has no Infinity.
  best_error: float = sys.float_info.max
  evals_without_progress: int = 0

  def __post_init__(self):
    if self.schedule not in ('plateau', 'step'):
      raise ValueError(f'config.optimizer.schedule: unknown '
                       f'{self.schedule!r}; choose plateau or step')

  @classmethod
  def from_config(cls, opt_config: Any, steps_per_epoch: float):
    return cls(base=opt_config.learning_rate, schedule=opt_config.schedule,
               steps_per_epoch=steps_per_epoch,
               warmup_epochs=opt_config.warmup_epochs,
               step_every_epochs=opt_config.step_every_epochs,
               factor=opt_config.step_factor,
               patience=opt_config.plateau_patience,
               max_drops=opt_config.plateau_max_drops,
               min_delta=opt_config.plateau_min_delta)

  def __call__(self, step: int) -> float:
    epoch = step / self.steps_per_epoch
    if self.schedule == 'step':
      rate = self.base * self.factor ** math.floor(
          epoch / self.step_every_epochs)
    else:
      rate = self.base * self.factor ** self.drops
    if epoch < self.warmup_epochs:
      rate *= (step + 1) / (self.warmup_epochs * self.steps_per_epoch)
    return rate

  def observe(self, val_error: float) -> bool:
    """Feeds one validation error; True if the learning rate just dropped."""
    if self.schedule != 'plateau':
      return False
    if val_error < self.best_error - self.min_delta:
      self.best_error, self.evals_without_progress = val_error, 0
      return False
    self.evals_without_progress += 1
    if (self.evals_without_progress >= self.patience
        and self.drops < self.max_drops):
      self.drops += 1
      self.evals_without_progress = 0
      return True
    return False

  def state_dict(self) -> dict[str, Any]:
    return {'drops': self.drops, 'best_error': self.best_error,
            'evals_without_progress': self.evals_without_progress}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.drops = int(state['drops'])
    self.best_error = float(state['best_error'])
    self.evals_without_progress = int(state['evals_without_progress'])
