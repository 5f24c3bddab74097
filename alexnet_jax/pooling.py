"""Max pooling (paper section 3.4) as a custom JAX op with a cheap backward.

The paper pools overlapping 3x3 windows with stride 2. ``nn.max_pool``
differentiates through XLA's ``select_and_scatter``, which XLA:CPU runs about
ten times slower than the forward pass (it was a sixth of the whole AlexNet
train step on a 2-core CPU). Here the forward pass takes the maximum of the
``window**2`` strided views of the input and records, per output, which view
held the maximum (one int8 per output); the backward pass sends each output's
gradient to that position by padding each view's share back to the input
grid. Both are plain elementwise XLA loops.

The ``separable`` lowering does the same in two 1-D passes, along the rows
and then down the columns (``2 * window`` views instead of ``window**2``,
one int8 argmax per pass). A 1-D pass cuts its axis into blocks of
``stride`` phases, so that every view is a contiguous slice of one phase and
the backward interleaves the phases again: no strided slice, no interior
padding. With the argmax kept as computed (below), ReLU then pooling ran
3.3-4x faster on the paper's shapes, LRN then pooling 1.04-1.2x
(docs/design.md, "Per-backend implementations").

Ties go to the first maximum in row-major window order, which is what
``select_and_scatter`` (and so ``nn.max_pool``'s gradient) does. Padding is
VALID, as in the paper (55 -> 27 -> 13 -> 6).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax


def _offsets(axes, window: int) -> list[tuple[int, ...]]:
  """Every window offset over ``axes``, in row-major order."""
  return list(itertools.product(range(window), repeat=len(axes)))


def _strided_slices(x: jax.Array, axes, window: int, stride: int
                    ) -> list[jax.Array]:
  """The views ``x[stride * o + d]`` over ``axes``, one per window offset
  ``d`` (``window ** len(axes)`` of them), as strided slices."""
  views = []
  for offset in _offsets(axes, window):
    start, limit, strides = [0] * x.ndim, list(x.shape), [1] * x.ndim
    for axis, d in zip(axes, offset):
      out = _blocks(x.shape[axis], window, stride)[0]
      start[axis], limit[axis] = d, d + stride * (out - 1) + 1
      strides[axis] = stride
    views.append(lax.slice(x, start, limit, strides))
  return views


def _strided_backward(argmax, shape, g, axes, window, stride) -> jax.Array:
  """Each view's share of ``g`` back on the input grid by interior padding."""
  zero = jnp.zeros((), g.dtype)
  dx = None
  for j, offset in enumerate(_offsets(axes, window)):
    config = [(0, 0, 0)] * g.ndim
    for axis, d in zip(axes, offset):
      # Interior padding stride-1 puts output i back at d + stride * i.
      out = g.shape[axis]
      config[axis] = (d, shape[axis] - d - stride * (out - 1) - 1, stride - 1)
    placed = lax.pad(jnp.where(argmax == j, g, zero), zero, config)
    dx = placed if dx is None else dx + placed
  return dx


def _blocks(size: int, window: int, stride: int) -> tuple[int, int]:
  """(outputs, blocks): a pooled axis of ``size`` seen as ``blocks`` rows of
  ``stride`` phases, enough for every window of the ``outputs``."""
  out = (size - window) // stride + 1
  return out, out + (window - 1) // stride


def _fit(x: jax.Array, axis: int, size: int) -> jax.Array:
  """``x`` cropped, or padded with zeros at the end, to ``size`` along
  ``axis`` (the entries it adds or drops are in no window)."""
  if x.shape[axis] >= size:
    return lax.slice_in_dim(x, 0, size, axis=axis)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def _phase_views(x, axis, window, stride) -> list[jax.Array]:
  """The same views along one axis from contiguous slices: the axis is cut
  into blocks of ``stride`` phases, and offset ``d = stride * q + r`` is
  phase ``r`` shifted by ``q`` blocks."""
  out, blocks = _blocks(x.shape[axis], window, stride)
  x = _fit(x, axis, blocks * stride)
  x = x.reshape(x.shape[:axis] + (blocks, stride) + x.shape[axis + 1:])
  views = []
  for d in range(window):
    q, r = divmod(d, stride)
    phase = lax.index_in_dim(x, r, axis + 1, keepdims=False)
    views.append(lax.slice_in_dim(phase, q, q + out, axis=axis))
  return views


