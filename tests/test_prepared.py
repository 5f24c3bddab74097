"""The prepared store: what ``prepare`` writes (checked against the tfds
pipeline's own pixels and against PIL), the batches read from it (checked by
pixel content, as the tf.data augmentation is), the device's half of the
augmentation, and every bad start."""

import io
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax import augment
from alexnet_jax import input_pipeline as ip
from alexnet_jax import parallel
from alexnet_jax import prepare
from alexnet_jax import prepared
from configs import default
from conftest import image_bytes
from conftest import on_tiny_dataset
from conftest import positions
from conftest import undecoded_examples

RESIZE, CROP = 110, 96  # the default config's sizes


def config_for(data_dir, store_dir, fmt='raw', **input_fields):
  """The default config reading a ``fmt`` store in ``store_dir`` of the tiny
  dataset in ``data_dir``; ``input_fields`` override any input field."""
  return on_tiny_dataset(default.get_config(), data_dir, **{
      'store_dir': str(store_dir), 'store_format': fmt, 'source': 'prepared',
      **input_fields})


@pytest.fixture(scope='module')
def stores(tiny_data_dir, tmp_path_factory):
  """The tiny dataset prepared raw and as JPEG."""
  out = {}
  for fmt in prepared.FORMATS:
    config = config_for(tiny_data_dir, tmp_path_factory.mktemp(fmt), fmt)
    prepare.prepare(config)
    out[fmt] = open_store(config)
  return out


def open_store(config):
  return prepared.Store(prepared.directory(config), prepared.settings(config),
                        ('train', 'validation'))


def all_batches(batches):
  batches = list(batches)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# --------------------------------------------------------------------------
# What prepare writes.

def test_raw_squares_are_the_tfds_pipelines_ten_crop_squares(stores,
                                                             tiny_builder):
  """The store's squares, cut as the tf.data ten-crop test cuts them, are
  its patches rounded to uint8, for every validation image (sides 72-144
  resized to 110: both up- and down-scaled)."""
  examples = undecoded_examples(tiny_builder, 'validation')
  ours = all_batches(prepared.eval_batches(
      stores['raw'], 'validation', global_batch_size=20, crop_size=CROP,
      ten_crop=True))
  assert ours['mask'].all() and len(ours['label']) == len(examples) == 100
  theirs = np.stack([ip.preprocess_eval(tf.constant(ex['image']),
                                        crop_size=CROP, resize=RESIZE,
                                        ten_crop=True) for ex in examples])
  mine = np.asarray(augment.eval_images(ours['image'], CROP, True))
  np.testing.assert_array_equal(ours['label'], [ex['label'] for ex in examples])
  assert np.abs(mine - theirs).max() <= 0.5 + 1e-3
  # The centre patch alone: tf.data resizes only the patch's window, which
  # samples a little differently from cutting the resized square.
  centre = all_batches(prepared.eval_batches(
      stores['raw'], 'validation', global_batch_size=20, crop_size=CROP))
  np.testing.assert_array_equal(centre['image'], ours['image'][
      :, 7:7 + CROP, 7:7 + CROP])
  tf_centre = np.stack([ip.preprocess_eval(tf.constant(ex['image']),
                                           crop_size=CROP, resize=RESIZE)
                        for ex in examples])
  difference = np.abs(np.asarray(augment.eval_images(
      centre['image'], CROP, False)) - tf_centre)
  assert difference.mean() < 3.0


def test_jpeg_store_is_the_raw_store_up_to_jpeg_loss(stores):
  raw = all_batches(prepared.eval_batches(
      stores['raw'], 'validation', global_batch_size=50, crop_size=CROP,
      ten_crop=True))
  jpeg = all_batches(prepared.eval_batches(
      stores['jpeg'], 'validation', global_batch_size=50, crop_size=CROP,
      ten_crop=True))
  np.testing.assert_array_equal(raw['label'], jpeg['label'])
  difference = np.abs(raw['image'].astype(int) - jpeg['image'].astype(int))
  assert 0 < difference.mean() < 3.0  # quality 90


def test_the_manifest_records_the_settings_counts_and_source(stores):
  manifest = stores['jpeg'].manifest
  assert manifest['status'] == 'complete'
  assert manifest['settings'] == {'dataset': 'synthetic_shapes/tiny',
                                  'resize': RESIZE, 'format': 'jpeg',
                                  'jpeg_quality': 90}
  assert manifest['source']['dataset'].startswith('synthetic_shapes/tiny')
  assert {s: (p['source_examples'], p['examples'], p['skipped'])
          for s, p in manifest['splits'].items()} == {
              'train': (200, 200, 0), 'validation': (100, 100, 0)}
  assert manifest['skipped'] == []
  assert np.bincount(stores['jpeg'].labels('train')).tolist() == [20] * 10


