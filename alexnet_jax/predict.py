"""The top-5 classes of image files, from a run's latest checkpoint.

    python -m alexnet_jax.predict --workdir=DIR IMAGE [IMAGE ...]

Reads the run's ``config.json``; each image gets the paper's centre crop
(shorter side to ``input.resize``, centre ``model.image_size`` patch).
"""

import json
import os

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import checkpoint
from alexnet_jax import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import train

FLAGS = flags.FLAGS


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, train.CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f'{path} does not exist: --workdir must be a directory '
                     f'that python -m alexnet_jax.main trained in.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_images(paths, config: ml_collections.ConfigDict) -> np.ndarray:
  """Centre crops ``[n, size, size, 3]``; a clear error for a bad file."""
  images = []
  for path in paths:
    try:
      images.append(input_pipeline.preprocess_eval(
          tf.io.read_file(path), crop_size=config.model.image_size,
          resize=config.input.resize).numpy())
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      raise ValueError(f'Cannot read {path!r} as an image (JPEG, PNG, GIF '
                       f'or BMP): {e.message}') from e
  return np.stack(images)


def predict(workdir: str, paths: list[str], k: int = 5
            ) -> list[list[tuple[str, float]]]:
  """For each image, its ``k`` most probable classes with probabilities."""
  config = load_config(workdir)
  images = load_images(paths, config)
  config.model_axis_size = 1  # one device holds the whole net
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  manager = checkpoint.create_manager(workdir, config, read_only=True)
  state, _ = checkpoint.restore(
      manager, train.create_state(config, mesh, jax.random.key(0)))
  logits = jax.jit(state.apply_fn, static_argnames='train')(
      {'params': state.params}, images, train=False)
  probs = np.asarray(jax.nn.softmax(logits))
  names = tfds.builder(config.input.dataset).info.features['label'].names
  return [[(names[c], float(p[c])) for c in np.argsort(-p)[:k]]
          for p in probs]


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Name one or more image files.')
  for path, top in zip(argv[1:], predict(FLAGS.workdir, argv[1:])):
    print(path)
    for name, prob in top:
      print(f'  {prob:7.4f}  {name}')


if __name__ == '__main__':
  # Defined here, not on import (see evaluate.py).
  flags.DEFINE_string('workdir', None, 'The run\'s workdir.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
