"""AlexNet: shapes, parameter count, init, fields, and an independent reference.

The reference is the single-device net as it is usually written (grouped
convolutions for conv2/4/5, one kernel per layer elsewhere, flax's pooling, a
plain LRN formula) run on the same parameter values.
"""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alexnet_jax import models
from alexnet_jax.models import alexnet
from conftest import SMALL_NET
from conftest import scaled
from conftest import value_and_vjp


@functools.partial(jax.jit, static_argnames=('model',))
def _init(model, key):
  size = model.image_size
  return model.init(key, jnp.zeros((1, size, size, 3)), train=False)['params']


def init(model, seed=0):
  return _init(model, jax.random.key(seed))


@functools.partial(jax.jit, static_argnames=('model', 'train', 'mutable'))
def _apply(model, params, x, key, train, mutable):
  return model.apply({'params': params}, x, train=train,
                     rngs={'dropout': key}, mutable=mutable)


def apply(model, params, x, train=False, seed=0, mutable=False):
  """Jitted ``model.apply`` (compiled once per model); ``seed`` drives dropout."""
  return _apply(model, params, x, jax.random.key(seed), train,
                tuple(mutable) if mutable else False)


def images(model, batch=2, seed=1):
  size = model.image_size
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


# --------------------------------------------------------------------------
# The reference network.


def plain_lrn(x, radius, bias, alpha, beta):
  n = x.shape[-1]
  sq = jnp.pad(x ** 2, [(0, 0)] * 3 + [(radius, radius)])
  total = sum(sq[..., j:j + n] for j in range(2 * radius + 1))
  return x / (bias + alpha * total) ** beta


