"""Times the real jitted train step on synthetic, device-resident data.

    python -m alexnet_jax.benchmark --config=configs/imagenet.py \
        [--config.batch_size=32] [--steps=10] [--lrn_share]
    python -m alexnet_jax.benchmark --sweep --batch_sizes=32,128 \
        --config=configs/imagenet.py
    python -m alexnet_jax.benchmark --compare --config=configs/imagenet.py \
        --config.batch_size=32
    python -m alexnet_jax.benchmark --part=input --config=configs/imagenet.py

Prints one JSON line: images_per_sec (from the median step), step_ms,
compile_s, batch_size, image_size, dtype, devices, the ('data', 'model')
mesh, backend and the model settings. The step is the split step of
``parallel.py`` on all devices (``--config.model_axis_size=2`` puts one tower
on each device; on CPU, ``JAX_NUM_CPU_DEVICES=2`` makes two devices).
``--lrn_share`` also compiles the same net without LRN, alternates steps of
the two so that both see the same machine load, and reports ``lrn_share``,
the fraction of the step the LRN costs.

``--sweep [--batch_sizes=32,128]`` times every combination of the model's
lowering choices (the ``*_impl`` fields the config leaves at 'auto'; set a
field to keep it fixed), one after another at each batch size: one JSON
line per variant (with ``auto``: whether it is what 'auto' picks here),
then a markdown table, fastest first per batch size.

``--compare`` times the paper net against experiments/pytorch_baseline.py
(PyTorch, in its own process), with LRN and without, the four steps
interleaved, and adds ``pytorch`` and the ratios ``speedup_with_lrn`` and
``speedup_without_lrn`` to the JSON line.

``--part=input`` times the training input alone, on all cores, from
ImageNet-sized JPEGs to batches on the devices: ``--config.input.source=tfds``
(the tf.data augmentation of each original image, float32 out) or
``=prepared`` (a store made first in a temporary directory, in
``--config.input.store_format=jpeg|raw``; uint8 patches out). Its JSON line
has images_per_sec, images_per_sec_per_core and bytes_to_device_per_image.
"""

from __future__ import annotations

