"""Training and evaluation (paper section 5): ``train_and_evaluate``.

It reads top to bottom in stages: checks (all before any long work, so a
bad start fails fast and leaves an existing run untouched), input, model and
state, checkpoint, steps, then the loop: train steps, evaluation at the end
of every epoch (and at the last step) feeding the plateau rule, checkpoints
on an interval, at the end and on SIGTERM, and the figures at the end.

A SIGTERM (a preempted VM, a scheduler's time limit) saves a checkpoint and
raises ``Preempted``; ``python -m alexnet_jax.main`` then exits with
``EXIT_PREEMPTED`` (75) so that a scheduler or wrapper runs the same command
again, which continues the run. Several processes agree on the step to stop
at through JAX's coordination service (its preemption sync point) without
any per-step communication between hosts.

The data position and the dropout key of step ``s`` are functions of ``s``
(epoch ``s // steps_per_epoch``, batch ``s % steps_per_epoch`` of that
epoch's shuffled order; dropout key ``fold_in(key, s)``), so the checkpoint
of step ``s`` is all a run needs to continue exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import math
import queue
import signal
import tempfile
import threading
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from flax.training import train_state

from alexnet_jax import augment
from alexnet_jax import checkpoint
from alexnet_jax import figures
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import precision
from alexnet_jax import prepare as prepare_store
from alexnet_jax import prepared
from alexnet_jax import schedules
from alexnet_jax import steps
from alexnet_jax import storage
from alexnet_jax import synthetic_shapes

METRICS_FILE = 'metrics.jsonl'
# Where batches come from: tfds's original images, augmented by tf.data, or
# the prepared store's squares (``prepared.py``, ``augment.py``).
SOURCES = ('tfds', 'prepared')
CONFIG_FILE = 'config.json'
KERNELS_FIGURE = 'conv1_kernels.png'  # Figure 3: the first layer's kernels
# sysexits.h's EX_TEMPFAIL ("try again later"): stopped by SIGTERM after
# saving; rerunning the same command continues the run.
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """The run stopped early on SIGTERM, after saving checkpoint ``step``."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'Stopped by SIGTERM at step {step}; checkpoint saved in '
                     f'{directory}. Run the same command again to continue.')
    self.step = step


# --------------------------------------------------------------------------
# Checks.

def check_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for settings that cannot work (the model's own fields are
  checked by the model itself)."""
  steps.create_model(config.model)
  precision.check(config)
  if config.input.dataset not in input_pipeline.DATASETS:
    raise ValueError(f'Unknown dataset {config.input.dataset!r}; use one of '
                     f'{input_pipeline.DATASETS}.')
  if config.input.resize < config.model.image_size:
    raise ValueError(
        f'input.resize={config.input.resize} is smaller than the crop '
        f'model.image_size={config.model.image_size}; the paper uses 256 for '
        f'224 (resize about 8/7 of the crop).')
  if config.batch_size < 1:
    raise ValueError(f'batch_size={config.batch_size} must be positive.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError(f'num_epochs={config.num_epochs} and num_train_steps='
                     f'{config.num_train_steps}: set one of them above 0.')
  for name in ('log_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints'):
    if config[name] < 1:
      raise ValueError(f'{name}={config[name]} must be at least 1.')
  if config.input.batches_ahead < 1:
    raise ValueError(f'input.batches_ahead={config.input.batches_ahead} '
                     f'must be at least 1 (host batches made ahead of use).')
  if config.profile_steps < 0:
    raise ValueError(f'profile_steps={config.profile_steps} must be 0 (no '
                     f'profile) or the number of steps to trace.')
  if config.profile_after_steps < 1:
    raise ValueError(f'profile_after_steps={config.profile_after_steps} must '
                     f'be at least 1 (the first steps compile).')
  if config.input.data_dir:
    storage.check(config.input.data_dir, 'input.data_dir')
  if config.input.source not in SOURCES:
    raise ValueError(f'Unknown input.source {config.input.source!r}; use one '
                     f'of {SOURCES}.')
  if _from_store(config):
    prepared.directory(config)  # the format, quality and path checks
    if config.input.crop != 'paper':
      raise ValueError(
          f'input.crop={config.input.crop!r} needs the original images: the '
          f'prepared store holds the 256x256 squares the paper\'s crops come '
          f'from; use input.source=\'tfds\' for it.')
  input_pipeline.Pixels.from_config(config.input)
  schedules.check_config(config)


def check_profile(config: ml_collections.ConfigDict, total_steps: int
                  ) -> None:
  """The profiled steps must fit in the run."""
  end = config.profile_after_steps + config.profile_steps
  if config.profile_steps and end > total_steps:
    raise ValueError(
        f'profile_steps={config.profile_steps} after profile_after_steps='
        f'{config.profile_after_steps} warm-up steps ends at step {end}, past '
        f'the run\'s {total_steps} steps; profile fewer steps.')


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` (a path or URL) if needed and checks that it takes
  files; nothing is created for a URL scheme that cannot be written."""
  if not workdir:
    raise ValueError('A workdir is required: --workdir=/path/to/run.')
  checkpoint.directory(workdir)  # the scheme checks
  try:
    storage.check_writable(workdir)
  except OSError as e:
    raise ValueError(f'workdir {workdir!r} cannot be created or written '
                     f'({e}); pick a directory you can write to.') from e
  return workdir


