"""The pieces of one training step (paper section 5) on one device: model
and optimizer from a config, the train step and the eval step.

The update is the paper's

    v <- 0.9 v - 0.0005 * lr * w - lr * grad;   w <- w + v

written as ``add_decayed_weights(wd)``, then a scale by ``-lr``, then
``trace(0.9)``: the momentum ``v`` holds learning-rate-scaled steps, as in
the paper, so after the learning rate drops the steps already in ``v`` decay
away over a few dozen steps (``optax.sgd`` instead keeps unscaled gradients,
so a drop acts at once; both are the same while the rate is constant). As
in cuda-convnet's layer files, weight decay applies to weights, not biases,
unless ``config.weight_decay_biases`` is set. The rate is an injected
hyperparameter of the optimizer state (``learning_rate``/``set_learning_rate``)
so that the host can apply the plateau rule between steps; both find it by
name (``optax.tree_utils``), not by its place in the chain.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import ml_collections
import optax
from flax import struct
from flax.training import train_state

from alexnet_jax import models
from alexnet_jax import precision


def create_model(model_config: ml_collections.ConfigDict,
                 **overrides: Any) -> models.Interface:
  """The model ``config.model.name`` names, built from the other fields of
  ``config.model`` (dtype given by name)."""
  fields = {**model_config, **overrides}
  if 'name' not in fields:
    raise ValueError(f'config.model has no name; set config.model.name to '
                     f'one of {models.names()} (configs/imagenet.py: '
                     f'\'alexnet\', the paper\'s net).')
  model_class = models.get(fields.pop('name'))
  dtype = precision.compute_dtype(fields.pop('dtype', 'float32'))
  known = {f.name for f in dataclasses.fields(model_class)} - {
      'parent', 'name', 'dtype'}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'config.model has fields {unknown} that model '
                     f'{model_config.name!r} does not take; its fields are '
                     f'{sorted(known)}.')
  return model_class(**fields, dtype=dtype)


class TrainState(train_state.TrainState):
  """Flax's train state, plus the model (static), whose ``tower_axes`` the
  device split reads, and the dynamic loss scale of a float16 run
  (``precision.DynamicLossScale``; None: no scaling)."""
  model: Any = struct.field(pytree_node=False, default=None)
  loss_scale: Any = None


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: float | optax.Schedule | None = None
                     ) -> optax.GradientTransformation:
  """The paper's update rule; ``learning_rate`` defaults to the config's."""
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: config.weight_decay_biases or path[-1].key != 'bias',
        params)
  if learning_rate is None:
    learning_rate = config.learning_rate
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.inject_hyperparams(optax.scale_by_learning_rate)(
          learning_rate=learning_rate),
      optax.trace(decay=config.momentum),
  )


def _hyperparam(path, _) -> bool:
  # The injected value, not the schedule's own state, which
  # ``inject_hyperparams`` keeps under the same name in hyperparams_states.
  return len(path) > 1 and getattr(path[-2], 'name', None) == 'hyperparams'


def learning_rate(state: TrainState) -> jax.Array:
  """The rate the last update used (the next one, for a constant rate)."""
  return optax.tree_utils.tree_get(state.opt_state, 'learning_rate',
                                   filtering=_hyperparam)


def set_learning_rate(state: TrainState, value: float) -> TrainState:
  """``state`` with a new constant rate (keeps the old value's sharding).

  Raises:
    ValueError: the rate follows a schedule, which would overwrite it at
      the next step.
  """
  if optax.tree_utils.tree_get(state.opt_state, 'hyperparams_states'):
    raise ValueError('The learning rate follows a schedule, which sets it '
                     'anew every step; set_learning_rate is for a constant '
                     'rate (config.schedule=\'plateau\').')
  old = learning_rate(state)
  new = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
  return state.replace(opt_state=optax.tree_utils.tree_set(
      state.opt_state, _hyperparam, learning_rate=new))


def momentum(state: TrainState):
  """The momentum ``v`` (learning-rate-scaled steps), a tree like the
  parameters."""
  return optax.tree_utils.tree_get(state.opt_state, 'trace')


def init_params(model: models.Interface, rng: jax.Array):
  """The model's freshly initialized parameters (traced on one image)."""
  size = model.image_size
  return model.init(rng, jnp.zeros((1, size, size, 3), model.dtype),
                    train=False)['params']


def create_train_state(config: ml_collections.ConfigDict,
                       model: models.Interface, rng: jax.Array,
                       learning_rate: float | optax.Schedule | None = None
                       ) -> TrainState:
  """Parameters with the model's init, a fresh optimizer state and the
  config's loss scale."""
  loss_scale = precision.create_loss_scale(config)  # its errors first
  params = jax.jit(functools.partial(init_params, model))(rng)
  return TrainState.create(
      apply_fn=model.apply, params=params,
      tx=create_optimizer(config, learning_rate), model=model,
      loss_scale=loss_scale)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the batch (integer labels)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(state: TrainState, images: jax.Array,
               labels: jax.Array, rng: jax.Array, *,
               data_axis: str | None = None, model_axis: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a batch; ``rng`` drives dropout.

  Inside ``shard_map`` with the batch split over ``data_axis``, the loss and
  metrics are means over the whole global batch and each data shard draws
  its own dropout masks. With a loss scale (``state.loss_scale``) the
  gradients are of the scaled loss, divided back; a step whose gradients
  overflowed on any device of ``model_axis`` leaves the parameters and
  the optimizer state as they were (so a learning-rate schedule counts
  applied updates; the step count still advances: the batch is spent)
  and halves the scale.
  """
  scale = state.loss_scale
  if data_axis is not None:
    # Shard 0 of a one-device data axis as a constant: the same key, but
    # nothing after the dropout then varies over the axis, so no gradient
    # is all-reduced over it.
    shard = lax.axis_index(data_axis) if lax.axis_size(data_axis) > 1 else 0
    rng = jax.random.fold_in(rng, shard)

  def global_mean(x):
    return x if data_axis is None else lax.pmean(x, data_axis)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images, train=True,
                            rngs={'dropout': rng})
    # The gradient of the global mean w.r.t. parameters that every data shard
    # holds whole is summed over the shards by JAX: the data-parallel
    # all-reduce.
    loss = global_mean(cross_entropy_loss(logits, labels))
    return (loss if scale is None else loss * scale.scale), (loss, logits)

  (_, (loss, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  if scale is None:
    state = state.apply_gradients(grads=grads)
  else:
    grads = jax.tree.map(lambda g: g / scale.scale, grads)
    finite = precision.all_finite(grads, (model_axis,) if model_axis else ())
    new = state.apply_gradients(grads=grads)
    state = new.replace(
        params=precision.select(finite, new.params, state.params),
        opt_state=precision.select(finite, new.opt_state, state.opt_state),
        loss_scale=scale.adjust(finite))
  accuracy = global_mean(jnp.mean(jnp.argmax(logits, -1) == labels))
  return state, {'loss': loss, 'top1_error': 1.0 - accuracy}


def eval_step(state: TrainState, images: jax.Array,
              labels: jax.Array, mask: jax.Array | None = None, *,
              data_axis: str | None = None) -> dict[str, jax.Array]:
  """Sums over a batch, to be added up over an evaluation set: ``loss``,
  ``top1_errors``, ``top5_errors`` and ``count``. Dropout is off.

  ``images`` is ``[b, h, w, 3]``, or ``[b, crops, h, w, 3]`` for the paper's
  ten-crop test (section 4.1): then the prediction is the average of the
  crops' softmax outputs. ``mask`` (the input pipeline's, False on padding)
  leaves rows out of every sum. Inside ``shard_map`` the sums cover the
  whole global batch.
  """
  crops = images.shape[1] if images.ndim == 5 else 1
  logits = state.apply_fn({'params': state.params},
                          images.reshape((-1,) + images.shape[-3:]),
                          train=False)
  logits = logits.reshape(labels.shape[0], crops, -1)
  # log of the mean softmax over crops (just log_softmax for one crop).
  log_probs = (jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=1)
               - jnp.log(crops))
  weight = (jnp.ones(labels.shape, jnp.float32) if mask is None
            else mask.astype(jnp.float32))
  losses = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  k = min(5, log_probs.shape[-1])
  top5 = jnp.any(lax.top_k(log_probs, k)[1] == labels[:, None], axis=-1)
  sums = {
      'loss': jnp.sum(weight * losses),
      'top1_errors': jnp.sum(weight * (jnp.argmax(log_probs, -1) != labels)),
      'top5_errors': jnp.sum(weight * ~top5),
      'count': jnp.sum(weight),
  }
  return sums if data_axis is None else lax.psum(sums, data_axis)