def _phase_backward(argmax, shape, g, axis, window, stride) -> jax.Array:
  """The phase views run backwards: phase ``r`` gathers the shares of the
  offsets ``d = stride * q + r``, output ``o``'s share placed at block
  ``o + q``, and the phases interleave (block ``b`` of phase ``r`` is
  input ``stride * b + r``)."""
  out, blocks = _blocks(shape[axis], window, stride)
  zero = jnp.zeros((), g.dtype)
  phases = []
  for r in range(stride):
    # A phase in no window (window < stride) gets no gradient.
    phase = jnp.zeros(g.shape[:axis] + (blocks,) + g.shape[axis + 1:],
                      g.dtype)
    for d in range(r, window, stride):
      pad = [(0, 0)] * g.ndim
      pad[axis] = (d // stride, blocks - out - d // stride)
      phase = phase + jnp.pad(jnp.where(argmax == d, g, zero), pad)
    phases.append(phase)
  dx = jnp.stack(phases, axis=axis + 1)
  dx = dx.reshape(g.shape[:axis] + (blocks * stride,) + g.shape[axis + 1:])
  return _fit(dx, axis, shape[axis])


def _views(x, axes, window, stride) -> list[jax.Array]:
  """Phase slices along one axis; strided slices for a 2-D window (the
  interleave of its ``stride**2`` phases measured 3-4x slower than the
  strided form at stride 2)."""
  if len(axes) == 1:
    return _phase_views(x, axes[0], window, stride)
  return _strided_slices(x, axes, window, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, axes, window, stride):
  return functools.reduce(jnp.maximum, _views(x, axes, window, stride))


def _max_pool_fwd(x, axes, window, stride):
  views = _views(x, axes, window, stride)
  y = functools.reduce(jnp.maximum, views)
  # Index of the first view equal to the max (int8: windows up to 11x11).
  argmax = jnp.full(y.shape, len(views), jnp.int8)
  for j in reversed(range(len(views))):
    argmax = jnp.where(views[j] == y, jnp.int8(j), argmax)
  # Kept as computed: else XLA recomputes the forward (and the ReLU or LRN
  # before it) inside each backward loop that reads the argmax.
  return y, (lax.optimization_barrier(argmax), x.shape)


def _max_pool_bwd(axes, window, stride, residuals, g):
  argmax, shape = residuals
  if len(axes) == 1:
    return (_phase_backward(argmax, shape, g, axes[0], window, stride),)
  return (_strided_backward(argmax, shape, g, axes, window, stride),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _strided_views(x, window, stride):
  return _max_pool(x, (1, 2), window, stride)


def _separable(x, window, stride):
  """Max over each row's window, then over those maxima down the columns.

  The same maximum as the 2-D window, from ``2 * window`` views instead of
  ``window**2``. Ties resolve as in row-major order: the columns pass keeps
  the first maximal column of each row, the rows pass the first row holding
  the maximum, so the gradient reaches the first maximum in row-major order.
  """
  return _max_pool(_max_pool(x, (2,), window, stride), (1,), window, stride)


def _reduce_window(x, window, stride):
  """XLA's own max pooling; its backward is ``select_and_scatter``."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), 'VALID')


# ``impl`` of max_pool: the same values and gradients, three lowerings.
IMPLEMENTATIONS = {
    'strided_views': _strided_views,  # the custom backward above
    'separable': _separable,  # two 1-D passes, each with that backward
    'reduce_window': _reduce_window,  # the native op
}


def max_pool(x: jax.Array, window: int = 3, stride: int = 2,
             impl: str = 'strided_views') -> jax.Array:
  """VALID max pooling of NHWC ``x`` over ``window x window``, ``stride``.

  Same values and gradients as ``flax.linen.max_pool(x, (window, window),
  strides=(stride, stride), padding='VALID')`` with any ``impl``
  (``'strided_views'``: the custom backward; ``'separable'``: the same in
  two 1-D passes; ``'reduce_window'``: XLA's).
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f'Unknown max_pool impl {impl!r}; use one of '
                     f'{sorted(IMPLEMENTATIONS)}.')
  if not 1 <= window <= 11 or stride < 1:
    raise ValueError(f'max_pool needs 1 <= window <= 11 and stride >= 1; got '
                     f'window={window}, stride={stride}.')
  h, w = x.shape[1:3]
  if min(h, w) < window:
    raise ValueError(f'max_pool input {h}x{w} is smaller than its window '
                     f'{window}x{window}.')
  return IMPLEMENTATIONS[impl](x, window, stride)
