"""The main job: train and evaluate a config in a workdir.

    python -m alexnet_jax.main --config=configs/imagenet.py --workdir=DIR
    python -m alexnet_jax.main --config=configs/default.py --workdir=/tmp/run

Any config field can be overridden (``--config.batch_size=256``). Several
hosts: start the same command on each with ``--coordinator_address``
(process 0's ``host:port``), ``--num_processes`` and ``--process_id``; on
TPU pods and SLURM these are detected (see launch/).

Exit status: 0 when the run is done; 75 (``train.EXIT_PREEMPTED``) when a
SIGTERM stopped it after saving a checkpoint, so that a scheduler or a retry
loop runs the same command again to continue; 1 on an error.
"""

# Before the imports below start anything: huge pages for XLA:CPU's arrays.
from alexnet_jax import host_memory  # pylint: disable=g-bad-import-order
if __name__ == '__main__':
  host_memory.reexec_with_huge_pages()

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import parallel
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A file in configs/.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and figures go '
                    'here; a run in it is resumed.')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
flags.DEFINE_integer('initialization_timeout', 300,
                     'Seconds to wait for the other processes.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  # orbax logs each checkpoint in a dozen INFO lines; keep its warnings.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or '/orbax/' not in r.pathname)
  config = FLAGS.config
  parallel.split_cpu(config)
  parallel.initialize_distributed(FLAGS.coordinator_address,
                                  FLAGS.num_processes, FLAGS.process_id,
                                  FLAGS.initialization_timeout)
  logging.info('Process %d of %d; devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except train.Preempted as e:
    logging.warning('%s', e)
    sys.exit(train.EXIT_PREEMPTED)


if __name__ == '__main__':
  app.run(main)
