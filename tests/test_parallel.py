"""The split step against the single-device step, its collectives, its memory.

Every tensor the step moves is small with conftest's ``small_config`` (67x67
images, 10 classes); the wiring is the same. The states' weights are x20
(conftest's ``scaled``) so that no layer's gradient is too small to show an
error.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import parallel
from alexnet_jax import steps
from configs import imagenet
from conftest import scaled
from conftest import small_config


def batch(n=4):
  images = np.asarray(jax.random.normal(jax.random.key(1), (n, 67, 67, 3)))
  return images, np.arange(n) % 10


def single_device_step(config, rng):
  model = steps.create_model(config.model)
  state = scaled(steps.create_train_state(config, model, rng))
  images, labels = batch(config.batch_size)
  new_state, metrics = jax.jit(steps.train_step)(state, images, labels, rng)
  return state, new_state, metrics


def split_step(config, rng, num_devices):
  model = steps.create_model(config.model)
  mesh = parallel.make_mesh(config, jax.devices()[:num_devices])
  state = scaled(parallel.create_train_state(config, model, mesh, rng))
  step = parallel.make_train_step(mesh, state)
  images, labels = parallel.global_batch(mesh, *batch(config.batch_size))
  return mesh, step(state, images, labels, rng)


# Caffe's BVLC settings: the LRN window crosses the towers (a collective
# before each LRN when they are split).
CAFFE_LRN = dict(lrn_across_towers=True, lrn_bias=1.0, lrn_alpha=2e-5)


@pytest.mark.parametrize('mesh_shape,net', [
    ((1, 2), {}), ((2, 2), {}), ((2, 1), {}), ((4, 1), {}),
    ((1, 2), CAFFE_LRN)])
def test_split_step_equals_single_device(mesh_shape, net):
  data, model = mesh_shape
  rng = jax.random.key(0)
  config = small_config(batch_size=4, model_axis_size=model,
                        dropout_rate=0.0, **net)
  before, want, want_metrics = single_device_step(config, rng)
  mesh, (got, metrics) = split_step(config, rng, data * model)
  assert dict(mesh.shape) == {'data': data, 'model': model}
  np.testing.assert_allclose(metrics['loss'], want_metrics['loss'], rtol=1e-6)
  np.testing.assert_allclose(metrics['top1_error'], want_metrics['top1_error'])
  # After one step the momentum is exactly -lr (gradient + weight decay).
  trace = steps.momentum
  assert_trees_close(trace(got), trace(want))
  assert_trees_close(got.params, want.params)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       want.params, before.params)
  assert min(jax.tree.leaves(moved)) > 1e-4  # every layer really moved


def assert_trees_close(got, want):
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('mesh_shape', [(1, 2), (2, 2)])
def test_split_eval_step_equals_single_device(mesh_shape):
  config = small_config(batch_size=8, model_axis_size=mesh_shape[1])
  model = steps.create_model(config.model)
  rng = jax.random.key(0)
  images, labels = batch(8)
  mask = np.arange(8) < 7  # the last row is padding
  want = jax.jit(steps.eval_step)(
      scaled(steps.create_train_state(config, model, rng)), images, labels,
      mask)
  mesh = parallel.make_mesh(config, jax.devices()[:np.prod(mesh_shape)])
  state = scaled(parallel.create_train_state(config, model, mesh, rng))
  got = parallel.make_eval_step(mesh, state)(
      state, *parallel.global_batch(mesh, images, labels, mask))
  assert int(got['count']) == 7
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


def test_dropout_in_the_split_step_is_deterministic():
  config = small_config(batch_size=4, model_axis_size=2)  # dropout 0.5 on
  rng = jax.random.key(0)
  _, (a, ma) = split_step(config, rng, 4)
  _, (b, mb) = split_step(config, rng, 4)
  _, (c, mc) = split_step(config, jax.random.key(1), 4)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert float(ma['loss']) == float(mb['loss'])
  assert float(ma['loss']) != float(mc['loss'])


# --------------------------------------------------------------------------
# The paper net split over two devices: what crosses, what each device holds.

COLLECTIVE = re.compile(
    r'= (?P<shape>.*?) (?P<op>all-gather|all-reduce|reduce-scatter|'
    r'collective-permute|all-to-all)(?:-start)?\((?P<operand>[^)]*)\).*?'
    r'replica_groups=(?P<groups>\{[^=]*?\}\})')


@pytest.fixture(scope='module')
def paper_split():
  """The full paper net on a 2x2 mesh, batch 2 (one image per data shard)."""
  config = imagenet.get_config()
  config.batch_size = 2
  config.model_axis_size = 2
  model = steps.create_model(config.model)
  mesh = parallel.make_mesh(config, jax.devices()[:4])
  state = parallel.create_train_state(config, model, mesh, jax.random.key(0))
  step = parallel.make_train_step(mesh, state)
  images, labels = parallel.global_batch(
      mesh, np.zeros((2, 224, 224, 3), np.float32), np.zeros(2, np.int32))
  hlo = step.lower(state, images, labels, jax.random.key(0)).compile()
  return model, mesh, state, hlo.as_text()


def elements(shape):
  """Element count of an HLO array shape like f32[2,13,13,256]{...}."""
  dims = re.match(r'\w+\[([\d,]*)\]', shape).group(1)
  return int(np.prod([int(d) for d in dims.split(',') if d]))


def replica_groups(match):
  """A COLLECTIVE match's replica groups, as a set of device-id sets."""
  return {frozenset(int(i) for i in g.split(','))
          for g in re.findall(r'\{([\d,]+)\}', match['groups'])}