def create_state(config: ml_collections.ConfigDict, mesh, rng: jax.Array,
                 steps_per_epoch: int = 1, total_steps: int = 1
                 ) -> train_state.TrainState:
  """A fresh state, born sharded on ``mesh``, with the config's learning
  rate schedule over ``total_steps``. Evaluation and prediction need only
  its layout (the same for any lengths) to restore a checkpoint into."""
  lr_fn = schedules.create_learning_rate_fn(config, steps_per_epoch,
                                            total_steps)
  return parallel.create_train_state(config, steps.create_model(config.model),
                                     mesh, rng, lr_fn)


# --------------------------------------------------------------------------
# Input.

def _from_store(config: ml_collections.ConfigDict) -> bool:
  return config.input.source == 'prepared'


def load_dataset(config: ml_collections.ConfigDict):
  """The prepared dataset builder, or the opened store (checked: settings,
  every shard file). Process 0 prepares a tfds dataset first while the
  others wait; they then find it prepared (a shared disk) or prepare their
  own copy. A store of the generated dataset is made the same way, on
  first use (seconds); any other store must exist (``prepare``'s command).
  (Prepare ImageNet before a multi-host run: a wait of hours may outlast
  the collectives' timeouts.)"""
  if _from_store(config):
    def prepare():
      if _generated(config):
        prepare_store.prepare(config)
      return prepared.Store(prepared.directory(config),
                            prepared.settings(config),
                            (config.input.train_split,
                             config.input.eval_split))
  else:
    def prepare():
      return input_pipeline.dataset_builder(config.input.dataset,
                                            config.input.data_dir or None)
  if jax.process_count() == 1:
    return prepare()
  if jax.process_index() == 0:
    prepare()
  multihost_utils.sync_global_devices('dataset prepared')
  return prepare()


def _generated(config: ml_collections.ConfigDict) -> bool:
  """Whether the config's dataset is the one this project generates."""
  return (config.input.dataset.split('/')[0]
          == synthetic_shapes.SyntheticShapes.name)


def train_steps_per_epoch(config: ml_collections.ConfigDict, data) -> int:
  count = (prepared.steps_per_epoch if _from_store(config)
           else input_pipeline.steps_per_epoch)
  return count(data, config.input.train_split, config.batch_size,
               jax.process_count())


def train_batches(config: ml_collections.ConfigDict, data, mesh,
                  start_step: int, total_steps: int, steps_per_epoch: int):
  """``(step, images, labels)`` from ``start_step`` to ``total_steps``, as
  global arrays on the mesh; each epoch is its own reshuffled pass. From
  the store, uint8 patches cross to the devices and ``augment`` finishes
  them there; from tfds, images cross in the model's compute dtype. The
  host's batches are made ``config.input.batches_ahead`` ahead in a
  thread, so that the next epoch's pipeline starts during the evaluation
  instead of after it."""
  keys = ('image', 'label') + (('flip', 'pca_alpha') if _from_store(config)
                               else ())
  pixels = input_pipeline.Pixels.from_config(config.input)
  batches = ahead(_host_batches(config, data, pixels, start_step,
                                total_steps, steps_per_epoch),
                  config.input.batches_ahead)
  for step, (images, labels, *draws) in enumerate(
      parallel.prefetch_to_mesh(mesh, batches, keys), start_step):
    if draws:  # uint8 patches: reflection, colour and mean on the device
      images = augment.train_images(images, *draws, pixels=pixels)
    yield step, images, labels


