"""Times the real jitted train step on synthetic, device-resident data.

    python -m alexnet_jax.benchmark --config=configs/imagenet.py \
        [--config.batch_size=32] [--steps=10] [--lrn_share]
    python -m alexnet_jax.benchmark --part=input --config=configs/imagenet.py

Prints one JSON line: images_per_sec (from the median step), step_ms,
compile_s, batch_size, image_size, dtype, devices, the ('data', 'model')
mesh, backend and the model settings. The step is the split step of
``parallel.py`` on all devices (``--config.model_axis_size=2`` puts one tower
on each device; on CPU, ``JAX_NUM_CPU_DEVICES=2`` makes two devices).
``--lrn_share`` also compiles the same net without LRN, alternates steps of
the two so that both see the same machine load, and reports ``lrn_share``,
the fraction of the step the LRN costs.

``--part=input`` times the training input alone, on all cores, from
ImageNet-sized JPEGs to batches on the devices: ``--config.input.source=tfds``
(the tf.data augmentation of each original image, float32 out) or
``=prepared`` (a store made first in a temporary directory, in
``--config.input.store_format=jpeg|raw``; uint8 patches out). Its JSON line
has images_per_sec, images_per_sec_per_core and bytes_to_device_per_image.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import prepare
from alexnet_jax import prepared
from alexnet_jax import steps
from alexnet_jax import synthetic_shapes

FLAGS = flags.FLAGS
# ImageNet's typical photo is about 500x375.
INPUT_JPEG_SHAPE = (375, 500)
INPUT_DISTINCT_JPEGS = 64
# The store the prepared input is timed on holds at least this many
# examples, and enough for the timed batches to be one pass (an epoch's
# start, 0.14 s for a JPEG store, is negligible in ImageNet's 10,000 batches
# but not in a benchmark's 100).
INPUT_STORE_EXAMPLES = 2_048


class _Runner:
  """A compiled train step on the config's mesh, with a fixed batch."""

  def __init__(self, config, **model_overrides):
    model = steps.create_model(config.model, **model_overrides)
    self.mesh = parallel.make_mesh(config)
    rng = jax.random.key(config.seed)
    self.state = parallel.create_train_state(config, model, self.mesh, rng)
    size, n = model.image_size, config.batch_size
    self.images = jax.device_put(
        jax.random.normal(rng, (n, size, size, 3), model.dtype),
        parallel.batch_sharding(self.mesh))
    self.labels = jax.device_put(
        jax.random.randint(rng, (n,), 0, model.num_classes),
        parallel.batch_sharding(self.mesh))
    self.rng = rng
    start = time.perf_counter()
    self.step = parallel.make_train_step(self.mesh, self.state).lower(
        self.state, self.images, self.labels, rng).compile()
    self.compile_s = time.perf_counter() - start
    self.times: list[float] = []

  def run(self, index: int, record: bool) -> None:
    start = time.perf_counter()
    self.state, metrics = self.step(self.state, self.images, self.labels,
                                    jax.random.fold_in(self.rng, index))
    jax.block_until_ready(metrics['loss'])
    if record:
      self.times.append(time.perf_counter() - start)

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)


def _check_counts(steps: int, warmup: int) -> None:
  if steps < 1 or warmup < 0:
    raise ValueError(f'Need steps >= 1 and warmup >= 0; got steps={steps}, '
                     f'warmup={warmup}.')


def benchmark(config, steps: int, warmup: int, lrn_share: bool) -> dict:
  """Times ``steps`` train steps; returns the figures as a dict."""
  _check_counts(steps, warmup)
  if config.batch_size < 1:
    raise ValueError(f'batch_size must be >= 1; got {config.batch_size}.')
  use_lrn = config.model.get('use_lrn', False)  # a field of alexnet only
  if lrn_share and not use_lrn:
    raise ValueError(f'--lrn_share compares the net with and without LRN; it '
                     f'needs a model with LRN on (model {config.model.name!r}, '
                     f'use_lrn={use_lrn}).')
  runners = [_Runner(config)]
  if lrn_share:
    runners.append(_Runner(config, use_lrn=False))
  for i in range(warmup + steps):
    for runner in runners:  # interleaved: both see the same machine load
      runner.run(i, record=i >= warmup)

  main = runners[0]
  result = dict(
      images_per_sec=round(config.batch_size / main.median_s, 2),
      step_ms=round(1e3 * main.median_s, 2),
      compile_s=round(main.compile_s, 2),
      batch_size=config.batch_size,
      image_size=config.model.image_size,
      dtype=config.model.dtype,
      model=config.model.name,
      width=config.model.width,
      use_lrn=use_lrn,
      steps=steps,
      devices=main.mesh.size,
      mesh=dict(main.mesh.shape),
      backend=jax.default_backend(),
      device_kind=jax.devices()[0].device_kind,
      jax=jax.__version__,
  )
  if lrn_share:
    without = runners[1].median_s
    result['images_per_sec_without_lrn'] = round(
        config.batch_size / without, 2)
    result['lrn_share'] = round(1.0 - without / main.median_s, 4)
  return result