def reference_logits(m: alexnet.AlexNet, params, x):
  """The single-device net with grouped convolutions (dropout off)."""
  towers = m.towers
  act = {'relu': nn.relu, 'tanh': jnp.tanh}[m.activation]
  side_by_side = lambda k: jnp.concatenate(list(k), axis=-1)

  def conv(name, x, stride=1, padding='SAME', groups=1):
    p = params[name]
    y = lax.conv_general_dilated(
        x, side_by_side(p['kernel']), (stride, stride), padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
    return act(y + p['bias'].reshape(-1))

  def norm_pool(x):
    if m.use_lrn:  # the window stays inside each tower's channels
      parts = jnp.split(x, towers, axis=-1)
      x = jnp.concatenate([plain_lrn(p, m.lrn_depth_radius, m.lrn_bias,
                                     m.lrn_alpha, m.lrn_beta) for p in parts],
                          axis=-1)
    return nn.max_pool(x, (m.pool_window,) * 2, (m.pool_stride,) * 2, 'VALID')

  out = 1 + math.ceil((m.image_size - 11) / 4)
  pad = (out - 1) * 4 + 11 - m.image_size
  h = norm_pool(conv('conv1', x, 4, ((0, pad), (0, pad))))
  h = norm_pool(conv('conv2', h, groups=towers))
  h = conv('conv3', h)
  h = conv('conv4', h, groups=towers)
  h = conv('conv5', h, groups=towers)
  h = nn.max_pool(h, (m.pool_window,) * 2, (m.pool_stride,) * 2, 'VALID')
  # fc6 reads each tower's pooled map flattened, tower 0 first.
  n, s, _, c = h.shape
  h = h.reshape(n, s, s, towers, c // towers).transpose(0, 3, 1, 2, 4)
  h = h.reshape(n, -1)
  for name in ('fc6', 'fc7'):
    p = params[name]
    h = act(h @ side_by_side(p['kernel']) + p['bias'].reshape(-1))
  p = params['fc8']
  return h @ p['kernel'].reshape(-1, p['kernel'].shape[-1]) + p['bias']


# --------------------------------------------------------------------------
# The paper net.


def paper_parameter_count(towers):
  """Counted from the paper's Figure 2 (and its one-GPU footnote)."""
  conv = [(11, 3, 48), (5, 48, 128), (3, 256, 192), (3, 192, 192),
          (3, 192, 128)]
  fc = [(6 * 6 * 256, 4096), (4096, 4096), (4096, 1000)]
  if towers == 1:  # half the kernels in conv1-4; conv5 and FC full size
    conv = [(11, 3, 48), (5, 48, 128), (3, 128, 192), (3, 192, 192),
            (3, 192, 256)]
    return (sum(k * k * i * o + o for k, i, o in conv)
            + sum(i * o + o for i, o in fc))
  return (2 * sum(k * k * i * o + o for k, i, o in conv)
          + sum(i * o + o for i, o in fc))


def test_paper_parameter_count():
  # The paper's figure (docs/paper.md).
  assert paper_parameter_count(2) == 60_965_224
  assert models.num_params(init(alexnet.AlexNet())) == 60_965_224
  assert (models.num_params(init(alexnet.AlexNet(towers=1)))
          == paper_parameter_count(1))


@pytest.mark.parametrize('image_size', [224, 227])
def test_paper_shapes_at_every_layer(image_size):
  m = alexnet.AlexNet(image_size=image_size)
  params = init(m)
  x = images(m, batch=2)
  logits, state = apply(m, params, x, mutable=['intermediates'])
  got = {k: v[0] for k, v in state['intermediates'].items()}
  # Per tower (the paper's table); the whole net has twice the channels.
  expected = {
      'conv1_out': (2, 55, 55, 48), 'pool1_out': (2, 27, 27, 48),
      'conv2_out': (2, 27, 27, 128), 'pool2_out': (2, 13, 13, 128),
      'conv3_out': (2, 13, 13, 192), 'conv4_out': (2, 13, 13, 192),
      'conv5_out': (2, 13, 13, 128), 'pool5_out': (2, 6, 6, 128),
      'fc6_out': (2, 2048), 'fc7_out': (2, 2048),
  }
  assert set(got) == set(expected)
  for name, shape in expected.items():
    assert len(got[name]) == 2, name
    chex.assert_shape(got[name], [shape, shape])
  whole = {k: jnp.concatenate(v, -1).shape for k, v in got.items()}
  assert whole['conv1_out'] == (2, 55, 55, 96)
  assert whole['pool5_out'] == (2, 6, 6, 256)
  assert whole['fc7_out'] == (2, 4096)
  chex.assert_shape(logits, (2, 1000))
  chex.assert_type(logits, jnp.float32)


def test_paper_net_matches_grouped_reference():
  m = alexnet.AlexNet()
  params = init(m)
  x = images(m, batch=1)
  np.testing.assert_allclose(
      apply(m, params, x),
      jax.jit(lambda p, x: reference_logits(m, p, x))(params, x),
      rtol=1e-4, atol=1e-5)


def test_flat_draws_are_flax_and_jax_draws_bit_for_bit():
  # Kernels and biases of both models' ranks (shapes that compile fast the
  # direct way: the point of the flat draw is the slow ones).
  key = jax.random.key(5)
  uniform = lambda k, s, d: jax.random.uniform(k, s, d, -0.3, 0.3)
  for shape in [(2, 11, 11, 3, 48), (3, 3, 64, 192), (2, 2048, 1000), (7,)]:
    np.testing.assert_array_equal(
        models.normal_init(0.01)(key, shape),
        nn.initializers.normal(0.01)(key, shape), err_msg=str(shape))
    np.testing.assert_array_equal(models.drawn_flat(uniform)(key, shape),
                                  uniform(key, shape, jnp.float32),
                                  err_msg=str(shape))


def test_paper_init():
  params = init(alexnet.AlexNet(), seed=3)
  for layer, p in params.items():
    w = np.asarray(p['kernel'])
    assert abs(w.mean()) < 1e-3, layer
    assert w.std() == pytest.approx(0.01, rel=0.03), layer
    expected_bias = 1.0 if layer in ('conv2', 'conv4', 'conv5', 'fc6',
                                     'fc7') else 0.0
    np.testing.assert_array_equal(p['bias'], expected_bias, err_msg=layer)
  # Tower parameters carry the tower axis; fc8's bias is shared.
  assert params['conv2']['kernel'].shape == (2, 5, 5, 48, 128)
  assert params['fc8']['kernel'].shape == (2, 2048, 1000)
  assert params['fc8']['bias'].shape == (1000,)


# --------------------------------------------------------------------------
# Small variants: wiring, gradients, fields.


@pytest.mark.parametrize('fields', [
    dict(),
    dict(activation='tanh'),
    dict(use_lrn=False),
    dict(pool_window=2, pool_stride=2),
    dict(towers=1),
    dict(lrn_depth_radius=1, lrn_alpha=0.3, lrn_bias=1.0, lrn_beta=0.5),
    # Every lowering choice (the same math): the backends' 'auto' sets and
    # a third that holds the choices neither has; the reference is the same.
    alexnet.AUTO['cpu'],
    alexnet.AUTO['accelerator'],
    dict(conv1_impl='per_tower', conv_impl='per_tower',
         pool_impl='strided_views', lrn_impl='autodiff'),
    dict(conv1_impl='patches', conv_impl='patches'),
])
def test_matches_reference_values_and_gradients(fields):
  m = alexnet.AlexNet(**SMALL_NET, **fields)
  # Weights x20 so that LRN and tanh are far from linear.
  params = scaled(init(m))
  x = images(m)
  labels = jnp.array([1, 7])

  @functools.partial(jax.jit, static_argnums=0)
  def logits_and_grad(f, p):  # one compiled call a side
    logits, vjp = jax.vjp(f, p)
    loss = lambda z: -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(2), labels])
    return logits, vjp(jax.grad(loss)(logits))[0]

  ours, g_ours = logits_and_grad(
      lambda p: m.apply({'params': p}, x, train=False), params)
  theirs, g_theirs = logits_and_grad(
      lambda p: reference_logits(m, p, x), params)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  for path, a in jax.tree_util.tree_leaves_with_path(g_ours):
    b = g_theirs
    for k in path:
      b = b[k.key]
    # Relative to the layer's largest gradient: small entries are sums with
    # cancellation, computed in another order by the reference.
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4 * np.abs(b).max(),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('impls', [alexnet.AUTO['cpu'],
                                   alexnet.AUTO['accelerator']])
