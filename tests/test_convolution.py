"""The patch-matmul convolution against XLA's (``lax.conv_general_dilated``):
values and the gradients of both the input and the kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import convolution


@pytest.mark.parametrize('shape,kernel,features,stride,padding', [
    # The paper's conv1: 224 inputs with cuda-convnet's 3-pixel overhang,
    # and 227 inputs without; both give 55x55.
    ((2, 224, 224, 3), 11, 8, 4, ((0, 3), (0, 3))),
    ((1, 227, 227, 3), 11, 8, 4, ((0, 0), (0, 0))),
    ((2, 96, 96, 3), 11, 6, 4, ((0, 3), (0, 3))),  # configs/default.py
    ((2, 13, 13, 5), 5, 4, 1, convolution.same_padding(5)),  # conv2's form
    ((2, 9, 9, 4), 3, 3, 1, convolution.same_padding(3)),
    ((1, 17, 15, 2), 7, 3, 3, ((1, 2), (2, 0))),  # uneven, unused rows
    ((1, 8, 8, 2), 4, 2, 2, convolution.same_padding(4)),  # even kernel
])
def test_patches_equal_xla_convolution(shape, kernel, features, stride,
                                       padding):
  rng = np.random.default_rng(sum(shape) + kernel)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], features)),
                  jnp.float32)
  y_ref, vjp_ref = jax.vjp(
      lambda a, b: convolution.conv(a, b, stride, padding), x, w)
  y, vjp = jax.vjp(
      lambda a, b: convolution.patches_conv(a, b, stride, padding), x, w)
  assert y.shape == y_ref.shape
  scale = np.abs(y_ref).max()
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * scale)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  for ours, theirs, name in zip(vjp(g), vjp_ref(g), ('input', 'kernel')):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4,
                               atol=1e-5 * np.abs(theirs).max(),
                               err_msg=name)


def test_same_padding_is_xlas_split():
  assert convolution.same_padding(5) == ((2, 2), (2, 2))
  assert convolution.same_padding(4) == ((1, 2), (1, 2))
  x = jnp.ones((1, 6, 6, 1))
  w = jnp.ones((4, 4, 1, 1))
  np.testing.assert_array_equal(
      convolution.conv(x, w, 1, convolution.same_padding(4)),
      jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
