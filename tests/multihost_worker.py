"""One process of the multi-process test (see test_multihost.py).

    python tests/multihost_worker.py OUT.json STEPS [COORDINATOR NUM_PROCESSES PROCESS_ID]

Trains the small split net (conftest's ``small_config``, batch 4) for STEPS
steps on a 2x2 mesh, each process feeding only its own rows of every global
batch, and (process 0) writes the losses and a checksum of every parameter
to OUT.json.
"""

import json
import sys

import numpy as np

from alexnet_jax import parallel


def main(out_path, num_steps, coordinator=None, num_processes=None,
         process_id=None):
  parallel.initialize_distributed(
      coordinator, None if num_processes is None else int(num_processes),
      None if process_id is None else int(process_id), timeout_s=30)
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import steps  # pylint: disable=g-import-not-at-top
  # tests/, this script's folder, is on sys.path.
  from conftest import small_config  # pylint: disable=g-import-not-at-top

  config = small_config(batch_size=4, model_axis_size=2)
  model = steps.create_model(config.model)
  mesh = parallel.make_mesh(config)
  assert mesh.size == 4, mesh
  rng = jax.random.key(0)
  state = parallel.create_train_state(config, model, mesh, rng)
  step = parallel.make_train_step(mesh, state)
  rows = parallel.process_rows(mesh, config.batch_size)
  data = np.random.default_rng(0)
  losses = []
  for i in range(int(num_steps)):
    images = data.standard_normal((4, 67, 67, 3)).astype(np.float32)
    labels = data.integers(0, 10, 4).astype(np.int32)
    x, y = parallel.global_batch(mesh, images[rows], labels[rows])
    state, metrics = step(state, x, y, jax.random.fold_in(rng, i))
    losses.append(float(metrics['loss'].addressable_data(0)))
  sums = jax.jit(lambda p: jax.tree.map(jax.numpy.sum, p))(state.params)
  checksums = {jax.tree_util.keystr(k): float(v.addressable_data(0))
               for k, v in jax.tree_util.tree_leaves_with_path(sums)}
  if jax.process_index() == 0:
    with open(out_path, 'w') as f:
      json.dump(dict(losses=losses, checksums=checksums,
                     processes=jax.process_count(), rows=[rows.start,
                                                          rows.stop]), f)


if __name__ == '__main__':
  main(*sys.argv[1:])
