"""Figures a run writes into its workdir (PNG, matplotlib's Agg backend).

* ``conv1_kernels.png``: the paper's Figure 3, the learned conv1 kernels,
  one block of rows per tower (the paper's GPU 1 above GPU 2), each kernel
  scaled to the full colour range on its own.
* ``learning_curves.png``: train loss, validation top-1 error and learning
  rate against the epoch, from ``metrics.jsonl``.

And the paper's Figure 4 for experiments/trained_model.ipynb: test images
with their top-5 predictions, and images with their nearest neighbours.
"""

from __future__ import annotations

import math

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from alexnet_jax import input_pipeline
from alexnet_jax import storage

KERNELS_PER_ROW = 16
PAPER = input_pipeline.PAPER_PIXELS


def kernel_grid(kernel: np.ndarray, per_row: int = KERNELS_PER_ROW
                ) -> np.ndarray:
  """An RGB image ``[rows * (k + 1), per_row * (k + 1), 3]`` in [0, 1] of a
  conv1 kernel ``[towers, k, k, 3, n]``: tower ``t``'s kernels fill rows
  ``t * ceil(n / per_row)`` onward, a one-pixel white border around each."""
  towers, k, _, channels, n = kernel.shape
  if channels != 3:
    raise ValueError(f'conv1 kernels have 3 input channels, got shape '
                     f'{kernel.shape}.')
  rows_per_tower = math.ceil(n / per_row)
  cell = k + 1
  grid = np.ones((towers * rows_per_tower * cell, per_row * cell, 3))
  for t in range(towers):
    for i in range(n):
      w = kernel[t, :, :, :, i]
      w = (w - w.min()) / max(w.max() - w.min(), 1e-12)
      row, col = t * rows_per_tower + i // per_row, i % per_row
      grid[row * cell:row * cell + k, col * cell:col * cell + k] = w
  return grid


def save_kernels(kernel: np.ndarray, path: str) -> None:
  grid = kernel_grid(np.asarray(kernel, np.float32))
  fig, ax = plt.subplots(figsize=(grid.shape[1] / 20, grid.shape[0] / 20),
                         dpi=100)
  ax.imshow(grid, interpolation='nearest')
  ax.set_axis_off()
  ax.set_title('conv1 kernels, one block per tower')
  save(fig, path, bbox_inches='tight')


def save_learning_curves(history: list[dict], path: str) -> None:
  """``history``: ``metrics.jsonl``'s records (epoch, train_loss,
  top1_error, learning_rate)."""
  epochs = [h['epoch'] for h in history]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  panels = (('train_loss', 'train loss', 'linear'),
            ('top1_error', 'validation top-1 error', 'linear'),
            ('learning_rate', 'learning rate', 'log'))
  for ax, (key, label, scale) in zip(axes, panels):
    ax.plot(epochs, [h[key] for h in history], marker='.')
    ax.set_xlabel('epoch')
    ax.set_title(label)
    ax.set_yscale(scale)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  save(fig, path)


def save(fig, path: str, **kwargs) -> None:
  """A PNG at ``path`` (a local path or a URL), then the figure closed."""
  with storage.open_binary(path, 'wb') as f:
    fig.savefig(f, format='png', **kwargs)
  plt.close(fig)


def displayable(images: np.ndarray, pixels: input_pipeline.Pixels = PAPER
                ) -> np.ndarray:
  """Network inputs (of the ``pixels`` convention) back to RGB in [0, 1]."""
  return np.clip(pixels.invert(images) / 255, 0, 1)


def plot_predictions(images: np.ndarray, labels: list[str],
                     top: list[list[tuple[str, float]]],
                     pixels: input_pipeline.Pixels = PAPER):
  """Figure 4, left: each image over a bar chart of its top-5 classes; the
  true label is the title, its bar red when it is among the five."""
  fig, axes = plt.subplots(2, len(images), squeeze=False,
                           figsize=(2.2 * len(images), 4.4),
                           gridspec_kw={'height_ratios': [3, 2]})
  for i, (image, label, classes) in enumerate(zip(images, labels, top)):
    axes[0, i].imshow(displayable(image, pixels))
    axes[0, i].set_title(label, fontsize=9)
    axes[0, i].set_axis_off()
    names, probs = zip(*classes)
    colours = ['tab:red' if n == label else 'tab:blue' for n in names]
    axes[1, i].barh(range(len(names))[::-1], probs, color=colours)
    axes[1, i].set_yticks(range(len(names))[::-1], names, fontsize=8)
    axes[1, i].set_xlim(0, 1)
  fig.tight_layout()
  return fig


def plot_neighbours(queries: np.ndarray, neighbours: np.ndarray,
                    pixels: input_pipeline.Pixels = PAPER):
  """Figure 4, right: each query image (first column) and its nearest
  training images ``neighbours[query, k]`` by the model's features."""
  rows, k = neighbours.shape[:2]
  fig, axes = plt.subplots(rows, k + 1, squeeze=False,
                           figsize=(1.3 * (k + 1), 1.3 * rows))
  for row, query, images in zip(axes, queries, neighbours):
    for ax, image in zip(row, [query, *images]):
      ax.imshow(displayable(image, pixels))
      ax.set_axis_off()
  axes[0, 0].set_title('query', fontsize=9)
  fig.tight_layout()
  return fig
