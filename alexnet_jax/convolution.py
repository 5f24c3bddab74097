"""Convolutions of NHWC inputs and HWIO kernels, three lowerings of one op.

* :func:`conv`: ``lax.conv_general_dilated``, XLA's own convolution.
* :func:`patches_conv`: the same function as one matmul over image patches.
  The input is first cut into ``stride x stride`` blocks (space-to-depth),
  which turns a strided convolution into a stride-1 one over
  ``ceil(k / stride)**2`` block offsets; the patches are those offsets'
  shifted views, each cut to the rows and columns of its block that the
  kernel covers and flattened, side by side: exactly ``k * k * channels``
  deep. Its gradients are XLA's gradients of a matmul (the weight
  gradient is ``patches^T @ grad``), so nothing is written by hand.
* :func:`winograd_conv`: the same function by Winograd's minimal
  filtering (Lavin and Gray, "Fast Algorithms for Convolutional Neural
  Networks", 2016): each ``tile x tile`` block of outputs of a stride-1
  convolution is computed from a ``(tile + k - 1)``-square block of inputs
  with ``(tile + k - 1)**2`` multiplications per channel pair instead of
  ``tile**2 * k**2``, as that many matmuls over all blocks. A strided
  convolution is first made a stride-1 one over space-to-depth blocks (the
  kernel zero-padded to whole blocks). The transforms are fixed linear
  maps, so autodiff gives both gradients, themselves Winograd products;
  only the transforms' transposes are written out (``_block_transform``,
  ``_output_transform``), so that XLA:CPU runs them in stages.

Why several: XLA:CPU runs AlexNet's convolutions well below its matmul rate,
above all conv1 (3 input channels, 11x11, stride 4) and conv2's backward
pass; as patches every layer of the paper's net trained 1.2x (conv3) to 4x
(conv1) faster on a 2-core CPU (docs/design.md, "Per-backend
implementations"). With few kernels a layer, writing the patches costs
more than it saves. On GPU and TPU the native convolution is the one to
use. Winograd then cuts the multiplications of the stride-1 layers
(conv2-conv5, 13x13 and 27x27 maps) by 1.9x (3x3 kernels, 2x2 tiles) and
5.8x (5x5, 4x4 tiles), and conv1's, as a 3x3 convolution over 4x4 blocks
of pixels with 5x5 tiles, by 3.9x, which more than pays for its
transforms on the CPU (docs/design.md, "Winograd for conv2-conv5" and
"Winograd for conv1, over blocks").
``models/alexnet.py`` chooses per layer width and backend.
"""

from __future__ import annotations

import fractions
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
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


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def output_size(size: int, kernel_size: int, stride: int,
                pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel_size) // stride + 1


def _pad_to(x: jax.Array, padding: Padding, height: int, width: int
            ) -> jax.Array:
  """``padding``'s top and left, then zeros (or a crop, where negative) to
  ``height x width``, on axes 1 and 2 (NHWC, or blocks of pixels)."""
  h, w = x.shape[1:3]
  return lax.pad(x, jnp.zeros((), x.dtype), [
      (0, 0, 0),
      (padding[0][0], height - h - padding[0][0], 0),
      (padding[1][0], width - w - padding[1][0], 0)]
      + [(0, 0, 0)] * (x.ndim - 3))


