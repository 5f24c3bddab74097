"""Pretrained weights in from torchvision (checked against torchvision
itself), the workdir the importer writes, read by predict and evaluate, and
alexnet_owt against torchvision's AlexNet. Caffe's: test_import_caffe.py."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import evaluate
from alexnet_jax import import_weights
from alexnet_jax import predict
from alexnet_jax import steps
from alexnet_jax import train
from configs import alexnet_owt
from conftest import photos

torch = pytest.importorskip('torch')


@pytest.fixture(scope='module')
def torchvision():
  """torchvision, also next to the CPU build of torch (requirements-test.txt).

  PyPI's torchvision wheels are CUDA builds: with the CPU torch their C ops
  do not load, and torchvision 0.28's import then fails on its two
  unconditional fake-op registrations (nms, qnms). Where the ops do not
  load, declaring those two schemas first lets the pure-Python models
  import; no op is ever run.
  """
  spec = importlib.util.find_spec('torchvision')
  if spec is None:
    pytest.skip('torchvision is not installed (requirements-test.txt)')
  library = None
  try:
    torch.ops.load_library(
        glob.glob(os.path.join(os.path.dirname(spec.origin), '_C*.so'))[0])
  except (OSError, IndexError):
    library = torch.library.Library('torchvision', 'FRAGMENT')
    for op in ('nms', 'qnms'):
      library.define(f'{op}(Tensor dets, Tensor scores, float iou_threshold)'
                     f' -> Tensor')
  import torchvision as tv  # pylint: disable=g-import-not-at-top
  yield tv
  del library


# --------------------------------------------------------------------------
# torchvision.

@pytest.fixture(scope='module')
def torchvision_run(tmp_path_factory, torchvision):
  """torchvision's AlexNet with random weights, saved as its state dict and
  imported into a workdir."""
  tmp = tmp_path_factory.mktemp('torchvision')
  torch.manual_seed(0)
  net = torchvision.models.alexnet().eval()
  path = tmp / 'alexnet.pth'
  torch.save(net.state_dict(), path)
  workdir = tmp / 'run'
  import_weights.import_weights('torchvision', str(path), str(workdir))
  return net, path, workdir


def test_torchvision_logits_match_torchvision(torchvision_run, tmp_path):
  net, _, workdir = torchvision_run
  paths, _ = photos(tmp_path)
  config, state = predict.load_state(str(workdir))
  images = predict.load_images(paths, config)  # torchvision's convention
  ours = state.apply_fn({'params': state.params}, images, train=False)
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-4,
                             atol=1e-4 * float(theirs.abs().max()))
  # The features the neighbour figure uses are torchvision's fc7 outputs.
  with torch.no_grad():
    x = net.avgpool(net.features(torch.from_numpy(
        images.transpose(0, 3, 1, 2).copy()))).flatten(1)
    fc7 = net.classifier[:6](x)
  np.testing.assert_allclose(predict.features(state, images), fc7.numpy(),
                             rtol=1e-4, atol=1e-4 * float(fc7.abs().max()))


def test_torchvision_pixel_convention(torchvision_run, tmp_path):
  """predict's crops of an imported run are torchvision's normalization of
  the centre 224 of a 256 image: (rgb / 255 - mean) / std, RGB."""
  _, _, workdir = torchvision_run
  paths, arrays = photos(tmp_path, n=1)
  config = predict.load_config(str(workdir))
  assert config.model.name == 'alexnet_owt'
  got = predict.load_images(paths, config)[0]
  crop = arrays[0, 16:240, 16:240] / 255.0
  want = (crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_torchvision_workdir_is_a_run(torchvision_run, tmp_path, monkeypatch):
  """predict and evaluate read the imported workdir as a trained run's."""
  _, _, workdir = torchvision_run
  assert (workdir / 'config.json').exists()
  assert (workdir / 'conv1_kernels.png').exists()
  paths, _ = photos(tmp_path)
  top = predict.predict(str(workdir), paths, k=3)
  assert len(top) == 2 and len(top[0]) == 3
  assert all(0 <= p <= 1 for _, p in top[0])
  config = alexnet_owt.get_config()
  config.batch_size = 4
  with tfds.testing.mock_data(num_examples=4):
    monkeypatch.setattr(train, 'load_dataset',
                        lambda c: tfds.builder('imagenet2012'))
    result = evaluate.evaluate_checkpoint(config, str(workdir))
  assert result['step'] == 0
  assert np.isfinite(result['centre']['loss'])


