"""torchvision's one-tower AlexNet as a second model: picked by name,
trained by the same main loop, data parallel over the devices. (Its values
and gradients against torchvision itself: tests/test_import_weights.py.)"""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import train
from alexnet_jax.models import alexnet_owt
from configs import alexnet_owt as owt_config
from conftest import on_tiny_dataset


def small_owt(**overrides):
  """configs/alexnet_owt.py with a net of 1/8 width on 64x64 images."""
  config = owt_config.get_config()
  config.model.update(width=0.125, image_size=64, num_classes=10)
  config.update(overrides)
  return config


def test_shapes_at_224():
  model = alexnet_owt.AlexNetOWT()
  x = np.zeros((2, 224, 224, 3), np.float32)
  logits, sown = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), x, train=False,
                                     mutable=['params', 'intermediates']))
  shapes = {k: v[0][0].shape for k, v in sown['intermediates'].items()}
  assert shapes['conv1_out'] == (2, 55, 55, 64)
  assert shapes['conv2_out'] == (2, 27, 27, 192)
  assert shapes['conv5_out'] == (2, 13, 13, 256)
  assert shapes['pool5_out'] == (2, 6, 6, 256)
  assert shapes['fc7_out'] == (2, 4096)
  assert logits.shape == (2, 1000)


def test_adaptive_average_pooling_is_pytorchs():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  for size in (1, 6, 9, 13):
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    rows = alexnet_owt.adaptive_average_matrix(size, 6)
    ours = np.einsum('ih,nhwc,jw->nijc', rows, x, rows)
    theirs = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), 6).numpy()
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1),
                               rtol=1e-6, atol=1e-6)


def test_data_parallel_step_equals_one_device():
  """On a 4x1 mesh (the batch over four devices) one step gives the
  one-device step's loss and parameters."""
  config = small_owt(batch_size=8)
  config.model.dropout_rate = 0.0
  model = steps.create_model(config.model)
  rng = jax.random.key(0)
  images = np.random.default_rng(0).normal(
      0, 1, (8, 64, 64, 3)).astype(np.float32)
  labels = np.arange(8) % 10
  single = steps.create_train_state(config, model, rng)
  want, want_metrics = jax.jit(steps.train_step)(single, images, labels, rng)
  mesh = parallel.make_mesh(config)
  assert dict(mesh.shape) == {'data': 4, 'model': 1}
  state = parallel.create_train_state(config, model, mesh, rng)
  got, metrics = parallel.make_train_step(mesh, state)(
      state, *parallel.global_batch(mesh, images, labels), rng)
  np.testing.assert_allclose(metrics['loss'], want_metrics['loss'], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               got.params, want.params)
  # No tower axis: every parameter whole on every device.
  assert {leaf.sharding.spec for leaf in jax.tree.leaves(got.params)} == {P()}


def test_main_loop_trains_it(tiny_data_dir, tmp_path):
  config = on_tiny_dataset(small_owt(batch_size=20, num_epochs=3,
                                     learning_rate=0.02), tiny_data_dir,
                           ten_crop_eval=False)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 3 * 10
  history = [json.loads(line)
             for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [h['epoch'] for h in history] == [1, 2, 3]
  assert all(np.isfinite(h['train_loss']) for h in history)
  assert history[-1]['train_loss'] < history[0]['train_loss']  # it learns
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['name'] == 'alexnet_owt'
  assert (tmp_path / 'conv1_kernels.png').exists()


def test_bad_model_settings_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown model name 'vgg'.*"
                     r"\['alexnet', 'alexnet_owt'\]"):
    train.check_config(_renamed('vgg'))
  with pytest.raises(ValueError, match=r"fields \['use_lrn'\] that model "
                     r"'alexnet_owt' does not take"):
    steps.create_model(small_owt().model, use_lrn=False)
  with pytest.raises(ValueError, match=r"'alexnet_owt' has towers=1"):
    train.train_and_evaluate(small_owt(model_axis_size=2, batch_size=8),
                             str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # refused before any file
  with pytest.raises(ValueError, match=r'image_size >= 63'):
    alexnet_owt.AlexNetOWT(image_size=62)


def _renamed(name):
  config = small_owt()
  config.model.name = name
  return config


def test_known_models():
  assert models.names() == ['alexnet', 'alexnet_owt']
  assert models.get('alexnet_owt') is alexnet_owt.AlexNetOWT
