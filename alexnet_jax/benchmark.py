"""Times the real jitted train step on synthetic, device-resident data.

    python -m alexnet_jax.benchmark --config=configs/imagenet.py \
        [--config.batch_size=32] [--steps=10] [--lrn_share]

Prints one JSON line: images_per_sec (from the median step), step_ms,
compile_s, batch_size, image_size, dtype, devices, the ('data', 'model')
mesh, backend and the model settings. The step is the split step of
``parallel.py`` on all devices (``--config.model_axis_size=2`` puts one tower
on each device; on CPU, ``JAX_NUM_CPU_DEVICES=2`` makes two devices). ``--lrn_share`` also compiles the same net without LRN, alternates
steps of the two so that both see the same machine load, and reports
``lrn_share``, the fraction of the step the LRN costs.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import parallel
from alexnet_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_LRN_SHARE = flags.DEFINE_bool(
    'lrn_share', False, 'Also time the net without LRN and report its share.')


class _Runner:
  """A compiled train step on the config's mesh, with a fixed batch."""

  def __init__(self, config, **model_overrides):
    model = train.create_model(config.model, **model_overrides)
    self.mesh = parallel.make_mesh(config)
    rng = jax.random.key(config.seed)
    self.state = parallel.create_train_state(config, model, self.mesh, rng)
    size, n = model.image_size, config.batch_size
    self.images = jax.device_put(
        jax.random.normal(rng, (n, size, size, 3), model.dtype),
        parallel.batch_sharding(self.mesh))
    self.labels = jax.device_put(
        jax.random.randint(rng, (n,), 0, model.num_classes),
        parallel.batch_sharding(self.mesh))
    self.rng = rng
    start = time.perf_counter()
    self.step = parallel.make_train_step(self.mesh, self.state).lower(
        self.state, self.images, self.labels, rng).compile()
    self.compile_s = time.perf_counter() - start
    self.times: list[float] = []

  def run(self, index: int, record: bool) -> None:
    start = time.perf_counter()
    self.state, metrics = self.step(self.state, self.images, self.labels,
                                    jax.random.fold_in(self.rng, index))
    jax.block_until_ready(metrics['loss'])
    if record:
      self.times.append(time.perf_counter() - start)

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)


def benchmark(config, steps: int, warmup: int, lrn_share: bool) -> dict:
  """Times ``steps`` train steps; returns the figures as a dict."""
  if steps < 1 or warmup < 0:
    raise ValueError(f'Need steps >= 1 and warmup >= 0; got steps={steps}, '
                     f'warmup={warmup}.')
  if config.batch_size < 1:
    raise ValueError(f'batch_size must be >= 1; got {config.batch_size}.')
  if lrn_share and not config.model.use_lrn:
    raise ValueError('--lrn_share compares the net with and without LRN; it '
                     'needs config.model.use_lrn=True.')
  runners = [_Runner(config)]
  if lrn_share:
    runners.append(_Runner(config, use_lrn=False))
  for i in range(warmup + steps):
    for runner in runners:  # interleaved: both see the same machine load
      runner.run(i, record=i >= warmup)

  main = runners[0]
  result = dict(
      images_per_sec=round(config.batch_size / main.median_s, 2),
      step_ms=round(1e3 * main.median_s, 2),
      compile_s=round(main.compile_s, 2),
      batch_size=config.batch_size,
      image_size=config.model.image_size,
      dtype=config.model.dtype,
      towers=config.model.towers,
      width=config.model.width,
      use_lrn=config.model.use_lrn,
      steps=steps,
      devices=main.mesh.size,
      mesh=dict(main.mesh.shape),
      backend=jax.default_backend(),
      device_kind=jax.devices()[0].device_kind,
      jax=jax.__version__,
  )
  if lrn_share:
    without = runners[1].median_s
    result['images_per_sec_without_lrn'] = round(
        config.batch_size / without, 2)
    result['lrn_share'] = round(1.0 - without / main.median_s, 4)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. '
                         '--config=configs/imagenet.py')
  print(json.dumps(benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value,
                             _LRN_SHARE.value)), flush=True)


if __name__ == '__main__':
  app.run(main)