def test_cmyk_png_named_jpeg_and_broken_files_of_imagenet(
    tmp_path, imagenet_archives):
  """Through tfds's real ImageNet builder: a CMYK JPEG, a PNG named .JPEG
  (under names that tfds's own list of ImageNet's oddities does not have)
  and a TIFF named .JPEG (which only PIL decodes) come out as their RGB
  pixels; a file that is no image is skipped, counted and named in the
  manifest."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:200, :300]
  rgb = np.stack([y, x * 0.8, 255 - y], -1).astype(np.uint8)

  cmyk = image_bytes(rgb, 'JPEG', 'CMYK')
  tiff = io.BytesIO()
  Image.fromarray(rgb).save(tiff, format='TIFF')
  assert Image.open(io.BytesIO(cmyk)).mode == 'CMYK'
  noise = lambda: image_bytes(
      rng.integers(0, 256, (90, 120, 3), np.uint8), 'JPEG')
  imagenet_archives(
      str(tmp_path),
      {'n01440764': [('n01440764_1.JPEG', cmyk), ('n01440764_2.JPEG', noise()),
                     ('n01440764_3.JPEG', tiff.getvalue())],
       'n02105855': [('n02105855_1.JPEG', image_bytes(rgb)),
                     ('n02105855_2.JPEG', b'not an image at all')]},
      [(f'ILSVRC2012_val_{i:08d}.JPEG', noise()) for i in range(1, 3)])
  config = default.get_config()
  config.input.update(dataset='imagenet2012', data_dir=str(tmp_path),
                      store_dir=str(tmp_path / 'store'), store_format='raw',
                      resize=100)
  manifest = prepare.prepare(config)
  assert manifest['status'] == 'complete'
  assert manifest['splits']['train']['examples'] == 4
  assert manifest['splits']['train']['skipped'] == 1
  (skipped,) = manifest['skipped']
  assert skipped['split'] == 'train'
  assert skipped['file_name'] == 'n02105855_2.JPEG'
  assert 'cannot identify image' in skipped['error']
  store = prepared.Store(prepared.directory(config),
                         prepared.settings(config), ('train',))
  squares = store.squares('train', np.arange(4))
  # The expected square: the RGB original through the same resize.
  want = np.asarray(ip.centre_square(tf.constant(image_bytes(rgb)), 100))
  by_error = sorted(np.abs(s.astype(int) - want).mean() for s in squares)
  assert by_error[:2] == [0, 0]  # the PNG and the TIFF: lossless
  assert by_error[2] < 2  # the CMYK JPEG, up to JPEG's loss
  assert by_error[3] > 40  # the noise image


def test_prepare_continues_where_it_was_interrupted(tiny_data_dir, tmp_path,
                                                    monkeypatch):
  monkeypatch.setattr(prepared, 'EXAMPLES_PER_SHARD', 64)  # 4 + 2 shards
  config = config_for(tiny_data_dir, tmp_path / 'store', 'jpeg')
  real_write = prepare.write_shard
  written = []

  def interrupted_after_two(*args):
    if len(written) == 2:
      raise KeyboardInterrupt
    written.append(args[5])
    return real_write(*args)

  monkeypatch.setattr(prepare, 'write_shard', interrupted_after_two)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(config)
  with pytest.raises(ValueError, match='incomplete.*prepare'):
    open_store(config)
  first = {n: os.path.getmtime(tmp_path / 'store' / f'{n}.json')
           for n in written}
  monkeypatch.setattr(prepare, 'write_shard', real_write)
  manifest = prepare.prepare(config)
  assert manifest['status'] == 'complete'
  assert {n: os.path.getmtime(tmp_path / 'store' / f'{n}.json')
          for n in written} == first  # not redone
  assert not [f for f in os.listdir(tmp_path / 'store') if f.endswith('.tmp')]
  # Same records as a store made in one go.
  whole = config_for(tiny_data_dir, tmp_path / 'whole', 'jpeg')
  prepare.prepare(whole)
  a, b = open_store(config), open_store(whole)
  ids = np.arange(200)
  assert a.jpegs('train', ids) == b.jpegs('train', ids)
  np.testing.assert_array_equal(a.labels('train'), b.labels('train'))


def test_two_workers_share_the_shards(tiny_data_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(prepared, 'EXAMPLES_PER_SHARD', 64)
  config = config_for(tiny_data_dir, tmp_path / 'store', 'raw')
  first = prepare.prepare(config, worker=0, num_workers=2)
  assert first['status'] == 'incomplete'
  done = sorted(f for f in os.listdir(tmp_path / 'store')
                if f.endswith('.json') and f != prepared.MANIFEST)
  assert len(done) == 3  # every other one of 6
  assert prepare.prepare(config, worker=1, num_workers=2)['status'] == (
      'complete')
  assert open_store(config).size('train') == 200


# --------------------------------------------------------------------------
# Training batches.

@pytest.fixture(scope='module')
def positions_store(tmp_path_factory):
  """Forty 256x256 position images (resize 256: the squares are the images
  themselves), raw."""
  path = str(tmp_path_factory.mktemp('positions'))
  images = [image_bytes(positions(256, 256) + [0, 0, 100 + i])
            for i in range(40)]
  wanted = {'dataset': 'positions', 'resize': 256, 'format': 'raw',
            'jpeg_quality': None}
  prepare.build(path, wanted, prepare.ListSource(
      {'train': images}, {'train': list(range(40))}), {'train': 40})
  return prepared.Store(path, wanted, ('train',))


def test_patches_lie_at_their_drawn_offsets_and_reflect_on_the_device(
    positions_store):
  batch = next(prepared.train_batches(
      positions_store, 'train', global_batch_size=40, crop_size=224, seed=3,
      pca_stddev=0.0))
  chosen = prepared.draws(40, seed=3, epoch=0, crop_size=224, resize=256,
                          pca_stddev=0.0)
  ids = batch['label']  # label i is example i
  assert sorted(ids) == list(range(40))
  image = batch['image'].astype(int)
  np.testing.assert_array_equal(image[:, 0, 0, 0], chosen['top'][ids])
  np.testing.assert_array_equal(2 * image[:, 0, 0, 1] + image[:, 0, 0, 2]
                                - 100 - ids, chosen['left'][ids])
  np.testing.assert_array_equal(batch['flip'], chosen['flip'][ids])
  out = np.asarray(augment.train_images(
      batch['image'], batch['flip'], batch['pca_alpha'])) + ip.MEAN_RGB
  flipped = batch['flip']
  np.testing.assert_allclose(out[flipped], image[flipped][:, :, ::-1],
                             atol=1e-4)
  np.testing.assert_allclose(out[~flipped], image[~flipped], atol=1e-4)


def test_draws_reach_every_offset_flip_half_and_have_the_pca_covariance():
  chosen = prepared.draws(30_000, seed=0, epoch=0, crop_size=224,
                          resize=256, pca_stddev=0.1)
  pairs = set(zip(chosen['top'].tolist(), chosen['left'].tolist()))
  assert pairs == {(y, x) for y in range(33) for x in range(33)}
  assert abs(chosen['flip'].mean() - 0.5) < 0.02
  # The device's offsets: 255 V (alpha l), alpha ~ N(0, 0.1).
  alpha = chosen['pca_alpha'][:3000]
  grey = np.full((3000, 2, 2, 3), 128, np.uint8)
  shift = np.asarray(augment.train_images(
      grey, np.zeros(3000, bool), alpha))[:, 0, 0] - (128 - np.array(
          ip.MEAN_RGB))
  eigvec, eigval = np.array(ip.PCA_EIGVEC), np.array(ip.PCA_EIGVAL)
  cov = 255 ** 2 * eigvec @ np.diag((0.1 * eigval) ** 2) @ eigvec.T
  np.testing.assert_allclose(np.cov(shift.T), cov, rtol=0.1,
                             atol=0.02 * cov[0, 0])
  # The same shift as the tf.data pipeline's for the same draw.
  tf_shift = 255.0 * np.asarray(eigvec) @ (alpha[7] * eigval)
  np.testing.assert_allclose(shift[7], tf_shift, rtol=1e-4, atol=1e-3)
  other = prepared.draws(30_000, seed=0, epoch=1, crop_size=224, resize=256,
                         pca_stddev=0.1)
  assert not np.array_equal(chosen['top'], other['top'])


class Spy:
  """Records which examples a store is asked for."""

  def __init__(self, store):
    self.store, self.read = store, []

  def __getattr__(self, name):
    method = getattr(self.store, name)
    if name not in ('squares', 'jpegs'):
      return method
    def spied(split, ids):
      self.read.extend(np.asarray(ids).tolist())
      return method(split, ids)
    return spied


@pytest.mark.parametrize('fmt', prepared.FORMATS)
def test_epochs_are_deterministic_and_a_resume_reads_only_what_is_left(
    stores, fmt):
  kw = dict(global_batch_size=16, crop_size=CROP, seed=1)
  epoch0 = list(prepared.train_batches(stores[fmt], 'train', **kw))
  assert len(epoch0) == 12  # 200 // 16
  again = list(prepared.train_batches(stores[fmt], 'train', **kw))
  for a, b in zip(epoch0, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  labels = np.concatenate([b['label'] for b in epoch0])
  epoch1 = list(prepared.train_batches(stores[fmt], 'train', epoch=1, **kw))
  assert not np.array_equal(
      labels, np.concatenate([b['label'] for b in epoch1]))
  spy = Spy(stores[fmt])
  resumed = list(prepared.train_batches(spy, 'train', skip_batches=9, **kw))
  assert len(resumed) == 3 and len(spy.read) == 3 * 16
  for want, got in zip(epoch0[9:], resumed):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])


def test_each_process_reads_only_its_part(stores):
  read = []
  for process in range(2):
    spy = Spy(stores['raw'])
    list(prepared.train_batches(spy, 'train', global_batch_size=16,
                                crop_size=CROP, process_index=process,
                                process_count=2))
    read.append(set(spy.read))
  assert read[0] <= set(range(100)) and read[1] <= set(range(100, 200))
  assert prepared.steps_per_epoch(stores['raw'], 'train', 16, 2) == 12
  # Evaluation: in order, padded, the same number of batches everywhere.
  parts = [list(prepared.eval_batches(
      stores['jpeg'], 'validation', global_batch_size=36, crop_size=CROP,
      process_index=i, process_count=3)) for i in range(3)]
  assert [len(p) for p in parts] == [3, 3, 3]
  assert sum(b['mask'].sum() for p in parts for b in p) == 100
  labels = np.concatenate([b['label'][b['mask']] for p in parts for b in p])
  np.testing.assert_array_equal(labels, stores['jpeg'].labels('validation'))
  assert all(b['image'].shape == (12, CROP, CROP, 3) for p in parts for b in p)


def test_device_augmentation_keeps_the_batch_on_its_devices():
  config = default.get_config()
  config.batch_size = 8
  mesh = parallel.make_mesh(config)  # 2x2 on the four test devices
  images, flip, alpha = parallel.global_batch(
      mesh, np.zeros((8, 16, 16, 3), np.uint8), np.zeros(8, bool),
      np.zeros((8, 3), np.float32))
  assert images.dtype == jax.numpy.uint8
  out = augment.train_images(images, flip, alpha)
  assert out.sharding.is_equivalent_to(parallel.batch_sharding(mesh), 4)
  ten = augment.eval_images(images, 12, True)
  assert ten.shape == (8, 10, 12, 12, 3)
  assert ten.sharding.is_equivalent_to(parallel.batch_sharding(mesh), 5)


OTHER_PIXELS = ip.Pixels(mean_rgb=(10.0, 20.0, 30.0), std_rgb=(2.0, 4.0, 8.0),
                         channel_order='BGR')


def in_other_pixels(paper_inputs):
  """Network inputs of the paper's convention in ``OTHER_PIXELS``, by hand."""
  rgb = paper_inputs + np.asarray(ip.MEAN_RGB)
  return ((rgb - [10.0, 20.0, 30.0]) / [2.0, 4.0, 8.0])[..., ::-1]


