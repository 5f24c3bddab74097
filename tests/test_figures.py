"""The conv1 kernel grid (the paper's Figure 3) and the learning curves."""

import numpy as np
import pytest

from alexnet_jax import figures


def test_each_tower_fills_its_own_block_of_rows():
  towers, k, n = 2, 3, 5
  kernel = np.zeros((towers, k, k, 3, n))
  # Kernel (t, i): a ramp from 0 to 1 across its width in channel t.
  kernel[1, :, :, 1, 3] = np.linspace(0, 1, k)[None, :]
  grid = figures.kernel_grid(kernel, per_row=2)
  cell = k + 1
  assert grid.shape == (towers * 3 * cell, 2 * cell, 3)  # 3 rows a tower
  # Tower 1's kernel 3: block row 3 + 3 // 2 = 4, column 1, green ramp.
  patch = grid[4 * cell:4 * cell + k, cell:cell + k]
  np.testing.assert_allclose(patch[..., 1], np.tile(np.linspace(0, 1, k),
                                                    (k, 1)))
  np.testing.assert_allclose(patch[..., 0], 0)
  # A flat kernel stays finite; the borders and unused cells are white.
  assert np.isfinite(grid).all()
  np.testing.assert_allclose(grid[k, :], 1)
  np.testing.assert_allclose(grid[2 * cell:3 * cell, cell:], 1)


def test_kernels_need_rgb_input():
  with pytest.raises(ValueError, match='3 input channels'):
    figures.kernel_grid(np.zeros((2, 11, 11, 48, 4)))


def test_pngs_are_written(tmp_path):
  figures.save_kernels(np.random.default_rng(0).normal(size=(2, 11, 11, 3, 8)),
                       str(tmp_path / 'k.png'))
  history = [{'epoch': e, 'train_loss': 2.0 / e, 'top1_error': 0.5 / e,
              'learning_rate': 0.01} for e in (1, 2, 3)]
  figures.save_learning_curves(history, str(tmp_path / 'c.png'))
  for name in ('k.png', 'c.png'):
    assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG'