# Before the imports below start anything: huge pages for XLA:CPU's arrays.
from alexnet_jax import host_memory  # pylint: disable=g-bad-import-order
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import input_pipeline
from alexnet_jax import models
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
    self.model = steps.create_model(config.model, **model_overrides)
    self.mesh = parallel.make_mesh(config)
    rng = jax.random.key(config.seed)
    self.state = parallel.create_train_state(config, self.model, self.mesh,
                                             rng)
    size, n = self.model.image_size, config.batch_size
    self.images = jax.device_put(
        jax.random.normal(rng, (n, size, size, 3), self.model.dtype),
        parallel.batch_sharding(self.mesh))
    self.labels = jax.device_put(
        jax.random.randint(rng, (n,), 0, self.model.num_classes),
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


def _check_batch(batch_size: int) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1; got {batch_size}.')


def _interleaved(runners, steps: int, warmup: int) -> None:
  """Steps of every runner in turn, so that all see the same machine load."""
  for i in range(warmup + steps):
    for runner in runners:
      runner.run(i, record=i >= warmup)


def _implementations(model) -> dict:
  """The model's lowering choices, 'auto' resolved (none for a model
  without them)."""
  return model.implementations() if hasattr(model, 'implementations') else {}


def _figures(config, runner: _Runner, steps: int) -> dict:
  model, batch = runner.model, config.batch_size
  return dict(
      images_per_sec=round(batch / runner.median_s, 2),
      step_ms=round(1e3 * runner.median_s, 2),
      compile_s=round(runner.compile_s, 2),
      batch_size=batch,
      image_size=model.image_size,
      dtype=jax.numpy.dtype(model.dtype).name,
      model=config.model.name,
      width=model.width,
      use_lrn=getattr(model, 'use_lrn', False),  # a field of alexnet only
      **_implementations(model),
      steps=steps,
      devices=runner.mesh.size,
      mesh=dict(runner.mesh.shape),
      backend=jax.default_backend(),
      device_kind=jax.devices()[0].device_kind,
      jax=jax.__version__,
  )


def _check_lrn(config, flag: str) -> None:
  use_lrn = config.model.get('use_lrn', False)
  if not use_lrn:
    raise ValueError(f'{flag} compares the net with and without LRN; it '
                     f'needs a model with LRN on (model {config.model.name!r}, '
                     f'use_lrn={use_lrn}).')


def benchmark(config, steps: int, warmup: int, lrn_share: bool) -> dict:
  """Times ``steps`` train steps; returns the figures as a dict."""
  _check_counts(steps, warmup)
  _check_batch(config.batch_size)
  if lrn_share:
    _check_lrn(config, '--lrn_share')
  runners = [_Runner(config)]
  if lrn_share:
    runners.append(_Runner(config, use_lrn=False))
  _interleaved(runners, steps, warmup)
  result = _figures(config, runners[0], steps)
  if lrn_share:
    without = runners[1].median_s
    result['images_per_sec_without_lrn'] = round(
        config.batch_size / without, 2)
    result['lrn_share'] = round(1.0 - without / runners[0].median_s, 4)
  return result


def sweep_variants(config) -> list[dict[str, str]]:
  """Every combination of the model's lowering choices (``*_impl``) that
  the config leaves at 'auto'; fields set in the config stay as set. The
  LRN's choice is left out for a net without LRN.

  Raises:
    ValueError: the model has no lowering choices.
  """
  choices = getattr(models.get(config.model.name), 'implementation_choices',
                    {})
  if not choices:
    raise ValueError(f'--sweep times the lowering choices of a model; model '
                     f'{config.model.name!r} has none (alexnet has them).')
  swept = {name: values for name, values in choices.items()
           if config.model.get(name) == 'auto'
           and not (name == 'lrn_impl' and not config.model.use_lrn)}
  return [dict(zip(swept, values))
          for values in itertools.product(*swept.values())]


def sweep(config, steps: int, warmup: int, batch_sizes, report=print
          ) -> list[dict]:
  """Times every variant of ``sweep_variants`` at each batch size, one after
  another (one compiled net in memory at a time); ``report`` gets each
  variant's figures as soon as they are measured. Each result also says
  whether it is what 'auto' picks on this backend (``auto``)."""
  _check_counts(steps, warmup)
  variants = sweep_variants(config)
  for batch in batch_sizes:
    _check_batch(batch)
  results = []
  for batch in batch_sizes:
    sized = config.copy_and_resolve_references()
    sized.batch_size = batch
    auto = _implementations(_model(sized))
    for variant in variants:
      runner = _Runner(sized, **variant)
      _interleaved([runner], steps, warmup)
      result = _figures(sized, runner, steps)
      result['auto'] = all(result[k] == auto[k] for k in variant)
      report(result)
      results.append(result)
      del runner  # frees its state before the next variant compiles
  return results


def _model(config):
  """The config's model (a function: the callers' ``steps`` is a count)."""
  return steps.create_model(config.model)


def fastest_table(results: list[dict]) -> str:
  """A markdown table: per batch size (and dtype), each variant's rate,
  fastest first, with its ratio to the fastest and to what 'auto' picks."""
  names = [k for k in results[0] if k.endswith('_impl')]
  header = (['batch', 'dtype'] + names
            + ['images/s', 'vs fastest', 'vs auto', 'auto'])
  rows = ['| ' + ' | '.join(header) + ' |',
          '|' + '---|' * len(header)]
  groups = itertools.groupby(
      sorted(results, key=lambda r: (r['batch_size'], r['dtype'],
                                     -r['images_per_sec'])),
      key=lambda r: (r['batch_size'], r['dtype']))
  for (batch, dtype), group in groups:
    group = list(group)
    best = group[0]['images_per_sec']
    auto = next((r['images_per_sec'] for r in group if r['auto']), None)
    for r in group:
      rows.append('| ' + ' | '.join(
          [str(batch), dtype] + [r[k] for k in names]
          + [f'{r["images_per_sec"]:.2f}',
             f'{r["images_per_sec"] / best:.2f}',
             f'{r["images_per_sec"] / auto:.2f}' if auto else '-',
             'yes' if r['auto'] else '']) + ' |')
  return '\n'.join(rows)


BASELINE = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                        'experiments', 'pytorch_baseline.py')


class _PyTorchRunner:
  """A step of experiments/pytorch_baseline.py's net, in its own process
  (its own heap and thread pool), on request: ``run`` and ``median_s`` as
  ``_Runner``'s, so the two interleave step by step."""

  def __init__(self, process: subprocess.Popen, use_lrn: bool):
    self.process, self.request = process, 'lrn' if use_lrn else 'no_lrn'
    self.times: list[float] = []

  def run(self, index: int, record: bool) -> None:
    del index
    self.process.stdin.write(self.request + '\n')
    self.process.stdin.flush()
    answer = self.process.stdout.readline()
    if not answer:
      raise RuntimeError(f'{BASELINE} stopped; its errors are above.')
    if record:
      self.times.append(float(answer))

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)


