"""LRN against TensorFlow's op, a plain loop, and hand arithmetic."""

import jax
import jax.numpy as jnp
import jax.test_util as jtu
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import lrn


def loop_reference(x, depth_radius, bias, alpha, beta):
  """The paper's formula, one channel at a time, in float64."""
  x = np.asarray(x, np.float64)
  n = x.shape[-1]
  out = np.empty_like(x)
  for i in range(n):
    lo, hi = max(0, i - depth_radius), min(n - 1, i + depth_radius)
    total = np.sum(x[..., lo:hi + 1] ** 2, axis=-1)
    out[..., i] = x[..., i] / (bias + alpha * total) ** beta
  return out


def tf_lrn_and_grad(x, g, **kw):
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    y = tf.nn.local_response_normalization(xt, **kw)
  return y.numpy(), tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy()


# Shapes include fewer channels than the window (3 < 5), a single channel,
# the per-tower widths of the paper net, and channel counts on both sides of
# the switch from a band matmul to shifted slices in the window sum.
CASES = [
    ((2, 5, 5, 3), dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)),
    ((1, 4, 4, 1), dict(depth_radius=2, bias=1.0, alpha=0.3, beta=0.75)),
    ((2, 3, 3, 48), dict(depth_radius=2, bias=2.0, alpha=0.05, beta=0.75)),
    ((1, 3, 3, 128), dict(depth_radius=2, bias=2.0, alpha=2e-5, beta=0.75)),
    ((2, 4, 4, 13), dict(depth_radius=0, bias=1.5, alpha=0.2, beta=0.5)),
    ((2, 4, 4, 9), dict(depth_radius=5, bias=0.5, alpha=0.1, beta=1.3)),
    ((1, 2, 2, 7), dict(depth_radius=1, bias=3.0, alpha=0.5, beta=2.0)),
    ((1, 3, 3, 100), dict(depth_radius=3, bias=1.0, alpha=0.05, beta=0.6)),
]


@pytest.mark.parametrize('shape,kw', CASES)
def test_matches_tensorflow_forward_and_gradient(shape, kw):
  rng = np.random.default_rng(sum(shape))
  # Scale 3 so alpha * sum(a^2) is not negligible next to the bias.
  x = (3 * rng.standard_normal(shape)).astype(np.float32)
  g = rng.standard_normal(shape).astype(np.float32)
  y_tf, dx_tf = tf_lrn_and_grad(x, g, **kw)
  y, vjp = jax.vjp(lambda a: lrn.local_response_norm(a, **kw), jnp.asarray(x))
  (dx,) = vjp(jnp.asarray(g))
  np.testing.assert_allclose(y, y_tf, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(dx, dx_tf, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(y, loop_reference(x, **kw), rtol=2e-5, atol=1e-6)


def test_edge_channels_by_hand():
  # Channels 1..7 at one position, radius 2, k=2, alpha=0.01, beta=0.75.
  x = jnp.arange(1.0, 8.0).reshape(1, 1, 1, 7)
  y = np.asarray(lrn.local_response_norm(x, alpha=0.01)).ravel()
  # First channel sees channels 0..2 only: 1 + 4 + 9 = 14.
  assert y[0] == pytest.approx(1.0 / (2 + 0.01 * 14) ** 0.75, rel=1e-6)
  # Middle channel 3 sees 1..5: 4 + 9 + 16 + 25 + 36 = 90.
  assert y[3] == pytest.approx(4.0 / (2 + 0.01 * 90) ** 0.75, rel=1e-6)
  # Last channel sees 4..6: 25 + 36 + 49 = 110.
  assert y[6] == pytest.approx(7.0 / (2 + 0.01 * 110) ** 0.75, rel=1e-6)


def test_check_grads_first_and_second_order():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 6)) * 2
  f = lambda a: lrn.local_response_norm(a, depth_radius=1, alpha=0.2)
  jtu.check_grads(f, (x,), order=2, modes=['rev'], atol=2e-2, rtol=2e-2)


