"""Local response normalization (paper section 3.3) as a custom JAX op.

    b[i] = a[i] / (bias + alpha * sum_{j=max(0, i-r)}^{min(N-1, i+r)} a[j]^2) ** beta

over the last (channel) axis, with ``r = depth_radius``. This is the paper's
and ``tf.nn.local_response_normalization``'s convention: ``alpha`` multiplies
each squared term; it is *not* divided by the window size. The window is
clipped at the first and last channel (no wrap-around, no zero-padding effect
beyond the clipping).

PyTorch's ``nn.LocalResponseNorm`` and Caffe's ``LRN`` divide alpha by the
window size ``n = 2r + 1``. Use :func:`size_convention` to pass their
numbers unchanged::

    local_response_norm(x, **size_convention(size=5, alpha=1e-4, beta=0.75, k=2.0))

Named settings (docs/paper.md, "Alpha conventions"):

* :data:`PAPER`: the paper's printed numbers, k=2, n=5, alpha=1e-4, beta=0.75.
* :data:`CUDA_CONVNET`: what Krizhevsky's code effectively ran: its parser
  divides ``scale=0.0001`` by the window size, so alpha is 2e-5 per term.

The backward pass is analytic (``jax.custom_vjp``). With ``d = bias + alpha *
S(a^2)`` and ``S`` the (symmetric) windowed channel sum,

    da = g * d^-beta - 2 * alpha * beta * a * S(g * a * d^(-beta-1)),

so the op keeps only its input for the backward pass (``d`` is recomputed,
which is cheaper than storing and reloading it) instead of every
intermediate of an autodiffed windowed sum. All arithmetic is float32
whatever the input dtype (bfloat16 inputs are accumulated in float32 and the
result cast back).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PAPER = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
CUDA_CONVNET = dict(depth_radius=2, bias=2.0, alpha=2e-5, beta=0.75)


def size_convention(*, size: int, alpha: float, beta: float, k: float) -> dict:
  """Converts PyTorch/Caffe LRN arguments (alpha divided by ``size``) to ours.

  ``torch.nn.LocalResponseNorm(size, alpha, beta, k)`` equals
  ``local_response_norm(x, **size_convention(size=size, alpha=alpha,
  beta=beta, k=k))`` for odd ``size`` (channels last here, channels first
  there). Even sizes give PyTorch an asymmetric window and are refused.
  """
  if size < 1 or size % 2 != 1:
    raise ValueError(
        f'LRN size must be a positive odd number (a window centred on each '
        f'channel); got size={size}. Use size=2*depth_radius+1, e.g. 5.')
  return dict(depth_radius=(size - 1) // 2, bias=k, alpha=alpha / size,
              beta=beta)


def check_args(depth_radius, bias, alpha, beta):
  if not isinstance(depth_radius, int) or depth_radius < 0:
    raise ValueError(
        f'LRN depth_radius must be an integer >= 0 (half the window, the '
        f'paper uses 2 for n=5); got depth_radius={depth_radius!r}.')
  if not bias > 0:
    raise ValueError(
        f'LRN bias must be > 0 so the denominator never reaches zero (the '
        f'paper uses k=2); got bias={bias!r}.')
  if not alpha >= 0:
    raise ValueError(f'LRN alpha must be >= 0; got alpha={alpha!r}.')
  if not beta >= 0:
    raise ValueError(f'LRN beta must be >= 0; got beta={beta!r}.')


# Up to this many channels the window sum is a matmul with a 0/1 band matrix:
# C multiply-adds per element instead of 2r+1 adds, but they run at matmul
# speed. Measured in the full train step on a 2-core CPU: the matmul is
# faster for conv1's 48 channels per tower, the shifted slices for conv2's 128.
_BAND_MATMUL_MAX_CHANNELS = 64


def _window_sum(v: jax.Array, radius: int) -> jax.Array:
  """Sum of ``v`` over channels ``[i - radius, i + radius]``, clipped at the ends."""
  channels = v.shape[-1]
  if radius == 0:
    return v
  if channels <= _BAND_MATMUL_MAX_CHANNELS:
    i = jnp.arange(channels)
    band = (jnp.abs(i[:, None] - i[None, :]) <= radius).astype(v.dtype)
    # HIGHEST: no TF32 or bfloat16 passes on accelerators; this is a sum.
    return jnp.matmul(v, band, precision=jax.lax.Precision.HIGHEST)
  # Zero-padding the channel axis and adding shifted slices is the clipped sum.
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(radius, radius)])
  return sum(padded[..., j:j + channels] for j in range(2 * radius + 1))


def _pow(d: jax.Array, beta: float) -> jax.Array:
  """``d ** beta``; the paper's beta=0.75 uses two square roots, not exp/log."""
  if beta == 0.75:
    root = jnp.sqrt(d)
    return root * jnp.sqrt(root)
  return jnp.power(d, beta)