@pytest.mark.parametrize('pixels', [ip.PAPER_PIXELS, OTHER_PIXELS])
def test_device_ten_crops_are_the_tf_pipelines(positions_store, pixels):
  square = positions_store.squares('train', np.array([5]))[0]
  want = ip.preprocess_eval(tf.constant(image_bytes(square)), crop_size=224,
                            ten_crop=True, pixels=pixels)
  got = augment.eval_images(square[None], 224, True, pixels)[0]
  np.testing.assert_allclose(got, want, atol=1e-3)
  if pixels != ip.PAPER_PIXELS:
    paper = augment.eval_images(square[None], 224, True)[0]
    np.testing.assert_allclose(got, in_other_pixels(np.asarray(paper)),
                               atol=1e-4)


def test_device_train_patches_in_another_pixel_convention(positions_store):
  batch = next(prepared.train_batches(
      positions_store, 'train', global_batch_size=8, crop_size=224, seed=1))
  draws = batch['image'], batch['flip'], batch['pca_alpha']
  paper = np.asarray(augment.train_images(*draws))
  other = np.asarray(augment.train_images(*draws, pixels=OTHER_PIXELS))
  np.testing.assert_allclose(other, in_other_pixels(paper), atol=1e-4)


# --------------------------------------------------------------------------
# Bad input.

