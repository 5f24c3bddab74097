"""Figure 1: epochs a four-layer convolutional net needs to reach 25%
training error with ReLUs against tanh units (section 3.1: "six times
faster" with ReLUs, on CIFAR-10).

    python -m experiments.relu_tanh --config=configs/relu_tanh.py \\
        --workdir=/tmp/relu_tanh

For each activation the learning rates of ``config.learning_rates`` are
tried on seed 0 (the paper picked each net's fastest rate) and the fastest
is run for the other seeds. The training error of an epoch is the error on
its minibatches while training (cuda-convnet's figure, the paper's y axis).
A run stops at the target or after ``config.num_epochs``; a sweep run also
stops once it is slower than the fastest rate so far. Writes
``results.json``, ``results.md`` and ``relu_tanh.png`` into the workdir.
"""

from __future__ import annotations

# Before the imports below start anything: huge pages for XLA:CPU's arrays.
from alexnet_jax import host_memory  # pylint: disable=g-bad-import-order
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

import functools
import json
from typing import Sequence

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import optax
from ml_collections import config_flags

from alexnet_jax import figures
from alexnet_jax import input_pipeline
from alexnet_jax.models import alexnet
from alexnet_jax import steps
from alexnet_jax import storage

FLAGS = flags.FLAGS


