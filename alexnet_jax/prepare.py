"""Makes the prepared store once (paper section 2: shorter side to 256, the
centre 256x256 square), for ``input.source='prepared'`` runs.

    python -m alexnet_jax.prepare --config=configs/imagenet.py \
        [--config.input.store_format=raw] [--config.input.store_dir=DIR]
    # on several machines sharing a disk: each converts every n-th shard
    python -m alexnet_jax.prepare --config=... --num_workers=4 --worker=I

Both of the config's splits (``input.train_split`` and ``input.eval_split``)
are converted, shard by shard (``prepared.EXAMPLES_PER_SHARD`` images), by
a tf.data pipeline on all cores. A finished shard is never redone, so an
interrupted run continues where it stopped; the worker that finds every
shard done checks the counts and writes the manifest. The store's layout and
formats are described in ``prepared.py``.

Pixels: the tfds pipeline's own decode and resize (``input_pipeline``), so a
raw store holds exactly the squares that its ten-crop test cuts, rounded to
uint8. TensorFlow decodes JPEG (CMYK ones too), PNG (ImageNet has one
named .JPEG), GIF and BMP; an image it cannot decode is tried with PIL, and
one PIL cannot decode either is skipped, counted and listed in the
manifest.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import socket
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from ml_collections import config_flags
from PIL import Image
from array_record.python import array_record_module

from alexnet_jax import input_pipeline
from alexnet_jax import prepared

FLAGS = flags.FLAGS
FORMAT_VERSION = 1


def prepare(config, worker: int = 0, num_workers: int = 1) -> dict:
  """Converts this worker's unfinished shards of the config's dataset;
  returns the manifest (its ``status`` is 'complete' once every worker's
  shards are done).

  Raises:
    ValueError: bad settings, an existing store made with other settings,
      ImageNet's manual files missing: all before anything is written.
  """
  _check_worker(worker, num_workers)
  wanted = prepared.settings(config)
  path = prepared.directory(config)
  splits = (config.input.train_split, config.input.eval_split)
  existing = _manifest(path)
  if existing:
    prepared.check_settings(existing['settings'], wanted, path)
    if not set(splits) <= set(existing['splits']):
      raise ValueError(
          f'The store at {path} holds the splits '
          f'{sorted(existing["splits"])}, the config asks for {list(splits)}; '
          f'use another input.store_dir for these.')
  builder = input_pipeline.dataset_builder(config.input.dataset,
                                           config.input.data_dir or None)
  if existing and existing['status'] == 'complete' and not _reopen_damaged(
      path, existing):
    logging.info('The store at %s is complete.', path)
    return existing
  source = TfdsSource(builder)
  sizes = {split: source.size(split) for split in splits}
  return build(path, wanted, source, sizes, worker, num_workers)


class TfdsSource:
  """A store's images: examples ``[lo, hi)`` of a tfds split, encoded, in
  file order; and their names (ImageNet's file_name) for the manifest."""

  def __init__(self, builder):
    self.builder = builder
    self.description = {'dataset': builder.info.full_name,
                        'data_dir': str(builder.data_dir)}

  def read(self, split: str, lo: int, hi: int) -> tf.data.Dataset:
    # One file at a time: example ``lo + k`` is the slice's k-th (tfds
    # otherwise interleaves 16 files), so one can be read again alone.
    return self.builder.as_dataset(
        split=f'{split}[{lo}:{hi}]', shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1))

  def size(self, split: str) -> int:
    try:
      return input_pipeline.part_sizes(self.builder, split)[0]
    except (KeyError, ValueError) as e:
      raise ValueError(f'{self.builder.info.full_name} has no split '
                       f'{split!r} ({e}).') from e

  def names(self, split: str, index: int) -> dict:
    if 'file_name' not in self.builder.info.features:
      return {}
    example = next(iter(self.read(split, index, index + 1)))
    return {'file_name': example['file_name'].numpy().decode()}