def test_a_store_of_other_settings_is_refused_naming_both(stores,
                                                          tiny_data_dir):
  path = stores['raw'].path
  config = config_for(tiny_data_dir, path, 'raw', resize=120)
  with pytest.raises(ValueError, match=r'resize: store 110, config 120'):
    open_store(config)
  config = config_for(tiny_data_dir, path, 'jpeg')
  with pytest.raises(ValueError, match=r"format: store 'raw', config 'jpeg'"):
    open_store(config)


def test_prepare_never_writes_into_a_store_of_other_settings(stores,
                                                             tiny_data_dir):
  path = stores['jpeg'].path
  before = {f: os.path.getmtime(os.path.join(path, f))
            for f in os.listdir(path)}
  for change in (dict(resize=120), dict(store_jpeg_quality=80),
                 dict(dataset='cifar10')):
    config = config_for(tiny_data_dir, path, 'jpeg', **change)
    with pytest.raises(ValueError, match='other settings'):
      prepare.prepare(config)
  assert {f: os.path.getmtime(os.path.join(path, f))
          for f in os.listdir(path)} == before


def test_missing_or_truncated_store_files_are_named(tiny_data_dir, tmp_path):
  config = config_for(tiny_data_dir, tmp_path / 'store', 'jpeg')
  with pytest.raises(ValueError, match='No prepared store.*alexnet_jax.prepare'):
    open_store(config)
  prepare.prepare(config)
  good = open_store(config).jpegs('train', np.arange(200))
  shard = tmp_path / 'store' / 'train-00000-of-00001.jpeg.array_record'
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{shard} has .* bytes.*prepare'):
    open_store(config)
  shard.unlink()
  with pytest.raises(ValueError, match=f'{shard} is missing'):
    open_store(config)
  # The same prepare command rewrites the damaged shard, and only it; what
  # was there is moved aside, not deleted.
  other = tmp_path / 'store' / 'validation-00000-of-00001.json'
  before = os.path.getmtime(other)
  assert prepare.prepare(config)['status'] == 'complete'
  assert open_store(config).jpegs('train', np.arange(200)) == good
  assert os.path.getmtime(other) == before
  assert (tmp_path / 'store' / 'train-00000-of-00001.json.damaged').exists()