class FourLayerNet(nn.Module):
  """Three conv layers with 3/2 max pooling, then the softmax layer.

  Weights N(0, ``init_stddev``) as in the paper's section 5, or with None
  flax's LeCun normal (variance 1 / fan-in); biases 0.
  """
  activation: str
  features: Sequence[int]
  kernel_size: int
  num_classes: int
  init_stddev: float | None = None

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    init = (nn.initializers.lecun_normal() if self.init_stddev is None
            else nn.initializers.normal(self.init_stddev))
    x = images
    for features in self.features:
      x = nn.Conv(features, (self.kernel_size,) * 2, padding='SAME',
                  kernel_init=init)(x)
      x = alexnet.ACTIVATIONS[self.activation](x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    return nn.Dense(self.num_classes, kernel_init=init)(
        x.reshape(x.shape[0], -1))


def load_images(config: ml_collections.ConfigDict, split: str
                ) -> tuple[np.ndarray, np.ndarray]:
  """The split's centre crops, scaled to unit standard deviation, and
  labels."""
  builder = input_pipeline.dataset_builder(config.input.dataset,
                                           config.input.data_dir or None)
  images, labels = input_pipeline.centre_crops(
      builder, split, crop_size=config.model.image_size,
      resize=config.input.resize)
  return images / images.std(), labels


def _train_step(model, tx, params, opt_state, images, labels):
  def loss_fn(params):
    logits = model.apply({'params': params}, images)
    return steps.cross_entropy_loss(logits, labels), logits
  (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state)
  wrong = jnp.sum(jnp.argmax(logits, -1) != labels)
  return optax.apply_updates(params, updates), opt_state, wrong


def train_errors(config: ml_collections.ConfigDict, activation: str,
                 learning_rate: float, seed: int, data, max_epochs: int
                 ) -> list[float]:
  """Training error of each epoch, until the target or ``max_epochs``.

  Plain SGD with momentum at a constant rate, no weight decay.
  """
  images, labels = data
  model = FourLayerNet(activation, num_classes=config.model.num_classes,
                       **config.cnn)
  params = model.init(jax.random.key(seed), images[:1])['params']
  tx = optax.sgd(learning_rate, momentum=config.momentum)
  opt_state = tx.init(params)
  step = jax.jit(functools.partial(_train_step, model, tx))
  batch = config.batch_size
  errors = []
  for epoch in range(max_epochs):
    order = np.random.default_rng([seed, epoch]).permutation(len(labels))
    wrong = []
    for i in range(len(order) // batch):
      rows = order[i * batch:(i + 1) * batch]
      params, opt_state, w = step(params, opt_state, images[rows],
                                  labels[rows])
      wrong.append(w)
    errors.append(float(np.sum(jax.device_get(wrong))) /
                  (len(wrong) * batch))
    if errors[-1] <= config.target_train_error:
      break
  return errors


def epochs_to_target(errors: list[float], target: float) -> int | None:
  """The first epoch (1-based) whose training error is at most
  ``target``; None if no epoch reached it."""
  for epoch, error in enumerate(errors, 1):
    if error <= target:
      return epoch
  return None


def _fastest(config, sweep: dict[float, list[float]]) -> float:
  """The rate that reached the target in the fewest epochs (ties: the
  lower final error; none reached it: the lowest final error)."""
  def key(lr):
    epochs = epochs_to_target(sweep[lr], config.target_train_error)
    return (epochs is None, epochs or 0, sweep[lr][-1])
  return min(sweep, key=key)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Sweeps, then runs every seed; the results as written to
  ``<workdir>/results.json``."""
  data = load_images(config, config.input.train_split)
  results = {}
  for activation in config.activations:
    sweep = {}
    for lr in config.learning_rates:
      best = (epochs_to_target(sweep[_fastest(config, sweep)],
                               config.target_train_error) if sweep else None)
      sweep[lr] = train_errors(config, activation, lr, config.seed, data,
                               best or config.num_epochs)
      print(f'{activation} lr {lr}: {len(sweep[lr])} epochs, training '
            f'error {sweep[lr][-1]:.3f}', flush=True)
    lr = _fastest(config, sweep)
    curves = [sweep[lr]] + [
        train_errors(config, activation, lr, config.seed + s, data,
                     config.num_epochs) for s in range(1, config.seeds)]
    results[activation] = {
        'learning_rate': lr, 'sweep': {str(k): v for k, v in sweep.items()},
        'curves': curves,
        'epochs': [epochs_to_target(c, config.target_train_error)
                   for c in curves]}
  storage.makedirs(workdir)
  storage.write_text(storage.join(workdir, 'results.json'),
                     json.dumps(results, indent=1))
  storage.write_text(storage.join(workdir, 'results.md'),
                     markdown(results, config.target_train_error))
  save_figure(results, config.target_train_error,
              storage.join(workdir, 'relu_tanh.png'))
  return results


def markdown(results: dict, target: float) -> str:
  lines = [f'| activation | learning rate | epochs to {100 * target:.0f}% '
           'training error (per seed) | mean |', '|---|---|---|---|']
  for activation, r in results.items():
    reached = [e for e in r['epochs'] if e is not None]
    per_seed = ', '.join('-' if e is None else str(e) for e in r['epochs'])
    mean = (f'{np.mean(reached):.1f}' if len(reached) == len(r['epochs'])
            else 'not reached by every seed')
    lines.append(f'| {activation} | {r["learning_rate"]} | {per_seed} | '
                 f'{mean} |')
  return '\n'.join(lines) + '\n'


def save_figure(results: dict, target: float, path: str) -> None:
  """Figure 1's axes: training error against epochs, ReLU solid, tanh
  dashed, one line per seed."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for activation, r in results.items():
    style = '-' if activation == 'relu' else '--'
    for i, curve in enumerate(r['curves']):
      ax.plot(range(1, len(curve) + 1), curve, style, color='k',
              alpha=0.8, label=activation if i == 0 else None)
  ax.axhline(target, color='grey', lw=0.8)
  ax.set_xlabel('epochs')
  ax.set_ylabel('training error rate')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  figures.save(fig, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  print(markdown(run(FLAGS.config, FLAGS.workdir),
                 FLAGS.config.target_train_error))


if __name__ == '__main__':
  # Defined here, not on import (see alexnet_jax/evaluate.py): tests and
  # notebooks import this module.
  config_flags.DEFINE_config_file('config', 'configs/relu_tanh.py',
                                  'The experiment config.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Where the results go.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
