"""The optimizer against the paper's update rule, and the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from alexnet_jax import steps
from configs import imagenet
from conftest import small_config


def test_optimizer_is_the_papers_update_rule():
  config = imagenet.get_config()
  lr, wd, mu = config.learning_rate, config.weight_decay, config.momentum
  rng = np.random.default_rng(0)
  params = {'fc6': {'kernel': jnp.asarray(rng.standard_normal((3, 2))),
                    'bias': jnp.asarray(rng.standard_normal(2))}}
  tx = steps.create_optimizer(config)
  opt_state = tx.init(params)
  # Section 5: v <- 0.9 v - 0.0005 lr w - lr grad; w <- w + v.
  # cuda-convnet decays weights only, so biases get no decay term.
  w = {k: np.asarray(v) for k, v in params['fc6'].items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for _ in range(3):
    grads = {'fc6': {k: jnp.asarray(rng.standard_normal(x.shape))
                     for k, x in w.items()}}
    for k in w:
      decay = wd if k == 'kernel' else 0.0
      v[k] = mu * v[k] - decay * lr * w[k] - lr * np.asarray(grads['fc6'][k])
      w[k] = w[k] + v[k]
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  for k in w:
    np.testing.assert_allclose(params['fc6'][k], w[k], rtol=1e-6)


def test_weight_decay_on_biases_when_asked():
  config = imagenet.get_config()
  config.weight_decay_biases = True
  tx = steps.create_optimizer(config)
  params = {'fc6': {'bias': jnp.ones(2)}}
  updates, _ = tx.update({'fc6': {'bias': jnp.zeros(2)}}, tx.init(params),
                         params)
  np.testing.assert_allclose(updates['fc6']['bias'],
                             -config.learning_rate * config.weight_decay)


def test_train_step_lowers_the_loss_of_a_fixed_batch():
  config = small_config(dropout_rate=0.0)
  model = steps.create_model(config.model)
  state = steps.create_train_state(config, model, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (4, 67, 67, 3))
  labels = jnp.array([0, 1, 2, 3])
  step = jax.jit(steps.train_step)
  losses = []
  for i in range(10):
    state, metrics = step(state, images, labels, jax.random.key(i))
    losses.append(float(metrics['loss']))
  assert set(metrics) == {'loss', 'top1_error'}
  assert losses[0] == pytest.approx(np.log(10), rel=0.05)  # paper init: ~uniform
  # At the paper's learning rate the net first learns that only 4 of the 10
  # classes occur (ln 4 = 1.39); N(0, 0.01) init makes the rest slow.
  assert losses[-1] < 1.6
  assert int(state.step) == 10


def test_eval_step_sums_by_hand():
  # A stand-in apply_fn with fixed logits: 3 examples, 6 classes.
  logits = jnp.array([[0., 1, 2, 3, 4, 5],        # label 5: top-1 right
                      [5., 4, 3, 2, 1, 0],        # label 4: 5th best
                      [.5, .4, .3, .1, 9, 1]])    # label 3: 6th best
  labels = jnp.array([5, 4, 3])
  state = train_state.TrainState.create(
      apply_fn=lambda *a, **k: logits, params={}, tx=optax.identity())
  sums = steps.eval_step(state, jnp.zeros((3, 1)), labels)
  assert int(sums['top1_errors']) == 2
  assert int(sums['top5_errors']) == 1
  assert int(sums['count']) == 3
  log_p = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(sums['loss'],
                             -(log_p[0, 5] + log_p[1, 4] + log_p[2, 3]),
                             rtol=1e-6)
  # Padding rows (mask False) are left out of every sum.
  masked = steps.eval_step(state, jnp.zeros((3, 1)), labels,
                           jnp.array([True, False, True]))
  assert int(masked['count']) == 2
  assert int(masked['top1_errors']) == 1
  assert int(masked['top5_errors']) == 1
  np.testing.assert_allclose(masked['loss'], -(log_p[0, 5] + log_p[2, 3]),
                             rtol=1e-6)


def test_ten_crop_eval_averages_the_crops_softmax():
  # A stand-in apply_fn whose logits are the (1x1, 4-channel) crop itself.
  crops = jax.random.normal(jax.random.key(0), (2, 10, 1, 1, 4)) * 3
  labels = jnp.array([1, 3])
  state = train_state.TrainState.create(
      apply_fn=lambda v, x, train: x.reshape(x.shape[0], -1),
      params={}, tx=optax.identity())
  sums = steps.eval_step(state, crops, labels)
  probs = np.asarray(jax.nn.softmax(crops.reshape(2, 10, 4))).mean(axis=1)
  np.testing.assert_allclose(
      sums['loss'], -np.log(probs[0, 1]) - np.log(probs[1, 3]), rtol=1e-5)
  assert int(sums['top1_errors']) == int(np.sum(probs.argmax(-1) != labels))
  assert int(sums['count']) == 2


def test_create_model_reads_the_config():
  model = steps.create_model(small_config(dtype='bfloat16', towers=1).model)
  assert model.dtype == jnp.bfloat16 and model.towers == 1
  assert steps.create_model(small_config().model, use_lrn=False).use_lrn is False


def test_unknown_dtype_is_refused():
  with pytest.raises(ValueError, match="'float64'.*bfloat16.*float16.*float32"):
    steps.create_model(small_config(dtype='float64').model)


@pytest.mark.parametrize('rate', [0.05, optax.cosine_decay_schedule(0.05, 10)])
def test_learning_rate_is_found_by_name(rate):
  """Read and set in the optimizer state by its name, whatever its place in
  the chain, for a constant rate and under a schedule (whose own state
  inject_hyperparams keeps under the same name)."""
  config = small_config()
  state = steps.create_train_state(config, steps.create_model(config.model),
                                   jax.random.key(0), rate)
  assert float(steps.learning_rate(state)) == pytest.approx(0.05)
  if callable(rate):  # the schedule would overwrite a rate set by hand
    with pytest.raises(ValueError, match='follows a schedule'):
      steps.set_learning_rate(state, 0.005)
    return
  state = steps.set_learning_rate(state, 0.005)
  assert float(steps.learning_rate(state)) == pytest.approx(0.005)
  assert steps.momentum(state).keys() == state.params.keys()
  # The update uses the new rate: a bias (no weight decay) moves by -lr *
  # grad in the first step.
  moved = state.apply_gradients(
      grads=jax.tree.map(jnp.ones_like, state.params))
  np.testing.assert_allclose(steps.momentum(moved)['fc8']['bias'], -0.005)
