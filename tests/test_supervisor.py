"""Multi-host failure reports that need no second process: the parent's
reading of its command line (`supervisor`), and what a failed liveness
query says (`multihost.query_failure`)."""

import socket

import pytest

from alexnet_jax import multihost
from alexnet_jax import supervisor


@pytest.mark.parametrize('argv, expected', [
    (['--config=c.py', '--distributed'], True),
    (['--distributed=true'], True), (['-distributed'], True),
    (['--distributed', '--nodistributed'], False),
    (['--nodistributed', '--distributed=1'], True),
    (['--distributed=false'], False), (['--distributed=0'], False),
    (['--config=c.py'], False), (['--distributed_x'], False),
    (['--workdir=--distributed'], False), (['--distributed=maybe'], False)])
def test_wanted_reads_absls_forms_of_the_flag(argv, expected, monkeypatch):
  monkeypatch.delenv('ALEXNET_JAX_PROCESS_INFO', raising=False)
  assert supervisor.wanted(argv) == expected


def test_a_supervised_child_is_not_supervised_again(monkeypatch):
  monkeypatch.setenv('ALEXNET_JAX_PROCESS_INFO', '/tmp/x.json')
  assert not supervisor.wanted(['--distributed'])


@pytest.mark.parametrize('argv, expected', [
    (['--workdir=/a', '--distributed'], '/a'),
    (['--workdir', 'gs://b/r'], 'gs://b/r'), (['--distributed'], None),
    (['--workdir=/a', '--workdir=/b'], '/b')])
def test_the_workdir_for_the_last_line(argv, expected):
  assert supervisor.workdir_in(argv) == expected


def test_the_resume_note_names_the_latest_step(tmp_path):
  assert supervisor.resume_note(None) == 'Run the same command to start again.'
  assert 'the first step (no checkpoint in' in supervisor.resume_note(
      str(tmp_path))
  for name in ('2', '10', '4.damaged-1', 'tmp'):
    (tmp_path / 'checkpoints' / name).mkdir(parents=True)
  assert supervisor.resume_note(str(tmp_path)) == (
      f'Run the same command to resume from {tmp_path}/checkpoints/10.')


def test_a_failed_query_is_process_0_lost_only_when_its_address_is_gone():
  error = RuntimeError('UNAVAILABLE: recvmsg:Connection reset by peer\nmore')
  with socket.create_server(('localhost', 0)) as server:
    address = f'localhost:{server.getsockname()[1]}'
    # Process 0 may still answer for a moment after it was killed: ask again.
    assert multihost.query_failure(error, 2, 1, address) is None
    assert multihost.query_failure(error, 2, 2, address) is None
    assert multihost.query_failure(error, 2, 3, address) == (
        'the coordination service did not answer which processes are live '
        '(RuntimeError: UNAVAILABLE: recvmsg:Connection reset by peer)')
  assert multihost.query_failure(error, 2, 1, address) == (
      f'process 0 of 2 (the coordinator, {address}) was lost')
