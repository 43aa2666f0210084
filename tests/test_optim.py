"""The optimizer against a hand-written NumPy version of the paper's rule."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax import defaults
from alexnet_jax import optim


def _opt_config(**overrides) -> ml_collections.ConfigDict:
  config = defaults.get_config().optimizer
  with config.unlocked():
    config.update(overrides)
  return config


def _run(opt_config, params, grads_seq, lrs):
  tx = optim.create_optimizer(opt_config, params)
  state = tx.init(params)
  step = jax.jit(lambda p, g, s, lr: tx.update(
      g, optim.set_learning_rate(s, lr), p))
  for grads, lr in zip(grads_seq, lrs):
    updates, state = step(params, grads, state, lr)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params


def _numpy_paper(params, grads_seq, lrs, decay_biases):
  """v <- 0.9 v - 0.0005 lr w - lr g;  w <- w + v (docs/paper.md)."""
  params = {k: dict(v) for k, v in params.items()}
  velocity = {k: {n: np.zeros_like(a) for n, a in v.items()}
              for k, v in params.items()}
  for grads, lr in zip(grads_seq, lrs):
    for layer, tensors in params.items():
      for name, w in tensors.items():
        wd = 5e-4 if (decay_biases or name == 'kernel') else 0.0
        v = velocity[layer][name]
        v = 0.9 * v - wd * lr * w - lr * grads[layer][name]
        velocity[layer][name] = v
        tensors[name] = w + v
  return params


def _problem(steps=6):
  rng = np.random.RandomState(0)
  params = {'conv1': {'kernel': rng.randn(2, 3, 3, 4).astype(np.float32),
                      'bias': rng.randn(2, 4).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.randn(*p.shape).astype(np.float32),
                        params) for _ in range(steps)]
  lrs = [0.01, 0.01, 0.01, 0.001, 0.001, 0.0001]  # Two drops by 10.
  return params, grads, lrs


@pytest.mark.parametrize('decay_biases', [True, False])
def test_paper_rule_matches_numpy_through_lr_drops(decay_biases):
  params, grads, lrs = _problem()
  got = _run(_opt_config(decay_biases=decay_biases),
             jax.tree.map(jnp.asarray, params), grads, lrs)
  want = _numpy_paper(params, grads, lrs, decay_biases)
  for layer in want:
    for name in want[layer]:
      np.testing.assert_allclose(got[layer][name], want[layer][name],
                                 rtol=1e-5, atol=1e-7)


def test_optax_rule_differs_after_a_drop():
  params, grads, lrs = _problem()
  paper = _run(_opt_config(), params, grads, lrs)
  optax_form = _run(_opt_config(rule='optax'), params, grads, lrs)
  same_lr = _run(_opt_config(rule='optax'), params, grads[:3], lrs[:3])
  paper_same_lr = _run(_opt_config(), params, grads[:3], lrs[:3])
  # Identical while the learning rate is constant, different after a drop.
  np.testing.assert_allclose(same_lr['conv1']['kernel'],
                             paper_same_lr['conv1']['kernel'], rtol=1e-5)
  assert not np.allclose(paper['conv1']['kernel'],
                         optax_form['conv1']['kernel'], rtol=1e-4)


def test_plateau_policy_drops_after_patience_and_stops_at_max():
  policy = optim.LearningRatePolicy(base=0.01, schedule='plateau',
                                    steps_per_epoch=10, patience=2,
                                    max_drops=2)
  errors = [0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
  drops = [policy.observe(e) for e in errors]
  assert drops == [False, False, False, True, False, True, False, False,
                   False]
  assert policy(1000) == pytest.approx(0.0001)
  restored = optim.LearningRatePolicy(base=0.01, schedule='plateau',
                                      steps_per_epoch=10)
  restored.load_state_dict(policy.state_dict())
  assert restored(5) == policy(5)


def test_policy_state_is_strict_json_before_the_first_evaluation():
  policy = optim.LearningRatePolicy(base=0.01, schedule='plateau',
                                    steps_per_epoch=10)
  text = json.dumps(policy.state_dict(), allow_nan=False)
  restored = optim.LearningRatePolicy(base=0.01, schedule='plateau',
                                      steps_per_epoch=10)
  restored.load_state_dict(json.loads(text))
  # The first evaluation, whatever its error, is progress, not a stall.
  assert not restored.observe(1.0)
  assert restored.best_error == 1.0 and restored.evals_without_progress == 0


def test_step_decay_and_warmup():
  policy = optim.LearningRatePolicy(base=0.1, schedule='step',
                                    steps_per_epoch=100, warmup_epochs=1,
                                    step_every_epochs=30)
  assert policy(0) == pytest.approx(0.1 / 100)
  assert policy(49) == pytest.approx(0.05)
  assert policy(100) == pytest.approx(0.1)
  assert policy(3000) == pytest.approx(0.01)
  assert policy(6000) == pytest.approx(0.001)


def test_unknown_rule_names_the_key():
  with pytest.raises(ValueError, match=r'config\.optimizer\.rule'):
    optim.create_optimizer(_opt_config(rule='adam'), {'w': jnp.zeros(2)})
