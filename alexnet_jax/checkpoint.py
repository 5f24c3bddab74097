"""Checkpoints of a training run (orbax), in ``<workdir>/checkpoints``.

A checkpoint holds the train state (step, parameters and momentum, and a
float16 run's loss scale; each device writing its own shards) and a JSON
record: the plateau rule's state (see ``schedules.Plateau``) and the
model, dataset and loss scaling it was trained with.
The step is also the data position and the dropout key (the training loop
derives both from it), so a resumed run continues exactly.

Before a run touches an existing workdir, ``check_compatible`` compares
that record with the config, so that a mistyped ``--workdir`` or config
fails at once instead of overwriting another experiment.

A checkpoint that cannot be restored (a file truncated or lost, e.g. by a
machine that died while copying the workdir) is skipped: once an older one
is restored, training moves the damaged ones aside into
``<workdir>/checkpoints_damaged`` (never deleting them) and continues. With
several processes this assumes they fail alike (shared storage, each
reading the damaged files); a process that reads only undamaged shards
would wait at orbax's barrier until it times out.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from flax.training import train_state

from alexnet_jax import input_pipeline
from alexnet_jax import storage

DIRNAME = 'checkpoints'
# TensorStore reports a file it cannot read as a ValueError whose message
# starts with its status (measured: OUT_OF_RANGE for a truncated data file,
# NOT_FOUND for a missing one; DATA_LOSS is its status for corrupt
# contents). Other errors (a state of another layout, a permission, the
# network) are not damage: they stop the run and move nothing.
_DAMAGE_STATUSES = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS')


def _is_damage(error: Exception) -> bool:
  """Whether ``error`` (from restoring) means unreadable files."""
  return (isinstance(error, (FileNotFoundError, json.JSONDecodeError))
          or (isinstance(error, ValueError)
              and str(error).startswith(_DAMAGE_STATUSES)))


def directory(workdir: str) -> str:
  """``<workdir>/checkpoints``, absolute; a clear error for a URL scheme
  orbax cannot write."""
  storage.check(workdir, 'workdir')
  return storage.absolute(storage.join(workdir, DIRNAME))


def create_manager(workdir: str, config: ml_collections.ConfigDict, *,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the last ``config.keep_checkpoints`` (the training loop decides
  when to save). ``read_only`` (for evaluation) neither saves, deletes nor
  creates anything."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(directory(workdir), options=options)


# Fields added after runs were first recorded, with the value every run
# recorded without them had. A model without a name is the paper's net.
ADDED_MODEL_FIELDS = {'name': 'alexnet', 'lrn_across_towers': False}
# Model fields that choose a lowering of the same math (``conv_impl``, ...).
IMPL_SUFFIX = '_impl'
ADDED_INPUT_FIELDS = dataclasses.asdict(input_pipeline.PAPER_PIXELS)


def with_added_fields(config: dict) -> dict:
  """``config`` (a config.json's dict) as if written now: the added fields
  it lacks, with the values it was run with."""
  config = dict(config)
  if 'model' in config and 'name' not in config['model']:
    config['model'] = {**ADDED_MODEL_FIELDS, **config['model']}
  if 'input' in config:
    config['input'] = {**ADDED_INPUT_FIELDS, **config['input']}
  return config


def _as_json(value):
  """``value`` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def record(config: ml_collections.ConfigDict, extra: dict) -> dict:
  """What a checkpoint records besides the state: the model, the dataset,
  the pixel convention the net was trained on, the loss scaling, and the
  training loop's ``extra`` (plain numbers)."""
  pixels = {k: config.input[k] for k in ADDED_INPUT_FIELDS}
  return {'model': config.model.to_dict(), 'dataset': config.input.dataset,
          'pixels': _as_json(pixels),
          'loss_scale': config.get('loss_scale', 'none'), **extra}


def check_compatible(manager: ocp.CheckpointManager,
                     config: ml_collections.ConfigDict) -> None:
  """Raises ValueError if the newest readable checkpoint is of another
  model, dataset, pixel convention or loss scaling than ``config`` (a run
  continues only with what it started with; a record from before a field
  existed is read with the value runs had then)."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved = restore_record(manager, step)
      break
    except (ValueError, OSError) as e:
      if not _is_damage(e):
        raise
      continue  # ``restore`` deals with it
  else:
    return
  want = record(config, {})
  saved_model = with_added_fields({'model': saved['model']})['model']
  # How ops are lowered is not what was trained: a run may move backends.
  diffs = [f'model.{k}: checkpoint {saved_model.get(k)!r}, config {v!r}'
           for k, v in want['model'].items()
           if saved_model.get(k) != v and not k.endswith(IMPL_SUFFIX)]
  if saved['dataset'] != want['dataset']:
    diffs.append(f'input.dataset: checkpoint {saved["dataset"]!r}, config '
                 f'{want["dataset"]!r}')
  # A loss scale is part of the state: a run keeps the one it began with.
  if saved.get('loss_scale', 'none') != want['loss_scale']:
    diffs.append(f'loss_scale: checkpoint '
                 f'{saved.get("loss_scale", "none")!r}, config '
                 f'{want["loss_scale"]!r}')
  saved_pixels = saved.get('pixels', _as_json(ADDED_INPUT_FIELDS))
  diffs += [f'input.{k}: checkpoint {saved_pixels[k]!r}, config {v!r}'
            for k, v in want['pixels'].items() if saved_pixels[k] != v]
  if diffs:
    raise ValueError(
        f'{manager.directory} holds a run (step {step}) of another '
        f'configuration: {"; ".join(diffs)}. Use a new --workdir, or the '
        f'settings of that run to continue it.')


def restore_record(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(
      record=ocp.args.JsonRestore()))['record']


def _saved(state: train_state.TrainState) -> dict:
  """What a checkpoint holds of ``state``: step, parameters, optimizer
  state, and the loss scale only where the run has one, so that a run
  without one keeps the layout checkpoints had before loss scales
  existed (and those restore)."""
  tree = {'step': state.step, 'params': state.params,
          'opt_state': state.opt_state}
  if getattr(state, 'loss_scale', None) is not None:
    tree['loss_scale'] = state.loss_scale
  return tree


def save(manager: ocp.CheckpointManager, state: train_state.TrainState,
         config: ml_collections.ConfigDict, extra: dict) -> None:
  """Saves at ``state.step`` (in the background; ``manager.close()`` waits
  for it)."""
  manager.save(
      int(state.step), force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_saved(state)),
          record=ocp.args.JsonSave(record(config, extra))))


def restore(manager: ocp.CheckpointManager, state: train_state.TrainState,
            *, move_damaged: bool = False
            ) -> tuple[train_state.TrainState, Any]:
  """The newest checkpoint that can be restored, laid out like ``state``
  (same shardings), and its record. A damaged one is skipped with a
  warning; with ``move_damaged`` (training, not read-only users) the
  skipped ones are moved aside once an older one is restored.

  Raises:
    ValueError: there is no checkpoint, or none can be restored (then
      nothing is moved, so that the same command cannot start afresh over
      the run).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise ValueError(f'No checkpoint in {manager.directory}: train first '
                     f'(python -m alexnet_jax.main) or check --workdir.')
  damaged = []
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_saved(state)),
          record=ocp.args.JsonRestore()))
    except (ValueError, OSError) as e:
      if not _is_damage(e):
        raise
      logging.warning('Checkpoint %d in %s cannot be restored (%s: %.300s); '
                      'trying the one before.', step, manager.directory,
                      type(e).__name__, e)
      damaged.append(step)
      continue
    if move_damaged:
      for bad in damaged:
        _move_aside(manager, bad)
    return state.replace(**restored['state']), restored['record']
  raise ValueError(
      f'None of the checkpoints in {manager.directory} (steps {steps}) can be '
      f'restored (see the warnings above); nothing was moved. Put back good '
      f'copies of their files to continue, or start afresh with a new '
      f'--workdir.')


def _move_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Moves checkpoint ``step`` into ``<workdir>/checkpoints_damaged``
  (process 0; every process waits for it) and forgets it."""
  damaged = str(manager.directory) + '_damaged'  # outside orbax's listing
  if jax.process_index() == 0:
    target = storage.join(damaged, f'{step}.{time.strftime("%Y%m%d-%H%M%S")}')
    storage.makedirs(damaged)
    storage.rename(storage.join(str(manager.directory), str(step)), target)
    logging.warning('Moved damaged checkpoint %d to %s.', step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
  manager.reload()
