"""Pretrained weights in: torchvision's AlexNet (checked against torchvision
itself) and Caffe's BVLC AlexNet (checked against an independent numpy
forward pass), and the workdir the importer writes, read by predict and
evaluate."""

import glob
import importlib.util
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import caffe_wire
import numpy_caffe_alexnet
from alexnet_jax import evaluate
from alexnet_jax import import_weights
from alexnet_jax import predict
from alexnet_jax import steps
from alexnet_jax import train
from configs import alexnet_owt
from configs import bvlc_alexnet

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


def png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='PNG')
  return out.getvalue()


def photos(tmp_path, n=2, side=256, seed=0):
  """``n`` smooth random RGB images as PNG files, and their pixels."""
  rng = np.random.default_rng(seed)
  arrays, paths = [], []
  for i in range(n):
    coarse = rng.uniform(0, 255, (8, 8, 3))
    array = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
        (side, side), Image.BILINEAR))
    path = tmp_path / f'photo{i}.png'
    path.write_bytes(png(array))
    arrays.append(array)
    paths.append(str(path))
  return paths, np.stack(arrays)


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


def test_unknown_source_and_wrong_config():
  with pytest.raises(ValueError, match=r"Unknown --source='onnx'"):
    import_weights.default_config('onnx')


# --------------------------------------------------------------------------
# Caffe.

def caffe_config(**model):
  """configs/bvlc_alexnet.py at 1/8 width and 10 classes (a fast file)."""
  config = bvlc_alexnet.get_config()
  config.model.update(width=0.125, num_classes=10, **model)
  return config


def caffe_blobs(config, seed=0) -> dict[str, list[np.ndarray]]:
  """Random BVLC-layout weights (Caffe's NCHW shapes) for ``config``'s net,
  scaled so that the LRN changes its inputs noticeably."""
  model = steps.create_model(config.model)
  f = model.tower_features()
  rng = np.random.default_rng(seed)
  shapes = {
      'conv1': (2 * f['conv1'], 3, 11, 11),
      'conv2': (2 * f['conv2'], f['conv1'], 5, 5),
      'conv3': (2 * f['conv3'], 2 * f['conv2'], 3, 3),
      'conv4': (2 * f['conv4'], f['conv3'], 3, 3),
      'conv5': (2 * f['conv5'], f['conv4'], 3, 3),
      'fc6': (2 * f['fc6'], 2 * f['conv5'] * 36),
      'fc7': (2 * f['fc7'], 2 * f['fc6']),
      'fc8': (config.model.num_classes, 2 * f['fc7']),
  }
  blobs = {}
  for name, shape in shapes.items():
    fan_in = int(np.prod(shape[1:]))
    blobs[name] = [rng.normal(0, 2.0 / np.sqrt(fan_in), shape),
                   rng.normal(0, 0.1, shape[0])]
  blobs['conv1'][0] *= 4  # conv1 outputs in the hundreds: LRN matters
  return {k: [b.astype(np.float32) for b in v] for k, v in blobs.items()}


def write_caffemodel(path, blobs, **options):
  """As BVLC's 2014 file: V1 layers, legacy 4-D blob dims, and layers
  without blobs (data, relu, norm, pool, loss) in between."""
  layers = [('data', 'Data', [])]
  for name, arrays in blobs.items():
    kind = 'Convolution' if name.startswith('conv') else 'InnerProduct'
    layers += [(name, kind, arrays), (f'relu_{name}', 'ReLU', [])]
  layers.append(('loss', 'SoftmaxWithLoss', []))
  path.write_bytes(caffe_wire.encode_net(layers, **options))


@pytest.fixture(scope='module')
def caffe_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('caffe')
  config = caffe_config()
  blobs = caffe_blobs(config)
  path = tmp / 'bvlc_alexnet.caffemodel'
  write_caffemodel(path, blobs, v1=True, legacy_dims=True)
  workdir = tmp / 'run'
  import_weights.import_weights('caffe', str(path), str(workdir), config)
  return blobs, path, workdir


