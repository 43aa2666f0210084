"""The step benchmark: its timing protocol and its command line."""

import os
import re
import subprocess
import sys

import pytest

from alexnet_jax.tools import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_contenders_take_turns():
  calls = []
  steps = {name: (lambda name=name: calls.append(name)) for name in 'ab'}
  times = benchmark.time_interleaved(steps, rounds=3, warmup=2)
  assert calls == ['a', 'a', 'b', 'b'] + ['a', 'b'] * 3
  assert {name: len(t) for name, t in times.items()} == {'a': 3, 'b': 3}


@pytest.mark.slow
def test_command_times_jax_and_torch_in_one_run():
  """The demo net, tower mode on 2 CPU devices, against the PyTorch mirror."""
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.tools.benchmark',
       '--config=configs/demo.py', '--batch_size=4', '--steps=2',
       '--warmup=1', '--reference=torch'],
      cwd=ROOT, capture_output=True, text=True, check=True)
  lines = result.stdout.strip().splitlines()
  assert any(line.startswith('jax tower') for line in lines)
  assert any(line.startswith('torch eager') for line in lines)
  assert re.fullmatch(r'ratio jax/torch_eager \d+\.\d\d', lines[-3])
  assert re.match(r'stop_check_ms \d+\.\d{3} \(\d+\.\d{3}% of a step',
                  lines[-2])
  assert float(lines[-2].split()[1]) > 0
  assert re.fullmatch(r'images_per_sec \d+\.\d', lines[-1])
  assert float(lines[-1].split()[1]) > 0
