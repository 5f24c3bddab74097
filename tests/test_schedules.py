"""The plateau rule against scripted validation errors; step and cosine."""

import numpy as np
import pytest

from alexnet_jax import schedules
from configs import imagenet


def plateau(**kw):
  return schedules.Plateau(**{'patience': 2, 'tolerance': 0.01, **kw})


def run(rule, errors):
  """The evaluations (1-based) after which the rate dropped."""
  return [i for i, e in enumerate(errors, 1) if rule.update(e)]


def test_drops_after_patience_evaluations_without_improvement():
  rule = plateau()
  # 0.50 best; 0.50 and 0.495 are within the 0.01 tolerance: no improvement.
  assert run(rule, [0.60, 0.50, 0.50, 0.495]) == [4]
  assert rule.scale == pytest.approx(0.1) and rule.drops == 1
  # The count restarts at the new rate: two more flat evaluations to drop.
  assert run(rule, [0.495, 0.40, 0.45, 0.41]) == [8 - 4]
  assert rule.best == 0.40 and rule.scale == pytest.approx(0.01)


def test_improvements_reset_the_count():
  rule = plateau(patience=3)
  assert run(rule, [0.5, 0.5, 0.5, 0.48, 0.5, 0.5, 0.46, 0.46, 0.46,
                   0.46]) == [10]


def test_never_more_than_max_drops():
  rule = plateau(patience=1, max_drops=3)
  assert run(rule, [0.5] * 20) == [2, 3, 4]
  assert rule.scale == pytest.approx(1e-3) and rule.drops == 3


def test_zero_tolerance_counts_any_decrease():
  rule = plateau(patience=1, tolerance=0.0)
  assert run(rule, [0.5, 0.4999, 0.4999]) == [3]


@pytest.mark.parametrize('bad', [-0.1, 1.5, float('nan')])
def test_only_error_rates_are_accepted(bad):
  rule = plateau()
  with pytest.raises(ValueError, match='top-1 error'):
    rule.update(bad)
  assert rule.best is None and rule.bad_evals == 0


def test_state_round_trips():
  rule = plateau()
  run(rule, [0.6, 0.6, 0.6, 0.55])
  other = plateau()
  other.restore(rule.state())
  assert other == rule


def test_step_and_cosine_schedules():
  config = imagenet.get_config()
  config.schedule = 'step'
  config.step_epochs = (2, 3)
  step = schedules.create_learning_rate_fn(config, steps_per_epoch=10,
                                           total_steps=40)
  np.testing.assert_allclose([step(0), step(19), step(20), step(30)],
                             [0.01, 0.01, 0.001, 0.0001], rtol=1e-6)
  config.schedule = 'cosine'
  config.warmup_epochs = 1
  cosine = schedules.create_learning_rate_fn(config, steps_per_epoch=10,
                                             total_steps=40)
  np.testing.assert_allclose([cosine(0), cosine(5), cosine(10), cosine(25),
                              cosine(40)], [0, 0.005, 0.01, 0.005, 0],
                             atol=1e-7)
  config.schedule = 'plateau'
  assert schedules.create_learning_rate_fn(config, 10, 40) == 0.01


@pytest.mark.parametrize('field,value,match', [
    ('schedule', 'linear', "Unknown schedule 'linear'"),
    ('plateau.patience', 0, 'patience >= 1'),
    ('plateau.factor', 1.0, '0 < factor < 1'),
    ('learning_rate', -0.01, 'learning_rate=-0.01'),
])
def test_bad_schedule_settings(field, value, match):
  config = imagenet.get_config()
  if '.' in field:
    config.plateau[field.split('.')[1]] = value
  else:
    config[field] = value
  with pytest.raises(ValueError, match=match):
    schedules.check_config(config)