def test_caffe_logits_match_numpy_caffe(caffe_run, tmp_path):
  blobs, _, workdir = caffe_run
  paths, _ = photos(tmp_path)
  config, state = predict.load_state(str(workdir))
  images = predict.load_images(paths, config)  # 227 crops, BGR minus mean
  assert images.shape == (2, 227, 227, 3)
  want = numpy_caffe_alexnet.forward(blobs, images.transpose(0, 3, 1, 2))
  got = np.asarray(state.apply_fn({'params': state.params}, images,
                                  train=False))
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
  # The towers' own LRN (the paper's) would give other logits: the check
  # sees the window cross the tower boundary.
  per_tower = state.model.clone(lrn_across_towers=False)
  other = np.asarray(per_tower.apply({'params': state.params}, images,
                                     train=False))
  assert np.abs(other - want).max() > 1e-3 * scale


def test_caffe_pixel_convention(caffe_run, tmp_path):
  """BGR, minus the (RGB-given) channel means, nothing divided."""
  _, _, workdir = caffe_run
  paths, arrays = photos(tmp_path, n=1)
  config = predict.load_config(str(workdir))
  got = predict.load_images(paths, config)[0]
  crop = arrays[0, 14:241, 14:241].astype(np.float64)  # centre 227 of 256
  want = (crop - [122.68, 116.67, 104.01])[..., ::-1]
  np.testing.assert_allclose(got, want, atol=1e-3)


def test_caffe_towers_split_over_devices(caffe_run, tmp_path):
  """Caffe's LRN across towers also holds with one tower per device."""
  _, _, workdir = caffe_run
  paths, _ = photos(tmp_path)
  config, state = predict.load_state(str(workdir))
  images = jnp.asarray(predict.load_images(paths, config))
  want = state.apply_fn({'params': state.params}, images, train=False)
  split = state.model.clone(model_axis='model')
  axes = state.model.tower_axes(state.params)
  per_tower = jax.tree.map(
      lambda p, a: p if a is None else p.reshape((2, 1) + p.shape[1:]),
      state.params, axes)
  got = jax.vmap(lambda p: split.apply({'params': p}, images, train=False),
                 in_axes=(axes,), axis_name='model')(per_tower)
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-5)


def test_current_caffe_format_imports_the_same(caffe_run, tmp_path):
  blobs, _, workdir = caffe_run
  path = tmp_path / 'new.caffemodel'
  write_caffemodel(path, blobs)  # `layer` field, BlobShape shapes
  config = caffe_config()
  got = import_weights.load('caffe', str(path), config)
  _, state = predict.load_state(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, got,
               jax.tree.map(np.asarray, state.params))


def test_bad_caffe_files_are_refused(caffe_run, tmp_path):
  blobs, _, _ = caffe_run
  config = caffe_config()
  cases = {
      'shape': ({**blobs, 'conv2': [blobs['conv2'][0][:, :5],
                                    blobs['conv2'][1]]},
                r"'conv2.weight' has shape \(32, 5, 5, 5\).*\(32, 6, 5, 5\)"),
      'missing': ({k: v for k, v in blobs.items() if k != 'fc7'},
                  r"no tensor 'fc7.weight'"),
      'renamed': ({('ip1' if k == 'fc8' else k): v for k, v in blobs.items()},
                  r"does not use: \['ip1.bias', 'ip1.weight'\]"),
  }
  for name, (content, match) in cases.items():
    path = tmp_path / f'{name}.caffemodel'
    write_caffemodel(path, content)
    workdir = tmp_path / name
    with pytest.raises(ValueError, match=match):
      import_weights.import_weights('caffe', str(path), str(workdir), config)
    assert not workdir.exists(), name
  # A torchvision-sized net's file into the paper's full-width config.
  with pytest.raises(ValueError, match=r"'conv1.weight' has shape"):
    path = tmp_path / 'narrow.caffemodel'
    write_caffemodel(path, blobs)
    import_weights.import_weights('caffe', str(path), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


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
  model = steps.create_model(config.model)

  def loss(p):
    out = model.apply({'params': p}, images, train=False)
    return steps.cross_entropy_loss(out, labels), out

  (_, ours), got_grads = jax.value_and_grad(loss, has_aux=True)(params)
  theirs = logits.detach().numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4,
                             atol=1e-4 * np.abs(theirs).max())

  # In norm: a float32 max-pool near-tie may route a few gradient entries
  # (measured: 8 of conv2's 307,200) to another input than float64 does.
  errors = jax.tree.map(lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b),
                        got_grads, want_grads)
  assert max(jax.tree.leaves(errors)) < 1e-3, errors
