"""Convolutions of NHWC inputs and HWIO kernels, two lowerings of one op.

* :func:`conv`: ``lax.conv_general_dilated``, XLA's own convolution.
* :func:`patches_conv`: the same function as one matmul over image patches.
  The input is first cut into ``stride x stride`` blocks stacked on the
  channel axis (space-to-depth), which turns a strided convolution into a
  stride-1 one over ``ceil(k / stride)**2`` block offsets; the patches are
  those offsets' shifted views side by side. Its gradients are XLA's
  gradients of a matmul (the weight gradient is ``patches^T @ grad``), so
  nothing is written by hand.

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
  blocks = -(-k // s)  # kernel extent in blocks; the overhang is zero
  # Rows/columns the blocks need: pad (or crop rows no output reads).
  need_h, need_w = (out_h - 1 + blocks) * s, (out_w - 1 + blocks) * s
  x = lax.pad(x, jnp.zeros((), x.dtype), [
      (0, 0, 0),
      (padding[0][0], need_h - h - padding[0][0], 0),
      (padding[1][0], need_w - w - padding[1][0], 0),
      (0, 0, 0)])
  # Space-to-depth: (n, bi, di, bj, dj, c) -> (n, bi, bj, (di, dj, c)).
  x = x.reshape(n, need_h // s, s, need_w // s, s, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(
      n, need_h // s, need_w // s, s * s * channels)
  patches = jnp.concatenate(
      [x[:, i:i + out_h, j:j + out_w] for i in range(blocks)
       for j in range(blocks)], axis=-1)
  # The kernel in the same (i, j, di, dj, c) order, zero where it overhangs.
  grown = blocks * s
  kernel = jnp.pad(kernel, ((0, grown - k), (0, grown - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(blocks, s, blocks, s, channels, features)
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(-1, features)
  return patches @ kernel
