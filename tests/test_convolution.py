"""The patch-matmul and Winograd convolutions against XLA's
(``lax.conv_general_dilated``): values and the gradients of both the input
and the kernel; Winograd's matrices against a direct correlation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import convolution
from conftest import value_and_vjp


@pytest.mark.parametrize('shape,kernel,features,stride,padding', [
    # The paper's conv1: 224 inputs with cuda-convnet's 3-pixel overhang,
    # and 227 inputs without; both give 55x55.
    ((2, 224, 224, 3), 11, 8, 4, ((0, 3), (0, 3))),
    ((1, 227, 227, 3), 11, 8, 4, ((0, 0), (0, 0))),
    ((2, 96, 96, 3), 11, 6, 4, ((0, 3), (0, 3))),  # configs/default.py
    ((2, 13, 13, 5), 5, 4, 1, convolution.same_padding(5)),  # conv2's form
    ((2, 9, 9, 4), 3, 3, 1, convolution.same_padding(3)),
    ((1, 17, 15, 2), 7, 3, 3, ((1, 2), (2, 0))),  # uneven
    ((1, 30, 30, 2), 11, 3, 4, ((0, 0), (0, 0))),  # 2 rows no output reads
    ((1, 34, 31, 2), 11, 3, 4, ((-3, -1), (2, -2))),  # negative: crops
    ((1, 8, 8, 2), 4, 2, 2, convolution.same_padding(4)),  # even kernel
])
def test_patches_equal_xla_convolution(shape, kernel, features, stride,
                                       padding):
  assert_equal_xla_convolution(convolution.patches_conv, shape, kernel,
                               features, stride, padding)


@pytest.mark.parametrize('shape,kernel,features,stride,padding', [
    ((2, 13, 13, 6), 3, 5, 1, convolution.same_padding(3)),  # conv3-5's
    ((2, 27, 27, 4), 5, 3, 1, convolution.same_padding(5)),  # conv2's
    ((2, 6, 6, 3), 5, 2, 1, convolution.same_padding(5)),  # map < one tile
    ((1, 10, 7, 2), 3, 2, 1, ((0, 0), (0, 0))),  # 'VALID', uneven tiles
    ((1, 9, 11, 2), 3, 3, 1, ((2, 0), (1, 2))),  # uneven padding
    ((1, 5, 4, 1), 3, 2, 1, ((4, 1), (0, 3))),  # padding wider than kernel
    ((1, 3, 3, 2), 3, 2, 1, convolution.same_padding(3)),  # a partial tile
    # conv1 over 4x4 blocks: the paper's 55x55 map (11 whole tiles), with
    # and without the overhang; configs/default.py's 23x23 (a partial
    # tile); uneven padding, not whole blocks; input rows no output reads;
    # negative padding, which crops.
    ((2, 224, 224, 3), 11, 8, 4, ((0, 3), (0, 3))),
    ((1, 227, 227, 3), 11, 8, 4, ((0, 0), (0, 0))),
    ((2, 96, 96, 3), 11, 6, 4, ((0, 3), (0, 3))),
    ((1, 33, 30, 2), 11, 3, 4, ((2, 0), (1, 2))),
    ((1, 30, 30, 2), 11, 3, 4, ((0, 0), (0, 0))),
    ((1, 34, 31, 2), 11, 3, 4, ((-3, -1), (2, -2))),
])
def test_winograd_equals_xla_convolution(shape, kernel, features, stride,
                                         padding):
  assert_equal_xla_convolution(convolution.winograd_conv, shape, kernel,
                               features, stride, padding)


@pytest.mark.parametrize('kernel,stride', [(4, 2), (8, 4), (3, 4), (5, 2)])
def test_winograd_at_any_stride_given_a_tile(monkeypatch, kernel, stride):
  """Any (kernel, stride) with a tile runs over blocks: a kernel of whole
  blocks, a stride wider than the kernel (1x1 over blocks), one that ends
  inside a block; padding not in whole blocks."""
  monkeypatch.setitem(convolution.WINOGRAD_TILES, (kernel, stride), 2)
  assert_equal_xla_convolution(convolution.winograd_conv, (1, 19, 17, 2),
                               kernel, 3, stride, ((1, 2), (3, 0)))


def assert_equal_xla_convolution(lowering, shape, kernel, features, stride,
                                 padding):
  rng = np.random.default_rng(sum(shape) + kernel)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], features)),
                  jnp.float32)
  reference = lambda a, b: convolution.conv(a, b, stride, padding)
  g = jnp.asarray(rng.standard_normal(jax.eval_shape(reference, x, w).shape),
                  jnp.float32)
  y_ref, grads_ref = value_and_vjp(reference, g, x, w)
  y, grads = value_and_vjp(lambda a, b: lowering(a, b, stride, padding), g,
                           x, w)
  assert y.shape == y_ref.shape
  scale = np.abs(y_ref).max()
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * scale)
  for ours, theirs, name in zip(grads, grads_ref, ('input', 'kernel')):
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


@pytest.mark.parametrize('tile,kernel', [(2, 3), (3, 3), (4, 3), (2, 5),
                                         (3, 5), (1, 4), (6, 3)])
def test_winograd_matrices_compute_a_correlation(tile, kernel):
  """In float64, A^T ((G g) * (B^T d)) is y[i] = sum_k d[i + k] g[k] for
  every input (checked on a basis of inputs and kernels, so exactly)."""
  at, g, bt = convolution.winograd_matrices(tile, kernel)
  n = tile + kernel - 1
  assert at.shape == (tile, n) and g.shape == (n, kernel) and bt.shape == (
      n, n)
  for i in range(n):
    for j in range(kernel):
      d, w = np.eye(n)[i], np.eye(kernel)[j]
      direct = np.array([d[o:o + kernel] @ w for o in range(tile)])
      np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), direct,
                                 atol=1e-12)


def test_winograd_matrices_for_4x4_tiles_are_lavin_and_grays():
  """F(4, 3) as printed in Lavin and Gray (2016), section 4.2 (the same
  points in the same order: 0, 1, -1, 2, -2, infinity), entry for entry:
  no 0.9999999999999998 for 1, which would cost a multiply."""
  at, g, bt = convolution.winograd_matrices(4, 3)
  np.testing.assert_array_equal(bt, [[4, 0, -5, 0, 1, 0],
                                     [0, -4, -4, 1, 1, 0],
                                     [0, 4, -4, -1, 1, 0],
                                     [0, -2, -1, 2, 1, 0],
                                     [0, 2, -1, -2, 1, 0],
                                     [0, 4, 0, -5, 0, 1]])
  np.testing.assert_array_equal(g, [[1 / 4, 0, 0],
                                    [-1 / 6, -1 / 6, -1 / 6],
                                    [-1 / 6, 1 / 6, -1 / 6],
                                    [1 / 24, 1 / 12, 1 / 6],
                                    [1 / 24, -1 / 12, 1 / 6],
                                    [0, 0, 1]])
  np.testing.assert_array_equal(at, [[1, 1, 1, 1, 1, 0],
                                     [0, 1, -1, 2, -2, 0],
                                     [0, 1, 1, 4, 4, 0],
                                     [0, 1, -1, 8, -8, 1]])


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_winograd_in_narrow_types_is_as_close_as_xlas(dtype):
  """In a narrow type the transforms would round (8% errors for 5x5
  kernels in bfloat16); computed in float32, Winograd is as close to the
  float32 result as XLA's own convolution in that type, and keeps it."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 27, 27, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((5, 5, 16, 8)) * 0.05, jnp.float32)
  padding = convolution.same_padding(5)
  exact = convolution.conv(x, w, 1, padding)
  errors = {}
  for lowering in (convolution.conv, convolution.winograd_conv):
    y = lowering(x.astype(dtype), w.astype(dtype), 1, padding)
    assert y.dtype == dtype
    errors[lowering] = float(jnp.abs(y.astype(jnp.float32) - exact).max())
  assert errors[convolution.winograd_conv] <= 1.5 * errors[convolution.conv]


def test_winograd_refuses_kernels_and_strides_without_a_tile():
  x = jnp.zeros((1, 8, 8, 1))
  tiles = r'\[\(3, 1\), \(5, 1\), \(11, 4\)\]'
  with pytest.raises(ValueError, match=tiles + r'.*got \(3, 2\).*patches'):
    convolution.winograd_conv(x, jnp.zeros((3, 3, 1, 1)), 2,
                              convolution.same_padding(3))
  with pytest.raises(ValueError, match=tiles + r'.*got \(4, 1\)'):
    convolution.winograd_conv(x, jnp.zeros((4, 4, 1, 1)), 1,
                              convolution.same_padding(4))
  with pytest.raises(ValueError, match='tile 8 with kernel 5 needs 11'):
    convolution.winograd_matrices(8, 5)
