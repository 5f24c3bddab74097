"""What a trained run says about images: the top-5 classes of image files
(the command), and the features (the model's ``feature_layer``, AlexNet's
fc7) and nearest neighbours of the paper's Figure 4 (used by
experiments/trained_model.ipynb).

    python -m alexnet_jax.predict --workdir=DIR IMAGE [IMAGE ...]

Reads the run's ``config.json``; each image gets the paper's centre crop
(shorter side to ``input.resize``, centre ``model.image_size`` patch) in the
net's pixel convention (``config.input``).
"""

import json

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
from alexnet_jax import storage
from alexnet_jax import train

FLAGS = flags.FLAGS


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = storage.join(workdir, train.CONFIG_FILE)
  if not storage.exists(path):
    raise ValueError(f'{path} does not exist: --workdir must be a directory '
                     f'that python -m alexnet_jax.main trained in.')
  return ml_collections.ConfigDict(checkpoint.with_added_fields(
      json.loads(storage.read_text(path))))


def load_images(paths, config: ml_collections.ConfigDict) -> np.ndarray:
  """Centre crops ``[n, size, size, 3]``; a clear error for a bad file."""
  images = []
  for path in paths:
    try:
      images.append(input_pipeline.preprocess_eval(
          tf.io.read_file(path), crop_size=config.model.image_size,
          resize=config.input.resize,
          pixels=input_pipeline.Pixels.from_config(config.input)).numpy())
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      raise ValueError(f'Cannot read {path!r} as an image (JPEG, PNG, GIF '
                       f'or BMP): {e.message}') from e
  return np.stack(images)


def load_state(workdir: str):
  """The run's config and its latest checkpoint's state, the whole net on
  one device."""
  config = load_config(workdir)
  config.model_axis_size = 1
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  manager = checkpoint.create_manager(workdir, config, read_only=True)
  state, _ = checkpoint.restore(
      manager, train.create_state(config, mesh, jax.random.key(0)))
  return config, state


def class_names(config: ml_collections.ConfigDict) -> list[str]:
  return tfds.builder(config.input.dataset).info.features['label'].names


def probabilities(state, images: np.ndarray) -> np.ndarray:
  logits = jax.jit(state.apply_fn, static_argnames='train')(
      {'params': state.params}, images, train=False)
  return np.asarray(jax.nn.softmax(logits))


def top_k(probs: np.ndarray, names: list[str], k: int = 5
          ) -> list[list[tuple[str, float]]]:
  """For each row of ``probs``, its ``k`` most probable classes."""
  return [[(names[c], float(p[c])) for c in np.argsort(-p)[:k]]
          for p in probs]


def predict(workdir: str, paths: list[str], k: int = 5
            ) -> list[list[tuple[str, float]]]:
  """For each image, its ``k`` most probable classes with probabilities."""
  config, state = load_state(workdir)
  return top_k(probabilities(state, load_images(paths, config)),
               class_names(config), k)


def features(state, images: np.ndarray, batch_size: int = 256
             ) -> np.ndarray:
  """The activations ``[n, units]`` of the model's ``feature_layer`` (for
  AlexNet the last hidden layer, fc7; the towers' units side by side), the
  features of the paper's Figure 4 neighbours."""
  name = f'{state.model.feature_layer}_out'

  @jax.jit
  def layer(params, x):
    _, sown = state.apply_fn({'params': params}, x, train=False,
                             mutable=['intermediates'])
    return jax.numpy.concatenate(sown['intermediates'][name][0], -1)
  return np.concatenate([
      np.asarray(layer(state.params, images[i:i + batch_size]))
      for i in range(0, len(images), batch_size)])


def nearest_neighbours(queries: np.ndarray, pool: np.ndarray, k: int
                       ) -> np.ndarray:
  """Indices ``[len(queries), k]`` of each query's ``k`` nearest rows of
  ``pool`` by Euclidean distance, nearest first (section 6.1)."""
  distances = (np.sum(queries ** 2, 1)[:, None] - 2 * queries @ pool.T
               + np.sum(pool ** 2, 1)[None, :])
  return np.argsort(distances, axis=1, kind='stable')[:, :k]


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
