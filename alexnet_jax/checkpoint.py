"""Checkpoints of a training run (orbax), in ``<workdir>/checkpoints``.

A checkpoint holds the train state (step, parameters and momentum, each
device writing its own shards) and a JSON record: the plateau rule's state
(see ``schedules.Plateau``) and the model and dataset it was trained with.
The step is also the data position and the dropout key (the training loop
derives both from it), so a resumed run continues exactly.

Before a run touches an existing workdir, ``check_compatible`` compares
that record with the config, so that a mistyped ``--workdir`` or config
fails at once instead of overwriting another experiment.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from flax.training import train_state

DIRNAME = 'checkpoints'


def create_manager(workdir: str, config: ml_collections.ConfigDict, *,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the last ``config.keep_checkpoints`` (the training loop decides
  when to save). ``read_only`` (for evaluation) neither saves, deletes nor
  creates anything."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), DIRNAME), options=options)


def record(config: ml_collections.ConfigDict, extra: dict) -> dict:
  """What a checkpoint records besides the state: the model and dataset,
  and the training loop's ``extra`` (plain numbers)."""
  return {'model': config.model.to_dict(), 'dataset': config.input.dataset,
          **extra}


def check_compatible(manager: ocp.CheckpointManager,
                     config: ml_collections.ConfigDict) -> None:
  """Raises ValueError if the latest checkpoint is of another model or
  dataset than ``config`` (a run continues only with what it started with).
  """
  step = manager.latest_step()
  if step is None:
    return
  saved = restore_record(manager, step)
  want = record(config, {})
  diffs = [f'model.{k}: checkpoint {saved["model"].get(k)!r}, config {v!r}'
           for k, v in want['model'].items() if saved['model'].get(k) != v]
  if saved['dataset'] != want['dataset']:
    diffs.append(f'input.dataset: checkpoint {saved["dataset"]!r}, config '
                 f'{want["dataset"]!r}')
  if diffs:
    raise ValueError(
        f'{manager.directory} holds a run (step {step}) of another '
        f'configuration: {"; ".join(diffs)}. Use a new --workdir, or the '
        f'settings of that run to continue it.')


def restore_record(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(
      record=ocp.args.JsonRestore()))['record']


def save(manager: ocp.CheckpointManager, state: train_state.TrainState,
         config: ml_collections.ConfigDict, extra: dict) -> None:
  """Saves at ``state.step`` (in the background; ``manager.close()`` waits
  for it)."""
  manager.save(
      int(state.step), force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          record=ocp.args.JsonSave(record(config, extra))))


def restore(manager: ocp.CheckpointManager, state: train_state.TrainState,
            step: int | None = None) -> tuple[train_state.TrainState, Any]:
  """The checkpoint at ``step`` (the latest), laid out like ``state`` (same
  shardings), and its record.

  Raises:
    ValueError: there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ValueError(f'No checkpoint in {manager.directory}: train first '
                     f'(python -m alexnet_jax.main) or check --workdir.')
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state), record=ocp.args.JsonRestore()))
  return restored['state'], restored['record']