def test_split_code_path_matches_one_device(impls):
  """model_axis: one tower per call (vmapped here) equals both on one device."""
  m = alexnet.AlexNet(**SMALL_NET, **impls)
  split = alexnet.AlexNet(**SMALL_NET, **impls, model_axis='model')
  params = init(m)
  x = images(m)
  axes = m.tower_axes(params)
  # Each tower's slice keeps a tower axis of size 1, as a shard would.
  per_tower = jax.tree.map(
      lambda p, a: p if a is None else p.reshape((2, 1) + p.shape[1:]),
      params, axes)

  @functools.partial(jax.jit, static_argnums=1)
  def split_run(params, train):
    return jax.vmap(
        lambda p: split.apply({'params': p}, x, train=train,
                              rngs={'dropout': jax.random.key(5)}),
        in_axes=(axes,), axis_name='model')(params)

  # Values and every parameter's gradient, through the crossings'
  # collectives: of tower 0's call's output (each call's holds all logits).
  probe = jax.random.normal(jax.random.key(3), (x.shape[0], m.num_classes))
  one, (g_one,) = value_and_vjp(
      lambda p: m.apply({'params': p}, x, train=False), probe, params)
  both, (g_split,) = value_and_vjp(
      lambda p: split_run(p, False),
      jnp.stack([probe, jnp.zeros_like(probe)]), per_tower)
  np.testing.assert_allclose(both[0], one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(both[1], one, rtol=1e-5, atol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_one),
                          jax.tree.leaves(g_split)):
    np.testing.assert_allclose(b.reshape(a.shape), a, rtol=1e-4,
                               atol=1e-5 * np.abs(a).max(),
                               err_msg=jax.tree_util.keystr(path))
  # Dropout masks follow the tower, not the call; both towers' outputs.
  one = apply(m, params, x, True, seed=5)
  both = split_run(per_tower, True)
  np.testing.assert_allclose(both[0], one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(both[1], one, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training_and_deterministic():
  m = alexnet.AlexNet(**SMALL_NET)
  params = init(m)
  x = images(m)
  eval_out = m.apply({'params': params}, x, train=False)  # needs no rng
  np.testing.assert_array_equal(apply(m, params, x, False, seed=0), eval_out)
  np.testing.assert_array_equal(apply(m, params, x, False, seed=1), eval_out)
  train_out = apply(m, params, x, True, seed=0)
  np.testing.assert_array_equal(apply(m, params, x, True, seed=0), train_out)
  assert not np.allclose(train_out, eval_out)
  assert not np.allclose(train_out, apply(m, params, x, True, seed=1))
  no_dropout = alexnet.AlexNet(**SMALL_NET, dropout_rate=0.0)
  np.testing.assert_array_equal(apply(no_dropout, params, x, True), eval_out)


def test_dropout_masks_rate_scale_and_towers():
  m = alexnet.AlexNet(**SMALL_NET, dropout_rate=0.3)
  xs = [jnp.ones((64, 512)), jnp.ones((64, 512))]
  out = m.apply({}, xs, True, 0, method=alexnet.AlexNet._dropout,
                rngs={'dropout': jax.random.key(0)})
  for y in out:
    kept = np.asarray(y) != 0
    assert kept.mean() == pytest.approx(0.7, abs=0.01)
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
  assert not np.array_equal(out[0], out[1])  # each tower its own mask


def test_same_seed_same_parameters_and_outputs():
  m = alexnet.AlexNet(**SMALL_NET)
  a, b = init(m, seed=4), init(m, seed=4)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a['conv1']['kernel'],
                            init(m, seed=5)['conv1']['kernel'])
  x = images(m)
  np.testing.assert_array_equal(apply(m, a, x), apply(m, b, x))


def shapes(m, batch=1):
  params = init(m)
  _, state = apply(m, params, images(m, batch), mutable=['intermediates'])
  return params, {k: v[0][0].shape for k, v in state['intermediates'].items()}


def test_fields_change_what_they_should():
  _, base = shapes(alexnet.AlexNet(**SMALL_NET))
  # 67 -> conv1 15 -> 7 -> 3 -> 1 with pooling 3/2; width 1/8 of 48 is 6.
  assert base['conv1_out'] == (1, 15, 15, 6)
  assert base['pool5_out'] == (1, 1, 1, 16)
  assert base['fc7_out'] == (1, 256)

  _, wide = shapes(alexnet.AlexNet(**{**SMALL_NET, 'width': 0.25}))
  assert wide['conv1_out'] == (1, 15, 15, 12)
  assert wide['fc7_out'] == (1, 512)

  params, one = shapes(alexnet.AlexNet(**SMALL_NET, towers=1))
  assert one['conv1_out'] == (1, 15, 15, 6)      # half the kernels
  assert one['conv5_out'] == (1, 3, 3, 32)       # full-size conv5
  assert one['fc7_out'] == (1, 512)              # full-size FC layers
  assert params['conv3']['kernel'].shape == (1, 3, 3, 16, 24)

  _, nonoverlap = shapes(alexnet.AlexNet(pool_window=2, pool_stride=2,
                                        width=0.0625))
  assert [nonoverlap[k][1] for k in ('conv1_out', 'pool1_out', 'pool2_out',
                                     'pool5_out')] == [55, 27, 13, 6]

  m = alexnet.AlexNet(**{**SMALL_NET, 'num_classes': 7})
  assert apply(m, init(m), images(m)).shape == (2, 7)

  assert alexnet.feature_sizes(224) == (55, 27, 13, 6)
  assert alexnet.feature_sizes(227) == (55, 27, 13, 6)
  assert alexnet.min_image_size() == 64
  alexnet.feature_sizes(64)
  with pytest.raises(ValueError):
    alexnet.feature_sizes(63)


def test_activation_and_lrn_fields_change_the_output():
  base = alexnet.AlexNet(**SMALL_NET)
  params = scaled(init(base))
  x = images(base)
  out = lambda **kw: apply(alexnet.AlexNet(**SMALL_NET, **kw), params, x)
  reference = out()
  assert not np.allclose(out(activation='tanh'), reference)
  assert not np.allclose(out(use_lrn=False), reference)
  assert not np.allclose(out(lrn_alpha=0.5), reference)


def test_bfloat16_compute_keeps_float32_parameters():
  m = alexnet.AlexNet(**SMALL_NET, dtype=jnp.bfloat16)
  params = init(m)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits, state = apply(m, params, images(m), mutable=['intermediates'])
  assert logits.dtype == jnp.float32
  for name, value in state['intermediates'].items():
    assert value[0][0].dtype == jnp.bfloat16, name
  f32 = apply(alexnet.AlexNet(**SMALL_NET), params, images(m))
  np.testing.assert_allclose(logits, f32, rtol=0.05, atol=0.05)


# --------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize('shape,match', [
    ((224, 224, 3), r'shape \(224, 224, 3\)'),
    ((1, 224, 224, 1), r'shape \(1, 224, 224, 1\)'),
    ((1, 3, 224, 224), r'shape \(1, 3, 224, 224\)'),
    ((1, 200, 200, 3), 'image_size=224 but got 200x200'),
])
def test_bad_images_are_refused_before_compiling(shape, match):
  m = alexnet.AlexNet()
  with pytest.raises(ValueError, match=match):
    jax.jit(m.init, static_argnames='train')(
        jax.random.key(0), jnp.zeros(shape), train=False)


