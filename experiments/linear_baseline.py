"""A linear classifier on raw pixels: how hard the generated dataset is.

    python -m experiments.linear_baseline [--config=configs/default.py]

Softmax regression on the same centre crops the network is evaluated on
(``model.image_size`` pixels a side, mean subtracted, divided by 64), trained
with Adam on the whole training split for ``--epochs`` full passes; prints
one JSON line with the validation top-1 error. docs/results.md compares it with
the network trained by ``configs/default.py``.
"""

import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax import steps

FLAGS = flags.FLAGS


def pixels(builder, split, config):
  images, labels = input_pipeline.centre_crops(
      builder, split, crop_size=config.model.image_size,
      resize=config.input.resize)
  return images.reshape(len(images), -1) / 64.0, labels


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  config = FLAGS.config
  builder = input_pipeline.dataset_builder(config.input.dataset,
                                           config.input.data_dir or None)
  x, y = pixels(builder, config.input.train_split, config)
  x_val, y_val = pixels(builder, config.input.eval_split, config)
  classes = config.model.num_classes
  params = {'w': jnp.zeros((x.shape[1], classes)), 'b': jnp.zeros(classes)}
  tx = optax.adamw(FLAGS.learning_rate, weight_decay=FLAGS.weight_decay)
  opt_state = tx.init(params)

  def loss_fn(params):
    logits = x @ params['w'] + params['b']
    return steps.cross_entropy_loss(logits, y)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for _ in range(FLAGS.epochs):
    params, opt_state, loss = step(params, opt_state)
  error = lambda a, b: float(np.mean(
      np.argmax(a @ params['w'] + params['b'], -1) != b))
  print(json.dumps({'train_top1_error': error(x, y),
                    'validation_top1_error': error(x_val, y_val),
                    'train_loss': float(loss), 'epochs': FLAGS.epochs}))


if __name__ == '__main__':
  # Defined here, not on import (see alexnet_jax/evaluate.py).
  config_flags.DEFINE_config_file('config', 'configs/default.py', 'Config.',
                                  lock_config=True)
  flags.DEFINE_integer('epochs', 100, 'Full-batch passes.')
  flags.DEFINE_float('learning_rate', 1e-3, 'Adam step size.')
  flags.DEFINE_float('weight_decay', 1e-4, 'L2 on the weights.')
  app.run(main)
