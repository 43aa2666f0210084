"""The compiled steps: the train step and the eval step of every execution
mode, and the state they carry.

The steps know execution modes only through `parallel.Strategy` and the
network only through `parallel.make_apply`. Batches arrive as uint8 pixels;
the steps turn them into the model's float input (`data.device`) before the
model, in every mode. Nothing here imports TensorFlow, so the steps build
and compile without the input pipeline.
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import models
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax.data import device


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def wrong_at_k(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is not among the k highest scores, per example."""
  k = min(k, scores.shape[-1])
  _, top = jax.lax.top_k(scores, k)
  return 1.0 - jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def create_train_state(spec: models.AlexNetSpec, strategy: parallel.Strategy,
                       tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  params = parallel.init_params(spec, strategy, rng)
  opt_state = jax.jit(tx.init)(params)  # Shardings follow the parameters.
  return TrainState(jax.device_put(jnp.zeros((), jnp.int32),
                                   strategy.replicated()), params, opt_state)


def shardings_of(tree: Any) -> Any:
  return jax.tree.map(lambda x: x.sharding, tree)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(tree)]))


def make_train_step(spec: models.AlexNetSpec, strategy: parallel.Strategy,
                    tx: optax.GradientTransformation, state: TrainState,
                    norm: device.Normalization) -> Callable:
  """Compiled (state, batch, learning_rate, rng) -> (state, metrics).

  `batch` holds device.TRAIN_KEYS; its uint8 crops are normalised with
  `norm` inside the step. The state is donated. Dropout's key is
  `fold_in(rng, step)`, so a resumed run draws the same masks as an
  uninterrupted one.
  """
  apply = parallel.make_apply(spec, strategy, state.params, train=True)

  def train_step(state, batch, learning_rate, rng):
    images = device.train_images(batch, norm)

    def loss_fn(params):
      logits = apply(params, images, jax.random.fold_in(rng, state.step))
      return cross_entropy(logits, batch['label']).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    opt_state = optim.set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'train/loss': loss,
               'train/top1_error': wrong_at_k(logits, batch['label'], 1).mean(),
               'train/top5_error': wrong_at_k(logits, batch['label'], 5).mean()}
    return TrainState(state.step + 1, params, opt_state), metrics

  state_sh = shardings_of(state)
  return jax.jit(
      train_step,
      in_shardings=(state_sh, batch_shardings(strategy, device.TRAIN_KEYS),
                    strategy.replicated(), strategy.replicated()),
      out_shardings=(state_sh, strategy.replicated()),
      donate_argnums=0, compiler_options=parallel.compiler_options())


def batch_shardings(strategy: parallel.Strategy,
                    keys: tuple[str, ...]) -> dict[str, Any]:
  """Every key of a batch split like the batch (along its first axis)."""
  return {k: strategy.batch_sharding() for k in keys}


def make_eval_step(spec: models.AlexNetSpec, strategy: parallel.Strategy,
                   params: Any, norm: device.Normalization, *,
                   ten_crop: bool) -> Callable:
  """Compiled (params, batch) -> sums of top-1/top-5 errors and examples.

  `batch['image']` holds uint8 [B, R, R, 3] base images, normalised here
  once. The centre crop gives 'top1'/'top5'; with `ten_crop` the paper's
  ten crops also give 'top1_10crop'/'top5_10crop' (softmax averaged over
  the crops), one crop at a time, the centre one shared by both protocols.
  Padded examples (mask False) count zero.
  """
  apply = parallel.make_apply(spec, strategy, params, train=False)
  size = spec.input_size

  def eval_step(params, batch):
    images = device.eval_base_images(batch['image'], norm)
    mask = batch['mask'].astype(jnp.float32)
    labels = batch['label']

    def wrong(probs, k):
      return (wrong_at_k(probs, labels, k) * mask).sum()

    if ten_crop:
      views = device.ten_crop_views(images.shape[1], size)
      probs = jax.lax.map(lambda view: jax.nn.softmax(apply(
          params, device.crop_view(images, view, size), None)), views)
      centre, ten = probs[device.CENTRE_VIEW], probs.mean(0)
    else:
      centre = jax.nn.softmax(apply(params, device.centre_crop(images, size),
                                    None))
    sums = {'top1': wrong(centre, 1), 'top5': wrong(centre, 5),
            'count': mask.sum()}
    if ten_crop:
      sums.update({'top1_10crop': wrong(ten, 1), 'top5_10crop': wrong(ten, 5)})
    return sums

  return jax.jit(eval_step, in_shardings=(
      shardings_of(params), batch_shardings(strategy, device.EVAL_KEYS)),
                 out_shardings=strategy.replicated(),
                 compiler_options=parallel.compiler_options())


@dataclasses.dataclass
class ResidentTrainStep:
  """The real jitted train step of a mode on a device-resident batch."""
  fn: Callable
  state: Any
  batch: Any
  rng: Any
  mesh: Any
  learning_rate: float  # The config's base rate (speed does not depend on it).

  def __call__(self) -> None:
    """One step, blocking until the devices are done."""
    with jax.set_mesh(self.mesh):
      self.state, metrics = self.fn(self.state, self.batch,
                                    self.learning_rate, self.rng)
    jax.block_until_ready(metrics)

  def compiled(self) -> Any:
    """The program each call runs (for its HLO text)."""
    with jax.set_mesh(self.mesh):
      return self.fn.lower(self.state, self.batch, self.learning_rate,
                           self.rng).compile()


def resident_train_step(config: Any, batch_size: int) -> ResidentTrainStep:
  """The real jitted train step of `config.mode` on a random device-resident
  batch, called with no arguments: what `benchmark` times and `profile`
  traces."""

  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(config.mode, config.num_devices, spec,
                                      batch_size)
  with jax.set_mesh(strategy.mesh):
    tx = optim.create_optimizer(config.optimizer,
                                parallel.abstract_params(spec))
    state = create_train_state(spec, strategy, tx, jax.random.key(0))
    host_batch = device.random_train_batch(
        np.random.default_rng(0), batch_size, spec.input_size,
        config.input.resize_size, spec.num_classes)
    batch = jax.device_put(host_batch, batch_shardings(
        strategy, device.TRAIN_KEYS))
    step_fn = make_train_step(spec, strategy, tx, state,
                              device.Normalization.from_config(config))
  return ResidentTrainStep(step_fn, state, batch, jax.random.key(1),
                           strategy.mesh, config.optimizer.learning_rate)


def max_over_mesh(strategy: parallel.Strategy) -> Callable[[int], jax.Array]:
  """value -> the max of every process's value, replicated; it only
  dispatches (reading the result waits for it). `tools/benchmark` times it."""
  mesh = strategy.mesh
  spread = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(mesh.axis_names))
  reduce = jax.jit(jnp.max, out_shardings=strategy.replicated())
  local = len(mesh.local_devices)

  def agree(value: int) -> jax.Array:
    return reduce(jax.make_array_from_process_local_data(
        spread, np.full(local, value, np.int32), (mesh.devices.size,)))
  return agree
