"""Learning-rate schedules (paper section 5) and the paper's plateau rule.

``config.schedule`` picks one:

* ``'plateau'`` (the paper): a constant rate, divided by
  ``1 / plateau.factor`` (10) "when the validation error rate stopped
  improving with the current learning rate", at most ``plateau.max_drops``
  (3) times. The rule runs on the host once per evaluation (``Plateau``);
  the training loop writes the new rate into the optimizer state.
* ``'step'``: the same divisions at fixed epochs (``step_epochs``).
* ``'cosine'``: linear warm-up over ``warmup_epochs``, then cosine decay to 0.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import optax

SCHEDULES = ('plateau', 'step', 'cosine')


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int, total_steps: int
                            ) -> float | optax.Schedule:
  """The rate (a number for ``'plateau'``, else a function of the step)."""
  base = config.learning_rate
  if config.schedule == 'plateau':
    return base
  if config.schedule == 'step':
    return optax.piecewise_constant_schedule(
        base, {round(e * steps_per_epoch): config.plateau.factor
               for e in config.step_epochs})
  if config.schedule == 'cosine':
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        0.0, base, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1))
  raise ValueError(f'Unknown schedule {config.schedule!r}; use one of '
                   f'{SCHEDULES}.')


@dataclasses.dataclass
class Plateau:
  """The paper's rule, fed the validation top-1 error after each evaluation.

  An error counts as an improvement when it is below the best so far by more
  than ``tolerance``; after ``patience`` evaluations in a row without one,
  the rate is multiplied by ``factor``, at most ``max_drops`` times, and the
  count starts again at the new rate. ``scale`` is the product of the drops
  so far. Plain numbers, so the state goes into checkpoints as JSON.
  """
  patience: int
  tolerance: float
  factor: float = 0.1
  max_drops: int = 3
  best: float | None = None
  bad_evals: int = 0
  drops: int = 0
  scale: float = 1.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Plateau:
    return cls(patience=config.plateau.patience,
               tolerance=config.plateau.tolerance,
               factor=config.plateau.factor,
               max_drops=config.plateau.max_drops)

  def update(self, error: float) -> bool:
    """Takes one validation error (in [0, 1]); True if the rate dropped."""
    if not 0.0 <= error <= 1.0:  # also rejects NaN
      raise ValueError(f'The plateau rule takes an error rate in [0, 1], '
                       f'got {error}; feed top-1 error, not accuracy or loss.')
    if self.best is None or error < self.best - self.tolerance:
      self.best, self.bad_evals = error, 0
      return False
    self.bad_evals += 1
    if self.bad_evals < self.patience or self.drops >= self.max_drops:
      return False
    self.drops += 1
    self.scale *= self.factor
    self.bad_evals = 0
    return True

  def state(self) -> dict:
    return dataclasses.asdict(self)

  def restore(self, state: dict) -> None:
    for name in ('best', 'bad_evals', 'drops', 'scale'):
      setattr(self, name, state[name])


def check_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for schedule settings that cannot work."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f'Unknown schedule {config.schedule!r}; use one of '
                     f'{SCHEDULES}.')
  p = config.plateau
  if p.patience < 1 or p.max_drops < 0 or not 0 < p.factor < 1 \
      or p.tolerance < 0:
    raise ValueError(
        f'plateau needs patience >= 1, max_drops >= 0, 0 < factor < 1 and '
        f'tolerance >= 0; got {p.to_dict()}.')
  if not config.learning_rate > 0 or math.isinf(config.learning_rate):
    raise ValueError(f'learning_rate={config.learning_rate} must be a '
                     f'positive number.')
