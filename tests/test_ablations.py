"""The ablation runner's bookkeeping (training itself is test_train's):
every variant's overrides reach its runs, one run per seed, and the table
holds the mean and spread over seeds."""

import json
import os

import numpy as np
import pytest

from alexnet_jax import train
from configs import default
from experiments import ablations


def test_runs_each_variant_per_seed_and_summarizes(tmp_path, monkeypatch):
  trained = []

  def fake_train(config, workdir):
    trained.append((config, workdir))
    os.makedirs(workdir)
    error = 0.1 * config.seed + (0.5 if config.model.pool_window == 2 else 0)
    with open(os.path.join(workdir, train.METRICS_FILE), 'w') as f:
      f.write(json.dumps({'step': 1, 'epoch': 1.0, 'top1_error': 0.9,
                          'loss': 2.0, 'train_loss': 2.0}) + '\n')
      f.write(json.dumps({'step': 2, 'epoch': 2.0, 'top1_error': error,
                          'top5_error': 0.0, 'loss': 1.0,
                          'train_loss': 1.0}) + '\n')

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  base = default.get_config()
  results = ablations.run(base, str(tmp_path), ['pooling', 'towers'], 2)
  assert [(r['ablation'], r['variant'], r['seed']) for r in results] == [
      ('pooling', '3/2 overlapping', 0), ('pooling', '3/2 overlapping', 1),
      ('pooling', '2/2 non-overlapping', 0),
      ('pooling', '2/2 non-overlapping', 1),
      ('towers', 'two towers', 0), ('towers', 'two towers', 1),
      ('towers', 'one tower', 0), ('towers', 'one tower', 1)]
  # The paper's net is trained once per seed and reported in both tables.
  assert len(trained) == 6
  assert results[4]['run_dir'] == results[0]['run_dir']
  assert trained[5][0].model.towers == 1
  config, workdir = trained[3]
  assert (config.model.pool_window, config.model.pool_stride,
          config.seed) == (2, 2, 1)
  assert workdir == str(tmp_path / 'pooling' / '2_2_non_overlapping' /
                        'seed1')
  assert base.model.pool_window == 3 and base.seed == 0  # base untouched
  rows = ablations.summarize(results)
  assert [(r['variant'], r['seeds']) for r in rows] == [
      ('3/2 overlapping', 2), ('2/2 non-overlapping', 2),
      ('two towers', 2), ('one tower', 2)]
  np.testing.assert_allclose(rows[1]['top1_error'],
                             (np.mean([0.5, 0.6]), np.std([0.5, 0.6])))
  assert 'ten_crop_top1_error' not in rows[1]
  table = ablations.markdown(rows)
  assert '| pooling | 2/2 non-overlapping | 2 | 55.0% ± 5.0 | - |' in table
  ablations.plot(results, str(tmp_path / 'curves.png'))
  assert os.path.getsize(tmp_path / 'curves.png') > 0
  with pytest.raises(ValueError, match=r"Unknown ablations \['relu'\]"):
    ablations.run(base, str(tmp_path), ['relu'], 1)
