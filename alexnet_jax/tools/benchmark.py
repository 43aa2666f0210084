"""Times the real compiled train step, and optionally PyTorch's, in one run.

  python -m alexnet_jax.tools.benchmark --config=configs/two_tower.py \
      --batch_size=32 --steps=10 --reference=torch

Batches are random and live on the devices already, in the form the input
pipeline sends them (uint8 crops, lighting offsets, crop positions), so the
step includes the normalisation: this measures the step, not the input
pipeline (see `benchmark_input` for that). Model FLOPs are
6 x the forward multiply-adds of `summary` per image (forward 2, backward
4), so MFU is comparable across implementations and modes.
"""

import statistics
import time
from typing import Any, Callable

from absl import flags
import jax

from alexnet_jax import cli
from alexnet_jax import hardware
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import steps

# The stop check is fast and noisy: many rounds for its median.
STOP_CHECK_ROUNDS = 200


def time_interleaved(steps: dict[str, Callable[[], Any]], rounds: int,
                     warmup: int) -> dict[str, list[float]]:
  """Seconds per call of each step (which must block until done).

  The steps take turns, one call each per round, so a machine whose speed
  drifts (shared hosts, thermal limits) slows every contender alike and
  their ratio stays meaningful.
  """
  for step in steps.values():
    for _ in range(warmup):
      step()
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  return times


def stop_check(config, batch_size: int) -> Callable[[], None]:
  """One round of the stop agreement that multi-process training takes
  after every step (`steps.max_over_mesh`), here waited for: an upper
  bound on its cost, which in training overlaps the next step."""
  spec = parallel.spec_of(config)
  strategy = parallel.create_strategy(config.mode, config.num_devices, spec,
                                      batch_size)
  with jax.set_mesh(strategy.mesh):
    agree = steps.max_over_mesh(strategy)

  def check():
    with jax.set_mesh(strategy.mesh):
      int(agree(0))

  return check


def torch_train_step(spec, batch_size: int,
                     compile_model: bool) -> Callable[[], None]:
  """One step of the same network and SGD in PyTorch (NCHW), blocking."""
  import torch  # pylint: disable=g-import-not-at-top

  from alexnet_jax import torch_reference  # pylint: disable=g-import-not-at-top

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = torch_reference.TorchAlexNet.from_spec(spec).to(device).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                        weight_decay=5e-4)
  images = torch.randn(batch_size, 3, spec.input_size, spec.input_size,
                       device=device)
  labels = torch.randint(0, spec.num_classes, (batch_size,), device=device)
  forward = torch.compile(model) if compile_model else model
  autocast = spec.dtype == 'bfloat16'

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    opt.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  return step


def report(name: str, times: list[float], batch_size: int,
           flops_per_image: float, peak_tflops: float | None,
           devices: int) -> float:
  median = statistics.median(times)
  images_per_sec = batch_size / median
  line = (f'{name:<24} median step {median * 1e3:9.1f} ms  '
          f'{images_per_sec:9.1f} images/s  '
          f'{flops_per_image * images_per_sec / 1e12:7.3f} model TFLOP/s')
  if peak_tflops:
    mfu = flops_per_image * images_per_sec / (peak_tflops * 1e12 * devices)
    line += f'  MFU {mfu:.1%}'
  print(line, flush=True)
  return images_per_sec


def define_flags() -> cli.Flags:
  """The flags of `python -m alexnet_jax.tools.benchmark`."""
  return {
      'config': cli.config_flag('configs/two_tower.py'),
      'batch_size': flags.DEFINE_integer(
          'batch_size', None, 'Global batch (default: config.batch_size).'),
      'steps': flags.DEFINE_integer('steps', 10, 'Timed steps, after warm-up.'),
      'warmup': flags.DEFINE_integer('warmup', 2, 'Untimed steps first.'),
      'reference': flags.DEFINE_enum(
          'reference', None, ['torch'],
          'Also time the PyTorch reference network.'),
      'torch_compile': flags.DEFINE_bool(
          'torch_compile', False, 'Also time torch.compile of the reference.'),
      'peak_tflops': flags.DEFINE_float(
          'peak_tflops', None, 'Device peak for MFU (default: a table of '
          'known accelerators; none on CPU).'),
  }


def main(argv: list[str], flag: cli.Flags) -> None:
  del argv
  config = flag['config'].value
  parallel.request_cpu_devices(config.num_devices)

  spec = parallel.spec_of(config)
  batch_size = flag['batch_size'].value or config.batch_size
  macs = sum(r['macs'] for r in models.layer_stats(spec))
  flops_per_image = 6 * macs
  device = jax.devices()[0]
  peak = (flag['peak_tflops'].value or
          hardware.KNOWN_PEAKS.get((device.device_kind, spec.dtype)))
  print(f'{config.mode} mode, {config.num_devices} x {device.device_kind}, '
        f'batch {batch_size}, {spec.input_size}px, {spec.dtype}, '
        f'{flops_per_image / 1e9:.2f} GFLOP per training image, jax '
        f'{jax.__version__}')
  jax_name = f'jax {config.mode}'
  step_fns = {jax_name: steps.resident_train_step(config, batch_size)}
  if flag['reference'].value == 'torch':
    import torch  # pylint: disable=g-import-not-at-top
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    step_fns['torch eager'] = torch_train_step(spec, batch_size, False)
    if flag['torch_compile'].value:
      step_fns['torch compile'] = torch_train_step(spec, batch_size, True)
  times = time_interleaved(step_fns, flag['steps'].value, flag['warmup'].value)
  rates = {name: report(name, t, batch_size, flops_per_image, peak,
                        config.num_devices if name == jax_name else 1)
           for name, t in times.items()}
  ours = rates.pop(jax_name)
  for name, theirs in rates.items():
    print(f'ratio jax/{name.replace(" ", "_")} {ours / theirs:.2f}')
  check = statistics.median(time_interleaved(
      {'stop check': stop_check(config, batch_size)}, STOP_CHECK_ROUNDS,
      flag['warmup'].value)['stop check'])
  print(f'stop_check_ms {check * 1e3:.3f} ({check * ours / batch_size:.3%} '
        'of a step; multi-process runs take it every step)')
  print(f'images_per_sec {ours:.1f}')


if __name__ == '__main__':
  cli.run(main, define_flags)
