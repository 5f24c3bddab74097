"""The paper's two-GPU split (section 3.2) with data parallelism on top.

A 2-D device mesh ``('data', 'model')``:

* ``model`` of size 2 (two-tower models only): each device holds one tower's
  parameters and that tower's optimizer state, as each GTX 580 did. The
  paper's net (``AlexNet`` with ``model_axis='model'``) exchanges
  activations only at the paper's four crossings: all-gathers at conv3's,
  fc6's and fc7's inputs and a ``psum`` of fc8's per-tower products (see
  ``models/alexnet.py``'s ``gather_towers``/``sum_towers``).
* ``model`` of size 1: all towers on every device, the same code path (and
  the only one for one-tower models such as ``alexnet_owt``).
* ``data``: the rest of the devices; the batch is split over it and the
  gradients are summed over it (and only over it).

Train and eval steps are ``jax.shard_map`` over the mesh, jitted. Parameters
and optimizer state are born sharded (``jit`` with ``out_shardings``), and
batches enter as global arrays assembled from each process's own slice.
"""

from __future__ import annotations

import collections
import functools
import socket
import time

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import models
from alexnet_jax import steps
from alexnet_jax.models import alexnet

DATA = 'data'
MODEL = 'model'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           timeout_s: int = 300) -> None:
  """Starts JAX's multi-process runtime; call before any other JAX call.

  With ``coordinator_address`` (``host:port`` of process 0) this is a manual
  launch and ``num_processes`` and ``process_id`` are required. Without it,
  ``jax.distributed.initialize()`` detects a TPU pod, SLURM or another
  cluster it knows; if there is none, this stays a single process.

  Raises:
    ValueError: incomplete or inconsistent flags.
    RuntimeError: (processes other than 0) the coordinator's port did not
      answer within ``timeout_s``.
  """
  if coordinator_address is None:
    if num_processes is not None or process_id is not None:
      raise ValueError(
          f'num_processes={num_processes} and process_id={process_id} need '
          f'coordinator_address=HOST:PORT (process 0\'s address).')
    try:
      jax.distributed.initialize(initialization_timeout=timeout_s)
    except ValueError as e:
      if 'coordinator_address' not in str(e):
        raise
      logging.info('No cluster detected: running as a single process.')
    return
  if num_processes is None or process_id is None:
    raise ValueError(
        f'coordinator_address={coordinator_address} needs num_processes and '
        f'process_id as well.')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'process_id={process_id} must be in [0, num_processes='
                     f'{num_processes}).')
  host, _, port = coordinator_address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'coordinator_address={coordinator_address!r} must be '
                     f'HOST:PORT, e.g. 10.0.0.1:1234.')
  if process_id != 0:
    # JAX's runtime aborts the whole process when it cannot reach the
    # coordinator; probing first turns that into a clear error.
    _wait_for_port(host, int(port), timeout_s, process_id, num_processes)
  logging.info('Process %d of %d joining the coordinator at %s (waiting up '
               'to %d s for the others).', process_id, num_processes,
               coordinator_address, timeout_s)
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=timeout_s)


def _wait_for_port(host, port, timeout_s, process_id, num_processes):
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=2):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise RuntimeError(
            f'Process {process_id} of {num_processes} could not reach the '
            f'coordinator at {host}:{port} within {timeout_s} s ({e}). Start '
            f'process 0 with the same coordinator_address (its own host and '
            f'a free port) and check that the port is reachable from here.'
        ) from e
      time.sleep(0.5)


def split_cpu(config: ml_collections.ConfigDict) -> None:
  """Makes the CPU ``config.num_cpu_devices`` devices (if > 0); call
  before JAX first uses its devices."""
  if config.num_cpu_devices > 0:
    jax.config.update('jax_num_cpu_devices', config.num_cpu_devices)


def process_rows(mesh: Mesh, global_batch_size: int) -> slice:
  """The rows of a global batch that this process must load and feed."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map(
      (global_batch_size,))
  rows = set()
  for (index,) in index_map.values():
    rows.update(range(*index.indices(global_batch_size)))
  first, last = min(rows), max(rows)
  if len(rows) != last - first + 1:
    raise ValueError(f'This process\'s devices hold rows {sorted(rows)} of '
                     f'the batch, not one contiguous block; build the mesh '
                     f'with parallel.make_mesh.')
  return slice(first, last + 1)


def model_axis_size(config: ml_collections.ConfigDict,
                    num_devices: int) -> int:
  """The configured model axis, or for 0 ("auto") 2 when it fits, else 1."""
  size = config.model_axis_size
  if size == 0:
    fits = (steps.create_model(config.model).towers == 2
            and num_devices % 2 == 0)
    return 2 if fits else 1
  return size


def make_mesh(config: ml_collections.ConfigDict,
              devices: list | None = None) -> Mesh:
  """The ``('data', 'model')`` mesh for ``config`` over ``devices`` (all)."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  model = model_axis_size(config, n)
  if model not in (1, 2):
    raise ValueError(
        f'model_axis_size must be 0 (auto), 1 (both towers on every device) '
        f'or 2 (one tower per device); got model_axis_size={model}.')
  if n % model:
    raise ValueError(
        f'model_axis_size={model} does not divide the {n} devices; use '
        f'model_axis_size=1 or an even number of devices.')
  towers = steps.create_model(config.model).towers
  if model == 2 and towers != 2:
    raise ValueError(
        f'model_axis_size=2 puts one tower on each device, but model '
        f'{config.model.name!r} has towers={towers}; use model_axis_size=1 '
        f'for a one-tower net.')
  data = n // model
  if config.batch_size % data:
    raise ValueError(
        f'batch_size={config.batch_size} is not divisible by the data axis '
        f'({data} = {n} devices / model_axis_size {model}); use a multiple '
        f'of {data}.')
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def tower_specs(state: steps.TrainState, mesh: Mesh):
  """For ``state`` (or its shapes), ``P('model')`` on every leaf with a
  tower axis (the model's ``tower_axes``), ``P()`` elsewhere.

  With a model axis of 1 everything is replicated: each device holds all
  towers.
  """
  split = mesh.shape[MODEL] == 2
  return jax.tree.map(lambda axis: P(MODEL) if split and axis == 0 else P(),
                      state.model.tower_axes(state),
                      is_leaf=lambda x: x is None)


