"""Workdir locations, whole-file writes, metrics across a resume, and the
one-run-per-workdir hold, on local disk (tests/test_gcs.py: in a bucket)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from alexnet_jax import logs
from alexnet_jax import storage
from alexnet_jax.tools import report

import experiment_config

REPO = os.path.dirname(experiment_config.CONFIGS)


@pytest.mark.parametrize('path,scheme', [
    ('s3://bucket/run', 's3'), ('hdfs://namenode/run', 'hdfs'),
    ('http://host/run', 'http'), ('gs:/bucket/run', 'gs'),
    ('gcs://bucket/run', 'gcs'), ('file:///tmp/run', 'file')])
def test_unsupported_schemes_are_refused_by_name(path, scheme):
  with pytest.raises(ValueError) as error:
    storage.check_location(path, '--workdir')
  message = str(error.value)
  assert f'"{scheme}:"' in message and 'gs://BUCKET' in message
  assert '\n' not in message


def test_supported_locations(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.check_location('gs://b/run/', 'x') == 'gs://b/run'
  assert storage.check_location('runs/a', 'x') == str(tmp_path / 'runs/a')
  with pytest.raises(ValueError, match='names no bucket'):
    storage.check_location('gs:///run', 'x')


@pytest.mark.slow
def test_main_refuses_s3_in_one_line_and_creates_nothing(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', '--workdir=s3://b/r'],
      cwd=tmp_path, env=experiment_config.subprocess_env(),
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  lines = (result.stdout + result.stderr).strip().splitlines()
  assert lines == [lines[-1]] and 's3' in lines[0], lines
  assert 'gs://' in lines[0] and 'Traceback' not in result.stderr
  assert not list(tmp_path.iterdir())


def test_writes_replace_whole_files(tmp_path):
  path = str(tmp_path / 'a.json')
  storage.write_json(path, {'x': 1})
  storage.write_json(path, {'x': 2})
  assert storage.read_json(path) == {'x': 2}
  assert os.listdir(tmp_path) == ['a.json']  # No temporary left behind.


def _steps(path):
  return [line['step'] for line in logs.read_metrics(path)]


def test_resumed_writer_keeps_each_step_once(tmp_path):
  first = logs.MetricsWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    first.write(step, {'train/loss': 1.0 / step})
  first.write(4, {'eval/top1_error': 0.5})
  first.close()  # As if killed here; the last checkpoint was step 2.
  resumed = logs.MetricsWriter(str(tmp_path), resumed_step=2)
  for step in (3, 4):
    resumed.write(step, {'train/loss': 2.0})
  resumed.close()
  lines = [json.loads(line) for line in
           (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [line['step'] for line in lines] == [1, 2, 3, 4]
  assert [line['train/loss'] for line in lines] == [1.0, 0.5, 2.0, 2.0]


def test_reading_an_old_file_that_repeats_steps(tmp_path):
  """Runs before the rewrite appended the steps after the last checkpoint
  again on resume: the report must keep the later ones, once each."""
  rows = [(1, 'train'), (2, 'train'), (2, 'eval'), (3, 'train'),
          (4, 'train'), (3, 'train'), (4, 'train'), (4, 'eval'),
          (5, 'train')]
  lines = []
  for step, kind in rows:
    if kind == 'train':
      lines.append({'step': step, 'train/loss': 1.0,
                    'perf/step_time': 0.1 * step})
    else:
      lines.append({'step': step, 'eval/top1_error': 0.5})
  (tmp_path / 'metrics.jsonl').write_text(
      ''.join(json.dumps(line) + '\n' for line in lines)
      + '{"step": 6, "train/lo')  # Cut off by a kill mid-append.
  assert _steps(str(tmp_path / 'metrics.jsonl')) == [1, 2, 2, 3, 4, 4, 5]
  (tmp_path / 'config.json').write_text(json.dumps({'mode': 'single'}))
  times = report.load_run(str(tmp_path)).wall_time_at()
  assert list(times) == [1, 2, 3, 4, 5]
  # 0.1 + 0.2 + 0.3 + 0.4 + 0.5 from the kept lines: never backwards.
  assert times[5] == pytest.approx(1.5)


_HOLDER = """
import sys, time
from alexnet_jax import storage
hold = storage.WorkdirHold(sys.argv[1])
hold.acquire()
print('held', flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_live_holder_refuses_and_a_killed_one_does_not(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER, workdir],
                            env=experiment_config.subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(storage.WorkdirHeld) as error:
      storage.WorkdirHold(workdir).acquire()
    message = str(error.value)
    assert f'process id {holder.pid}' in message
    assert socket.gethostname() in message and workdir in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  hold = storage.WorkdirHold(workdir)
  hold.acquire()  # At once: the holder's process is gone.
  assert storage.read_json(os.path.join(workdir, storage.HOLD_FILE))[
      'pid'] == os.getpid()
  hold.release()
  assert not os.path.exists(os.path.join(workdir, storage.HOLD_FILE))


@pytest.mark.parametrize('age,refused', [(10, True), (10_000, False)])
def test_a_holder_on_another_host_expires(tmp_path, age, refused):
  workdir = str(tmp_path)
  storage.write_json(os.path.join(workdir, storage.HOLD_FILE), {
      'host': 'another-host', 'pid': 1, 'started': '2026-12-01T00:00:00',
      'heartbeat': time.time() - age,
      'expires_after_seconds': storage.HOLD_EXPIRES_SECONDS})
  hold = storage.WorkdirHold(workdir)
  if refused:
    with pytest.raises(storage.WorkdirHeld, match='host another-host'):
      hold.acquire()
  else:
    hold.acquire()
    hold.release()


def _main(workdir, config, **popen):
  return subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main',
       f'--config={REPO}/configs/demo.py', f'--workdir={workdir}',
       *experiment_config.overrides(config)],
      env=experiment_config.subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_second_run_on_a_workdir_stops_until_the_first_is_killed(
    tiny_config_factory, tmp_path):
  long_run = tiny_config_factory(num_train_steps=10_000,
                                 eval_every_steps=10_000,
                                 checkpoint_every_steps=10_000)
  first = _main(tmp_path, long_run)
  hold_file = tmp_path / storage.HOLD_FILE
  try:
    start = time.time()
    while not (tmp_path / 'metrics.jsonl').exists():
      assert first.poll() is None, first.communicate()[0]
      assert time.time() - start < 240
      time.sleep(0.1)
    second = _main(tmp_path, tiny_config_factory(num_train_steps=2))
    output, _ = second.communicate(timeout=240)
    assert second.returncode != 0
    last = output.strip().splitlines()[-1]
    assert 'is in use by another run' in last and f'process id {first.pid}' in (
        last), output
    assert 'Traceback' not in output
    assert first.poll() is None  # The first run goes on.
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert hold_file.exists()  # Left by the killed run ...
  third = _main(tmp_path, tiny_config_factory(num_train_steps=2))
  output, _ = third.communicate(timeout=240)
  assert third.returncode == 0, output  # ... which does not block this one.
  assert not hold_file.exists()
