"""Times the real jitted train step on synthetic, device-resident data.

    python -m alexnet_jax.benchmark --config=configs/imagenet.py \
        [--config.batch_size=32] [--steps=10] [--lrn_share]
    python -m alexnet_jax.benchmark --sweep --batch_sizes=32,128 \
        --config=configs/imagenet.py
    python -m alexnet_jax.benchmark --compare --config=configs/imagenet.py \
        --config.batch_size=32
    python -m alexnet_jax.benchmark --part=conv --config=configs/imagenet.py \
        [--compare]
    python -m alexnet_jax.benchmark --part=input --config=configs/imagenet.py
    python -m alexnet_jax.benchmark --suite --config=configs/imagenet.py \
        --out=DIR

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

``--compare`` times the config's net against the same net in
experiments/pytorch_baseline.py (PyTorch, in its own process; the paper's
net at any width, image_size, num_classes and dropout_rate, e.g.
configs/imagenet.py's and configs/default.py's), with LRN and without,
the four steps interleaved, and adds ``pytorch`` and the ratios
``speedup_with_lrn`` and ``speedup_without_lrn`` to the JSON line.

``--suite`` measures the machine within ``--budget_s`` (8 minutes): on a
GPU or TPU the config's net on one device at batch 128 to 1024 in float32
and bfloat16, the same split over two devices, two epochs of
configs/default.py, then each other lowering; without one, the CPU plan
(batch 32, float32). It writes DIR/suite.json and DIR/suite.md.

``--part=conv`` times each convolution layer of the config's net alone,
as the one-device train step runs it (both towers; forward, the kernel's
gradient and, past conv1, the input's) at the config's batch size,
in every lowering its field allows (``conv1_impl`` for conv1, ``conv_impl``
for conv2-conv5), all layers and lowerings interleaved: one JSON line per
layer with the median milliseconds of each, the fastest and what 'auto'
picks. With ``--compare`` each layer of
experiments/pytorch_baseline.py's net is timed in turn too, and the line
adds ``pytorch_ms`` and ``speedup_vs_pytorch`` (PyTorch's time over that
of the lowering 'auto' picks).

``--part=input`` times the training input alone, on all cores, from
ImageNet-sized JPEGs to batches on the devices: ``--config.input.source=tfds``
(the tf.data augmentation of each original image, out in the model's
dtype) or
``=prepared`` (a store made first in a temporary directory, in
``--config.input.store_format=jpeg|raw``; uint8 patches out). Its JSON line
has images_per_sec, images_per_sec_per_core and bytes_to_device_per_image.
"""

from __future__ import annotations

# Before the imports below start anything: huge pages for XLA:CPU's arrays.
from alexnet_jax import host_memory  # pylint: disable=g-bad-import-order
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
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
from alexnet_jax import train
from alexnet_jax.models import alexnet
from configs import default

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

  def __init__(self, config, devices=None, **model_overrides):
    self.model = steps.create_model(config.model, **model_overrides)
    self.mesh = parallel.make_mesh(config, devices)
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


def one_at_a_time_variants(config) -> list[dict[str, str]]:
  """What 'auto' picks (``{}``), then each other choice of each field of
  ``sweep_variants`` with the rest at auto: 1 + the choices not taken, not
  their product (96 for the paper net), for plans with many batch sizes."""
  auto = _implementations(_model(config))
  fields = {name for variant in sweep_variants(config) for name in variant}
  choices = models.get(config.model.name).implementation_choices
  return [{}] + [{name: value} for name in choices if name in fields
                 for value in choices[name] if value != auto[name]]


def _timed(config, steps: int, warmup: int, variant: dict, devices=None
           ) -> dict:
  """One variant's figures, with ``auto``: whether it is what 'auto' picks
  on this backend."""
  auto = _implementations(_model(config))
  runner = _Runner(config, devices, **variant)
  _interleaved([runner], steps, warmup)
  result = _figures(config, runner, steps)
  result['auto'] = all(result[k] == auto[k] for k in variant)
  return result


