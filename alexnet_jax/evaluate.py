"""Evaluates a run's latest checkpoint: centre crop and the paper's ten-crop
test (section 4.1).

    python -m alexnet_jax.evaluate --config=configs/imagenet.py --workdir=DIR

Prints one JSON line: the step and, for each protocol, loss, top-1 and
top-5 error on ``config.input.eval_split``. Nothing in the workdir changes.
"""

# Before the imports below start anything: huge pages for XLA:CPU's arrays.
from alexnet_jax import host_memory  # pylint: disable=g-bad-import-order
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

import json

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from alexnet_jax import checkpoint
from alexnet_jax import parallel
from alexnet_jax import train

FLAGS = flags.FLAGS


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str
                        ) -> dict:
  """``{'step', 'centre': {...}, 'ten_crop': {...}}`` for the latest
  checkpoint in ``workdir``."""
  train.check_config(config)
  mesh = parallel.make_mesh(config)
  manager = checkpoint.create_manager(workdir, config, read_only=True)
  checkpoint.check_compatible(manager, config)
  state, _ = checkpoint.restore(
      manager, train.create_state(config, mesh, jax.random.key(0)))
  builder = train.load_dataset(config)
  eval_step = parallel.make_eval_step(mesh, state)
  return {'step': int(state.step), **{
      name: train.evaluate(eval_step, state, mesh, builder, config,
                           ten_crop=ten_crop)
      for name, ten_crop in (('centre', False), ('ten_crop', True))}}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  parallel.split_cpu(FLAGS.config)
  print(json.dumps(evaluate_checkpoint(FLAGS.config, FLAGS.workdir)))


if __name__ == '__main__':
  # Defined here, not on import, so that the module can be imported next to
  # other commands (tests, notebooks).
  config_flags.DEFINE_config_file('config', None, 'The run\'s config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The run\'s workdir.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