def _host_batches(config, data, pixels: input_pipeline.Pixels,
                  start_step: int, total_steps: int, steps_per_epoch: int):
  """This process's batches (dicts of numpy arrays) of the steps from
  ``start_step`` to ``total_steps``, epoch after epoch."""
  step = start_step
  while step < total_steps:
    epoch, skip = divmod(step, steps_per_epoch)
    count = min(steps_per_epoch - skip, total_steps - step)
    common = dict(global_batch_size=config.batch_size,
                  crop_size=config.model.image_size,
                  pca_stddev=config.input.pca_stddev, seed=config.seed,
                  epoch=epoch, skip_batches=skip,
                  process_index=jax.process_index(),
                  process_count=jax.process_count())
    if _from_store(config):
      batches = itertools.islice(prepared.train_batches(
          data, config.input.train_split, **common), count)
    else:
      batches = input_pipeline.create_split(
          data, config.input.train_split, train=True,
          resize=config.input.resize, crop=config.input.crop,
          shuffle_buffer=config.input.shuffle_buffer, pixels=pixels,
          dtype=config.model.dtype, **common).take(count).as_numpy_iterator()
    for batch in batches:
      yield batch
      step += 1


def ahead(items, size: int):
  """``items`` in order, each made up to ``size`` items before it is taken,
  by a thread (tf.data and the store's patch cutting release the GIL). An
  error in making them is raised here; closing this generator stops the
  thread after the item it is making."""
  done = object()
  made = queue.Queue(size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        made.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def make():
    try:
      for item in items:
        if not put((item, None)):
          return
      put((done, None))
    except Exception as error:  # pylint: disable=broad-except
      put((done, error))

  thread = threading.Thread(target=make, name='batches_ahead', daemon=True)
  thread.start()
  try:
    while True:
      item, error = made.get()
      if item is done:
        if error is not None:
          raise error
        return
      yield item
  finally:
    stop.set()
    thread.join()


# --------------------------------------------------------------------------
# Evaluation.

def evaluate(eval_step, state: train_state.TrainState, mesh, data,
             config: ml_collections.ConfigDict, *, ten_crop: bool = False
             ) -> dict[str, float]:
  """Mean ``loss``, ``top1_error``, ``top5_error`` over the eval split
  (centre crops, or the paper's ten crops)."""
  common = dict(global_batch_size=config.batch_size,
                crop_size=config.model.image_size, ten_crop=ten_crop,
                process_index=jax.process_index(),
                process_count=jax.process_count())
  pixels = input_pipeline.Pixels.from_config(config.input)
  if _from_store(config):
    batches = prepared.eval_batches(data, config.input.eval_split, **common)
  else:
    batches = input_pipeline.create_split(
        data, config.input.eval_split, train=False,
        resize=config.input.resize, pixels=pixels,
        dtype=config.model.dtype, **common).as_numpy_iterator()
  totals = {}
  for images, labels, mask in parallel.prefetch_to_mesh(
      mesh, batches, ('image', 'label', 'mask')):
    if _from_store(config):
      images = augment.eval_images(images, config.model.image_size, ten_crop,
                                   pixels)
    sums = _host(eval_step(state, images, labels, mask))
    totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
  count = totals.pop('count')
  return {'loss': totals['loss'] / count,
          'top1_error': totals['top1_errors'] / count,
          'top5_error': totals['top5_errors'] / count}


def _host(tree):
  """A replicated result as numpy (every process holds the whole value)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


# --------------------------------------------------------------------------
# Stopping: SIGTERM, and losses that are not finite.

@contextlib.contextmanager
def _preemption():
  """Yields ``stop(step) -> bool``: whether to save and stop after
  ``step``, the same answer on every process.

  Several processes: JAX's runtime catches SIGTERM on any of them and its
  coordination service picks a step that all reach; each process asks only
  its local client, so no step waits for the other hosts. One process: a
  Python handler sets a flag.
  """
  if jax.process_count() > 1:
    yield multihost_utils.reached_preemption_sync_point
    return
  signalled = []
  if threading.current_thread() is not threading.main_thread():
    yield lambda step: False  # signals reach only the main thread
    return

  def handler(signum, frame):
    del frame
    logging.warning('Signal %d: saving a checkpoint and stopping.', signum)
    signalled.append(signum)

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield lambda step: bool(signalled)
  finally:
    signal.signal(signal.SIGTERM, previous)


_all_finite = jax.jit(precision.all_finite)


def _check_finite(values: dict[str, float], step: int, manager) -> None:
  bad = {k: v for k, v in values.items() if not math.isfinite(v)}
  if bad:
    raise FloatingPointError(
        f'Not finite at step {step}: {bad}. Stopped without saving; the last '
        f'good checkpoint (step {manager.latest_step()}) in '
        f'{manager.directory} is kept. Try a lower learning_rate.')


def _save(manager, state, config, **extra) -> None:
  """A checkpoint, unless a parameter is not finite (a NaN there would
  only show in the next step's loss)."""
  finite = bool(_host(_all_finite(state.params)))
  _check_finite({'parameters': 0.0 if finite else math.nan},
                int(state.step), manager)
  checkpoint.save(manager, state, config, extra)


# --------------------------------------------------------------------------
# Metrics.

def read_history(workdir: str, up_to_step: float = math.inf) -> list[dict]:
  """The records of ``metrics.jsonl`` up to ``up_to_step``. A resumed run
  keeps those up to its restored step (later ones came from training that
  the checkpoint does not hold; they are redone)."""
  path = storage.join(workdir, METRICS_FILE)
  if not storage.exists(path):
    return []
  records = [json.loads(line)
             for line in storage.read_text(path).splitlines() if line.strip()]
  return [r for r in records if r['step'] <= up_to_step]


def _write_history(workdir: str, history: list[dict]) -> None:
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, METRICS_FILE),
                       ''.join(json.dumps(r) + '\n' for r in history))


