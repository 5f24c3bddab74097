"""Models by name: ``config.model.name`` picks ``alexnet_jax/models/<name>.py``.

* ``alexnet``: the paper's two-tower net (``alexnet.py``).
* ``alexnet_owt``: torchvision's one-tower AlexNet, Krizhevsky's "one weird
  trick" net (``alexnet_owt.py``).

Adding a model is one module here that defines ``Model`` (a Flax linen
module with the interface below) and one config that sets
``config.model.name`` and the module's fields. Nothing else reads a
model's layer names: training, the device split, prediction and the
figures go through this interface.

The interface (:class:`Interface`):

* ``apply(variables, images, train=...)`` on NHWC float images of shape
  ``(batch, image_size, image_size, 3)``, returning float32 logits; dropout
  draws from the ``'dropout'`` rng. Each layer's output is sown into the
  ``'intermediates'`` collection as ``'<layer>_out'``: a tuple with one array
  per tower this call computes.
* ``towers``: how many towers the parameters carry (1: no tower axis).
* ``image_size``: the square input size.
* ``feature_layer``: the layer whose outputs (towers side by side) are the
  features of the paper's nearest-neighbour figure (section 6.1).
* ``first_layer``: the parameter collection whose ``'kernel'`` the
  first-layer figure (the paper's Figure 3) shows, and
  ``kernels_by_tower(kernel)``: that kernel as ``[towers, k, k, 3, n]``.
* ``tower_axes(tree)``: for a tree whose leaves end in parameter paths
  (parameters, gradients, optimizer state), 0 where a leaf's leading axis
  is the tower axis and None elsewhere; the device split shards that axis.
* ``check_images(images)``: a ValueError naming the expected shape.
* A model with ``towers > 1`` also takes ``model_axis``: the mesh axis its
  towers are split over inside ``shard_map`` (None: all on this device).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class Interface(Protocol):
  """What the rest of the code may use of a model (see the module doc)."""
  towers: int
  image_size: int
  feature_layer: ClassVar[str]
  first_layer: ClassVar[str]

  def apply(self, variables, images, *, train: bool, **kwargs) -> Any: ...

  def tower_axes(self, tree) -> Any: ...

  def kernels_by_tower(self, kernel: np.ndarray) -> np.ndarray: ...

  def check_images(self, images) -> None: ...


def names() -> list[str]:
  """The models this package holds: one per module that defines ``Model``."""
  return sorted(info.name for info in pkgutil.iter_modules(__path__)
                if hasattr(_module(info.name), 'Model'))


def _module(name: str):
  return importlib.import_module(f'{__name__}.{name}')


def get(name: str) -> type:
  """The ``Model`` class of ``alexnet_jax/models/<name>.py``.

  Raises:
    ValueError: no such model; the message lists the known ones.
  """
  known = names()
  if name not in known:
    raise ValueError(f'Unknown model name {name!r} (config.model.name); use '
                     f'one of {known}.')
  return _module(name).Model


def check_common_fields(model, reference: str) -> None:
  """ValueErrors for the fields every model here has (``reference`` names
  the net whose width is 1.0)."""
  if not isinstance(model.num_classes, int) or model.num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer; got '
                     f'{model.num_classes!r}.')
  if not 0.0 <= model.dropout_rate < 1.0:
    raise ValueError(f'dropout_rate must be in [0, 1); got '
                     f'{model.dropout_rate!r}.')
  if not model.width > 0:
    raise ValueError(f'width must be > 0 (1.0 is {reference}); got '
                     f'{model.width!r}.')


def drawn_flat(draw):
  """An initializer ``init(key, shape, dtype)`` that draws
  ``draw(key, (size,), dtype)`` and reshapes it to ``shape``: the same
  values, bit for bit, as drawing ``shape`` directly (JAX's threefry
  counts the elements in row-major order), but XLA:CPU compiles a flat
  draw at once, where some 5-D kernel shapes took it seconds each
  (measured: conv3's (2, 3, 3, 16, 12) 5.7 s, its flat draw 0.2 s)."""
  def init(key, shape, dtype=jnp.float32):
    return draw(key, (math.prod(shape),), dtype).reshape(shape)
  return init


def normal_init(stddev: float):
  """Weights N(0, stddev^2): ``flax.linen.initializers.normal``'s values
  (``drawn_flat``)."""
  return drawn_flat(lambda key, shape, dtype: jax.random.normal(
      key, shape, dtype) * stddev)


def dropout(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
  """Section 4.2's dropout: each unit zeroed with probability ``rate``, the
  rest scaled by ``1 / (1 - rate)`` so that test time needs no change."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(key, keep, x.shape)
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


def num_params(params) -> int:
  """Total number of parameters in a tree."""
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