def test_bad_torchvision_files_are_refused(torchvision_run, tmp_path,
                                           torchvision):
  _, path, _ = torchvision_run
  state = torch.load(path, weights_only=True)
  cases = {
      'missing': ({k: v for k, v in state.items()
                   if k != 'features.3.weight'},
                  r"no tensor 'features.3.weight'.*\(192, 64, 5, 5\)"),
      'shape': ({**state, 'classifier.6.weight': torch.zeros(10, 4096)},
                r"'classifier.6.weight' has shape \(10, 4096\).*"
                r"\(1000, 4096\)"),
      'architecture': (torchvision.models.squeezenet1_0().state_dict(),
                       r'does not use.*another architecture'),
      'not a state dict': (torch.zeros(3), r'not a state dict'),
  }
  for name, (content, match) in cases.items():
    bad = tmp_path / f'{name}.pth'
    torch.save(content, bad)
    workdir = tmp_path / name
    with pytest.raises(ValueError, match=match):
      import_weights.import_weights('torchvision', str(bad), str(workdir))
    assert not workdir.exists(), name  # nothing written
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'not a zip or pickle')
  with pytest.raises(ValueError, match='not a PyTorch state dict'):
    import_weights.import_weights('torchvision', str(garbage),
                                  str(tmp_path / 'g'))


def test_a_workdir_with_a_run_is_left_alone(torchvision_run):
  _, path, workdir = torchvision_run
  before = sorted(p.name for p in workdir.iterdir())
  config_json = (workdir / 'config.json').read_text()
  with pytest.raises(ValueError, match='already holds a run'):
    import_weights.import_weights('torchvision', str(path), str(workdir))
  assert sorted(p.name for p in workdir.iterdir()) == before
  assert (workdir / 'config.json').read_text() == config_json


def test_unknown_source_is_refused():
  with pytest.raises(ValueError, match=r"Unknown --source='onnx'"):
    import_weights.default_config('onnx')


def test_alexnet_owt_values_and_gradients_match_torchvision(torchvision):
  """The whole net (torchvision's widths, 10 classes), dropout off: logits
  and every parameter's gradient of the loss equal torchvision's, computed
  in float64 (torch's own float32 CPU convolutions are further from it
  than ours: their conv gradients differ by 0.1-0.8% in norm, ours by at
  most 0.04%)."""
  torch.manual_seed(1)
  net = torchvision.models.alexnet(num_classes=10).eval().double()
  config = alexnet_owt.get_config()
  config.model.num_classes = 10
  rng = np.random.default_rng(0)
  images = rng.normal(0, 1, (2, 224, 224, 3)).astype(np.float32)
  labels = np.array([3, 7])
  logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).double())
  torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)
                                    ).backward()
  weights = {k: v.detach().float().numpy()
             for k, v in net.state_dict().items()}
  grads = {k: v.grad.numpy() for k, v in net.named_parameters()}
  params = import_weights.convert(weights, 'torchvision', config)
  want_grads = import_weights.convert(grads, 'torchvision', config)
  # Computed in float64 as well, so that a float32 max-pool near-tie cannot
  # route pool1's gradient to another input than torch's float64 does (on
  # some CPUs that moved conv1's kernel gradient by 1% in norm).
  model = steps.create_model(config.model).clone(dtype=jnp.float64)

  def loss(p):
    out = model.apply({'params': p}, jnp.asarray(images, jnp.float64),
                      train=False)
    return steps.cross_entropy_loss(out, labels), out

  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    (_, ours), got_grads = jax.value_and_grad(loss, has_aux=True)(params)
  theirs = logits.detach().numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4,
                             atol=1e-4 * np.abs(theirs).max())

  # In norm: a float32 max-pool near-tie may route a few gradient entries
  # (measured: 8 of conv2's 307,200) to another input than float64 does.
  errors = jax.tree.map(lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b),
                        got_grads, want_grads)
  assert max(jax.tree.leaves(errors)) < 1e-3, errors
