"""The custom max pools against flax's (XLA reduce_window/select_and_scatter)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import pooling


def reference(x, window, stride):
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding='VALID')


def inputs(kind, shape, seed):
  rng = np.random.default_rng(seed)
  if kind == 'normal':
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)
  if kind == 'relu':  # many exact ties at zero, as after the paper's ReLU
    return jnp.maximum(jnp.asarray(rng.standard_normal(shape), jnp.float32), 0)
  return jnp.asarray(rng.integers(0, 3, shape), jnp.float32)  # ties everywhere


@pytest.mark.parametrize('impl', sorted(pooling.IMPLEMENTATIONS))
@pytest.mark.parametrize('kind', ['normal', 'relu', 'integers'])
@pytest.mark.parametrize('shape,window,stride', [
    ((2, 13, 13, 3), 3, 2),   # the paper's overlapping pooling, 13 -> 6
    ((1, 27, 27, 2), 3, 2),   # 27 -> 13
    ((2, 12, 12, 3), 2, 2),   # non-overlapping, the ablation
    ((1, 9, 11, 2), 3, 3),
    ((1, 5, 5, 1), 1, 1),
    ((1, 14, 10, 2), 5, 3),
    ((1, 11, 8, 2), 2, 3),    # window < stride: some inputs in no window
    ((1, 7, 6, 1), 1, 3),
])
def test_values_and_gradients_match_flax(impl, kind, shape, window, stride):
  x = inputs(kind, shape, seed=window * 10 + stride)
  y_ref, vjp_ref = jax.vjp(lambda a: reference(a, window, stride), x)
  y, vjp = jax.vjp(lambda a: pooling.max_pool(a, window, stride, impl), x)
  np.testing.assert_array_equal(y, y_ref)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape),
                  jnp.float32)
  # Ties go to the same (first) element; where windows overlap the shares
  # are added in another order, so equal up to float32 rounding.
  np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('impl', sorted(pooling.IMPLEMENTATIONS))
def test_jit_and_bfloat16(impl):
  x = inputs('relu', (2, 13, 13, 4), seed=0).astype(jnp.bfloat16)
  pool = functools.partial(pooling.max_pool, impl=impl)
  y = jax.jit(pool)(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, reference(x, 3, 2))
  g = jax.grad(lambda a: pool(a).astype(jnp.float32).sum())(x)
  g_ref = jax.grad(lambda a: reference(a, 3, 2).astype(jnp.float32).sum())(x)
  assert g.dtype == jnp.bfloat16
  np.testing.assert_allclose(g.astype(jnp.float32), g_ref.astype(jnp.float32),
                             rtol=1e-2)


def test_input_smaller_than_window_is_refused():
  with pytest.raises(ValueError, match='2x2 is smaller than its window 3x3'):
    pooling.max_pool(jnp.ones((1, 2, 2, 1)), 3, 2)


@pytest.mark.parametrize('window,stride', [(0, 1), (12, 2), (3, 0)])
def test_bad_window_or_stride_is_refused(window, stride):
  with pytest.raises(ValueError, match=f'window={window}, stride={stride}'):
    pooling.max_pool(jnp.ones((1, 20, 20, 1)), window, stride)