@pytest.mark.parametrize('fields,match', [
    (dict(image_size=63), 'image_size=63 is too small.*image_size >= 64'),
    (dict(activation='gelu'), "'gelu'.*relu.*tanh"),
    (dict(towers=3), 'towers=3'),
    (dict(lrn_depth_radius=-1), 'depth_radius=-1'),
    (dict(lrn_bias=0.0), 'bias=0.0'),
    (dict(dropout_rate=1.0), 'dropout_rate'),
    (dict(width=0.0), 'width'),
    (dict(pool_window=0), 'pool_window'),
    (dict(num_classes=0), 'num_classes'),
    (dict(conv_impl='cudnn'),
     r"conv_impl 'cudnn'.*\['auto', 'per_tower', 'grouped', 'patches', "
     r"'winograd'\]"),
    (dict(conv1_impl='im2col'),
     r"conv1_impl 'im2col'.*'patches', 'winograd'\]"),
    (dict(pool_impl='avg'), r"pool_impl 'avg'.*'reduce_window'"),
    (dict(lrn_impl='tf'), r"lrn_impl 'tf'.*'autodiff'.*'custom_vjp'"),
])
def test_bad_fields_are_refused_at_construction(fields, match):
  with pytest.raises(ValueError, match=match):
    alexnet.AlexNet(**fields)


