"""The global order: one permutation per epoch from (seed, epoch), global
batches that do not depend on the number of readers, and a data position
that every process shares."""

import os
import shutil

import numpy as np
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import train
from alexnet_jax.data import iterators
from alexnet_jax.data import prepare
from alexnet_jax.data import sources
from alexnet_jax.data import synthetic

from data_config import small_data_config


def _window_blocks(blocks: np.ndarray, first: int, count: int) -> list:
  """The first `count` distinct blocks met from position `first` on."""
  seen = []
  for block in blocks[first:]:
    if block not in seen:
      seen.append(block)
  return seen[:count]


def test_epoch_order_is_a_shuffle_of_windows_of_whole_blocks():
  sizes = np.array([5] * 9 + [3])
  starts = np.cumsum(sizes) - sizes
  order = sources.GlobalOrder(sizes, 4)
  epochs = [order.epoch(0, e) for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(48))
    blocks = np.searchsorted(starts, epoch, side='right') - 1
    first = 0
    for count in (4, 4, 2):  # Windows of 4 blocks, the last of 2.
      window = _window_blocks(blocks, first, count)
      size = int(sizes[window].sum())
      held = sorted(epoch[first:first + size])
      assert held == sorted(i for b in window
                            for i in range(starts[b], starts[b] + sizes[b]))
      first += size
    assert first == 48
  assert order.epoch(0, 1).tolist() == epochs[1].tolist()
  assert epochs[0].tolist() != epochs[1].tolist()
  assert order.epoch(1, 0).tolist() != epochs[0].tolist()
  # A folder is one block: a full shuffle, the same for any reader.
  assert sorted(sources.GlobalOrder(np.array([48]), 1).epoch(0, 0)) == list(
      range(48))


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
  """12 synthetic images as a folder with one undecodable file, and
  prepared in shards of 2 (windows of 4 shards)."""
  base = small_data_config('synthetic', **{
      'synthetic.num_classes': 3, 'synthetic.train_per_class': 4,
      'synthetic.val_per_class': 2,
      'synthetic.cache_dir': str(tmp_path_factory.mktemp('synthetic'))})
  root = tmp_path_factory.mktemp('folder')
  shutil.copytree(synthetic.generate_from_config(base), root,
                  dirs_exist_ok=True)
  first_class = min(os.listdir(root / 'train'))
  (root / 'train' / first_class / 'broken.png').write_bytes(b'not an image')
  prepared = tmp_path_factory.mktemp('prepared')
  prepare.prepare(base, str(prepared), examples_per_shard=2, workers=1)
  return {'folder': f'folder:{root}', 'prepared': f'prepared:{prepared}'}


def _global_batches(config, processes: int, count: int, state=None):
  """`count` global batches read by `processes` readers (their rows put
  together), and the readers' states after them."""
  readers = [iterators.create_train_iterator(config, process_index=p,
                                             process_count=processes)
             for p in range(processes)]
  if state is not None:
    for reader in readers:
      reader.set_state(dict(state))
  batches = []
  for _ in range(count):
    rows = [next(reader) for reader in readers]
    batches.append({k: np.concatenate([r[k] for r in rows])
                    for k in rows[0]})
  return batches, [reader.get_state() for reader in readers]


@pytest.mark.parametrize('source', ['folder', 'prepared'])
def test_global_batches_and_positions_do_not_depend_on_the_readers(
    datasets, source):
  config = small_data_config(datasets[source], batch_size=4)
  one, _ = _global_batches(config, 1, 8)  # 2-3 epochs, augmented.
  for processes, then in ((2, 4), (4, 1)):
    batches, states = _global_batches(config, processes, 3)
    for got, want in zip(batches, one):
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert len({(s['epoch'], s['next_index']) for s in states}) == 1
    # Any other number of readers continues from that position.
    resumed, _ = _global_batches(config, then, 5, states[0])
    for got, want in zip(resumed, one[3:]):
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_undecodable_file_counts_once_over_readers_and_epochs(datasets):
  config = small_data_config(datasets['folder'], batch_size=4)
  for processes in (1, 2):
    readers = [iterators.create_train_iterator(config, process_index=p,
                                               process_count=processes)
               for p in range(processes)]
    for _ in range(10):  # 40 examples: three epochs of 13.
      for reader in readers:
        next(reader)
    assert readers[0].get_state()['epoch'] == 3
    assert sum(r.num_skipped for r in readers) == 1


def _iterator(dataset, **overrides):
  return iterators.create_train_iterator(
      small_data_config(dataset, batch_size=4, **overrides))


def _saved(iterator, config, **changes):
  position = dict(iterator.get_state(), order=train.GLOBAL_ORDER,
                  batch_size=config.batch_size,
                  num_examples=iterator.epoch_size, seed=config.seed,
                  dataset=config.dataset)
  return [dict(position, **changes)]


def test_resume_continues_the_global_position(datasets):
  config = small_data_config(datasets['folder'], batch_size=4)
  saved = _iterator(datasets['folder'])
  for _ in range(4):
    next(saved)
  fresh = _iterator(datasets['folder'])
  train._restore_data_position(config, fresh, _saved(saved, config), True)
  assert fresh.get_state() == saved.get_state()
  np.testing.assert_array_equal(next(fresh)['image'], next(saved)['image'])
  assert checkpoint._is_progress({'data': _saved(saved, config), 'lr_policy': {
      'drops': 0, 'best_error': 1.0, 'evals_without_progress': 0}})


@pytest.mark.parametrize('change,named', [
    ({'batch_size': 8}, 'global batch 8 -> 4'),
    ({'num_examples': 12}, 'training examples 12 -> 13'),
    ({'seed': 3}, 'seed 3 -> 0'),
    ({'dataset': 'synthetic'}, 'dataset synthetic -> folder:'),
])
def test_resume_that_cannot_be_exact_stops_in_one_line(datasets, change,
                                                       named):
  config = small_data_config(datasets['folder'], batch_size=4)
  saved = _iterator(datasets['folder'])
  for _ in range(4):
    next(saved)  # Epoch 1, position 3.
  position = _saved(saved, config, **change)
  with pytest.raises(ValueError) as error:
    train._restore_data_position(config, _iterator(datasets['folder']),
                                 position, True)
  message = str(error.value)
  assert named in message and '\n' not in message
  assert '--config.accept_data_change=true to restart epoch 1' in message

  config.accept_data_change = True
  accepted = _iterator(datasets['folder'])
  train._restore_data_position(config, accepted, position, True)
  assert accepted.get_state() == {'epoch': 1, 'next_index': 0,
                                  'num_skipped': 0}


def test_older_per_process_positions_restart_their_epoch(datasets, capsys):
  config = small_data_config(datasets['prepared'], batch_size=4)
  resumed = _iterator(datasets['prepared'])
  legacy = [{'epoch': 2, 'next_index': 3, 'num_skipped': 0}] * 2
  train._restore_data_position(config, resumed, legacy, True)
  assert resumed.get_state() == {'epoch': 2, 'next_index': 0,
                                 'num_skipped': 0}
  out = capsys.readouterr()
  assert '2 per-process data positions of an older version' in (
      out.out + out.err)
  assert 'restarts epoch 2' in out.out + out.err
  assert not checkpoint._is_progress({'data': legacy + _saved(
      resumed, config), 'lr_policy': {'drops': 0, 'best_error': 1.0,
                                      'evals_without_progress': 0}})