def save_figures(workdir: str, state, history: list[dict],
                 channel_order: str = 'RGB') -> None:
  """The first layer's kernels (Figure 3; shown as RGB whatever the
  channel order the net reads) and, with ``history``, the learning curves."""
  kernel = state.params[state.model.first_layer]['kernel']
  if not kernel.is_fully_addressable:
    kernel = multihost_utils.process_allgather(kernel, tiled=True)
  if jax.process_index() != 0:
    return
  kernel = state.model.kernels_by_tower(np.asarray(kernel))
  if channel_order == 'BGR':
    kernel = kernel[..., ::-1, :]  # [towers, k, k, channels, n]
  figures.save_kernels(kernel, storage.join(workdir, KERNELS_FIGURE))
  if history:
    figures.save_learning_curves(
        history, storage.join(workdir, 'learning_curves.png'))


class _Progress:
  """Logs step, loss, learning rate, images/s, the input wait and ETA, and
  writes images/s and the input wait to TensorBoard.

  The input wait is the fraction of the loop's wall time spent waiting for
  the next batch: near 0 when the devices set the pace, near 1 when the
  input pipeline does. (clu's ``ReportProgress`` reports steps/s and time
  fractions since the start, in a work-unit note; these are per interval.)
  """

  def __init__(self, total_steps: int, batch_size: int,
               steps_per_epoch: int, start_step: int, writer):
    self.total = total_steps
    self.batch = batch_size
    self.per_epoch = steps_per_epoch
    self.writer = writer
    self.restart(start_step)

  def restart(self, step: int) -> None:
    self.step, self.time, self.waited = step, time.monotonic(), 0.0

  def timed(self, batches):
    """``batches``, timing how long each one is waited for."""
    batches = iter(batches)
    while True:
      start = time.monotonic()
      item = next(batches, None)
      self.waited += time.monotonic() - start
      if item is None:
        return
      yield item

  def log(self, step: int, loss: float, top1_error: float, lr: float
          ) -> None:
    elapsed = time.monotonic() - self.time
    rate = (step - self.step) * self.batch / elapsed
    wait = self.waited / elapsed
    eta = datetime.timedelta(
        seconds=round((self.total - step) * self.batch / max(rate, 1e-9)))
    logging.info('step %d/%d (epoch %.2f): loss %.4f, top-1 error %.3f, '
                 'lr %.3g, %.1f img/s, input wait %.0f%%, ETA %s', step,
                 self.total, step / self.per_epoch, loss, top1_error, lr,
                 rate, 100 * wait, eta)
    self.writer.write_scalars(step, {'train_loss': loss, 'learning_rate': lr,
                                     'images_per_sec': rate,
                                     'input_wait_fraction': wait})
    self.restart(step)