def test_preparing_imagenet_without_its_files_names_them(tmp_path):
  config = default.get_config()
  config.input.update(dataset='imagenet2012', data_dir=str(tmp_path),
                      store_dir=str(tmp_path / 'store'))
  with pytest.raises(ValueError, match='ILSVRC2012_img_train.tar'):
    prepare.prepare(config)
  assert not (tmp_path / 'store').exists()


@pytest.mark.parametrize('change,match', [
    (dict(store_format='png'), "store_format 'png'"),
    (dict(store_jpeg_quality=0), 'store_jpeg_quality=0'),
    (dict(store_dir='s3://bucket/store'), 'local or mounted path'),
])
def test_bad_store_settings_are_named(tmp_path, change, match):
  config = config_for('', tmp_path, 'jpeg')
  config.input.update(change)
  with pytest.raises(ValueError, match=match):
    prepare.prepare(config)
  assert not os.listdir(tmp_path)


def test_a_store_without_the_configs_splits_is_named(stores, tiny_data_dir):
  config = config_for(tiny_data_dir, stores['raw'].path, 'raw',
                      eval_split='test')
  with pytest.raises(ValueError, match=r"splits \['train', 'validation'\], "
                     r"the config asks for \['train', 'test'\]"):
    prepare.prepare(config)


def test_a_shard_of_other_settings_is_written_again(tiny_data_dir, tmp_path):
  """A directory reused after its manifest was deleted: old shards of
  another resize are not taken for this store's."""
  old = config_for(tiny_data_dir, tmp_path, 'raw', resize=100)
  prepare.prepare(old)
  os.remove(tmp_path / prepared.MANIFEST)
  new = config_for(tiny_data_dir, tmp_path, 'raw')
  prepare.prepare(new)
  store = open_store(new)
  assert store.squares('train', np.array([0]))[0].shape == (RESIZE, RESIZE, 3)


def test_bad_worker_numbers_are_refused(tiny_data_dir, tmp_path):
  with pytest.raises(ValueError, match=r'worker=2 must be in \[0, num_workers=2'):
    prepare.prepare(config_for(tiny_data_dir, tmp_path / 's'), 2, 2)
  assert not (tmp_path / 's').exists()
