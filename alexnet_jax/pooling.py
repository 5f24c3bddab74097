"""Max pooling (paper section 3.4) as a custom JAX op with a cheap backward.

The paper pools overlapping 3x3 windows with stride 2. ``nn.max_pool``
differentiates through XLA's ``select_and_scatter``, which XLA:CPU runs about
ten times slower than the forward pass (it was a sixth of the whole AlexNet
train step on a 2-core CPU). Here the forward pass takes the maximum of the
``window**2`` strided views of the input and records, per output, which view
held the maximum (one int8 per output); the backward pass sends each output's
gradient to that position by padding each view's share back to the input
grid. Both are plain elementwise XLA loops.

Ties go to the first maximum in row-major window order, which is what
``select_and_scatter`` (and so ``nn.max_pool``'s gradient) does. Padding is
VALID, as in the paper (55 -> 27 -> 13 -> 6).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _views(x: jax.Array, window: int, stride: int) -> list[jax.Array]:
  """The window**2 strided views of NHWC ``x``, one per window offset."""
  n, h, w, c = x.shape
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  return [
      lax.slice(x, (0, di, dj, 0),
                (n, di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1, c),
                (1, stride, stride, 1))
      for di in range(window) for dj in range(window)
  ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, stride):
  return functools.reduce(jnp.maximum, _views(x, window, stride))


def _max_pool_fwd(x, window, stride):
  views = _views(x, window, stride)
  y = functools.reduce(jnp.maximum, views)
  # Index of the first view equal to the max (int8: windows up to 11x11).
  argmax = jnp.full(y.shape, len(views), jnp.int8)
  for j in reversed(range(len(views))):
    argmax = jnp.where(views[j] == y, jnp.int8(j), argmax)
  return y, (argmax, x.shape)


def _max_pool_bwd(window, stride, residuals, g):
  argmax, (_, h, w, _) = residuals
  ho, wo = g.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  dx = None
  for j in range(window * window):
    di, dj = divmod(j, window)
    share = jnp.where(argmax == j, g, zero)
    # Interior padding stride-1 puts output (i, k) back at (di + s*i, dj + s*k).
    placed = lax.pad(share, zero, [
        (0, 0, 0),
        (di, h - di - stride * (ho - 1) - 1, stride - 1),
        (dj, w - dj - stride * (wo - 1) - 1, stride - 1),
        (0, 0, 0),
    ])
    dx = placed if dx is None else dx + placed
  return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _reduce_window(x, window, stride):
  """XLA's own max pooling; its backward is ``select_and_scatter``."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), 'VALID')


# ``impl`` of max_pool: the same values and gradients, two lowerings.
IMPLEMENTATIONS = {
    'strided_views': _max_pool,  # the custom backward above
    'reduce_window': _reduce_window,  # the native op
}


def max_pool(x: jax.Array, window: int = 3, stride: int = 2,
             impl: str = 'strided_views') -> jax.Array:
  """VALID max pooling of NHWC ``x`` over ``window x window``, ``stride``.

  Same values and gradients as ``flax.linen.max_pool(x, (window, window),
  strides=(stride, stride), padding='VALID')`` with either ``impl``
  (``'strided_views'``: the custom backward; ``'reduce_window'``: XLA's).
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