def _metric_writer(workdir: str) -> metric_writers.MetricWriter:
  """Log lines, and on process 0 TensorBoard summaries in ``workdir``: clu's
  default writer, built here because ``create_default_writer`` passes the
  workdir through ``epath``, which refuses schemes it does not know, such as
  the in-memory ``ram://`` that the tests use for a URL workdir
  (``gs://`` works either way); TensorBoard's own writer opens what
  ``storage`` opens (``tf.io.gfile``)."""
  writers = [metric_writers.LoggingWriter()]
  if jax.process_index() == 0:
    writers.append(metric_writers.SummaryWriter(workdir))
  return metric_writers.AsyncMultiWriter(writers)


def _profiler(config: ml_collections.ConfigDict, workdir: str,
              start_step: int, total_steps: int):
  """clu's action that traces ``profile_steps`` steps after the warm-up
  (process 0) into ``<workdir>/plugins/profile`` for TensorBoard's profile
  plugin or Perfetto; ``None`` when off, or when a resumed run has too few
  steps left (each start of a run takes its own trace)."""
  if not config.profile_steps or jax.process_index() != 0:
    return None
  first = start_step + config.profile_after_steps
  if first + config.profile_steps > total_steps:
    logging.warning('No profile: steps %d to %d are past the run\'s end.',
                    first, first + config.profile_steps)
    return None
  logdir = workdir
  if storage.scheme(workdir):
    # The profiler writes through XLA's own file layer, which knows local
    # paths only: trace locally, say where.
    logdir = tempfile.mkdtemp(prefix='alexnet_profile_')
    logging.warning('The profile goes to %s (copy it next to %s to view it '
                    'there).', logdir, workdir)
  return periodic_actions.Profile(
      logdir=logdir, num_profile_steps=config.profile_steps,
      profile_duration_ms=None,
      first_profile=first,
      every_steps=None, every_secs=None)


# --------------------------------------------------------------------------
# The run.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> train_state.TrainState:
  """Trains ``config`` in ``workdir`` (resuming the run there, if any) and
  returns the final state. Writes checkpoints, ``metrics.jsonl``,
  TensorBoard summaries, ``config.json`` and the figures into ``workdir``."""
  # ---- Checks: the config, the workdir, the devices, an existing run.
  check_config(config)
  mesh = parallel.make_mesh(config)  # the mesh's errors, before any file
  prepare_workdir(workdir)
  towers = steps.create_model(config.model).towers
  if towers == 2 and mesh.shape[parallel.MODEL] == 1:
    logging.warning('Both towers run on every device (model axis 1): the '
                    'paper\'s split needs an even number of devices.')
  manager = checkpoint.create_manager(workdir, config)
  try:
    checkpoint.check_compatible(manager, config)
    return _run(config, workdir, mesh, manager)
  finally:
    manager.close()  # waits for a checkpoint still being written


