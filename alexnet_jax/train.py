"""Training (paper section 5): model and optimizer from a config, train step.

The update is the paper's

    v <- 0.9 v - 0.0005 * lr * w - lr * grad;   w <- w + v

written as ``optax.chain(add_decayed_weights(wd), sgd(lr, momentum))``, which
is exactly this while the learning rate is constant. As in cuda-convnet's
layer files, weight decay applies to weights, not biases, unless
``config.weight_decay_biases`` is set.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import ml_collections
import optax
from flax.training import train_state

from alexnet_jax import models

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(model_config: ml_collections.ConfigDict,
                 **overrides: Any) -> models.AlexNet:
  """An ``AlexNet`` from ``config.model`` (dtype given by name)."""
  fields = {**model_config, **overrides}
  dtype = fields.pop('dtype', 'float32')
  if dtype not in DTYPES:
    raise ValueError(f'Unknown model dtype {dtype!r}; use one of '
                     f'{sorted(DTYPES)}.')
  return models.AlexNet(**fields, dtype=DTYPES[dtype])


def create_optimizer(config: ml_collections.ConfigDict
                     ) -> optax.GradientTransformation:
  """Weight decay chained with SGD momentum (the paper's update rule)."""
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: config.weight_decay_biases or path[-1].key != 'bias',
        params)
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.sgd(config.learning_rate, momentum=config.momentum),
  )


def create_train_state(config: ml_collections.ConfigDict, model: models.AlexNet,
                       rng: jax.Array) -> train_state.TrainState:
  """Parameters with the paper's init and a fresh optimizer state."""
  size = model.image_size
  params = jax.jit(model.init, static_argnames='train')(
      rng, jnp.zeros((1, size, size, 3), model.dtype), train=False)['params']
  return train_state.TrainState.create(
      apply_fn=model.apply, params=params, tx=create_optimizer(config))


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the batch (integer labels)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(state: train_state.TrainState, images: jax.Array,
               labels: jax.Array, rng: jax.Array, *,
               data_axis: str | None = None
               ) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One SGD step on a batch; ``rng`` drives dropout.

  Inside ``shard_map`` with the batch split over ``data_axis``, the loss and
  metrics are means over the whole global batch and each data shard draws
  its own dropout masks.
  """
  if data_axis is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(data_axis))

  def global_mean(x):
    return x if data_axis is None else lax.pmean(x, data_axis)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images, train=True,
                            rngs={'dropout': rng})
    # The gradient of the global mean w.r.t. parameters that every data shard
    # holds whole is summed over the shards by JAX: the data-parallel
    # all-reduce.
    return global_mean(cross_entropy_loss(logits, labels)), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  state = state.apply_gradients(grads=grads)
  accuracy = global_mean(jnp.mean(jnp.argmax(logits, -1) == labels))
  return state, {'loss': loss, 'top1_error': 1.0 - accuracy}


def eval_step(state: train_state.TrainState, images: jax.Array,
              labels: jax.Array, mask: jax.Array | None = None, *,
              data_axis: str | None = None) -> dict[str, jax.Array]:
  """Sums over a batch, to be added up over an evaluation set: ``loss``,
  ``top1_errors``, ``top5_errors`` and ``count``. Dropout is off.

  ``mask`` (the input pipeline's, False on padding) leaves rows out of every
  sum. Inside ``shard_map`` the sums cover the whole global batch.
  """
  logits = state.apply_fn({'params': state.params}, images, train=False)
  weight = (jnp.ones(labels.shape, jnp.float32) if mask is None
            else mask.astype(jnp.float32))
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  k = min(5, logits.shape[-1])
  top5 = jnp.any(lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
  sums = {
      'loss': jnp.sum(weight * losses),
      'top1_errors': jnp.sum(weight * (jnp.argmax(logits, -1) != labels)),
      'top5_errors': jnp.sum(weight * ~top5),
      'count': jnp.sum(weight),
  }
  return sums if data_axis is None else lax.psum(sums, data_axis)