def _space_to_depth(x: jax.Array, padding: Padding, stride: int,
                    rows: int, cols: int) -> jax.Array:
  """``x`` with ``padding``'s top and left, cut into ``stride x stride``
  blocks and padded with zeros (or cropped) to ``rows x cols`` of them:
  ``(n, block_row, block_col, row, col, c)``.

  A stride-``s`` convolution with a ``blocks * s`` kernel reads blocks
  ``i .. i + blocks - 1`` (rows) for output ``i``: a stride-1 convolution
  over blocks. The pixels are padded only to whole blocks (nothing for
  conv1's 224 rows), the rest as whole blocks after the cut: so the input
  is padded once, straight to what the caller reads (Winograd's tiles:
  60 blocks for conv1's 57), not padded, cut and padded again.
  """
  n, h, w, channels = x.shape
  s = stride
  (top, _), (left, _) = padding
  # Python's floor division: a negative padding crops whole blocks too.
  x = _pad_to(x, ((top % s, 0), (left % s, 0)),
              _cdiv(h + top % s, s) * s, _cdiv(w + left % s, s) * s)
  x = x.reshape(n, x.shape[1] // s, s, x.shape[2] // s, s, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return _pad_to(x, ((top // s, 0), (left // s, 0)), rows, cols)


def patches_conv(x: jax.Array, kernel: jax.Array, stride: int,
                 padding: Padding) -> jax.Array:
  """``conv(x, kernel, stride, padding)`` as one matmul over patches.

  Same values (up to float32 summation order) and gradients as
  :func:`conv`; square kernels only.
  """
  n, h, w, _ = x.shape
  k, _, _, features = kernel.shape
  s = stride
  out_h = output_size(h, k, s, padding[0])
  out_w = output_size(w, k, s, padding[1])
  blocks = _cdiv(k, s)  # kernel extent in blocks
  x = _space_to_depth(x, padding, s, out_h - 1 + blocks, out_w - 1 + blocks)
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


def _over_blocks(x: jax.Array, kernel: jax.Array, stride: int,
                 padding: Padding, rows: int, cols: int
                 ) -> tuple[jax.Array, jax.Array]:
  """A strided convolution as a stride-1 one over ``stride x stride``
  blocks (``rows x cols`` of them): each block's pixels become channels,
  and the kernel, zero-padded to whole blocks, is cut alike."""
  k, _, channels, features = kernel.shape
  blocks = _cdiv(k, stride)
  x = _space_to_depth(x, padding, stride, rows, cols)
  x = x.reshape(x.shape[:3] + (-1,))
  kernel = jnp.pad(kernel, [(0, blocks * stride - k)] * 2 + [(0, 0)] * 2)
  kernel = kernel.reshape(blocks, stride, blocks, stride, channels, features)
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5)
  return x, kernel.reshape(blocks, blocks, -1, features)


# Winograd's output tile per (kernel size, stride), measured on the 2-core
# CPU (forward and backward, the paper's shapes): larger tiles need fewer
# multiplications but more transform work and lose float32 digits. 3x3:
# tiles of 2, 3 and 4 ran within 5% of each other, and 2 keeps the plain
# convolution's error (2e-6 relative; 4: 1e-5). 5x5: 2 took twice as long
# as 3, and 4 was 8% faster than 3 at the same error (6e-6). 11x11 at
# stride 4 (conv1; 3x3 over 4x4 blocks): 5, whose 11 tiles cover the 55x55
# map exactly, took 95 ms, 2 122 and 4 109 (8e-6 relative); on
# configs/default.py's 23x23 map 4 took 15.2 ms and 5 17.1, both ahead of
# XLA's convolution (35.3): one tile per (kernel, stride) keeps it simple.
# (docs/design.md, "Winograd for conv1, over blocks".)
WINOGRAD_TILES = {(3, 1): 2, (5, 1): 4, (11, 4): 5}
# Interpolation points, in the order Lavin and Gray take them; the point
# at infinity comes last in every matrix.
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0)