def _run(config, workdir, mesh, manager) -> train_state.TrainState:
  # ---- Input (the synthetic dataset is generated on first use).
  builder = load_dataset(config)
  steps_per_epoch = train_steps_per_epoch(config, builder)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  check_profile(config, total_steps)

  # ---- Model and state: born sharded, then the latest checkpoint if any.
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  state = create_state(config, mesh, init_rng, steps_per_epoch, total_steps)
  plateau = schedules.Plateau.from_config(config)
  # Train-loss sum and count of the current epoch, for metrics.jsonl.
  epoch_loss = [0.0, 0]
  if manager.latest_step() is not None:
    state, record = checkpoint.restore(manager, state, move_damaged=True)
    plateau.restore(record['plateau'])
    epoch_loss = record['epoch_loss']
    logging.info('Resumed from step %d of %s.', int(state.step),
                 manager.directory)
  start_step = int(state.step)
  history = read_history(workdir, start_step)
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, CONFIG_FILE),
                       config.to_json(indent=2))
  logging.info('%s: %d parameters, mesh %s, steps %d to %d (%d per epoch) '
               'of batch %d.', config.input.dataset,
               models.num_params(state.params), dict(mesh.shape), start_step,
               total_steps, steps_per_epoch, config.batch_size)

  # ---- Steps and writers.
  train_step = parallel.make_train_step(mesh, state)
  eval_step = parallel.make_eval_step(mesh, state)
  writer = _metric_writer(workdir)
  progress = _Progress(total_steps, config.batch_size, steps_per_epoch,
                       start_step, writer)
  profile = _profiler(config, workdir, start_step, total_steps)

  # ---- Loop.
  pending = []  # this step's and earlier metrics not yet fetched
  with _preemption() as preempted:
    for step, images, labels in progress.timed(train_batches(
        config, builder, mesh, start_step, total_steps, steps_per_epoch)):
      state, metrics = train_step(state, images, labels,
                                  jax.random.fold_in(dropout_rng, step))
      pending.append(metrics)
      done = step + 1
      if profile:
        profile(done)
      end_of_epoch = done % steps_per_epoch == 0 or done == total_steps
      stopping = preempted(done)
      saving = (done == total_steps or stopping
                or done % config.checkpoint_every_steps == 0)
      if done % config.log_every_steps == 0 or end_of_epoch or saving:
        fetched = _host(pending)
        loss = float(np.mean([m['loss'] for m in fetched]))
        _check_finite({'train loss': loss}, done, manager)
        epoch_loss = [epoch_loss[0] + loss * len(fetched),
                      epoch_loss[1] + len(fetched)]
        lr = float(_host(steps.learning_rate(state)))
        progress.log(done, loss,
                     float(np.mean([m['top1_error'] for m in fetched])), lr)
        pending = []
      if end_of_epoch:
        record = {'step': done, 'epoch': done / steps_per_epoch,
                  'learning_rate': lr,
                  'train_loss': epoch_loss[0] / epoch_loss[1],
                  **evaluate(eval_step, state, mesh, builder, config)}
        _check_finite(record, done, manager)
        epoch_loss = [0.0, 0]
        history.append(record)
        _write_history(workdir, history)
        writer.write_scalars(done, {f'eval_{k}': v for k, v in record.items()
                                    if k not in ('step', 'epoch')})
        logging.info('Evaluation at step %d: %s', done, record)
        if config.schedule == 'plateau' and plateau.update(
            record['top1_error']):
          lr = config.learning_rate * plateau.scale
          state = steps.set_learning_rate(state, lr)
          logging.info('Validation error stopped improving: learning rate '
                       'now %.3g (drop %d of at most %d).', lr, plateau.drops,
                       plateau.max_drops)
        progress.restart(done)
      if saving:
        _save(manager, state, config, plateau=plateau.state(),
              epoch_loss=epoch_loss)
      if stopping:
        writer.flush()
        raise Preempted(done, manager.directory)
  writer.flush()
  if int(state.step) == total_steps:
    _finish(config, workdir, state, mesh, builder, eval_step, history)
  elif int(state.step) > total_steps:
    logging.warning('The checkpoint (step %d) is past this config\'s %d '
                    'steps: nothing to do.', int(state.step), total_steps)
  return state


def _finish(config, workdir, state, mesh, builder, eval_step, history):
  """The paper's ten-crop test (section 4.1) and the figures."""
  if config.input.ten_crop_eval and history:
    ten = evaluate(eval_step, state, mesh, builder, config, ten_crop=True)
    logging.info('Ten-crop evaluation at step %d: %s', int(state.step), ten)
    history[-1].update({f'ten_crop_{k}': v for k, v in ten.items()})
    _write_history(workdir, history)
  save_figures(workdir, state, history, config.input.channel_order)