def _denominator(x32, depth_radius, bias, alpha):
  return bias + alpha * _window_sum(jnp.square(x32), depth_radius)


def _forward(x, depth_radius, bias, alpha, beta):
  x32 = x.astype(jnp.float32)
  d = _denominator(x32, depth_radius, bias, alpha)
  # Both passes end in a true division on purpose: XLA treats a division as
  # expensive and so materializes its result once instead of fusing (and
  # recomputing) it into every consumer. The pooling after the LRN reads
  # each element up to four times and the window sum five times.
  return (x32 / _pow(d, beta)).astype(x.dtype)


_lrn = jax.custom_vjp(_forward, nondiff_argnums=(1, 2, 3, 4))


def _lrn_fwd(x, depth_radius, bias, alpha, beta):
  # Only the input is kept: d is cheaper to recompute than to store and load.
  return _forward(x, depth_radius, bias, alpha, beta), x


def _lrn_bwd(depth_radius, bias, alpha, beta, x, g):
  x32 = x.astype(jnp.float32)
  d = _denominator(x32, depth_radius, bias, alpha)
  u = g.astype(jnp.float32) / _pow(d, beta)  # g * d^-beta
  dx = u - (2.0 * alpha * beta) * x32 * _window_sum(u * x32 / d, depth_radius)
  return (dx.astype(x.dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


# ``impl`` of local_response_norm: the same function, two lowerings.
IMPLEMENTATIONS = {
    # The analytic backward above, the band matmul for few channels: what
    # measured fastest with XLA:CPU.
    'custom_vjp': _lrn,
    # The same forward pass differentiated by JAX, which leaves XLA free to
    # fuse the backward with its neighbours (the accelerators' choice;
    # unmeasured there).
    'autodiff': _forward,
}


def local_response_norm(x: jax.Array, *, depth_radius: int = 2,
                        bias: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75,
                        impl: str = 'custom_vjp') -> jax.Array:
  """Local response normalization over the last axis (paper section 3.3).

  Args:
    x: any-rank array, channels last (NHWC activations in the model);
      float32 or bfloat16. Computation is float32; the result has x's dtype.
    depth_radius: ``r``; the window is ``n = 2r + 1`` channels (paper: n=5).
    bias: ``k`` (paper: 2). Must be > 0.
    alpha: multiplies *each* squared term (paper and TF convention: 1e-4).
    beta: the exponent (paper: 0.75).
    impl: ``'custom_vjp'`` (the analytic backward) or ``'autodiff'`` (the
      same forward pass, differentiated by JAX); the same values, gradients
      equal up to float32 rounding.

  Returns:
    An array shaped and typed like ``x``.
  """
  check_args(depth_radius, bias, alpha, beta)
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f'Unknown LRN impl {impl!r}; use one of '
                     f'{sorted(IMPLEMENTATIONS)}.')
  return IMPLEMENTATIONS[impl](x, depth_radius, float(bias), float(alpha),
                               float(beta))
