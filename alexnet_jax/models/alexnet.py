"""AlexNet with the paper's two towers (section 3.5, Figure 2) in Flax linen.

The net is written once, per tower, with activations carried as a list that
holds one array per tower this call computes:

* ``model_axis=None`` (default): both towers run on this device (as
  separate convolutions, one grouped convolution, patch matmuls or
  Winograd's matmuls: the ``*_impl`` fields, chosen per backend), and a
  crossing concatenates the towers' channels.
* ``model_axis='model'``: inside ``jax.shard_map`` over a mesh axis of that
  name with one tower per device, this call computes the local tower only and
  a crossing is a collective over the axis.

Every tower parameter carries a leading tower axis (2 for the paper's net), so
the same parameter tree serves both modes: sharding that axis over ``'model'``
hands each device exactly its tower. The towers meet at the paper's four
places only: conv3's, fc6's and fc7's inputs (all-gather of channels) and
fc8's input, where, as in cuda-convnet's two-GPU layer file, fc8 holds one
weight block per tower and sums the blocks' products (``psum``). fc8's bias is
shared, not per tower.

Input size (the 224/227 puzzle, docs/paper.md, "Input size"): we follow
cuda-convnet, which computes ``1 + ceil((img - 11) / 4)`` conv1 positions.
A 224x224 input is padded by 3 pixels at the bottom and right (the kernel's
overhang), giving 55x55; a 227x227 input needs no padding and gives the
same 55x55. Shapes
then go 55 -> 27 (pool) -> 27 (conv2) -> 13 (pool) -> 13 (conv3-5) -> 6.

``towers=1`` is the paper's one-GPU comparison net (section 3.2 and its
footnote): one tower with the per-tower kernel counts in conv1-conv4, but a
full-size conv5 (256 kernels) and full-size fc6/fc7 (4096 units) so that the
two nets have about the same number of parameters.

Caffe's BVLC AlexNet (docs/other_alexnets.md) is this net with other LRN
settings: ``lrn_across_towers=True`` (its LRN window runs over all channels
of a layer, across the tower boundary), alpha divided by the window and
``k = 1``; ``python -m alexnet_jax.import_weights --source=caffe`` loads its
weights with the towers intact.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax import convolution
from alexnet_jax import lrn
from alexnet_jax import models
from alexnet_jax import pooling

# Paper Figure 2. Per-tower kernel counts of conv1-conv4 (the same in the
# one-tower comparison net); conv5 and the hidden FC layers are given for the
# whole net and divided among the towers.
CONV_FEATURES_PER_TOWER = (48, 128, 192, 192)
CONV5_FEATURES = 256
FC_FEATURES = 4096
# (kernel size, stride) of conv1-conv5; conv2-5 are padded to keep their size.
CONV_KERNELS = ((11, 4), (5, 1), (3, 1), (3, 1), (3, 1))
# fc8's bias is one for the whole net, not one per tower.
SHARED_PARAMS = (('fc8', 'bias'),)
# Paper section 5: weights N(0, 0.01); biases 1 where a ReLU should start
# with positive input (conv2, conv4, conv5, fc6, fc7), 0 elsewhere.
INIT_STDDEV = 0.01
BIAS_ONE_LAYERS = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')

# How each op is lowered (the same math; the choices are tested equal in
# values and gradients). 'auto' picks by ``jax.default_backend()``: on CPU
# what measured fastest with XLA:CPU on the 2-core machine (docs/design.md,
# "Per-backend implementations"); elsewhere the native forms XLA's GPU and
# TPU backends are built around (unmeasured here: time them with
# ``python -m alexnet_jax.benchmark --sweep``).
IMPLEMENTATIONS = {
    'conv1_impl': ('per_tower', 'grouped', 'patches', 'winograd'),
    'conv_impl': ('per_tower', 'grouped', 'patches', 'winograd'),  # conv2-5
    'pool_impl': tuple(pooling.IMPLEMENTATIONS),
    'lrn_impl': tuple(lrn.IMPLEMENTATIONS),
}
AUTO = {
    # conv2-conv5 as Winograd only with at least WINOGRAD_MIN_KERNELS
    # kernels a tower (else CPU_NARROW_CONV): its transformed inputs are the
    # same size whatever the kernel count, and on narrow layers it gains
    # nothing over the convolution (docs/design.md, "Winograd for
    # conv2-conv5"). conv1 runs by Winograd at every width.
    'cpu': dict(conv1_impl='winograd', conv_impl='winograd',
                pool_impl='separable', lrn_impl='custom_vjp'),
    'accelerator': dict(conv1_impl='grouped', conv_impl='grouped',
                        pool_impl='reduce_window', lrn_impl='autodiff'),
}
# Measured on the 2-core CPU, each layer forward and backward as the step
# runs it (benchmark --part=conv): conv2-conv5 with 16 to 24 kernels a
# tower (configs/default.py) ran within 1 ms of their per-tower
# convolutions by Winograd, either way; with 128 and more (the paper's net)
# Winograd was 1.4-3.3x faster than the next lowering. conv1 by Winograd
# was 2.1x faster than 'grouped', its lowering before, with 6 kernels a
# tower, and 2.5-2.9x faster than 'patches' with 48.
WINOGRAD_MIN_KERNELS = 32
CPU_NARROW_CONV = 'per_tower'
# The lowerings that are matmuls over rearranged inputs (``convolution.py``).
MATMUL_LOWERINGS = {'patches': convolution.patches_conv,
                    'winograd': convolution.winograd_conv}


def auto_implementations(backend: str | None = None) -> dict[str, str]:
  """What ``'auto'`` means on ``backend`` (default: JAX's default backend)."""
  backend = backend or jax.default_backend()
  return dict(AUTO['cpu' if backend == 'cpu' else 'accelerator'])


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
}