def _start_baseline(batch_size: int) -> tuple[subprocess.Popen, dict]:
  """The baseline serving steps, and its framework line; a clear error
  when PyTorch is missing."""
  process = subprocess.Popen(
      [sys.executable, BASELINE, f'--batch_size={batch_size}', '--serve'],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  first = process.stdout.readline()
  if not first:
    process.wait()
    raise ValueError(
        f'--compare runs {BASELINE}, which failed to start (see its error '
        f'above; without PyTorch: pip install -r requirements-test.txt, or '
        f'the package\'s dev extra).')
  return process, json.loads(first)


def compare(config, steps: int, warmup: int) -> dict:
  """This net's train step against experiments/pytorch_baseline.py's port,
  with LRN and without, the four steps interleaved (the same machine load;
  PyTorch in its own process with this one's environment, so the same
  allocator settings, each process idle while the other steps). Returns
  this net's figures, PyTorch's, and the ratios (``speedup_with_lrn``,
  ``speedup_without_lrn``: ours over PyTorch's images per second).

  Raises:
    ValueError: the config is not the paper's net at full size (the port
      is that net only), or PyTorch is not installed.
  """
  _check_counts(steps, warmup)
  _check_batch(config.batch_size)
  model = _model(config)
  paper = (config.model.name == 'alexnet' and model.towers == 2
           and model.width == 1.0 and model.image_size == 224
           and model.num_classes == 1000 and model.activation == 'relu')
  if not paper:
    raise ValueError(
        'experiments/pytorch_baseline.py is the paper net (alexnet, towers=2, '
        'width=1.0, image_size=224, num_classes=1000, relu) only; --compare '
        f'needs that config, got model {config.model.to_dict()}.')
  _check_lrn(config, '--compare')
  ours = [_Runner(config), _Runner(config, use_lrn=False)]
  process, framework = _start_baseline(config.batch_size)
  try:
    theirs = [_PyTorchRunner(process, True), _PyTorchRunner(process, False)]
    _interleaved(ours + theirs, steps, warmup)
  finally:
    process.stdin.close()
    process.wait()
  rate = lambda r: config.batch_size / r.median_s
  result = _figures(config, ours[0], steps)
  result.update(
      images_per_sec_without_lrn=round(rate(ours[1]), 2),
      pytorch=dict(**framework,
                   images_per_sec=round(rate(theirs[0]), 2),
                   images_per_sec_without_lrn=round(rate(theirs[1]), 2)),
      speedup_with_lrn=round(rate(ours[0]) / rate(theirs[0]), 3),
      speedup_without_lrn=round(rate(ours[1]) / rate(theirs[1]), 3))
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
    print(json.dumps(benchmark_input(FLAGS.config, FLAGS.steps,
                                     FLAGS.warmup)), flush=True)
  elif FLAGS.sweep:
    try:
      batch_sizes = [int(b) for b in FLAGS.batch_sizes] or [
          FLAGS.config.batch_size]
    except ValueError as e:
      raise app.UsageError(f'--batch_sizes takes integers separated by '
                           f'commas, e.g. 32,128; got {FLAGS.batch_sizes}.'
                           ) from e
    results = sweep(FLAGS.config, FLAGS.steps, FLAGS.warmup, batch_sizes,
                    report=lambda r: print(json.dumps(r), flush=True))
    print(fastest_table(results), flush=True)
  elif FLAGS.compare:
    print(json.dumps(compare(FLAGS.config, FLAGS.steps, FLAGS.warmup)),
          flush=True)
  else:
    print(json.dumps(benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup,
                               FLAGS.lrn_share)), flush=True)


if __name__ == '__main__':
  # Defined here, not on import (see evaluate.py).
  config_flags.DEFINE_config_file('config', None, 'Config file, e.g. '
                                  'configs/imagenet.py.')
  flags.DEFINE_integer('steps', 10, 'Timed steps.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
  flags.DEFINE_bool('lrn_share', False,
                    'Also time the net without LRN and report its share.')
  flags.DEFINE_bool('sweep', False,
                    'Time every combination of the model\'s lowering choices '
                    '(the *_impl fields left at auto): a JSON line each, then '
                    'a markdown table, fastest first.')
  flags.DEFINE_list('batch_sizes', [], 'Batch sizes for --sweep (default: '
                    'the config\'s).')
  flags.DEFINE_bool('compare', False,
                    'Time the paper net against experiments/pytorch_baseline.py'
                    ', with and without LRN, interleaved; print both ratios.')
  flags.DEFINE_enum(
      'part', 'train', ['train', 'input'],
      'train: the jitted train step; input: the training augmentation alone.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
