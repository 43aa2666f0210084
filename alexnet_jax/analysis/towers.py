"""What each tower's conv1 kernels look like and how much colour they see.

The paper (section 6.1, Figure 3) observed that the 48 conv1 kernels of one
GPU come out largely colour-agnostic and the other GPU's largely
colour-specific. This module measures that and lays the kernels out as an
image, with NumPy only, so that training can log both at every evaluation.

Kernels are first put in the RGB pixel space of the images (`rgb_kernels`):
a checkpoint fed BGR inputs has its channels reversed, and one whose inputs
were divided by a per-channel std has each channel's weights divided by it,
so that a kernel's response to an image is its dot product with the image's
RGB pixels.

Colour specificity of a kernel w [h, w, 3]: its grey part g repeats, at each
pixel, the mean of w's three channel weights; its colour part c = w - g sums
to zero over the channels at each pixel, so it does not respond to any grey
image, and g does not respond to any pattern of equal-intensity colours. g
and c are orthogonal, so ||w||^2 = ||g||^2 + ||c||^2, and the kernel's score
is ||c||^2 / ||w||^2: 0 for a grey kernel, 1 for one blind to grey, 2/3 in
expectation for i.i.d. random weights (the initialisation). A tower's score
is the mean over its kernels.
"""

import math
from typing import Any, Mapping

from jax.experimental import multihost_utils
import numpy as np

from alexnet_jax import logs

_BORDER = 1  # Pixels between kernels within a tower's block.
_TOWER_GAP = 4  # Pixels between towers' blocks.
_BACKGROUND = 1.0  # White, apart from the mid-grey of a zero weight.


def rgb_kernels(kernel: Any, conventions: Mapping[str, Any]) -> np.ndarray:
  """conv1 kernels [towers, kernels, h, w, 3] acting on RGB pixels.

  Args:
    kernel: conv1's kernel as stored, [towers, h, w, 3, kernels].
    conventions: the checkpoint's input conventions (`meta['input']`):
      `channel_order` ('RGB' or 'BGR') and `std_rgb` (None or 3 values).
  """
  k = np.moveaxis(np.asarray(kernel, np.float64), -1, 1)
  if k.ndim != 5 or k.shape[-1] != 3:
    raise ValueError(f'conv1 kernel of shape {np.shape(kernel)}: expected '
                     '[towers, h, w, 3, kernels]')
  if conventions.get('channel_order', 'RGB') == 'BGR':
    k = k[..., ::-1]
  std = conventions.get('std_rgb')
  if std is not None:
    k = k / np.asarray(std, np.float64)
  return k


def color_specificity(kernels: np.ndarray) -> np.ndarray:
  """Per tower, the mean share of a kernel's energy outside its grey part.

  Args:
    kernels: [towers, kernels, h, w, 3] RGB kernels (`rgb_kernels`).

  Returns:
    [towers] scores in [0, 1]. Kernels whose weights are all zero carry no
    colour information either way and are left out of their tower's mean.
  """
  grey = kernels.mean(axis=-1, keepdims=True)
  energy = np.square(kernels).sum(axis=(2, 3, 4))
  colour = np.square(kernels - grey).sum(axis=(2, 3, 4))
  scores = []
  for t, (e, c) in enumerate(zip(energy, colour)):
    live = e > 0
    if not live.any():
      raise ValueError(f'conv1 tower {t}: every kernel is zero')
    scores.append(float(np.mean(c[live] / e[live])))
  return np.array(scores)


def display_kernel(kernel: np.ndarray) -> np.ndarray:
  """One kernel [h, w, 3] scaled to [0, 1]: 0.5 + 0.5 * w / max|w|.

  One scale for all three channels and zero at mid-grey, so a grey kernel
  stays grey, colours keep their balance and signs stay visible.
  """
  peak = np.abs(kernel).max()
  return 0.5 + 0.5 * (kernel / peak if peak > 0 else kernel)


def block_shape(num_kernels: int) -> tuple[int, int]:
  """(rows, columns) of a tower's block, about four times wider than tall."""
  rows = max(1, math.ceil(math.sqrt(num_kernels / 4)))
  return rows, math.ceil(num_kernels / rows)


def tower_block(kernels: np.ndarray) -> np.ndarray:
  """One tower's kernels [k, h, w, 3] as a grid image [H, W, 3] in [0, 1].

  Kernels fill the rows left to right in index order, each scaled by
  `display_kernel`, with a white border between them.
  """
  num, h, w, _ = kernels.shape
  rows, cols = block_shape(num)
  pitch_h, pitch_w = h + _BORDER, w + _BORDER
  block = np.full((rows * pitch_h + _BORDER, cols * pitch_w + _BORDER, 3),
                  _BACKGROUND)
  for i, kernel in enumerate(kernels):
    r, c = divmod(i, cols)
    y, x = _BORDER + r * pitch_h, _BORDER + c * pitch_w
    block[y:y + h, x:x + w] = display_kernel(kernel)
  return block


def conv1_grid(kernels: np.ndarray, zoom: int = 1) -> np.ndarray:
  """Every tower's block, tower 0 on top (the paper's Figure 3), as uint8.

  Args:
    kernels: [towers, kernels, h, w, 3] RGB kernels (`rgb_kernels`).
    zoom: each weight becomes a zoom x zoom square of pixels.

  Returns:
    [H, W, 3] uint8, the blocks separated by a band of white.
  """
  blocks = [tower_block(k) for k in kernels]
  gap = np.full((_TOWER_GAP, blocks[0].shape[1], 3), _BACKGROUND)
  parts = [blocks[0]]
  for block in blocks[1:]:
    parts += [gap, block]
  grid = np.concatenate(parts)
  grid = np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)
  return np.round(grid * 255).astype(np.uint8)


def log_conv1(writer: Any, step: int, params: Any,
              conventions: Mapping[str, Any]) -> np.ndarray:
  """Writes conv1's grid and per-tower scores to `writer` at `step`.

  Every process must call this (the kernel may be spread over processes);
  only the writer of process 0 writes. Returns the per-tower scores.
  """
  kernel = multihost_utils.process_allgather(params['conv1']['kernel'],
                                             tiled=True)
  kernels = rgb_kernels(kernel, conventions)
  scores = color_specificity(kernels)
  writer.write(step, {f'towers/color_specificity_{t}': float(s)
                      for t, s in enumerate(scores)})
  writer.image(step, 'towers/conv1_kernels', conv1_grid(kernels, zoom=3))
  return scores


def conv1_hook(writer: logs.MetricsWriter, step: int, params: Any,
               config: Any) -> None:
  """The trainer's evaluation hook: conv1's kernels and colour specificity
  in TensorBoard, the scores on the console."""
  scores = log_conv1(writer, step, params, config.input)
  logs.console('color_specificity ' + ' '.join(f'{s:.4f}' for s in scores))
