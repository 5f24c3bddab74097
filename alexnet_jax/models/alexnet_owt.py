"""torchvision's AlexNet: Krizhevsky's "one weird trick" net (2014), one tower.

What differs from the paper's net (``alexnet.py``; docs/other_alexnets.md):
one tower of 64-192-384-256-256 kernels (no groups), no LRN, conv1 padded by
2 on every side (224 -> 55), max pooling 3/2 as in the paper, then an
adaptive average pooling to 6x6 (the identity at 224 inputs), dropout on
fc6's and fc7's *inputs*, and PyTorch's default init.

Layouts are this project's (NHWC activations, HWIO kernels, ``(in, out)``
dense kernels, fc6's inputs flattened in H, W, C order);
``python -m alexnet_jax.import_weights --source=torchvision`` converts
torchvision's state dict into them. The parameters have no tower axis, so
the device split runs this net data-parallel only.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models
from alexnet_jax import pooling

# torchvision.models.alexnet: conv1-conv5 as (kernels, kernel size, stride,
# padding), the hidden dense layers, and the adaptive pooling's output.
CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1),
         (256, 3, 1, 1))
POOL_AFTER = ('conv1', 'conv2', 'conv5')
FC_FEATURES = 4096
POOLED_SIZE = 6


def _torch_default_init(fan_in: int):
  """PyTorch's default for conv and linear layers, weights and biases
  alike: uniform in +-1/sqrt(fan_in) (its kaiming_uniform with a=sqrt(5))."""
  bound = 1.0 / math.sqrt(fan_in)
  return models.drawn_flat(lambda key, shape, dtype: jax.random.uniform(
      key, shape, dtype, -bound, bound))


def adaptive_average_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``[size_out, size_in]``: row ``i`` averages PyTorch's adaptive window
  ``floor(i * in / out)`` to ``ceil((i + 1) * in / out)``."""
  matrix = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -(-((i + 1) * size_in) // size_out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


class AlexNetOWT(nn.Module):
  """torchvision's AlexNet; ``apply(variables, images, train=...)`` on NHWC.

  Attributes:
    num_classes: size of the final softmax (torchvision: 1000).
    width: multiplier on every layer's width, for small CPU variants.
    image_size: the square input size (torchvision: 224).
    dropout_rate: on fc6's and fc7's inputs when ``train=True``.
    dtype: compute dtype (parameters stay float32; logits are float32).
  """
  num_classes: int = 1000
  width: float = 1.0
  image_size: int = 224
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  towers: ClassVar[int] = 1
  feature_layer: ClassVar[str] = 'fc7'
  first_layer: ClassVar[str] = 'conv1'

  def __post_init__(self):
    _validate_fields(self)
    super().__post_init__()

  def features(self) -> dict[str, int]:
    """Kernels (units) of each layer, after ``width``."""
    counts = [c[0] for c in CONVS] + [FC_FEATURES, FC_FEATURES]
    names = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
    return {name: max(1, round(n * self.width))
            for name, n in zip(names, counts)}

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Logits (float32); each layer's output is sown as ``'<layer>_out'``
    (a one-tower tuple) into ``'intermediates'``, as in ``alexnet.py``."""
    self.check_images(images)
    features = self.features()
    x = images.astype(self.dtype)
    for i, (_, size, stride, pad) in enumerate(CONVS):
      name = f'conv{i + 1}'
      fan_in = size * size * x.shape[-1]
      x = nn.relu(nn.Conv(
          features[name], (size, size), (stride, stride),
          padding=((pad, pad), (pad, pad)), dtype=self.dtype,
          kernel_init=_torch_default_init(fan_in),
          bias_init=_torch_default_init(fan_in), name=name)(x))
      self._sow(name, x)
      if name in POOL_AFTER:
        x = pooling.max_pool(x, 3, 2)
    x = self._sow('pool5', self._adaptive_average(x))
    x = x.reshape(x.shape[0], -1)
    for salt, name in enumerate(('fc6', 'fc7', 'fc8')):
      if name != 'fc8':
        x = self._dropout(x, train, salt)
      units = self.num_classes if name == 'fc8' else features[name]
      x = nn.Dense(units, dtype=self.dtype,
                   kernel_init=_torch_default_init(x.shape[-1]),
                   bias_init=_torch_default_init(x.shape[-1]), name=name)(x)
      if name != 'fc8':
        x = self._sow(name, nn.relu(x))
    return x.astype(jnp.float32)

  def _sow(self, name: str, x: jax.Array) -> jax.Array:
    self.sow('intermediates', f'{name}_out', (x,))
    return x

  def _adaptive_average(self, x: jax.Array) -> jax.Array:
    rows = adaptive_average_matrix(x.shape[1], POOLED_SIZE)
    cols = adaptive_average_matrix(x.shape[2], POOLED_SIZE)
    return jnp.einsum('ih,nhwc,jw->nijc', rows.astype(x.dtype), x,
                      cols.astype(x.dtype))

  def _dropout(self, x, train, salt):
    if not train or self.dropout_rate == 0.0:
      return x
    return models.dropout(
        x, jax.random.fold_in(self.make_rng('dropout'), salt),
        self.dropout_rate)

  def tower_axes(self, tree):
    """No parameter has a tower axis: None for every leaf."""
    return jax.tree.map(lambda _: None, tree)

  def kernels_by_tower(self, kernel):
    return kernel[None]  # [k, k, 3, n] as the one tower's block

  def check_images(self, images) -> None:
    """Raises ValueError unless ``images`` is ``(N, size, size, 3)``."""
    shape = tuple(images.shape)
    want = (self.image_size, self.image_size, 3)
    if len(shape) != 4 or shape[1:] != want:
      raise ValueError(
          f'alexnet_owt expects NHWC RGB images of shape (batch, '
          f'{self.image_size}, {self.image_size}, 3); got shape {shape}. '
          f'Resize or crop the images (or set image_size), add a batch axis '
          f'or move channels last.')


def _validate_fields(m: AlexNetOWT) -> None:
  models.check_common_fields(m, 'torchvision\'s net')
  # conv1 (stride 4, pad 2) and three 3/2 poolings need at least 63 pixels.
  size = (m.image_size + 4 - 11) // 4 + 1
  for _ in range(3):
    if size < 3:
      raise ValueError(
          f'image_size={m.image_size} is too small for alexnet_owt: a '
          f'pooling input would be smaller than its 3x3 window; use '
          f'image_size >= 63.')
    size = (size - 3) // 2 + 1


Model = AlexNetOWT
