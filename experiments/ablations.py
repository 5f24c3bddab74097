"""The paper's ablations (its section 3 and 4 claims), swept over seeds.

    python -m experiments.ablations --config=configs/default.py \\
        --workdir=/tmp/ablations --seeds=3 --ablations=lrn,pooling

Each ablation is a pair of config overrides (the paper's setting first);
every variant is trained with ``train.train_and_evaluate`` once per seed in
``<workdir>/<ablation>/<variant>/seed<k>`` (a finished run is reused, a
stopped one resumed; its wall time is then that of this invocation; a
config that two ablations share, such as the paper's setting, is trained
once and reported in both). The
runner writes ``results.json`` and ``results.md`` (mean and standard
deviation over seeds of the final validation errors, and the wall time)
and ``curves.png`` (each variant's curves, mean and range over seeds) into
the workdir. The overrides touch
only the model, so the same ablations run on ``configs/imagenet.py`` or a
``cifar10`` config when the data is there.
"""

from __future__ import annotations

# Before the imports below start anything: huge pages for XLA:CPU's arrays.
from alexnet_jax import host_memory  # pylint: disable=g-bad-import-order
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

import json
import re
import sys
import time

from absl import app
from absl import flags
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
from ml_collections import config_flags

from alexnet_jax import figures
from alexnet_jax import parallel
from alexnet_jax import storage
from alexnet_jax import train

FLAGS = flags.FLAGS

# name -> (what the paper reports, [(variant, model overrides), ...]).
ABLATIONS = {
    'lrn': ('LRN lowers top-1 error by 1.4% (section 3.3)',
            [('LRN', {}), ('no LRN', {'use_lrn': False})]),
    'pooling': ('overlapping pooling lowers top-1 error by 0.4% (3.4)',
                [('3/2 overlapping', {}),
                 ('2/2 non-overlapping', {'pool_window': 2,
                                          'pool_stride': 2})]),
    'towers': ('two towers beat one with half the kernels by 1.7% (3.2)',
               [('two towers', {}), ('one tower', {'towers': 1})]),
    'dropout': ('without dropout, substantial overfitting (4.2)',
                [('dropout 0.5', {'dropout_rate': 0.5}),
                 ('no dropout', {'dropout_rate': 0.0})]),
}
METRICS = ('top1_error', 'ten_crop_top1_error', 'top5_error', 'train_loss')


def variant_config(base: ml_collections.ConfigDict, overrides: dict,
                   seed: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())
  config.model.update(overrides)
  config.seed = seed
  return config


def run(base: ml_collections.ConfigDict, workdir: str, names, seeds: int
        ) -> list[dict]:
  """Trains every variant of ``names`` for ``seeds`` seeds; one result per
  run (its final ``metrics.jsonl`` record and wall time)."""
  unknown = sorted(set(names) - set(ABLATIONS))
  if unknown:
    raise ValueError(f'Unknown ablations {unknown}; use some of '
                     f'{sorted(ABLATIONS)}.')
  results = []
  trained = {}  # config -> the run that trained it
  for name in names:
    for variant, overrides in ABLATIONS[name][1]:
      for seed in range(seeds):
        config = variant_config(base, overrides, seed)
        # The paper's setting is the same config in every ablation (and a
        # variant may equal the base): train it once, report it in each.
        if config.to_json() not in trained:
          trained[config.to_json()] = _train(config, storage.join(
              workdir, name, re.sub(r'[^A-Za-z0-9.]+', '_', variant),
              f'seed{seed}'))
        results.append({'ablation': name, 'variant': variant, 'seed': seed,
                        **trained[config.to_json()]})
  return results


