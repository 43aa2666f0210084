"""Every GCS client the project uses reaches the emulator through `gcs.env`.

Each client's writes are read back by another client (google-cloud-storage
talks to the emulator directly, TensorFlow through the TLS proxy), so a
client that silently wrote elsewhere, or a proxy that mangled bytes, fails.
"""

import os
import subprocess
import sys

from etils import epath
from flax.metrics import tensorboard
from google.api_core import exceptions
from google.cloud import storage
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow  # Starts the emulator.


def _blobs(gcs, prefix: str) -> dict[str, bytes]:
  """Object name -> content under `prefix`, read by google-cloud-storage."""
  client = storage.Client()
  return {blob.name: blob.download_as_bytes()
          for blob in client.list_blobs(gcs.bucket, prefix=prefix)}


def test_tf_gfile_round_trip_as_google_cloud_storage_sees_it(gcs):
  big = np.random.default_rng(0).bytes(3 << 20)
  tf.io.gfile.makedirs(gcs.url('gfile/dir'))
  with tf.io.gfile.GFile(gcs.url('gfile/dir/a.txt'), 'w') as f:
    f.write('alpha')
  with tf.io.gfile.GFile(gcs.url('gfile/dir/a.txt'), 'a') as f:
    f.write('+more')
  with tf.io.gfile.GFile(gcs.url('gfile/dir/big.bin'), 'wb') as f:
    f.write(big)
  tf.io.gfile.rename(gcs.url('gfile/dir/big.bin'), gcs.url('gfile/big.bin'))

  stored = _blobs(gcs, 'gfile/')
  assert stored['gfile/dir/a.txt'] == b'alpha+more'
  assert stored['gfile/big.bin'] == big
  assert 'gfile/dir/big.bin' not in stored
  with tf.io.gfile.GFile(gcs.url('gfile/big.bin'), 'rb') as f:
    assert f.read() == big
  assert tf.io.gfile.exists(gcs.url('gfile/dir/a.txt'))
  assert not tf.io.gfile.exists(gcs.url('gfile/dir/big.bin'))
  assert sorted(tf.io.gfile.listdir(gcs.url('gfile'))) == ['big.bin', 'dir/']
  assert tf.io.gfile.glob(gcs.url('gfile/*/*.txt')) == [
      gcs.url('gfile/dir/a.txt')]

  tf.io.gfile.rmtree(gcs.url('gfile'))
  assert not _blobs(gcs, 'gfile/')
  assert not tf.io.gfile.exists(gcs.url('gfile/big.bin'))


def test_tf_data_and_epath_read_what_other_clients_wrote(gcs):
  records = [b'first', b'', np.random.default_rng(1).bytes(100_000)]
  with tf.io.TFRecordWriter(gcs.url('cross/data.tfrecord')) as writer:
    for record in records:
      writer.write(record)
  # The TFRecord framing read back by a non-TensorFlow client: length-prefixed.
  raw = _blobs(gcs, 'cross/data.tfrecord')['cross/data.tfrecord']
  assert int.from_bytes(raw[:8], 'little') == len(records[0])
  assert len(raw) == sum(len(r) + 16 for r in records)

  storage.Client().bucket(gcs.bucket).blob('cross/from_storage.txt') \
      .upload_from_string(b'written by google-cloud-storage')
  read = [r.numpy() for r in tf.data.TFRecordDataset(
      gcs.url('cross/data.tfrecord'))]
  assert read == records

  path = epath.Path(gcs.url('cross/epath.txt'))
  path.write_text('written by epath')
  assert path.read_text() == 'written by epath'
  assert epath.Path(gcs.url('cross/from_storage.txt')).read_bytes() == (
      b'written by google-cloud-storage')
  assert _blobs(gcs, 'cross/epath.txt') == {
      'cross/epath.txt': b'written by epath'}


def test_flax_summary_writer_events_reach_the_bucket(gcs):
  writer = tensorboard.SummaryWriter(gcs.url('tb'))
  writer.scalar('loss', 1.5, step=3)
  writer.flush()
  writer.close()

  events = tf.io.gfile.glob(gcs.url('tb/events.out.tfevents.*'))
  assert len(events) == 1
  scalars = [(event.step, value.tag, tf.make_ndarray(value.tensor))
             for record in tf.data.TFRecordDataset(events)
             for event in [tf.compat.v1.Event.FromString(record.numpy())]
             for value in event.summary.value]
  assert scalars == [(3, 'loss', np.float32(1.5))]
  assert events[0].removeprefix(gcs.url()) in _blobs(gcs, 'tb/')


def test_orbax_checkpoint_manager_saves_and_restores(gcs):
  tree = {'w': np.arange(12, dtype=np.float32).reshape(3, 4),
          'b': np.array([-2.0], np.float32)}
  mngr = ocp.CheckpointManager(
      gcs.url('ckpt'), options=ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True))
  for step in (1, 2):
    mngr.save(step, args=ocp.args.StandardSave(
        {'w': tree['w'] * step, 'b': tree['b']}))
  mngr.wait_until_finished()
  mngr.close()

  assert any(name.startswith('ckpt/2/') for name in _blobs(gcs, 'ckpt/'))
  assert not any(name.startswith('ckpt/1/') for name in _blobs(gcs, 'ckpt/'))
  mngr = ocp.CheckpointManager(gcs.url('ckpt'))
  assert mngr.latest_step() == 2
  restored = mngr.restore(2, args=ocp.args.StandardRestore(tree))
  mngr.close()
  np.testing.assert_array_equal(restored['w'], tree['w'] * 2)
  np.testing.assert_array_equal(restored['b'], tree['b'])


def test_generation_preconditions_refuse_stale_writers(gcs):
  bucket = storage.Client().bucket(gcs.bucket)
  lock = bucket.blob('preconditions/lock')
  lock.upload_from_string(b'first', if_generation_match=0)
  with pytest.raises(exceptions.PreconditionFailed):
    bucket.blob('preconditions/lock').upload_from_string(
        b'second', if_generation_match=0)
  generation = bucket.get_blob('preconditions/lock').generation
  assert generation == lock.generation

  bucket.blob('preconditions/lock').upload_from_string(
      b'swapped', if_generation_match=generation)
  with pytest.raises(exceptions.PreconditionFailed):
    bucket.blob('preconditions/lock').upload_from_string(
        b'stale', if_generation_match=generation)
  current = bucket.get_blob('preconditions/lock')
  assert current.download_as_bytes() == b'swapped'
  # fake-gcs-server checks generations on multipart uploads (the client's
  # choice up to 8 MB) only: a delete, a patch, a resumable or a simple media
  # upload with a stale generation goes through. So only a delete at the
  # current generation is checked here.
  current.delete(if_generation_match=current.generation)
  assert bucket.get_blob('preconditions/lock') is None


def test_a_child_process_reaches_the_emulator_through_env_alone(gcs):
  storage.Client().bucket(gcs.bucket).blob('child/in.txt').upload_from_string(
      b'from the parent')
  script = ('import sys, tensorflow as tf; p = sys.argv[1];'
            'data = tf.io.gfile.GFile(p + "in.txt", "rb").read();'
            'tf.io.gfile.GFile(p + "out.txt", "wb").write(data + b" and back")')
  env = {**os.environ, **gcs.env}
  subprocess.run([sys.executable, '-c', script, gcs.url('child/')], env=env,
                 check=True, capture_output=True, timeout=120)
  assert _blobs(gcs, 'child/out.txt') == {
      'child/out.txt': b'from the parent and back'}