def sweep(config, steps: int, warmup: int, batch_sizes, report=print
          ) -> list[dict]:
  """Times every variant of ``sweep_variants`` at each batch size, one after
  another (one compiled net in memory at a time); ``report`` gets each
  variant's figures as soon as they are measured."""
  _check_counts(steps, warmup)
  variants = sweep_variants(config)
  for batch in batch_sizes:
    _check_batch(batch)
  results = []
  for batch in batch_sizes:
    sized = _with(config, batch_size=batch)
    for variant in variants:
      results.append(_timed(sized, steps, warmup, variant))
      report(results[-1])
  return results


def _with(config, **fields):
  """A copy of ``config`` with top-level ``fields`` (``model_dtype`` sets
  ``model.dtype``)."""
  config = config.copy_and_resolve_references()
  if 'model_dtype' in fields:
    config.model.dtype = fields.pop('model_dtype')
  config.update(fields)
  return config


def _model(config, **overrides):
  """The config's model (a function: the callers' ``steps`` is a count)."""
  return steps.create_model(config.model, **overrides)


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


@dataclasses.dataclass(frozen=True)
class SuitePlan:
  """What ``--suite`` measures: the sweep (``one_at_a_time_variants``) at
  each batch size and dtype on one device, the auto variant split over two
  devices (the paper's 1x2) at the same sizes, and ``epochs`` epochs of the
  default config from an empty workdir."""
  name: str
  batch_sizes: tuple[int, ...]
  dtypes: tuple[str, ...]
  steps: int
  warmup: int
  epochs: int = 2


# Every shape of the plan on a GPU or TPU; the paper net at batch
# 1024 in float32 needs about 10 GB of activations.
ACCELERATOR_PLAN = SuitePlan('accelerator', (128, 256, 512, 1024),
                             ('float32', 'bfloat16'), steps=10, warmup=2)
# The CPU has no fast bfloat16 (XLA:CPU computes it through float32): the
# CPU plan is the CPU target's shape, float32 at batch 32.
CPU_PLAN = SuitePlan('cpu', (32,), ('float32',), steps=4, warmup=1)
SUITE_BUDGET_S = 480  # 8 minutes: no task starts that would end later


def suite_plan(backend: str) -> SuitePlan:
  return CPU_PLAN if backend == 'cpu' else ACCELERATOR_PLAN


def suite(config, default_config, plan: SuitePlan, out_dir: str,
          budget_s: float = SUITE_BUDGET_S, report=print,
          clock=time.monotonic) -> dict:
  """Runs ``plan`` within ``budget_s`` seconds, writing ``suite.json`` and
  ``suite.md`` into ``out_dir`` after every task (a crash or a kill keeps
  what was measured); returns the results.

  Most telling first: the auto variant at every size and dtype, then the
  split, then the default config's epochs, then the rest of the sweep. A
  task is not started when the last one of its kind, taking as long again,
  would end past the budget; it is listed under ``skipped``. A task that
  fails (e.g. out of memory at the largest batch) is listed under
  ``errors`` and the suite goes on. ``report`` gets each result as it is
  measured; ``clock`` tells the seconds.

  Raises:
    ValueError: ``out_dir`` already holds a suite's files, or cannot be
      written, or the plan's counts are bad (all before anything runs).
  """
  paths = {ext: os.path.join(out_dir, f'suite.{ext}') for ext in ('json',
                                                                  'md')}
  taken = [p for p in paths.values() if os.path.exists(p)]
  if taken:
    raise ValueError(f'{taken} exist; pass another --out (a suite never '
                     f'overwrites one measured before).')
  _check_counts(plan.steps, plan.warmup)
  for batch in plan.batch_sizes:
    _check_batch(batch)
  start = clock()
  devices = jax.devices()
  shapes = [(b, d) for d in plan.dtypes for b in plan.batch_sizes]
  tasks = [('sweep', b, d, {}) for b, d in shapes]
  if len(devices) >= 2 and _model(config).towers == 2:
    tasks += [('split', b, d, {}) for b, d in shapes]
  tasks.append(('default_config',))
  tasks += [('sweep', b, d, v) for b, d in shapes
            for v in one_at_a_time_variants(config)[1:]]
  results = {'plan': dataclasses.asdict(plan), 'backend':
             jax.default_backend(), 'device_kind': devices[0].device_kind,
             'devices': len(devices), 'budget_s': budget_s, 'seconds': 0.0,
             'sweep': [], 'split': [], 'default_config': None,
             'skipped': [], 'errors': []}
  _write_suite(paths, results)  # an unwritable --out fails here, not later
  last_s = {}  # how long the last task of each kind took
  for task in tasks:
    began = clock()
    if began - start + last_s.get(task[0], 0.0) > budget_s:
      results['skipped'].append(_describe(task))
      continue
    try:
      if task[0] == 'default_config':
        result = results['default_config'] = _epochs(default_config,
                                                     plan.epochs)
      else:
        kind, batch, dtype, variant = task
        sized = _with(config, batch_size=batch, model_dtype=dtype,
                      model_axis_size=2 if kind == 'split' else 1)
        result = _timed(sized, plan.steps, plan.warmup, variant,
                        devices[:2] if kind == 'split' else devices[:1])
        results[kind].append(result)
      report(result)
    except Exception as e:  # pylint: disable=broad-except
      # One shape that does not fit (memory, a mesh) must not cost the rest.
      results['errors'].append(f'{_describe(task)}: {type(e).__name__}: '
                               f'{str(e)[:300]}')
      report({'error': results['errors'][-1]})
    last_s[task[0]] = clock() - began
    results['seconds'] = round(clock() - start, 1)
    _write_suite(paths, results)
  _write_suite(paths, results)  # with the skipped tasks
  return results