def conv1_output_size(image_size: int) -> int:
  """cuda-convnet's ``1 + ceil((img - 11) / 4)`` positions for conv1."""
  kernel, stride = CONV_KERNELS[0]
  return 1 + math.ceil((image_size - kernel) / stride)


def feature_sizes(image_size: int, pool_window: int = 3,
                  pool_stride: int = 2) -> tuple[int, int, int, int]:
  """Spatial sizes after conv1, pool1, pool2 and pool3 (55, 27, 13, 6 at 224).

  Raises:
    ValueError: if the image is too small for three poolings.
  """
  sizes = [conv1_output_size(image_size)]
  for _ in range(3):
    if sizes[-1] < pool_window:
      raise ValueError(
          f'image_size={image_size} is too small for AlexNet with pooling '
          f'window {pool_window}, stride {pool_stride}: a pooling input would '
          f'be {sizes[-1]}x{sizes[-1]}, smaller than its window. Use '
          f'image_size >= {min_image_size(pool_window, pool_stride)}.')
    sizes.append((sizes[-1] - pool_window) // pool_stride + 1)
  return tuple(sizes)


def min_image_size(pool_window: int = 3, pool_stride: int = 2) -> int:
  """The smallest square input that survives conv1 and three poolings."""
  need = pool_window  # the last pooling's input
  for _ in range(2):
    need = (need - 1) * pool_stride + pool_window
  kernel, stride = CONV_KERNELS[0]
  # Smallest image with 1 + ceil((img - kernel) / stride) >= need.
  return (need - 2) * stride + kernel + 1


def gather_towers(xs: Sequence[jax.Array],
                  axis_name: str | None) -> list[jax.Array]:
  """Hands every tower the channels of all towers (a paper crossing).

  Channels are ordered tower 0 first, on one device and across devices alike.
  """
  if axis_name is None:
    full = jnp.concatenate(xs, axis=-1) if len(xs) > 1 else xs[0]
    return [full] * len(xs)
  # Crosses devices: each device receives the other tower's activations.
  (x,) = xs
  return [lax.all_gather(x, axis_name, axis=x.ndim - 1, tiled=True)]


def sum_towers(partial: jax.Array, axis_name: str | None) -> jax.Array:
  """Adds the towers' partial products at fc8 (one weight block per tower).

  On one device the local blocks were already summed by a single matmul.
  """
  if axis_name is None:
    return partial
  # Crosses devices: each device receives the other tower's partial logits.
  return lax.psum(partial, axis_name)


def tower_index(local_index: int, axis_name: str | None) -> jax.Array | int:
  """The global tower number of the ``local_index``-th tower of this call."""
  if axis_name is None:
    return local_index
  return lax.axis_index(axis_name)


class TowerConv(nn.Module):
  """The towers' convolutions; kernel ``(towers, kh, kw, in, out)``.

  ``impl`` lowers them (the same function; see ``IMPLEMENTATIONS``):

  * ``'per_tower'``: one convolution per tower, even where the towers read
    the same input (conv1, conv3). XLA:CPU runs a grouped convolution
    several times slower than the groups as separate convolutions.
  * ``'grouped'``: one convolution for all towers: a grouped convolution
    (``feature_group_count=towers``, cuDNN's native form) where each tower
    reads its own input, the towers' kernels side by side where they read
    the same one.
  * ``'patches'``: one matmul over image patches (``convolution.py``), the
    towers' kernels side by side where they read the same input, one matmul
    per tower where not.
  * ``'winograd'``: Winograd's minimal filtering (``convolution.py``; conv1
    over 4x4 blocks of pixels), its matmuls shared or per tower as for
    ``'patches'``.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: Any = None  # ((top, bottom), (left, right)); None: 'SAME'
  bias_init_value: float = 0.0
  dtype: Any = jnp.float32
  init_stddev: float = INIT_STDDEV
  impl: str = 'per_tower'

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    k, towers = self.kernel_size, len(xs)
    shape = (towers, k, k, xs[0].shape[-1], self.features)
    kernel = self.param('kernel', models.normal_init(self.init_stddev),
                        shape)
    kernel = kernel.astype(self.dtype)
    bias = self.param('bias', nn.initializers.constant(self.bias_init_value),
                      (towers, self.features)).astype(self.dtype)
    padding = self.padding or convolution.same_padding(k)
    lowering = MATMUL_LOWERINGS.get(self.impl, convolution.conv)
    shared = all(x is xs[0] for x in xs)  # conv1, conv3: the same input
    if towers == 1 or self.impl == 'per_tower' or (
        self.impl in MATMUL_LOWERINGS and not shared):
      return [lowering(x, kernel[t], self.stride, padding) + bias[t]
              for t, x in enumerate(xs)]
    # All towers at once: kernels side by side, (k, k, in, towers * out).
    stacked = jnp.moveaxis(kernel, 0, -2).reshape(k, k, -1, towers *
                                                  self.features)
    if shared:
      y = lowering(xs[0], stacked, self.stride, padding)
    else:  # 'grouped' over the towers' channels side by side
      y = convolution.conv(jnp.concatenate(xs, axis=-1), stacked,
                           self.stride, padding, groups=towers)
    y = y + bias.reshape(-1)
    # A split, not slices: its gradient is one concatenate, where the
    # slices' was a zero-padded copy per tower, added (conv1: 50 ms of a
    # 1.5 s CPU step at batch 32).
    return jnp.split(y, towers, axis=-1)


class TowerDense(nn.Module):
  """One dense layer per tower; kernel ``(towers, in, out)``.

  The towers run as one batched matmul over the tower axis, so the large
  fc6/fc7 kernels are never sliced (XLA:CPU copies a slice).
  """
  features: int
  bias_init_value: float = 0.0
  dtype: Any = jnp.float32
  init_stddev: float = INIT_STDDEV

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    shape = (len(xs), xs[0].shape[-1], self.features)
    kernel = self.param('kernel', models.normal_init(self.init_stddev),
                        shape)
    bias = self.param('bias', nn.initializers.constant(self.bias_init_value),
                      (len(xs), self.features))
    y = jnp.einsum('tbi,tio->tbo', jnp.stack(xs), kernel.astype(self.dtype))
    return list(y + bias[:, None, :].astype(self.dtype))


class BlockSumDense(nn.Module):
  """fc8: each tower multiplies its own inputs by its own block; sum + bias.

  Kernel ``(towers, in_per_tower, out)``, bias ``(out,)`` shared by the towers.
  The local towers' blocks are one matmul over the concatenated inputs.
  """
  features: int
  axis_name: str | None = None
  dtype: Any = jnp.float32
  init_stddev: float = INIT_STDDEV

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
    shape = (len(xs), xs[0].shape[-1], self.features)
    kernel = self.param('kernel', models.normal_init(self.init_stddev),
                        shape)
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x = jnp.concatenate(xs, axis=-1) if len(xs) > 1 else xs[0]
    partial = x @ kernel.reshape(-1, self.features).astype(self.dtype)
    return sum_towers(partial, self.axis_name) + bias.astype(self.dtype)


class AlexNet(nn.Module):
  """The paper's network; ``apply(variables, images, train=...)`` on NHWC.

  Attributes:
    num_classes: size of the final softmax (paper: 1000).
    towers: 2 (the paper's split net) or 1 (the one-tower comparison net).
    activation: 'relu' (paper) or 'tanh' (the Figure 1 comparison).
    use_lrn: local response normalization after conv1 and conv2's ReLU.
    lrn_depth_radius, lrn_bias, lrn_alpha, lrn_beta: LRN settings in the
      paper's convention (alpha per squared term), see ``lrn.py``.
    pool_window, pool_stride: max pooling (paper: overlapping 3/2).
    width: multiplier on every layer's width, for small CPU variants.
    image_size: the square input size this net expects (224 or 227 give the
      paper's shapes; smaller sizes give small CPU variants).
    dropout_rate: on fc6's and fc7's outputs when ``train=True``.
    init_stddev: std of every weight's normal init (paper: 0.01; small
      variants learn much faster with more, see configs/default.py).
    relu_bias_init: the initial bias of conv2, conv4, conv5, fc6 and fc7
      (paper: 1; Caffe's BVLC model: 0.1, reporting a flat loss with 1).
    lrn_across_towers: False (paper): each tower normalizes over its own
      channels; True (Caffe's BVLC net): over all channels of the layer,
      so the window crosses the tower boundary (with ``model_axis`` that
      costs an all-gather of the layer's channels before each LRN).
    dtype: compute dtype (bfloat16 computes in bfloat16 with float32
      parameters; LRN accumulates in float32; logits are float32).
    conv1_impl, conv_impl, pool_impl, lrn_impl: how conv1, conv2-conv5,
      the max pooling and the LRN are lowered (``IMPLEMENTATIONS``; the same
      math); 'auto' picks by backend (``AUTO``). With one tower per device
      (``model_axis``) a layer's towers are apart, so 'grouped' and
      'per_tower' are the same convolution.
    model_axis: name of the mesh axis the towers are split over inside
      ``shard_map``; None runs all towers on this device.
  """
  num_classes: int = 1000
  towers: int = 2
  activation: str = 'relu'
  use_lrn: bool = True
  lrn_depth_radius: int = lrn.PAPER['depth_radius']
  lrn_bias: float = lrn.PAPER['bias']
  lrn_alpha: float = lrn.PAPER['alpha']
  lrn_beta: float = lrn.PAPER['beta']
  pool_window: int = 3
  pool_stride: int = 2
  width: float = 1.0
  image_size: int = 224
  dropout_rate: float = 0.5
  init_stddev: float = INIT_STDDEV
  relu_bias_init: float = 1.0
  lrn_across_towers: bool = False
  conv1_impl: str = 'auto'
  conv_impl: str = 'auto'
  pool_impl: str = 'auto'
  lrn_impl: str = 'auto'
  dtype: Any = jnp.float32
  model_axis: str | None = None

  feature_layer: ClassVar[str] = 'fc7'
  first_layer: ClassVar[str] = 'conv1'
  implementation_choices: ClassVar[dict] = IMPLEMENTATIONS

  def __post_init__(self):
    _validate_fields(self)
    super().__post_init__()

  def implementations(self) -> dict[str, str]:
    """Each ``*_impl`` field, with 'auto' resolved for this backend."""
    auto = auto_implementations()
    kernels = self.tower_features()
    narrow = min(kernels[f'conv{i}'] for i in range(2, 6)) < (
        WINOGRAD_MIN_KERNELS)
    if narrow and auto['conv_impl'] in MATMUL_LOWERINGS:
      auto['conv_impl'] = CPU_NARROW_CONV
    return {name: auto[name] if getattr(self, name) == 'auto'
            else getattr(self, name) for name in IMPLEMENTATIONS}

  def _local_towers(self) -> int:
    """How many towers one call computes (one per device when split)."""
    return 1 if self.model_axis is not None else self.towers

  def tower_features(self) -> dict[str, int]:
    """Kernels (units) per tower of each layer, after ``width``."""
    per_tower = CONV_FEATURES_PER_TOWER + (CONV5_FEATURES // self.towers,) \
        + (FC_FEATURES // self.towers,) * 2
    names = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
    return {name: max(1, round(n * self.width))
            for name, n in zip(names, per_tower)}

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Logits (float32) for NHWC ``images``; ``train`` turns dropout on.

    Each layer's per-tower outputs (after the activation; pool1, pool2 after
    LRN and pooling) are sown as ``'<layer>_out'`` (``'fc7_out'``, ...) into
    the ``'intermediates'`` collection when it is mutable:
    ``apply(..., mutable=['intermediates'])``.
    """
    self.check_images(images)
    act = lambda xs: [ACTIVATIONS[self.activation](x) for x in xs]

    xs = [images.astype(self.dtype)] * self._local_towers()
    xs = self._sow('conv1', act(self._conv('conv1')(xs)))
    xs = self._sow('pool1', self._pool(self._norm(xs)))
    xs = self._sow('conv2', act(self._conv('conv2')(xs)))
    xs = self._sow('pool2', self._pool(self._norm(xs)))
    xs = gather_towers(xs, self.model_axis)  # crossing 1: conv3's input
    xs = self._sow('conv3', act(self._conv('conv3')(xs)))
    xs = self._sow('conv4', act(self._conv('conv4')(xs)))
    xs = self._sow('conv5', act(self._conv('conv5')(xs)))
    xs = self._sow('pool5', self._pool(xs))
    xs = [x.reshape(x.shape[0], -1) for x in xs]
    for salt, name in enumerate(('fc6', 'fc7')):
      xs = gather_towers(xs, self.model_axis)  # crossings 2, 3: fc6/fc7 input
      xs = self._sow(name, act(self._dense(name)(xs)))
      xs = self._dropout(xs, train, salt)
    # Crossing 4: fc8's input, as a sum of per-tower blocks.
    logits = BlockSumDense(self.num_classes, axis_name=self.model_axis,
                           dtype=self.dtype, init_stddev=self.init_stddev,
                           name='fc8')(xs)
    return logits.astype(jnp.float32)

  def _conv(self, name: str) -> TowerConv:
    index = int(name[-1]) - 1
    kernel, stride = CONV_KERNELS[index]
    padding = None  # 'SAME'
    impl = self.implementations()['conv1_impl' if index == 0 else 'conv_impl']
    if index == 0:  # cuda-convnet's overhang, see the module docstring
      overhang = ((conv1_output_size(self.image_size) - 1) * stride + kernel
                  - self.image_size)
      padding = ((0, overhang), (0, overhang))
    return TowerConv(self.tower_features()[name], kernel, stride, padding,
                     name=name, impl=impl,
                     bias_init_value=self._bias_init(name),
                     dtype=self.dtype, init_stddev=self.init_stddev)

  def _bias_init(self, name: str) -> float:
    return self.relu_bias_init if name in BIAS_ONE_LAYERS else 0.0

  def _dense(self, name: str) -> TowerDense:
    return TowerDense(self.tower_features()[name],
                      bias_init_value=self._bias_init(name),
                      dtype=self.dtype, init_stddev=self.init_stddev,
                      name=name)

  def _sow(self, name: str, xs: list[jax.Array]) -> list[jax.Array]:
    self.sow('intermediates', f'{name}_out', tuple(xs))
    return xs

  def _norm(self, xs):
    if not self.use_lrn:
      return xs
    norm = lambda x: lrn.local_response_norm(
        x, depth_radius=self.lrn_depth_radius, bias=self.lrn_bias,
        alpha=self.lrn_alpha, beta=self.lrn_beta,
        impl=self.implementations()['lrn_impl'])
    if not self.lrn_across_towers:
      # Paper: per tower, the window never crosses the tower boundary.
      return [norm(x) for x in xs]
    # Caffe: one window over the layer's channels, towers side by side.
    full = norm(gather_towers(xs, self.model_axis)[0])
    width = xs[0].shape[-1]
    if self.model_axis is None:
      return [full[..., t * width:(t + 1) * width] for t in range(len(xs))]
    first = lax.axis_index(self.model_axis) * width
    return [lax.dynamic_slice_in_dim(full, first, width, axis=-1)]

  def _pool(self, xs):
    w, s = self.pool_window, self.pool_stride
    impl = self.implementations()['pool_impl']
    return [pooling.max_pool(x, w, s, impl) for x in xs]

  def _dropout(self, xs, train, salt):
    if not train or self.dropout_rate == 0.0:
      return xs
    rng = jax.random.fold_in(self.make_rng('dropout'), salt)
    # Each tower draws its own mask, the same one wherever it runs.
    return [models.dropout(
        x, jax.random.fold_in(rng, tower_index(t, self.model_axis)),
        self.dropout_rate) for t, x in enumerate(xs)]

  def tower_axes(self, tree):
    """A tree like ``tree``: 0 where a leaf's leading axis is the tower axis,
    None for scalars and for the parameters all towers share (fc8's bias).

    ``tree`` is the parameters or anything whose leaves end in parameter
    paths (gradients, optimizer state). Usable as ``jax.vmap`` ``in_axes``
    and to build sharding specs.
    """
    def axis(path, leaf):
      names = tuple(getattr(k, 'key', None) for k in path)
      scalar = not getattr(leaf, 'shape', ())
      return None if scalar or names[-2:] in SHARED_PARAMS else 0
    return jax.tree_util.tree_map_with_path(axis, tree)

  def kernels_by_tower(self, kernel):
    return kernel  # already [towers, k, k, 3, n]

  def check_images(self, images) -> None:
    """Raises ValueError unless ``images`` is ``(N, image_size, image_size, 3)``."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(
          f'AlexNet expects NHWC RGB images of shape (batch, {self.image_size}, '
          f'{self.image_size}, 3); got shape {shape}. Add a batch axis or '
          f'move channels last.')
    if shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(
          f'AlexNet was built for image_size={self.image_size} but got '
          f'{shape[1]}x{shape[2]} images (shape {shape}). Resize or crop the '
          f'images, or set image_size={shape[1]} (square inputs only).')


def _validate_fields(m: AlexNet) -> None:
  if m.activation not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {m.activation!r}; use one of '
                     f'{sorted(ACTIVATIONS)}.')
  if m.towers not in (1, 2):
    raise ValueError(f'towers must be 2 (the paper net) or 1 (one tower, half '
                     f'the kernels); got towers={m.towers!r}.')
  models.check_common_fields(m, 'the paper net')
  if not m.init_stddev > 0:
    raise ValueError(f'init_stddev must be > 0 (paper: 0.01); got '
                     f'{m.init_stddev!r}.')
  if not 1 <= m.pool_window <= 11 or m.pool_stride < 1:
    raise ValueError(f'pool_window must be in [1, 11] and pool_stride >= 1 '
                     f'(paper: 3 and 2); got {m.pool_window}, {m.pool_stride}.')
  for name, choices in IMPLEMENTATIONS.items():
    if getattr(m, name) not in ('auto',) + choices:
      raise ValueError(f'Unknown {name} {getattr(m, name)!r}; use one of '
                       f'{["auto", *choices]} (the same math; \'auto\' picks '
                       f'by backend, here {auto_implementations()[name]!r}).')
  if m.use_lrn:
    lrn.check_args(m.lrn_depth_radius, m.lrn_bias, m.lrn_alpha, m.lrn_beta)
  feature_sizes(m.image_size, m.pool_window, m.pool_stride)


Model = AlexNet
