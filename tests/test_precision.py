"""Narrow-type training: bfloat16 and float16 (with dynamic loss scaling)
against the float32 run, the loss-scale rule by hand, the skipped step, the
split's agreement on skipping, the refusals, and batches in the compute
dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax import checkpoint
from alexnet_jax import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import precision
from alexnet_jax import steps
from alexnet_jax import train
from conftest import on_tiny_dataset
from conftest import scaled
from conftest import small_config

# Follows the float32 run: 300 steps of batch 20 (30 epochs of the tiny
# set's 200 images, 64x64), compared as means over windows of 50 steps. A
# weight init of N(0, 0.05) and rate 0.02 so that the small net learns
# within them (with the paper's N(0, 0.01) it stays at chance this long).
FOLLOW_STEPS, FOLLOW_BATCH, FOLLOW_WINDOW, FOLLOW_SIZE = 300, 20, 50, 64
# Measured on the 2-core machine, in nats. Training at this rate is
# chaotic: two float32 runs whose initial weights differ by one part in
# a million (or 1e-5) are within 0.033 of each other over the first 100
# steps, but 0.056 apart in the third window and up to 0.21 later
# (2026-12-05, conv1 by Winograd or as XLA's convolution alike). Each
# window is held to about twice that spread: the first two to 0.07, the
# rest to 0.4. bfloat16 and float16 stayed within 0.02 of float32 over the
# first 100 steps with each of conv1's lowerings; in the third window two
# of them reached 0.11-0.12, twice that window's spread, so the bound of
# 0.1 set there on 2026-12-02 (with one lowering, 0.05) was too tight.
# Each run falls by 0.4-0.6 nats.
FOLLOW_EARLY_WINDOWS, FOLLOW_EARLY_TOLERANCE = 2, 0.07
FOLLOW_TOLERANCE = 0.4
FOLLOW_MIN_FALL = 0.3


def _tiny_train_set(data_dir, size):
  builder = input_pipeline.dataset_builder(on_tiny_dataset(
      small_config(), data_dir).input.dataset, data_dir)
  return input_pipeline.centre_crops(builder, 'train', crop_size=size,
                                     resize=size * 8 // 7)


def _window_means(dtype, loss_scale, images, labels, order):
  config = small_config(batch_size=FOLLOW_BATCH, dtype=dtype,
                        image_size=FOLLOW_SIZE, dropout_rate=0.0,
                        init_stddev=0.05, relu_bias_init=0.1)
  config.learning_rate, config.loss_scale = 0.02, loss_scale
  state = steps.create_train_state(config, steps.create_model(config.model),
                                   jax.random.key(0))
  step = jax.jit(steps.train_step)
  # The batches cross in the compute dtype, as the input pipeline's do.
  images = jnp.asarray(images, precision.DTYPES[dtype])
  losses = []
  for i in range(FOLLOW_STEPS):
    rows = order[i * FOLLOW_BATCH:(i + 1) * FOLLOW_BATCH]
    state, metrics = step(state, images[rows], labels[rows],
                          jax.random.key(i))
    losses.append(metrics['loss'])
  return np.asarray(jax.device_get(losses)).reshape(
      -1, FOLLOW_WINDOW).mean(axis=1)


def test_bfloat16_and_float16_follow_the_float32_run(tiny_data_dir):
  images, labels = _tiny_train_set(tiny_data_dir, FOLLOW_SIZE)
  rng = np.random.default_rng(0)
  order = np.concatenate([rng.permutation(len(labels)) for _ in range(
      FOLLOW_STEPS * FOLLOW_BATCH // len(labels))])
  runs = {dtype: _window_means(dtype, loss_scale, images, labels, order)
          for dtype, loss_scale in [('float32', 'none'), ('bfloat16', 'none'),
                                    ('float16', 'dynamic')]}
  for dtype, means in runs.items():
    assert means[0] - means[-1] > FOLLOW_MIN_FALL, (dtype, means)
  for dtype in ('bfloat16', 'float16'):
    gap = np.abs(runs[dtype] - runs['float32'])
    assert gap[:FOLLOW_EARLY_WINDOWS].max() < FOLLOW_EARLY_TOLERANCE, (
        dtype, runs[dtype], runs['float32'])
    assert gap.max() < FOLLOW_TOLERANCE, (dtype, runs[dtype], runs['float32'])


def test_loss_scale_rule_by_hand():
  scale = precision.DynamicLossScale.create(8.0, growth_interval=3)
  history = []
  for finite in [True, True, True, True, True, False, True, False]:
    scale = scale.adjust(jnp.asarray(finite))
    history.append((float(scale.scale), int(scale.finite_steps)))
  # Doubles on a finite step after 3 finite steps in a row (flax's rule; the
  # count restarts), halves on every overflow (the count restarts).
  assert history == [(8, 1), (8, 2), (8, 3), (16, 0), (16, 1), (8, 0),
                     (8, 1), (4, 0)]
  # Within float32's normal range at both ends.
  limits = np.finfo(np.float32)
  low = precision.DynamicLossScale.create(limits.tiny)
  assert float(low.adjust(jnp.asarray(False)).scale) == limits.tiny
  high = precision.DynamicLossScale.create(limits.max, growth_interval=0)
  assert float(high.adjust(jnp.asarray(True)).scale) == limits.max


def _fp16_config():
  config = small_config(batch_size=4, dtype='float16', dropout_rate=0.0,
                        width=0.0625, image_size=64)
  config.loss_scale = 'dynamic'
  return config


def _with_scale(state, scale: float):
  return state.replace(loss_scale=state.loss_scale.replace(
      scale=jnp.asarray(scale, jnp.float32)))


def _fp16_state(scale=None):
  config = _fp16_config()
  state = steps.create_train_state(config, steps.create_model(config.model),
                                   jax.random.key(0))
  return config, state if scale is None else _with_scale(state, scale)


def _batch():
  return (50 * jax.random.normal(jax.random.key(1), (4, 64, 64, 3)),
          jnp.arange(4))


def test_float16_step_with_scaling_matches_float32_gradients():
  """A finite float16 step moves the weights as the float32 step does, up to
  float16 rounding; its scale counts the step."""
  config, state = _fp16_state()
  wide = steps.create_train_state(
      config, steps.create_model(config.model, dtype='float32'),
      jax.random.key(0))
  images, labels = _batch()
  step = jax.jit(steps.train_step)
  narrow_next, _ = step(state, images, labels, jax.random.key(2))
  wide_next, _ = step(wide, images, labels, jax.random.key(2))
  assert int(narrow_next.loss_scale.finite_steps) == 1
  for name in ('conv1', 'conv5', 'fc8'):
    moved = narrow_next.params[name]['kernel'] - state.params[name]['kernel']
    want = wide_next.params[name]['kernel'] - wide.params[name]['kernel']
    np.testing.assert_allclose(moved, want, rtol=0.05,
                               atol=0.05 * float(jnp.abs(want).max()))


def test_overflowing_step_is_skipped_and_the_scale_halved():
  """2^40 times the loss overflows float16's activation gradients: the
  weights and momentum stay, the step counts, the scale halves."""
  _, state = _fp16_state(2.0 ** 40)
  images, labels = _batch()
  after, metrics = jax.jit(steps.train_step)(state, images, labels,
                                             jax.random.key(2))
  assert np.isfinite(float(metrics['loss']))
  assert float(after.loss_scale.scale) == 2.0 ** 39
  assert int(after.loss_scale.finite_steps) == 0
  assert int(after.step) == int(state.step) + 1
  jax.tree.map(np.testing.assert_array_equal, after.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, after.opt_state,
               state.opt_state)


def test_split_step_skips_on_both_towers(monkeypatch):
  """Both towers skip, and the decision is taken over the model axis (each
  tower's device holds only its own gradients)."""
  axes = []
  all_finite = precision.all_finite
  monkeypatch.setattr(precision, 'all_finite', lambda tree, names: (
      axes.append(names), all_finite(tree, names))[1])
  config = _fp16_config()
  config.model_axis_size = 2
  mesh = parallel.make_mesh(config, jax.devices()[:2])
  state = _with_scale(parallel.create_train_state(
      config, steps.create_model(config.model), mesh, jax.random.key(0)),
                      2.0 ** 40)
  images, labels = _batch()
  after, _ = parallel.make_train_step(mesh, state)(
      jax.tree.map(jnp.copy, state), images, labels, jax.random.key(2))
  assert float(after.loss_scale.scale) == 2.0 ** 39
  jax.tree.map(np.testing.assert_array_equal, after.params, state.params)
  assert axes == [(parallel.MODEL,)]


def test_all_finite_agrees_across_the_model_axis():
  """One device's inf makes every device of the axis skip."""
  mesh = jax.make_mesh((2,), ('model',), devices=jax.devices()[:2])
  values = jax.device_put(jnp.array([[1.0, 2.0], [3.0, jnp.inf]]),
                          NamedSharding(mesh, P('model')))  # a row each

  def finite(local, axes):
    return precision.all_finite({'w': local}, axes)[None]
  each = jax.shard_map(lambda x: finite(x, ()), mesh=mesh,
                       in_specs=P('model'), out_specs=P('model'))(values)
  agreed = jax.shard_map(lambda x: finite(x, ('model',)), mesh=mesh,
                         in_specs=P('model'), out_specs=P('model'))(values)
  assert list(np.asarray(each)) == [True, False]
  assert list(np.asarray(agreed)) == [False, False]


def test_float16_without_loss_scaling_is_refused():
  config = small_config(dtype='float16')
  with pytest.raises(ValueError, match='float16 needs --config.loss_scale='
                     'dynamic.*6e-8'):
    train.check_config(config)
  with pytest.raises(ValueError, match='float16 needs'):
    steps.create_train_state(config, steps.create_model(config.model),
                             jax.random.key(0))
  config.loss_scale = 'static'
  with pytest.raises(ValueError, match="loss_scale 'static'.*none.*dynamic"):
    train.check_config(config)
  config = small_config(dtype='bfloat16')
  train.check_config(config)  # bfloat16 needs no scaling
  config.loss_scale = 'dynamic'
  train.check_config(config)  # but may have it


def test_checkpoint_records_the_loss_scale(tmp_path):
  config, state = _fp16_state()
  manager = checkpoint.create_manager(str(tmp_path), config)
  checkpoint.save(manager, state, config, {})
  manager.wait_until_finished()
  config.loss_scale = 'none'
  with pytest.raises(ValueError, match="loss_scale: checkpoint 'dynamic', "
                     "config 'none'"):
    checkpoint.check_compatible(manager, config)
  config.loss_scale = 'dynamic'
  checkpoint.check_compatible(manager, config)
  restored, _ = checkpoint.restore(manager, state.replace(
      loss_scale=precision.DynamicLossScale.create(1.0)))
  assert float(restored.loss_scale.scale) == 2.0 ** 15


def test_checkpoints_from_before_loss_scales_restore(tmp_path):
  """A checkpoint written as they were before the loss scale existed (flax's
  own train state, no such field) restores into today's float32 state; and
  today's float32 checkpoints keep that layout."""
  config = small_config(width=0.0625, image_size=64)
  state = steps.create_train_state(config, steps.create_model(config.model),
                                   jax.random.key(0))
  old = train_state.TrainState.create(apply_fn=state.apply_fn,
                                      params=scaled(state.params),
                                      tx=state.tx).replace(step=7)
  manager = checkpoint.create_manager(str(tmp_path), config)
  manager.save(7, args=ocp.args.Composite(
      state=ocp.args.StandardSave(old),
      record=ocp.args.JsonSave(checkpoint.record(config, {}))))
  manager.wait_until_finished()
  restored, _ = checkpoint.restore(manager, state)
  assert int(restored.step) == 7 and restored.loss_scale is None
  jax.tree.map(np.testing.assert_array_equal, restored.params, old.params)
  checkpoint.save(manager, restored.replace(step=8), config, {})
  manager.wait_until_finished()
  assert set(manager.item_metadata(8)['state']) == {'step', 'params',
                                                    'opt_state'}


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_tfds_batches_cross_in_the_compute_dtype(tiny_builder, dtype):
  kw = dict(global_batch_size=4, crop_size=32, resize=36)
  for train_split, split in [(True, 'train'), (False, 'validation')]:
    wide, narrow = (next(iter(input_pipeline.create_split(
        tiny_builder, split, train=train_split, dtype=d,
        **kw).as_numpy_iterator()))['image'] for d in ('float32', dtype))
    assert narrow.dtype == np.dtype(precision.DTYPES[dtype])
    np.testing.assert_array_equal(
        narrow, wide.astype(precision.DTYPES[dtype]))