def test_the_variants_cover_every_choice():
  cases = test_matches_reference_values_and_gradients.pytestmark[0].args[1]
  for name, choices in alexnet.IMPLEMENTATIONS.items():
    assert set(choices) <= {case.get(name) for case in cases}, name


def test_auto_picks_by_backend_and_width(monkeypatch):
  """'auto' is the CPU set on CPU, the native set elsewhere; on CPU conv1
  runs by Winograd at every width, conv2-conv5 only with enough kernels a
  tower; a field that is set is kept."""
  assert alexnet.AlexNet().implementations() == alexnet.AUTO['cpu']
  assert alexnet.AlexNet(model_axis='model').implementations() == (
      alexnet.AUTO['cpu'])  # one tower a call
  small = alexnet.AlexNet(width=0.125)  # 6 to 24 kernels a tower
  assert small.implementations()['conv1_impl'] == 'winograd'
  assert small.implementations()['conv_impl'] == 'per_tower'
  assert alexnet.AlexNet(width=0.125, conv_impl='patches').implementations(
  )['conv_impl'] == 'patches'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert alexnet.AlexNet().implementations() == alexnet.AUTO['accelerator']
  assert alexnet.AlexNet(pool_impl='strided_views').implementations()[
      'pool_impl'] == 'strided_views'
  assert alexnet.auto_implementations('tpu') == alexnet.AUTO['accelerator']