def local_model(model: models.Interface, mesh: Mesh) -> models.Interface:
  """The model as one device of ``mesh`` runs it inside ``shard_map``."""
  return model.clone(model_axis=MODEL) if mesh.shape[MODEL] == 2 else model


def create_train_state(config: ml_collections.ConfigDict,
                       model: models.Interface, mesh: Mesh, rng: jax.Array,
                       learning_rate=None) -> steps.TrainState:
  """Parameters and optimizer state created directly in their shards
  (``learning_rate``: see ``steps.create_optimizer``). ``apply_fn`` is the
  model as one device runs it (``local_model``); ``state.model`` stays the
  whole model, whose ``tower_axes`` say how the state is sharded."""
  def create(rng):
    state = steps.create_train_state(config, model, rng, learning_rate)
    return state.replace(apply_fn=local_model(model, mesh).apply)

  shapes = jax.eval_shape(create, rng)
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                           tower_specs(shapes, mesh))
  return jax.jit(create, out_shardings=shardings)(rng)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def global_batch(mesh: Mesh, *local: np.ndarray) -> tuple[jax.Array, ...]:
  """Global arrays, sharded over ``'data'``, from this process's slices.

  Each process passes only the rows it loaded; in one process that is the
  whole batch.
  """
  sharding = batch_sharding(mesh)
  return tuple(jax.make_array_from_process_local_data(sharding, x)
               for x in local)


def make_train_step(mesh: Mesh, state: steps.TrainState):
  """``step(state, images, labels, rng) -> (state, metrics)``, jitted.

  The state is donated: pass the returned one to the next call.
  """
  specs = tower_specs(state, mesh)
  # On a data axis of one device the batch is whole there: said so, no
  # gradient varies over 'data' and none is all-reduced over it (XLA:CPU
  # kept that all-reduce over one device, 30 ms of a 1.5 s step).
  batch = P(DATA) if mesh.shape[DATA] > 1 else P()
  step = jax.shard_map(
      functools.partial(steps.train_step, data_axis=DATA, model_axis=MODEL),
      mesh=mesh, in_specs=(specs, batch, batch, P()),
      out_specs=(specs, P()))
  return jax.jit(step, donate_argnums=0)


def make_eval_step(mesh: Mesh, state: steps.TrainState):
  """``step(state, images, labels, mask) -> sums`` (``steps.eval_step``),
  jitted; ``mask`` is the input pipeline's (False on padding)."""
  step = jax.shard_map(
      functools.partial(steps.eval_step, data_axis=DATA), mesh=mesh,
      in_specs=(tower_specs(state, mesh), P(DATA), P(DATA), P(DATA)),
      out_specs=P())
  return jax.jit(step)


def crossing_bytes_per_image(model: alexnet.AlexNet) -> dict[str, int]:
  """Bytes one tower's device receives per image at each crossing.

  Forward: the other tower's activations (conv3's, fc6's and fc7's inputs)
  and its partial logits (fc8). Backward: the cotangents of this tower's
  activations that the other tower computed (the transposes of the three
  all-gathers); the fc8 sum needs none.
  """
  _, _, pool2, pool5 = alexnet.feature_sizes(model.image_size,
                                            model.pool_window,
                                            model.pool_stride)
  features = model.tower_features()
  itemsize = np.dtype(model.dtype).itemsize
  per_tower = {
      'conv3_input': pool2 * pool2 * features['conv2'],
      'fc6_input': pool5 * pool5 * features['conv5'],
      'fc7_input': features['fc6'],
  }
  sizes = {f'{k}_forward': v * itemsize for k, v in per_tower.items()}
  sizes['fc8_input_forward'] = model.num_classes * itemsize
  sizes.update({f'{k}_backward': v * itemsize for k, v in per_tower.items()})
  return sizes


def prefetch_to_mesh(mesh: Mesh, batches, keys: tuple[str, ...], size: int = 2):
  """Tuples of global arrays (``global_batch``) of ``keys`` of each batch (a
  dict of this process's numpy rows), transferred ``size`` batches ahead of
  use so that the copies overlap the running steps."""
  queue = collections.deque()
  for batch in batches:
    queue.append(global_batch(mesh, *(batch[k] for k in keys)))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