def _write_suite(paths: dict, results: dict) -> None:
  """Both files, each replaced whole (never left half-written)."""
  os.makedirs(os.path.dirname(paths['json']) or '.', exist_ok=True)
  for ext, text in (('json', json.dumps(results, indent=2)),
                    ('md', suite_markdown(results))):
    with open(paths[ext] + '.tmp', 'w') as f:
      f.write(text)
    os.replace(paths[ext] + '.tmp', paths[ext])


def _describe(task) -> str:
  if task[0] == 'default_config':
    return 'default_config epochs'
  kind, batch, dtype, variant = task
  return f'{kind} batch {batch} {dtype} {variant or "auto"}'


def _epochs(config, epochs: int) -> dict:
  """``epochs`` epochs of ``config`` in a fresh temporary workdir, with the
  per-epoch centre-crop evaluation but not the final ten-crop one: the
  wall-clock seconds from the empty workdir (compiles, evaluations and
  checkpoints included; the dataset is made first if missing, which the
  suite's budget counts but these seconds do not) and the last validation
  error."""
  config = _with(config, num_epochs=epochs, num_train_steps=-1)
  config.input.ten_crop_eval = False
  train.load_dataset(config)  # the synthetic set is generated on first use
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    last = train.read_history(workdir)[-1]
  return dict(part='default_config', dataset=config.input.dataset,
              epochs=epochs, seconds=round(seconds, 1),
              steps=last['step'], batch_size=config.batch_size,
              images_per_sec=round(last['step'] * config.batch_size
                                   / seconds, 1),
              top1_error=round(last['top1_error'], 4),
              dtype=config.model.dtype)


def suite_markdown(results: dict) -> str:
  """The suite's tables: the sweep (``fastest_table``), the split, the
  default config's epochs, and what was skipped."""
  plan = results['plan']
  lines = [f'Suite ({plan["name"]} plan) on {results["devices"]} x '
           f'{results["device_kind"]} ({results["backend"]}), '
           f'{results["seconds"]} s of a {results["budget_s"]} s '
           f'budget; {plan["steps"]} timed steps after {plan["warmup"]}.', '']
  if results['sweep']:
    lines += ['One device, train step, images/s:', '',
              fastest_table(results['sweep']), '']
  if results['split']:
    lines += ['The paper\'s split, one tower per device (2 devices):', '',
              '| batch | dtype | images/s | step ms |', '|---|---|---|---|']
    lines += [f'| {r["batch_size"]} | {r["dtype"]} | '
              f'{r["images_per_sec"]:.2f} | {r["step_ms"]:.2f} |'
              for r in results['split']]
    lines.append('')
  epochs = results['default_config']
  if epochs:
    lines += [f'Default config, {epochs["epochs"]} epochs from an empty '
              f'workdir: {epochs["seconds"]} s ({epochs["images_per_sec"]} '
              f'images/s overall), validation top-1 error '
              f'{epochs["top1_error"]:.2%}.', '']
  if results['skipped']:
    lines += ['Not run (no budget left): ' + '; '.join(results['skipped'])
              + '.', '']
  if results['errors']:
    lines += ['Failed: ' + '; '.join(results['errors']), '']
  return '\n'.join(lines)


