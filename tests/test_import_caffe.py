"""Pretrained weights in from Caffe: a caffemodel the test writes in BVLC
AlexNet's wire format, with random weights of a narrow BVLC net, imported
into the paper's two-tower net and checked against an independent numpy
forward pass of Caffe's layers (tests/numpy_caffe_alexnet.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import caffe_wire
import numpy_caffe_alexnet
from alexnet_jax import import_weights
from alexnet_jax import predict
from alexnet_jax import steps
from alexnet_jax import train
from configs import bvlc_alexnet
from conftest import photos


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


def write_caffemodel(path, blobs, norm_first=True, **options):
  """As BVLC's file: the layers of its train_val net in order (data, ReLU,
  LRN, pooling, dropout, split and loss layers without blobs between the
  weighted ones). ``norm_first=False``: CaffeNet's order (pool, then LRN)."""
  after = {'conv1': ['LRN', 'Pooling'], 'conv2': ['LRN', 'Pooling'],
           'conv5': ['Pooling'], 'fc6': ['Dropout'], 'fc7': ['Dropout'],
           'fc8': ['Split']}
  if not norm_first:
    after['conv1'] = after['conv2'] = ['Pooling', 'LRN']
  layers = [('data', 'Data', [])]
  for name, arrays in blobs.items():
    kind = 'Convolution' if name.startswith('conv') else 'InnerProduct'
    layers += [(name, kind, arrays), (f'relu_{name}', 'ReLU', [])]
    layers += [(f'{t}_{name}', t, []) for t in after.get(name, [])]
  layers += [('accuracy', 'Accuracy', []), ('loss', 'SoftmaxWithLoss', [])]
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
  # These logits reach 2,700: the split sums them in another order, so a
  # small one is off by float32 rounding of the large ones (measured 8e-4).
  atol = 1e-6 * np.abs(want).max()
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=atol)
  np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=atol)


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
  # The 1/8-width file into the full-width config.
  with pytest.raises(ValueError, match=r"'conv1.weight' has shape"):
    path = tmp_path / 'narrow.caffemodel'
    write_caffemodel(path, blobs)
    import_weights.import_weights('caffe', str(path), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
  # CaffeNet: the same blobs, but pooling before LRN.
  path = tmp_path / 'caffenet.caffemodel'
  write_caffemodel(path, blobs, norm_first=False)
  with pytest.raises(ValueError, match=r'CaffeNet.*pools before'):
    import_weights.import_weights('caffe', str(path), str(tmp_path / 'c'),
                                  config)
  assert not (tmp_path / 'c').exists()


def test_figure_3_shows_bgr_kernels_as_rgb(caffe_run, tmp_path, monkeypatch):
  """Caffe's conv1 reads BGR: the kernel grid reverses the input channels
  so that colours show as they are."""
  _, _, workdir = caffe_run
  _, state = predict.load_state(str(workdir))
  shown = []
  monkeypatch.setattr(train.figures, 'save_kernels',
                      lambda kernel, path: shown.append(kernel))
  train.save_figures(str(tmp_path), state, [], 'BGR')
  train.save_figures(str(tmp_path), state, [], 'RGB')
  kernel = np.asarray(state.params['conv1']['kernel'])  # [2, k, k, 3, n]
  np.testing.assert_array_equal(shown[0], kernel[..., ::-1, :])
  np.testing.assert_array_equal(shown[1], kernel)


def test_a_failed_write_leaves_no_workdir(caffe_run, tmp_path, monkeypatch):
  """A failure after the checkpoint is written (here: the figure) removes
  what the import wrote, so that the same command can be run again."""
  _, path, _ = caffe_run
  config = caffe_config()

  def broken(*args):
    raise OSError('disk full')

  monkeypatch.setattr(train, 'save_figures', broken)
  workdir = tmp_path / 'new'
  with pytest.raises(OSError, match='disk full'):
    import_weights.import_weights('caffe', str(path), str(workdir), config)
  assert not workdir.exists()
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'notes.txt').write_text('mine')
  with pytest.raises(OSError, match='disk full'):
    import_weights.import_weights('caffe', str(path), str(existing), config)
  assert [p.name for p in existing.iterdir()] == ['notes.txt']
  monkeypatch.undo()
  import_weights.import_weights('caffe', str(path), str(workdir), config)
  assert (workdir / 'config.json').exists()
