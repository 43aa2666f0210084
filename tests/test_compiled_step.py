"""What the compiled train step must contain, read from its HLO.

Regression checks for the performance choices (not timings, which are noisy
on shared machines): no grouped convolutions, no select-and-scatter, FC
layers as 2-D matmuls, and on the CPU every convolution left to XLA rather
than YNNPACK. And bf16 compute keeps the loss on the float32 run's track.
"""

import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest

from alexnet_jax import defaults
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import train
from alexnet_jax.analysis import hlo
from alexnet_jax.data import device

BATCH = 8


def _step_texts(spec, mode, devices) -> tuple[str, str]:
  """The train step as lowered (StableHLO) and as compiled (HLO)."""
  strategy = parallel.create_strategy(mode, devices, spec, BATCH)
  with jax.set_mesh(strategy.mesh):
    tx = optim.create_optimizer(defaults.get_config().optimizer,
                                parallel.abstract_params(spec))
    state = steps.create_train_state(spec, strategy, tx, jax.random.key(0))
    step = steps.make_train_step(
        spec, strategy, tx, state,
        device.Normalization.from_config(defaults.get_config()))
    batch = {k: jax.ShapeDtypeStruct(shape, dtype,
                                     sharding=strategy.batch_sharding())
             for k, (shape, dtype) in device.train_batch_shapes(
                 BATCH, spec.input_size).items()}
    lowered = step.lower(state, batch, 0.01, jax.random.key(1))
    return lowered.as_text(), lowered.compile().as_text()


def _library_fused_convolutions(text: str) -> set[str]:
  """Convolutions that XLA handed to a kernel library (YNNPACK, oneDNN)."""
  computations = re.split(r'\n(?=\S)', text)
  with_convolution = {re.match(r'%?(\S+)', c).group(1) for c in computations
                      if re.search(r'= \S+ convolution\(', c)}
  library_calls = set(re.findall(
      r'kind=kCustom, calls=%(\S+?),.*"kind":"__(?:ynn|xnn|onednn)', text))
  return with_convolution & library_calls


@pytest.mark.slow
@pytest.mark.parametrize('mode,devices', [('single', 1), ('tower', 2),
                                          ('data', 2), ('hybrid', 2)])
def test_step_has_the_ops_it_should(small_spec, mode, devices):
  lowered, text = _step_texts(small_spec, mode, devices)
  convolutions = re.findall(r'= \S+ convolution\(.*', text)
  assert convolutions
  assert not any('feature_group_count' in c for c in convolutions)
  assert 'select-and-scatter' not in text
  # Forward and kernel gradients: conv1 and conv3 once per device (their
  # towers share an input), conv2/4/5 once per local tower; input gradients
  # of conv2-5.
  towers = small_spec.num_towers // (2 if mode == 'tower' else 1)
  assert len(convolutions) == 2 * (2 + 3 * towers) + (1 + 3 * towers)
  assert not _library_fused_convolutions(text)
  # Every matmul is a plain 2-D one (one per FC tower): contracting the
  # [towers, in, out] kernels in one einsum made XLA:CPU transpose fc6's
  # kernel and gradient, which tripled the cost of its update.
  dots = re.findall(r'stablehlo.dot_general.*', lowered)
  assert dots and all(re.search(r'\(tensor<\d+x\d+xf32>, tensor<\d+x\d+xf32>\)',
                                d) for d in dots), dots
  kinds = {op.kind for op in hlo.collectives(text)}
  expected = {'single': set(), 'tower': {'all-gather', 'reduce-scatter'},
              'data': {'all-reduce', 'all-gather'},
              'hybrid': {'all-reduce', 'all-gather', 'reduce-scatter'}}[mode]
  assert kinds <= expected and ('all-reduce' in kinds) == (mode in (
      'data', 'hybrid'))


@pytest.mark.slow
def test_training_falls_well_below_chance_in_float32_and_bfloat16(
    tiny_config_factory, tmp_path):
  """150 steps on the 48 training images of 4 classes (chance: ln 4 nats),
  without augmentation or dropout, so the net can fit them: both dtypes
  end below half of chance, and bf16 compute (f32 weights and loss) stays
  on the float32 run's track."""
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny_config_factory(
        mode='tower', num_devices=2, num_train_steps=150,
        eval_every_steps=150, checkpoint_every_steps=150, log_every_steps=10,
        **{'input.random_crop': False, 'input.random_flip': False,
           'input.pca_lighting_sigma': 0.0, 'model.dropout_rate': 0.0,
           'model.dtype': dtype, 'optimizer.learning_rate': 0.02})
    train.train_and_evaluate(config, str(tmp_path / dtype))
    with open(os.path.join(tmp_path, dtype, 'metrics.jsonl')) as f:
      losses[dtype] = [json.loads(line)['train/loss'] for line in f
                       if 'train/loss' in line]
  f32, bf16 = np.array(losses['float32']), np.array(losses['bfloat16'])
  assert len(f32) == len(bf16) == 15  # Means of 10 steps each.
  chance = np.log(4)
  assert f32[0] == pytest.approx(chance, abs=0.05)  # It starts at chance.
  assert f32[-1] < chance / 2 and bf16[-1] < chance / 2
  # The first 10 steps agree to bf16's rounding; later the two runs drift
  # apart (different rounding, then different updates) but stay close.
  assert abs(bf16[0] - f32[0]) < 0.005
  np.testing.assert_allclose(bf16, f32, atol=0.1)
  assert not np.array_equal(bf16, f32)  # bf16 really was used.


def test_bfloat16_keeps_float32_parameters(small_spec):
  spec = dataclasses.replace(small_spec, dtype='bfloat16')
  strategy = parallel.create_strategy('single', 1, spec, BATCH)
  params = parallel.init_params(spec, strategy, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype('float32')}
  logits = parallel.make_apply(spec, strategy, params, train=False)(
      params, np.zeros((2, spec.input_size, spec.input_size, 3), np.float32),
      None)
  assert logits.dtype == np.float32
