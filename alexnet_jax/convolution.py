"""Convolutions of NHWC inputs and HWIO kernels, two lowerings of one op.

* :func:`conv`: ``lax.conv_general_dilated``, XLA's own convolution.
* :func:`patches_conv`: the same function as one matmul over image patches.
  The input is first cut into ``stride x stride`` blocks (space-to-depth),
  which turns a strided convolution into a stride-1 one over
  ``ceil(k / stride)**2`` block offsets; the patches are those offsets'
  shifted views, each cut to the rows and columns of its block that the
  kernel covers and flattened, side by side: exactly ``k * k * channels``
  deep. Its gradients are XLA's gradients of a matmul (the weight
  gradient is ``patches^T @ grad``), so nothing is written by hand.

Why both: XLA:CPU runs AlexNet's convolutions well below its matmul rate,
above all conv1 (3 input channels, 11x11, stride 4) and conv2's backward
pass; as patches every layer of the paper's net trained 1.2x (conv3) to 4x
(conv1) faster on a 2-core CPU (docs/design.md, "Per-backend
implementations"). With few kernels a layer, writing the patches costs
more than it saves. On GPU and TPU the native convolution is the one to
use. ``models/alexnet.py`` chooses per layer width and backend.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Padding = Sequence[tuple[int, int]]


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
         groups: int = 1) -> jax.Array:
  """XLA's convolution; ``padding`` is ``((top, bottom), (left, right))``;
  ``groups`` is ``feature_group_count`` (channels split into that many
  groups, each with its share of the kernels)."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=groups)


def same_padding(kernel_size: int) -> tuple[tuple[int, int], ...]:
  """'SAME' for stride 1 as explicit pairs (XLA's split: the extra pixel of
  an even kernel at the bottom and right)."""
  total = kernel_size - 1
  return ((total // 2, total - total // 2),) * 2


def output_size(size: int, kernel_size: int, stride: int,
                pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel_size) // stride + 1


def patches_conv(x: jax.Array, kernel: jax.Array, stride: int,
                 padding: Padding) -> jax.Array:
  """``conv(x, kernel, stride, padding)`` as one matmul over patches.

  Same values (up to float32 summation order) and gradients as
  :func:`conv`; square kernels only.
  """
  n, h, w, channels = x.shape
  k, _, _, features = kernel.shape
  s = stride
  out_h = output_size(h, k, s, padding[0])
  out_w = output_size(w, k, s, padding[1])
  blocks = -(-k // s)  # kernel extent in blocks
  # Rows/columns the blocks need: pad (or crop rows no output reads).
  need_h, need_w = (out_h - 1 + blocks) * s, (out_w - 1 + blocks) * s
  x = lax.pad(x, jnp.zeros((), x.dtype), [
      (0, 0, 0),
      (padding[0][0], need_h - h - padding[0][0], 0),
      (padding[1][0], need_w - w - padding[1][0], 0),
      (0, 0, 0)])
  # Space-to-depth: (n, bi, di, bj, dj, c) -> (n, bi, bj, di, dj, c).
  x = x.reshape(n, need_h // s, s, need_w // s, s, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  # Block (i, j) holds kernel rows i*s .. i*s+s-1 (columns alike); where
  # the kernel ends inside a block (11 = 4 + 4 + 3 at stride 4) only its
  # first rows are taken, so the matmul is exactly k*k*c deep.
  patches, weights = [], []
  for i in range(blocks):
    rows = min(s, k - i * s)
    for j in range(blocks):
      cols = min(s, k - j * s)
      patch = x[:, i:i + out_h, j:j + out_w, :rows, :cols]
      patches.append(patch.reshape(n, out_h, out_w, -1))
      weights.append(kernel[i * s:i * s + rows, j * s:j * s + cols]
                     .reshape(-1, features))
  return (jnp.concatenate(patches, axis=-1)
          @ jnp.concatenate(weights, axis=0))