def benchmark_input(config, steps: int, warmup: int) -> dict:
  """Times the training input from ImageNet-sized JPEGs made here to
  batches on the devices (``global_batch``, the transfer included), on all
  cores: ``input.source='tfds'`` runs the paper's augmentation per original
  image (float32 batches); ``'prepared'`` first makes a store of them in a
  temporary directory (in ``input.store_format``), then reads uint8 patches
  from it."""
  _check_counts(steps, warmup)
  rng = np.random.default_rng(config.seed)
  jpegs = [synthetic_shapes.encode_jpeg(synthetic_shapes.background(
      rng, *INPUT_JPEG_SHAPE)) for _ in range(INPUT_DISTINCT_JPEGS)]
  mesh = parallel.make_mesh(config)
  with tempfile.TemporaryDirectory() as directory:
    if config.input.source == 'prepared':
      examples = max(INPUT_STORE_EXAMPLES,
                     (warmup + steps + 1) * config.batch_size)
      store = _make_store(config, jpegs, directory, examples)
      batches = _store_batches(config, store)
      keys = ('image', 'label', 'flip', 'pca_alpha')
      extra = {'store_bytes_per_image': round(
          store.file_bytes(config.input.train_split)
          / store.size(config.input.train_split))}
    else:
      ds = tf.data.Dataset.from_tensor_slices(
          {'image': jpegs, 'label': np.zeros(len(jpegs), np.int32)}).repeat()
      ds = input_pipeline.augmented_examples(
          ds, config.seed, crop_size=config.model.image_size,
          resize=config.input.resize, crop=config.input.crop,
          pca_stddev=config.input.pca_stddev,
          pixels=input_pipeline.Pixels.from_config(config.input))
      batches = ds.batch(config.batch_size).prefetch(
          tf.data.AUTOTUNE).as_numpy_iterator()
      keys = ('image', 'label')
      extra = {}
    batches = iter(batches)
    first = next(batches)

    def to_devices():
      batch = next(batches)
      jax.block_until_ready(parallel.global_batch(
          mesh, *(batch[k] for k in keys)))
    for _ in range(warmup):
      to_devices()
    start = time.perf_counter()
    for _ in range(steps):
      to_devices()
    seconds = time.perf_counter() - start
  cores = len(os.sched_getaffinity(0))
  per_sec = steps * config.batch_size / seconds
  per_image = lambda names: sum(first[k].nbytes for k in names) // len(
      first['label'])
  return dict(part='input', source=config.input.source,
              store_format=(config.input.store_format
                            if config.input.source == 'prepared' else None),
              images_per_sec=round(per_sec, 1),
              images_per_sec_per_core=round(per_sec / cores, 1), cores=cores,
              bytes_to_device_per_image=per_image(keys),
              image_bytes_to_device_per_image=per_image(('image',)),
              image_dtype=str(first['image'].dtype),
              batch_size=config.batch_size, image_size=config.model.image_size,
              crop=config.input.crop, jpeg_shape=list(INPUT_JPEG_SHAPE),
              devices=mesh.size, steps=steps, **extra)


def _make_store(config, jpegs, directory, examples: int) -> prepared.Store:
  """A store made in ``directory`` from ``examples`` images cycling through
  ``jpegs``, as ``python -m alexnet_jax.prepare`` makes one."""
  wanted = prepared.settings(config)
  split = config.input.train_split
  images = [jpegs[i % len(jpegs)] for i in range(examples)]
  prepare.build(directory, wanted, prepare.ListSource({split: images}),
                {split: len(images)})
  return prepared.Store(directory, wanted, (split,))


def _store_batches(config, store: prepared.Store):
  """Endless training batches of ``store``, epoch after epoch."""
  for epoch in itertools.count():
    yield from prepared.train_batches(
        store, config.input.train_split, global_batch_size=config.batch_size,
        crop_size=config.model.image_size, seed=config.seed, epoch=epoch,
        pca_stddev=config.input.pca_stddev)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.part == 'input':
    result = benchmark_input(FLAGS.config, FLAGS.steps, FLAGS.warmup)
  else:
    result = benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup,
                       FLAGS.lrn_share)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  # Defined here, not on import (see evaluate.py).
  config_flags.DEFINE_config_file('config', None, 'Config file, e.g. '
                                  'configs/imagenet.py.')
  flags.DEFINE_integer('steps', 10, 'Timed steps.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
  flags.DEFINE_bool('lrn_share', False,
                    'Also time the net without LRN and report its share.')
  flags.DEFINE_enum(
      'part', 'train', ['train', 'input'],
      'train: the jitted train step; input: the training augmentation alone.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