def test_only_the_four_crossings_cross_the_model_axis(paper_split):
  model, mesh, _, hlo = paper_split
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  model_groups = {frozenset(row) for row in ids}        # {0,1}, {2,3}
  data_groups = {frozenset(col) for col in ids.T}       # {0,2}, {1,3}
  over_model, over_data = [], []
  for m in COLLECTIVE.finditer(hlo):
    groups = replica_groups(m)
    if groups == model_groups:
      over_model.append(m)
    elif groups == data_groups:
      over_data.append(m)
    else:
      pytest.fail(f'collective over unexpected groups: {m.group(0)}')
  # Forward: three all-gathers (conv3, fc6, fc7 inputs) and the fc8 sum;
  # backward: the all-gathers' transposes. Nothing else crosses 'model'.
  assert sorted(m['op'] for m in over_model) == (
      ['all-gather'] * 3 + ['all-reduce'] + ['reduce-scatter'] * 3)
  # Gradients (and the metrics) are reduced over 'data' only.
  assert over_data and all(m['op'] == 'all-reduce' for m in over_data)

  # Bytes received per image (one image per data shard here), against the
  # paper's shapes as parallel.crossing_bytes_per_image computes them.
  expected = parallel.crossing_bytes_per_image(model)
  received = []
  for m in over_model:
    out = elements(m['shape'])
    if m['op'] == 'all-gather':      # got the other half
      received.append(('forward', out // 2 * 4))
    elif m['op'] == 'all-reduce':    # got the other partial sum
      received.append(('forward', out * 4))
    else:                            # reduce-scatter: the other's half of 2x
      received.append(('backward', out * 4))
  want = sorted((k.rsplit('_', 1)[1], v) for k, v in expected.items())
  assert sorted(received) == want
  assert expected['conv3_input_forward'] == 13 * 13 * 128 * 4


@pytest.mark.parametrize('devices,model_axis', [(1, 1), (2, 2)])
def test_a_data_axis_of_one_device_reduces_no_gradient(devices, model_axis):
  """One device, or two with a tower each: the data axis has one device,
  so no gradient is all-reduced over it (XLA:CPU kept such an all-reduce
  of every gradient over a single device); only the metrics' scalars."""
  config = small_config(batch_size=4, model_axis_size=model_axis)
  model = steps.create_model(config.model)  # dropout on: its key matters
  mesh = parallel.make_mesh(config, jax.devices()[:devices])
  state = parallel.create_train_state(config, model, mesh, jax.random.key(0))
  images, labels = parallel.global_batch(
      mesh, np.zeros((4, 67, 67, 3), np.float32), np.zeros(4, np.int32))
  hlo = parallel.make_train_step(mesh, state).lower(
      state, images, labels, jax.random.key(0)).compile().as_text()
  single = {frozenset([d.id]) for d in mesh.devices.flat}
  over_data = [m for m in COLLECTIVE.finditer(hlo)
               if replica_groups(m) == single]
  shapes = [s for m in over_data
            for s in re.findall(r'\w+\[[\d,]*\]', m['shape'])]
  assert all(elements(s) == 1 for s in shapes), shapes


def test_each_device_holds_one_tower(paper_split):
  _, mesh, state, _ = paper_split
  total = sum(x.nbytes for x in jax.tree.leaves((state.params,
                                                 state.opt_state)))
  held = {d: 0 for d in mesh.devices.flat}
  for x in jax.tree.leaves((state.params, state.opt_state)):
    for shard in x.addressable_shards:
      held[shard.device] += shard.data.nbytes
  # Parameters plus momentum: 2 x 60,965,224 floats in all.
  assert total == pytest.approx(2 * 60_965_224 * 4, rel=1e-6)
  for device, nbytes in held.items():
    assert nbytes <= 0.55 * total, (device, nbytes / total)
  assert state.params['fc6']['kernel'].sharding.spec == parallel.P('model')
  assert state.params['fc8']['bias'].sharding.spec == parallel.P()


# --------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize('overrides,devices,match', [
    (dict(model_axis_size=2), 3, 'model_axis_size=2 does not divide the 3'),
    (dict(model_axis_size=3), 4, 'model_axis_size=3'),
    (dict(model_axis_size=2, batch_size=3), 4,
     'batch_size=3 is not divisible by the data axis'),
    (dict(model_axis_size=2, towers=1), 2, 'towers=1'),
])
def test_bad_mesh_settings_are_refused(overrides, devices, match):
  config = small_config(model_axis_size=overrides.pop('model_axis_size'),
                        batch_size=overrides.pop('batch_size', 4), **overrides)
  with pytest.raises(ValueError, match=match):
    parallel.make_mesh(config, jax.devices()[:devices])


def test_auto_model_axis():
  auto = small_config(batch_size=4, model_axis_size=0)
  assert parallel.model_axis_size(auto, 4) == 2
  assert parallel.model_axis_size(auto, 1) == 1
  assert parallel.model_axis_size(auto, 3) == 1
  one_tower = small_config(batch_size=4, model_axis_size=0, towers=1)
  assert parallel.model_axis_size(one_tower, 4) == 1