class ListSource:
  """A store's images from memory: ``{split: [encoded image, ...]}`` and
  optionally ``{split: [label, ...]}`` (default 0), for benchmarks and
  tests."""
  description = {'dataset': 'encoded images in memory'}

  def __init__(self, images: dict[str, list[bytes]],
               labels: dict[str, list[int]] | None = None):
    self.images = images
    self.labels = labels or {s: [0] * len(v) for s, v in images.items()}

  def read(self, split: str, lo: int, hi: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {'image': self.images[split][lo:hi],
         'label': np.asarray(self.labels[split][lo:hi], np.int64)})

  def names(self, split: str, index: int) -> dict:
    del split, index
    return {}


def _manifest(path: str) -> dict | None:
  manifest_path = os.path.join(path, prepared.MANIFEST)
  return (prepared.read_json(manifest_path)
          if os.path.exists(manifest_path) else None)


def build(path: str, wanted: dict, source, sizes: dict[str, int],
          worker: int = 0, num_workers: int = 1) -> dict:
  """Converts this worker's unfinished shards of ``sizes`` (split ->
  examples) from ``source`` into the store at ``path``; the worker that
  finds every shard done checks the counts and marks the store complete."""
  _check_worker(worker, num_workers)
  manifest = _manifest(path)
  if manifest is None:
    os.makedirs(path, exist_ok=True)
    manifest = {
        'format_version': FORMAT_VERSION, 'status': 'incomplete',
        'settings': wanted, 'source': source.description, 'started': _now(),
        'splits': {split: {'source_examples': n, 'shards': _plan(split, n)}
                   for split, n in sizes.items()},
    }
    prepared.write_json(os.path.join(path, prepared.MANIFEST), manifest)
  prepared.check_settings(manifest['settings'], wanted, path)
  planned = {s: p['source_examples'] for s, p in manifest['splits'].items()}
  if planned != sizes:
    raise ValueError(
        f'The unfinished store at {path} was started for the splits '
        f'{planned} (examples), the source now has {sizes}; finish it with '
        f'the same source and splits, or use another input.store_dir.')
  shards = [(split, i) for split, plan in manifest['splits'].items()
            for i in range(len(plan['shards']))]
  mine = shards[worker::num_workers]
  name = lambda s, i: manifest['splits'][s]['shards'][i]
  todo = [(s, i) for s, i in mine if not _done(path, wanted, name(s, i))]
  logging.info('Preparing %s in %s: %d of this worker\'s %d shards to do.',
               wanted, path, len(todo), len(mine))
  progress = _Progress(sum(hi - lo for lo, hi in (
      _shard_range(manifest, s, i) for s, i in todo)))
  for split, i in todo:
    lo, hi = _shard_range(manifest, split, i)
    record = write_shard(source, split, lo, hi, path, name(split, i), wanted)
    progress.log(name(split, i), hi - lo, len(record['skipped']))
  left = [(s, i) for s, i in shards if not _done(path, wanted, name(s, i))]
  if left:
    logging.info('%d shards are left to the other workers; the last to '
                 'finish writes the manifest.', len(left))
    return manifest
  return _finish(path, manifest)


def _check_worker(worker: int, num_workers: int) -> None:
  if not 0 <= worker < num_workers:
    raise ValueError(f'worker={worker} must be in [0, num_workers='
                     f'{num_workers}).')


def _reopen_damaged(path: str, manifest: dict) -> bool:
  """Whether a complete store has shards that cannot be read; if so, moves
  their files aside (``<file>.damaged``) and marks the store unfinished, so
  that this run rewrites them."""
  damaged = [name for plan in manifest['splits'].values()
             for name in plan['shards']
             if not _done(path, manifest['settings'], name)]
  for name in damaged:
    for file in (f'{name}.json',
                 prepared.data_file(name, manifest['settings']['format'])):
      if os.path.exists(os.path.join(path, file)):
        os.replace(os.path.join(path, file),
                   os.path.join(path, f'{file}.damaged'))
    logging.warning('%s: moved aside as .damaged, to be rewritten.', name)
  if damaged:
    manifest['status'] = 'incomplete'
    prepared.write_json(os.path.join(path, prepared.MANIFEST), manifest)
  return bool(damaged)