BASELINE = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                        'experiments', 'pytorch_baseline.py')


class _Untimed:
  """Steps of ``runner`` that are never recorded."""

  def __init__(self, runner):
    self.runner = runner

  def run(self, index: int, record: bool) -> None:
    del record
    self.runner.run(index, record=False)


class _PyTorchRunner:
  """A step of experiments/pytorch_baseline.py's net, in its own process
  (its own heap and thread pool), on request: ``run`` and ``median_s`` as
  ``_Runner``'s, so the two interleave step by step."""

  def __init__(self, process: subprocess.Popen, request: str):
    self.process, self.request = process, request  # see its serve()
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


def _ported_net(config, flag: str) -> dict:
  """The flags that make experiments/pytorch_baseline.py's port this
  config's net: the paper's (two towers, ReLU, 3/2 pooling, LRN within each
  tower) at any width, input size, class count and dropout. Anything else
  is refused."""
  model = _model(config)
  ported = (config.model.name == 'alexnet' and model.towers == 2
            and model.activation == 'relu' and not model.lrn_across_towers
            and (model.pool_window, model.pool_stride) == (3, 2))
  if not ported:
    raise ValueError(
        'experiments/pytorch_baseline.py ports the paper\'s net (alexnet, '
        'towers=2, relu, 3/2 pooling, LRN within each tower) at any width, '
        f'image_size, num_classes and dropout_rate; {flag} needs such a '
        f'config, got model {config.model.to_dict()}.')
  return dict(width=model.width, image_size=model.image_size,
              num_classes=model.num_classes, dropout=model.dropout_rate)


def _start_baseline(batch_size: int, net: dict
                    ) -> tuple[subprocess.Popen, dict]:
  """The baseline serving steps of ``net`` (``_ported_net``), and its
  framework line; a clear error when PyTorch is missing."""
  process = subprocess.Popen(
      [sys.executable, BASELINE, f'--batch_size={batch_size}', '--serve']
      + [f'--{flag}={value}' for flag, value in net.items()],
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
  allocator settings, each process idle while the other steps), each
  process's turn after an untimed step of its own. Returns
  this net's figures, PyTorch's, and the ratios (``speedup_with_lrn``,
  ``speedup_without_lrn``: ours over PyTorch's images per second).

  Raises:
    ValueError: the port cannot build the config's net (``_ported_net``),
      or PyTorch is not installed.
  """
  _check_counts(steps, warmup)
  _check_batch(config.batch_size)
  net = _ported_net(config, '--compare')
  _check_lrn(config, '--compare')
  ours = [_Runner(config), _Runner(config, use_lrn=False)]
  process, framework = _start_baseline(config.batch_size, net)
  try:
    theirs = [_PyTorchRunner(process, 'lrn'),
              _PyTorchRunner(process, 'no_lrn')]
    # Each process's turn starts with an untimed step. With huge pages, our
    # first step after PyTorch's turn measured about 1 s slower than our
    # next (2-core VM, batch 32; whichever net went first; a sleep or a
    # matmul in this process between the steps did not do it, and without
    # huge pages there was no such step), most likely the kernel compacting
    # what PyTorch gave back into huge pages. Timed, that stall was what
    # the ratio with LRN measured (its net went first).
    _interleaved([_Untimed(ours[0]), *ours, _Untimed(theirs[0]), *theirs],
                 steps, warmup)
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


def conv_layers(config) -> list[tuple[alexnet.TowerConv, list, bool]]:
  """Each convolution of the config's net as it is called: the layer (a
  ``TowerConv``), its inputs' shapes (one per tower) and whether the towers
  share one input (conv1, conv3). Found by tracing the net's shapes."""
  model = _model(config)
  if not isinstance(model, alexnet.AlexNet):
    raise ValueError(f'--part=conv times the towers\' convolutions of '
                     f'alexnet; model {config.model.name!r} has none.')
  layers = []

  def record(call, args, kwargs, context):
    if (isinstance(context.module, alexnet.TowerConv)
        and context.method_name == '__call__'):
      xs = args[0]
      layers.append((context.module, [x.shape for x in xs],
                     all(x is xs[0] for x in xs)))
    return call(*args, **kwargs)

  size = model.image_size
  images = jax.ShapeDtypeStruct((config.batch_size, size, size, 3),
                                model.dtype)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   images)
  return layers