def _train(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Trains (or resumes, or reuses) one run; its final metrics record,
  wall time and directory."""
  start = time.monotonic()
  train.train_and_evaluate(config, run_dir)
  return {'run_dir': run_dir, 'wall_s': time.monotonic() - start,
          **train.read_history(run_dir)[-1]}


def summarize(results: list[dict]) -> list[dict]:
  """Mean and standard deviation over seeds, one row per variant."""
  rows = []
  for name, (claim, variants) in ABLATIONS.items():
    for variant, _ in variants:
      runs = [r for r in results
              if r['ablation'] == name and r['variant'] == variant]
      if not runs:
        continue
      row = {'ablation': name, 'claim': claim, 'variant': variant,
             'seeds': len(runs),
             'wall_s': float(np.sum([r['wall_s'] for r in runs]))}
      for metric in METRICS:
        values = [r[metric] for r in runs if metric in r]
        if values:
          row[metric] = (float(np.mean(values)), float(np.std(values)))
      rows.append(row)
  return rows


def _cell(row: dict, metric: str) -> str:
  if metric not in row:
    return '-'
  mean, std = row[metric]
  if metric == 'train_loss':
    return f'{mean:.3f} ± {std:.3f}'
  return f'{100 * mean:.1f}% ± {100 * std:.1f}'


def markdown(rows: list[dict]) -> str:
  lines = ['| ablation | variant | seeds | top-1 error (centre) | top-1 '
           'error (ten crops) | top-5 error | final train loss | wall time '
           '(all seeds, this invocation) |',
           '|---|---|---|---|---|---|---|---|']
  for row in rows:
    cells = [_cell(row, m) for m in METRICS]
    lines.append(f'| {row["ablation"]} | {row["variant"]} | {row["seeds"]} | '
                 f'{" | ".join(cells)} | {row["wall_s"] / 60:.1f} min |')
  return '\n'.join(lines) + '\n'


CURVES = (('train_loss', 'train loss'), ('loss', 'validation loss'),
          ('top1_error', 'validation top-1 error (centre)'))


def plot(results: list[dict], path: str) -> None:
  """One row per ablation: each variant's mean over seeds (line) and range
  (band) of the curves in ``CURVES`` against the epoch."""
  names = list(dict.fromkeys(r['ablation'] for r in results))
  fig, axes = plt.subplots(len(names), len(CURVES), squeeze=False,
                           figsize=(4.2 * len(CURVES), 3 * len(names)))
  for row, name in zip(axes, names):
    for variant in dict.fromkeys(r['variant'] for r in results
                                 if r['ablation'] == name):
      histories = [train.read_history(r['run_dir']) for r in results
                   if (r['ablation'], r['variant']) == (name, variant)]
      epochs = min(len(h) for h in histories)
      x = [record['epoch'] for record in histories[0][:epochs]]
      for ax, (key, label) in zip(row, CURVES):
        y = np.array([[record[key] for record in h[:epochs]]
                      for h in histories])
        ax.plot(x, y.mean(0), label=variant)
        ax.fill_between(x, y.min(0), y.max(0), alpha=0.25)
        ax.set_title(f'{name}: {label}')
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    row[-1].legend()
  fig.tight_layout()
  figures.save(fig, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  parallel.split_cpu(FLAGS.config)
  try:
    results = run(FLAGS.config, FLAGS.workdir, FLAGS.ablations, FLAGS.seeds)
  except train.Preempted as e:  # the same command continues (train.py)
    print(e)
    sys.exit(train.EXIT_PREEMPTED)
  rows = summarize(results)
  storage.write_text(storage.join(FLAGS.workdir, 'results.json'), json.dumps(
      {'runs': results, 'summary': rows}, indent=1))
  storage.write_text(storage.join(FLAGS.workdir, 'results.md'), markdown(rows))
  plot(results, storage.join(FLAGS.workdir, 'curves.png'))
  print(markdown(rows))


if __name__ == '__main__':
  # Defined here, not on import (see alexnet_jax/evaluate.py): tests and
  # notebooks import this module.
  config_flags.DEFINE_config_file('config', 'configs/default.py',
                                  'The base config.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Where the runs and tables go.')
  flags.DEFINE_list('ablations', list(ABLATIONS), 'Which ablations.')
  flags.DEFINE_integer('seeds', 3, 'Seeds per variant.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