def _plan(split: str, size: int) -> list[str]:
  count = max(1, -(-size // prepared.EXAMPLES_PER_SHARD))
  return [prepared.shard_name(split, i, count) for i in range(count)]


def _shard_range(manifest: dict, split: str, index: int) -> tuple[int, int]:
  """Source examples ``[lo, hi)`` of shard ``index``: even parts."""
  size = manifest['splits'][split]['source_examples']
  count = len(manifest['splits'][split]['shards'])
  return size * index // count, size * (index + 1) // count


def _done(path: str, wanted: dict, name: str) -> bool:
  """Whether shard ``name`` is written whole with these settings (a shard
  that is not, or whose files were damaged since, is written again)."""
  _, problem = prepared.read_shard(path, name, wanted)
  return problem is None


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


class _Progress:
  """One log line a shard: images done, images/s, ETA for this worker."""

  def __init__(self, total: int):
    self.total, self.done, self.start = total, 0, time.monotonic()

  def log(self, name: str, images: int, skipped: int) -> None:
    self.done += images
    rate = self.done / max(time.monotonic() - self.start, 1e-9)
    eta = datetime.timedelta(seconds=round((self.total - self.done) / rate))
    logging.info('%s done (%d images, %d skipped): %d of %d, %.0f img/s, '
                 'ETA %s', name, images, skipped, self.done, self.total,
                 rate, eta)


# --------------------------------------------------------------------------
# One shard.

def write_shard(source, split: str, lo: int, hi: int, path: str, name: str,
                wanted: dict) -> dict:
  """Converts source examples ``[lo, hi)`` of ``split`` into shard ``name``:
  the data file first (under a temporary name, then renamed), its record
  ``<name>.json`` last, so that a shard with a record is whole."""
  fmt = wanted['format']
  target = os.path.join(path, prepared.data_file(name, fmt))
  # A name of this process's own: another worker may write the same shard.
  temporary = f'{target}.{socket.gethostname()}.{os.getpid()}.tmp'
  labels, skipped = [], []
  writer = _Writer(temporary, fmt)
  try:
    for index, example in _converted(source, split, lo, hi, wanted):
      if isinstance(example, str):
        logging.warning('%s example %d skipped: %s', split, index, example)
        skipped.append({'index': index, **source.names(split, index),
                        'error': example})
        continue
      writer.write(example['data'])
      labels.append(int(example['label']))
  finally:
    writer.close()
  os.replace(temporary, target)
  record = {'examples': len(labels), 'bytes': os.path.getsize(target),
            'settings': wanted, 'source_range': [lo, hi], 'labels': labels,
            'skipped': skipped}
  prepared.write_json(os.path.join(path, f'{name}.json'), record)
  _, problem = prepared.read_shard(path, name, wanted)
  if problem:
    raise RuntimeError(f'{problem}, just after writing it.')
  return record


class _Writer:
  """Appends a shard's records: ArrayRecord for JPEG, bytes for raw."""

  def __init__(self, path: str, fmt: str):
    if fmt == 'jpeg':
      self._file = array_record_module.ArrayRecordWriter(
          path, prepared.WRITER_OPTIONS)
      self.write = self._file.write
    else:
      self._file = open(path, 'wb')
      # The pixels' own buffer, written without a copy.
      self.write = lambda pixels: self._file.write(
          np.ascontiguousarray(pixels, np.uint8).data)

  def close(self) -> None:
    self._file.close()


def _converted(source, split: str, lo: int, hi: int, wanted: dict):
  """``(index, {'data', 'label'})`` for every source example of
  ``[lo, hi)`` in order, or ``(index, error message)`` for one that does not
  decode. TensorFlow converts on all cores (CMYK JPEGs included: measured
  within 0.4 levels of the RGB original); what it cannot decode goes to
  ``_with_pil`` one by one."""
  resize, fmt, quality = (wanted['resize'], wanted['format'],
                          wanted['jpeg_quality'])

  def convert(position, example):
    return {'position': position, 'label': example['label'],
            'data': _encode(input_pipeline.centre_square(
                example['image'], resize), fmt, quality)}

  ds = source.read(split, lo, hi).enumerate().map(
      convert, num_parallel_calls=tf.data.AUTOTUNE)
  # A damaged image raises in the map: left out here, retried below.
  ds = ds.ignore_errors().prefetch(tf.data.AUTOTUNE)
  expected = 0
  for example in ds.as_numpy_iterator():
    position = int(example['position'])
    for missing in range(expected, position):
      yield lo + missing, _with_pil(source, split, lo + missing, wanted)
    expected = position + 1
    yield lo + position, {'data': example['data'], 'label': example['label']}
  for missing in range(expected, hi - lo):
    yield lo + missing, _with_pil(source, split, lo + missing, wanted)


def _encode(square: tf.Tensor, fmt: str, quality: int | None) -> tf.Tensor:
  """A store record: the square as JPEG, or its pixels as they are."""
  return tf.io.encode_jpeg(square, quality=quality) if fmt == 'jpeg' else square


def _with_pil(source, split: str, index: int, wanted: dict):
  """Example ``index`` decoded by PIL (which knows more formats than
  TensorFlow, TIFF for one) to RGB, then resized as TensorFlow resizes (from
  a lossless PNG of PIL's pixels); or the reason it cannot be done."""
  example = next(iter(source.read(split, index, index + 1)))
  try:
    with Image.open(io.BytesIO(example['image'].numpy())) as image:
      png = io.BytesIO()
      image.convert('RGB').save(png, format='PNG')
    square = input_pipeline.centre_square(png.getvalue(), wanted['resize'])
  # PIL raises OSError, SyntaxError, EOFError and more for damaged files.
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'
  logging.info('%s example %d: decoded with PIL.', split, index)
  data = _encode(square, wanted['format'], wanted['jpeg_quality'])
  return {'data': data.numpy(), 'label': int(example['label'])}


def _finish(path: str, manifest: dict) -> dict:
  """Checks every shard and the counts, then marks the store complete."""
  skipped = []
  for split, plan in manifest['splits'].items():
    examples = 0
    for name in plan['shards']:
      record, problem = prepared.read_shard(path, name, manifest['settings'])
      if problem:
        raise RuntimeError(f'{problem}; run again to rewrite it.')
      lo, hi = record['source_range']
      if record['examples'] + len(record['skipped']) != hi - lo:
        raise RuntimeError(
            f'{name}: {record["examples"]} stored + {len(record["skipped"])} '
            f'skipped != {hi - lo} source examples; delete {name}.json and '
            f'run again.')
      examples += record['examples']
      skipped += [{'split': split, **s} for s in record['skipped']]
    plan['examples'] = examples
    plan['skipped'] = sum(s['split'] == split for s in skipped)
    if examples + plan['skipped'] != plan['source_examples']:
      raise RuntimeError(f'{split}: the shards do not cover the '
                         f'{plan["source_examples"]} source examples.')
  manifest.update(status='complete', finished=_now(), skipped=skipped)
  prepared.write_json(os.path.join(path, prepared.MANIFEST), manifest)
  for split, plan in manifest['splits'].items():
    logging.info('%s: %d images stored, %d skipped.', split,
                 plan['examples'], plan['skipped'])
  return manifest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  manifest = prepare(FLAGS.config, FLAGS.worker, FLAGS.num_workers)
  print(json.dumps({k: manifest[k] for k in ('status', 'settings')}))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'The run\'s config file.',
                                  lock_config=True)
  flags.DEFINE_integer('worker', 0, 'This worker\'s index (several machines '
                       'sharing the store\'s disk).')
  flags.DEFINE_integer('num_workers', 1, 'Machines preparing the store '
                       'together; each converts every num_workers-th shard.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