class _ConvRunner:
  """One layer in one lowering, as the train step runs it: the forward
  pass and the gradients, the kernel's and (past conv1, whose input is the
  images) the input's; jitted."""

  def __init__(self, layer: alexnet.TowerConv, shapes: list, shared: bool,
               impl: str, dtype, first: bool):
    module = layer.clone(parent=None, name=None, impl=impl)
    init_key, *keys = jax.random.split(jax.random.key(0), 1 + 2 * len(shapes))
    self.inputs = [jax.random.normal(k, shape, dtype)
                   for k, shape in zip(keys, shapes)]
    if shared:  # one array, as the net passes it (conv1, conv3)
      self.inputs = self.inputs[:1]

    def towers(inputs):  # the list the layer takes; shared: one array twice
      return inputs * len(shapes) if shared else inputs

    self.params = module.init(init_key, towers(self.inputs))
    out = jax.eval_shape(module.apply, self.params, towers(self.inputs))
    self.cotangents = [jax.random.normal(k, y.shape, y.dtype)
                       for k, y in zip(keys[len(shapes):], out)]

    def step(params, inputs, cotangents):
      # The outputs are returned, so the forward pass is not pruned; the
      # cotangents are arguments, not constants XLA could fold into the
      # backward pass at compile time.
      if first:
        ys, vjp = jax.vjp(lambda p: module.apply(p, towers(inputs)), params)
      else:
        ys, vjp = jax.vjp(lambda p, x: module.apply(p, towers(x)), params,
                          inputs)
      return ys, vjp(cotangents)

    self.step = jax.jit(step)
    self.args = (self.params, self.inputs, self.cotangents)
    jax.block_until_ready(self.step(*self.args))
    self.times: list[float] = []

  def run(self, index: int, record: bool) -> None:
    del index
    start = time.perf_counter()
    jax.block_until_ready(self.step(*self.args))
    if record:
      self.times.append(time.perf_counter() - start)

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)


def benchmark_convolutions(config, steps: int, warmup: int,
                           against_pytorch: bool = False) -> list[dict]:
  """``--part=conv``: every lowering of every convolution layer, timed
  interleaved (and PyTorch's layer, in its own process, with
  ``against_pytorch``); one dict per layer."""
  _check_counts(steps, warmup)
  _check_batch(config.batch_size)
  layers = conv_layers(config)
  if against_pytorch:
    net = _ported_net(config, '--part=conv --compare')
  # What 'auto' picks here, whatever the config sets.
  auto = _implementations(_model(config, conv1_impl='auto',
                                 conv_impl='auto'))
  runs = []
  for layer, shapes, shared in layers:
    first = layer.name == alexnet.AlexNet.first_layer
    field = 'conv1_impl' if first else 'conv_impl'
    runs.append((layer, shapes, shared, field, {
        impl: _ConvRunner(layer, shapes, shared, impl, layer.dtype, first)
        for impl in alexnet.IMPLEMENTATIONS[field]}))
  ours = [r for *_, by_impl in runs for r in by_impl.values()]
  theirs = {}
  if against_pytorch:
    process, framework = _start_baseline(config.batch_size, net)
    try:
      theirs = {layer.name: _PyTorchRunner(process, layer.name)
                for layer, *_ in runs}
      # Settling steps before each process's turn, as in ``compare``.
      _interleaved([_Untimed(ours[0]), *ours,
                    _Untimed(next(iter(theirs.values()))), *theirs.values()],
                   steps, warmup)
    finally:
      process.stdin.close()
      process.wait()
  else:
    _interleaved(ours, steps, warmup)
  results = []
  for layer, shapes, shared, field, by_impl in runs:
    ms = {impl: round(1e3 * statistics.median(r.times), 2)
          for impl, r in by_impl.items()}
    result = dict(
        part='conv', layer=layer.name, batch_size=config.batch_size,
        input_shape=list(shapes[0]), towers=len(shapes),
        shared_input=shared, kernel_size=layer.kernel_size,
        stride=layer.stride, kernels_per_tower=layer.features,
        ms_forward_and_backward=ms, fastest=min(ms, key=ms.get),
        auto=auto[field], steps=steps, backend=jax.default_backend(),
        jax=jax.__version__)
    if against_pytorch:
      pytorch_s = theirs[layer.name].median_s
      result.update(
          pytorch=framework, pytorch_ms=round(1e3 * pytorch_s, 2),
          speedup_vs_pytorch=round(
              pytorch_s / by_impl[auto[field]].median_s, 3))
    results.append(result)
  return results