def test_jit_vmap_grad_agree():
  x = jax.random.normal(jax.random.key(1), (4, 3, 3, 10)) * 3
  f = lambda a: lrn.local_response_norm(a, alpha=0.1)
  loss = lambda a: jnp.sum(jnp.sin(f(a)))
  np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(f)(x[:, None])[:, 0], f(x), rtol=1e-6)
  per_example = jax.vmap(jax.grad(lambda a: loss(a[None])))(x)
  np.testing.assert_allclose(per_example, jax.jit(jax.grad(loss))(x),
                             rtol=1e-5, atol=1e-7)


def test_bfloat16_accumulates_in_float32():
  x32 = jax.random.normal(jax.random.key(2), (2, 4, 4, 16)) * 4
  x16 = x32.astype(jnp.bfloat16)
  kw = dict(alpha=0.1)
  y16, vjp = jax.vjp(lambda a: lrn.local_response_norm(a, **kw), x16)
  (dx16,) = vjp(jnp.ones_like(y16))
  assert y16.dtype == jnp.bfloat16 and dx16.dtype == jnp.bfloat16
  # The float32 op on the same (bfloat16-rounded) inputs, rounded once.
  exact = lrn.local_response_norm(x16.astype(jnp.float32), **kw)
  np.testing.assert_allclose(y16.astype(jnp.float32),
                             exact.astype(jnp.bfloat16).astype(jnp.float32),
                             rtol=1e-2, atol=1e-2)
  exact_dx = jax.grad(lambda a: lrn.local_response_norm(a, **kw).sum())(
      x16.astype(jnp.float32))
  np.testing.assert_allclose(dx16.astype(jnp.float32), exact_dx,
                             rtol=2e-2, atol=2e-2)


def torch_formula(x, size, alpha, beta, k):
  """PyTorch's nn.LocalResponseNorm, written out (alpha / size), channels last."""
  n, r = x.shape[-1], size // 2
  sq = np.pad(np.asarray(x, np.float64) ** 2, [(0, 0)] * (x.ndim - 1) + [(r, r)])
  total = sum(sq[..., j:j + n] for j in range(size))
  return x / (k + alpha / size * total) ** beta


@pytest.mark.parametrize('size,alpha,k', [(5, 1e-4, 2.0), (3, 0.4, 1.0)])
def test_size_convention_matches_pytorch_formula(size, alpha, k):
  x = 3 * np.random.default_rng(size).standard_normal((2, 3, 3, 8))
  y = lrn.local_response_norm(
      jnp.asarray(x, jnp.float32),
      **lrn.size_convention(size=size, alpha=alpha, beta=0.75, k=k))
  np.testing.assert_allclose(y, torch_formula(x, size, alpha, 0.75, k),
                             rtol=1e-5, atol=1e-6)


def test_named_settings():
  assert lrn.PAPER == dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
  # cuda-convnet's scale=0.0001 is divided by its window of 5.
  assert lrn.CUDA_CONVNET == pytest.approx(
      lrn.size_convention(size=5, alpha=1e-4, beta=0.75, k=2.0))


@pytest.mark.parametrize('kw,match', [
    (dict(depth_radius=-1), 'depth_radius=-1'),
    (dict(depth_radius=1.5), 'depth_radius=1.5'),
    (dict(bias=0.0), 'bias=0.0'),
    (dict(bias=-2.0), 'bias=-2.0'),
    (dict(alpha=-1.0), 'alpha=-1.0'),
])
def test_bad_arguments_name_the_value(kw, match):
  with pytest.raises(ValueError, match=match):
    lrn.local_response_norm(jnp.ones((1, 2, 2, 3)), **kw)


def test_even_size_convention_is_refused():
  with pytest.raises(ValueError, match='size=4'):
    lrn.size_convention(size=4, alpha=1e-4, beta=0.75, k=2.0)