@functools.lru_cache(maxsize=None)
def winograd_matrices(tile: int, kernel_size: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(A^T, G, B^T)`` of the 1-D minimal filter F(tile, kernel_size).

  For inputs ``d`` (``n = tile + kernel_size - 1`` of them) and a kernel
  ``g``, ``A^T @ ((G @ g) * (B^T @ d))`` is the correlation
  ``y[i] = sum_k d[i + k] g[k]`` (Lavin and Gray's eq. 5 and 6). Built by
  Cook-Toom: the correlation is the transpose of a polynomial product,
  which is evaluated at ``n - 1`` points and infinity and interpolated back.
  Each row of ``G`` is divided by its point's Lagrange denominator and
  ``B^T``'s multiplied by it, so ``B^T`` (applied to every input block) has
  small integer entries for small tiles, as in the paper.
  """
  n = tile + kernel_size - 1
  if n - 1 > len(_POINTS):
    raise ValueError(f'Winograd tile {tile} with kernel {kernel_size} needs '
                     f'{n - 1} points; at most {len(_POINTS)} are defined.')
  points = np.array(_POINTS[:n - 1])

  def evaluate(degree):  # (n, degree): the polynomial's value at each point
    v = np.zeros((n, degree))
    v[:-1] = points[:, None] ** np.arange(degree)
    v[-1, -1] = 1.0  # at infinity: the leading coefficient
    return v

  scale = np.ones(n)
  for j, p in enumerate(points):
    scale[j] = np.prod([p - q for q in np.delete(points, j)])
  at = evaluate(tile).T
  g = evaluate(kernel_size) / scale[:, None]
  bt = np.linalg.inv(evaluate(n)).T * scale[:, None]
  # The entries are small fractions; the inverse leaves them an ulp off
  # (0.9999999999999998 for 1), which would cost a multiply in _combine.
  exact = np.vectorize(
      lambda v: float(fractions.Fraction(v).limit_denominator(1 << 12)))
  return exact(at), exact(g), exact(bt)


def _combine(coefficients: np.ndarray, terms: Sequence[jax.Array]
             ) -> jax.Array:
  """``sum(c * t)`` with the zero terms left out and no multiply by +-1."""
  total = None
  for c, t in zip(coefficients, terms):
    if c == 0:
      continue
    t = t if c == 1 else -t if c == -1 else t * float(c)
    total = t if total is None else total + t
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _block_transform(x: jax.Array, kernel_size: int, tile: int, axis: int,
                     blocks: int) -> list[jax.Array]:
  """``B^T`` along ``axis`` for every block: one array per row of ``B^T``,
  with that axis turned into the block index (``blocks`` long).

  Block ``b`` reads entries ``b * tile + t``; cut into (block, phase) that
  is a contiguous slice of phase ``t % tile`` (no strided slices, which
  XLA:CPU copies slowly).
  """
  _, _, bt = winograd_matrices(tile, kernel_size)
  shape = x.shape
  x = x.reshape(shape[:axis] + (-1, tile) + shape[axis + 1:])
  terms = [lax.index_in_dim(
      lax.slice_in_dim(x, t // tile, t // tile + blocks, axis=axis),
      t % tile, axis + 1, keepdims=False) for t in range(bt.shape[1])]
  return [_combine(row, terms) for row in bt]


def _block_transform_fwd(x, kernel_size, tile, axis, blocks):
  return _block_transform(x, kernel_size, tile, axis, blocks), x.shape


def _block_transform_bwd(kernel_size, tile, axis, blocks, shape, cts):
  """The transpose: each input entry collects ``B^T[j, t] * ct_j`` from
  every block that reads it, phase by phase.

  Written by hand for one reason: the cotangents arrive materialized
  (``optimization_barrier``). Autodiff's transpose of the two passes
  (rows, then columns) fused into one loop summing n*n padded inputs per
  entry: 40% of conv2's forward and backward on the 2-core CPU.
  """
  _, _, bt = winograd_matrices(tile, kernel_size)
  cts = lax.optimization_barrier(cts)
  phases = []
  for p in range(tile):
    total = None
    for t in range(p, bt.shape[1], tile):  # the entries of phase p
      pad = [(0, 0, 0)] * len(shape)
      pad[axis] = (t // tile, shape[axis] // tile - blocks - t // tile, 0)
      term = lax.pad(_combine(bt[:, t], cts), 0.0, pad)
      total = term if total is None else total + term
    phases.append(total)
  return (jnp.stack(phases, axis=axis + 1).reshape(shape),)


_block_transform.defvjp(_block_transform_fwd, _block_transform_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _output_transform(m: jax.Array, kernel_size: int, tile: int
                      ) -> jax.Array:
  """``A^T m A`` for every block: ``m`` is ``(n, n, images, tiles_h,
  tiles_w, features)``, the result NHWC, ``tile`` rows and columns a
  block."""
  at, _, _ = winograd_matrices(tile, kernel_size)
  rows = [_combine(a, jnp.unstack(m)) for a in at]
  y = [jnp.stack([_combine(a, jnp.unstack(r)) for a in at], axis=3)
       for r in rows]  # (images, tiles_h, tiles_w, tile, features) each
  y = jnp.stack(y, axis=2)
  images, tiles_h, _, tiles_w, _, features = y.shape
  return y.reshape(images, tiles_h * tile, tiles_w * tile, features)


def _output_transform_fwd(m, kernel_size, tile):
  return _output_transform(m, kernel_size, tile), None


def _output_transform_bwd(kernel_size, tile, _, dy):
  """``A dy A^T`` for every block, rows first, then columns.

  By hand, as the input transform's: autodiff's fused into one loop
  writing all n*n outputs, each a sum over tile**2 slices of ``dy``
  (conv2, 4x4 tiles: 33 of its 119 ms of thread time).
  """
  at, _, _ = winograd_matrices(tile, kernel_size)
  images, h, w, features = dy.shape
  dy = dy.reshape(images, h // tile, tile, w // tile, tile, features)
  rows = lax.optimization_barrier(
      [_combine(a, jnp.unstack(dy, axis=2)) for a in at.T])
  dm = [jnp.stack([_combine(a, jnp.unstack(r, axis=3)) for a in at.T])
        for r in rows]
  return (jnp.stack(dm),)


_output_transform.defvjp(_output_transform_fwd, _output_transform_bwd)


def winograd_conv(x: jax.Array, kernel: jax.Array, stride: int,
                  padding: Padding) -> jax.Array:
  """``conv(x, kernel, stride, padding)`` by Winograd's F(tile x tile, k x k).

  Same values as :func:`conv` up to float rounding (the transforms add
  a few ulps: about 2e-6 relative for conv3's shape, 6e-6 for conv2's, 8e-6
  for conv1's) and the same gradients (reverse mode only: the transforms'
  backward passes are ``custom_vjp``s, so ``jax.jvp`` through it is
  refused). The tile is ``WINOGRAD_TILES[(k, stride)]``; other kernels and
  strides are refused. A strided convolution is first cut into
  ``stride x stride`` blocks (as in :func:`patches_conv`), the kernel
  zero-padded to whole blocks (11 -> 12 at stride 4: 19% more products,
  which Winograd's 4.6x fewer repay), which leaves a stride-1 convolution
  over the blocks. It computes in float32 (or wider) whatever the input
  type: in bfloat16 the transforms' rounding made 8% errors with 5x5
  kernels, 26x those of the bfloat16 convolution.
  """
  n_images, h, w, _ = x.shape
  k, _, _, features = kernel.shape
  if (k, stride) not in WINOGRAD_TILES:
    raise ValueError(f'winograd_conv has tiles for (kernel size, stride) '
                     f'{sorted(WINOGRAD_TILES)} (WINOGRAD_TILES); got '
                     f'({k}, {stride}). Add an entry (and check its error), '
                     f'or use patches_conv.')
  tile = WINOGRAD_TILES[(k, stride)]
  out_h = output_size(h, k, stride, padding[0])
  out_w = output_size(w, k, stride, padding[1])
  blocks = _cdiv(k, stride)  # the kernel's extent in blocks (k at stride 1)
  _, g, _ = winograd_matrices(tile, blocks)
  n = tile + blocks - 1
  tiles_h, tiles_w = _cdiv(out_h, tile), _cdiv(out_w, tile)
  # Rows (columns) the blocks read, padded to whole phases.
  need_h = (tiles_h + _cdiv(blocks - 1, tile)) * tile
  need_w = (tiles_w + _cdiv(blocks - 1, tile)) * tile
  if stride > 1:
    x, kernel = _over_blocks(x, kernel, stride, padding, need_h, need_w)
  else:
    x = _pad_to(x, padding, need_h, need_w)
  dtype = x.dtype
  compute = jnp.promote_types(dtype, jnp.float32)  # float64 stays float64
  x, kernel = x.astype(compute), kernel.astype(compute)
  channels = x.shape[-1]
  # B^T d B for every block: (n, n, images, tiles_h, tiles_w, c). Each
  # pass writes one stacked array; the n*n blocks of the second pass as
  # arrays of their own, stacked afterwards, were n*n small loops and a
  # copy (conv1: 1.45x slower at configs/default.py's shape).
  rows = jnp.stack(_block_transform(x, blocks, tile, 1, tiles_h))
  v = jnp.stack(_block_transform(rows, blocks, tile, 3, tiles_w), axis=1)
  v = v.reshape(n * n, -1, channels)
  # G g G^T: (n*n, c, features), once per call.
  g = jnp.asarray(g, compute)
  u = jnp.einsum('ar,rsco,bs->abco', g, kernel, g)
  u = u.reshape(n * n, channels, features)
  # The n*n products, each summed over channels: one batched matmul.
  m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))
  m = m.reshape(n, n, n_images, tiles_h, tiles_w, features)
  y = _output_transform(m, blocks, tile)
  return y[:, :out_h, :out_w].astype(dtype)