def benchmark_input(config, steps: int, warmup: int) -> dict:
  """Times the training input from ImageNet-sized JPEGs made here to
  batches on the devices (``global_batch``, the transfer included), on all
  cores: ``input.source='tfds'`` runs the paper's augmentation per original
  image (batches in the model's dtype); ``'prepared'`` first makes a store
  of them in a temporary directory (in ``input.store_format``), then reads
  uint8 patches from it."""
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
          pixels=input_pipeline.Pixels.from_config(config.input),
          dtype=config.model.dtype)
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
  modes = [name for name, on in (('--sweep', FLAGS.sweep),
                                 # --part=conv --compare: its layers
                                 ('--compare', FLAGS.compare
                                  and FLAGS.part != 'conv'),
                                 ('--suite', FLAGS.suite),
                                 (f'--part={FLAGS.part}',
                                  FLAGS.part != 'train'))
           if on]
  if len(modes) > 1:
    raise app.UsageError(f'{" and ".join(modes)} are separate modes; pick '
                         f'one.')
  if FLAGS.suite:
    if not FLAGS.out:
      raise app.UsageError('--suite needs --out=DIR, the new directory for '
                           'suite.json and suite.md.')
    # The default config's two CPU devices (on a CPU); before JAX starts.
    parallel.split_cpu(default.get_config())
  if FLAGS.part == 'input':
    print(json.dumps(benchmark_input(FLAGS.config, FLAGS.steps,
                                     FLAGS.warmup)), flush=True)
  elif FLAGS.part == 'conv':
    for result in benchmark_convolutions(FLAGS.config, FLAGS.steps,
                                         FLAGS.warmup, FLAGS.compare):
      print(json.dumps(result), flush=True)
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
  elif FLAGS.suite:
    plan = suite_plan(jax.default_backend())
    if plan is CPU_PLAN:
      print(f'No GPU or TPU here (JAX backend {jax.default_backend()!r}): '
            f'running the CPU plan, {plan}.', file=sys.stderr, flush=True)
    results = suite(FLAGS.config, default.get_config(), plan, FLAGS.out,
                    FLAGS.budget_s,
                    report=lambda r: print(json.dumps(r), flush=True))
    print(suite_markdown(results), flush=True)
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
                    'Time the net against the same net in '
                    'experiments/pytorch_baseline.py, with and without LRN, '
                    'interleaved; print both ratios '
                    '(with --part=conv: each convolution layer).')
  flags.DEFINE_bool('suite', False,
                    'Measure this machine: the sweep at several batch sizes '
                    'and dtypes, the split, two epochs of configs/default.py '
                    '(the accelerator plan on a GPU or TPU, else the CPU '
                    'plan; it sets its own steps and batch sizes), within '
                    '--budget_s; writes suite.json and suite.md into --out.')
  flags.DEFINE_string('out', '', 'Directory for --suite\'s files (it '
                      'must not hold a suite yet).')
  flags.DEFINE_float('budget_s', SUITE_BUDGET_S, 'Seconds --suite may take; '
                     'what would end later is listed as skipped.')
  flags.DEFINE_enum(
      'part', 'train', ['train', 'conv', 'input'],
      'train: the jitted train step; conv: each convolution layer alone, in '
      'every lowering; input: the training augmentation alone.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
