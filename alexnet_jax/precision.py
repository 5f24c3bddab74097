"""Training in a narrow type: the compute dtypes and dynamic loss scaling.

The paper trained in float32. On accelerators the same net computes in
bfloat16 or float16 with float32 parameters (mixed precision: the model
casts each kernel to its ``dtype``, the optimizer updates float32 weights,
LRN accumulates in float32, logits and loss are float32).

bfloat16 has float32's exponent range, so gradients neither overflow nor
underflow where float32's would not; it needs no loss scaling. float16 has
5 exponent bits: activation gradients below 6e-8 (2^-24) round to zero, and
a net's are mostly that small (a loss averaged over the batch, then ten
layers of products of small weights). Dynamic loss scaling (Micikevicius et
al., 2018, "Mixed precision training") multiplies the loss by a large
``scale`` before the backward pass and divides the float32 parameter
gradients by it again; when a step's gradients overflow (some are inf or
NaN) the step is skipped and the scale halved, and after ``growth_interval``
good steps in a row it doubles. The rule and its defaults (2^15 to start,
x2 after 2,000 finite steps, /2 on overflow, within float32's range) are
those of
``flax.training.dynamic_scale.DynamicScale``; this module has its own copy
because flax's decides "finite" from the gradients one device holds, while
with the paper's split a tower's gradients live on one device only, and
every device must skip the same steps (``all_finite``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import ml_collections
from flax import struct

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}
LOSS_SCALES = ('none', 'dynamic')


def compute_dtype(name: str):
  """The dtype ``config.model.dtype`` names.

  Raises:
    ValueError: an unknown name; the message lists the known ones.
  """
  if name not in DTYPES:
    raise ValueError(f'Unknown model dtype {name!r}; use one of '
                     f'{sorted(DTYPES)}.')
  return DTYPES[name]


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown ``config.model.dtype`` or
  ``config.loss_scale``, and for float16 without loss scaling."""
  dtype = config.model.get('dtype', 'float32')
  compute_dtype(dtype)
  loss_scale = config.get('loss_scale', 'none')
  if loss_scale not in LOSS_SCALES:
    raise ValueError(f'Unknown loss_scale {loss_scale!r}; use one of '
                     f'{list(LOSS_SCALES)}.')
  if dtype == 'float16' and loss_scale != 'dynamic':
    raise ValueError(
        'model.dtype=float16 needs --config.loss_scale=dynamic: float16 '
        'rounds gradients below 6e-8 to zero, and most of a net\'s '
        'activation gradients are that small, so without scaling the loss '
        'training silently stops learning. (bfloat16 has float32\'s range '
        'and needs no scaling.)')


class DynamicLossScale(struct.PyTreeNode):
  """The loss scale and the count of finite steps since it last changed
  (see the module docstring); a leaf of the train state."""
  scale: jax.Array
  finite_steps: jax.Array
  growth_interval: int = struct.field(pytree_node=False, default=2000)
  growth_factor: float = struct.field(pytree_node=False, default=2.0)
  backoff_factor: float = struct.field(pytree_node=False, default=0.5)

  @classmethod
  def create(cls, initial: float = 2.0 ** 15, **options) -> DynamicLossScale:
    return cls(scale=jnp.asarray(initial, jnp.float32),
               finite_steps=jnp.zeros((), jnp.int32), **options)

  def adjust(self, finite: jax.Array) -> DynamicLossScale:
    """The scale after a step whose gradients were ``finite`` (or not): as
    flax's, it grows on a finite step after ``growth_interval`` finite
    steps in a row, and stays between float32's smallest normal and its
    largest (0 or inf would never move again)."""
    limits = jnp.finfo(jnp.float32)
    grow = self.finite_steps == self.growth_interval
    scale = jnp.where(
        finite,
        jnp.where(grow, jnp.minimum(self.scale * self.growth_factor,
                                    limits.max), self.scale),
        jnp.maximum(self.scale * self.backoff_factor, limits.tiny))
    finite_steps = jnp.where(finite & ~grow, self.finite_steps + 1, 0)
    return self.replace(scale=scale, finite_steps=finite_steps)


def create_loss_scale(config: ml_collections.ConfigDict
                      ) -> DynamicLossScale | None:
  """The config's loss scale: None (no scaling) or a fresh dynamic one."""
  check(config)
  return (DynamicLossScale.create() if config.get('loss_scale') == 'dynamic'
          else None)


def all_finite(tree: Any, axis_names: tuple[str, ...] = ()) -> jax.Array:
  """Whether every leaf of ``tree`` is finite on every device of
  ``axis_names`` (inside ``shard_map``)."""
  finite = jnp.stack([jnp.all(jnp.isfinite(x))
                      for x in jax.tree.leaves(tree)]).all()
  # What crosses: one int per device. Each tower's device holds only its
  # own tower's gradients, and all must agree whether to skip the step.
  for axis in axis_names:
    finite = lax.pmin(finite.astype(jnp.int32), axis).astype(bool)
  return finite


def select(finite: jax.Array, new: Any, old: Any) -> Any:
  """``new`` where ``finite``, else ``old``, leaf by leaf (no branch: one
  program for both)."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
