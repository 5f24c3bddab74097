"""Datasets: the generated one, per-process splits, mock ImageNet/CIFAR-10."""

import hashlib

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_pipeline as ip
from alexnet_jax import parallel
from alexnet_jax import synthetic_shapes
from alexnet_jax import steps
from conftest import small_config
from conftest import undecoded_examples


def test_generated_examples_are_deterministic_jpegs(tiny_builder):
  examples = undecoded_examples(tiny_builder, 'train')
  assert len(examples) == 200
  by_label = np.bincount([ex['label'] for ex in examples], minlength=10)
  np.testing.assert_array_equal(by_label, 20)  # balanced
  sizes = set()
  for ex in examples:
    assert ex['image'][:2] == b'\xff\xd8'  # JPEG
    sizes.add(tuple(tf.io.extract_jpeg_shape(ex['image']).numpy()[:2]))
  assert len(sizes) > 50  # widths and heights vary
  assert all(72 <= min(s) and max(s) <= 144 for s in sizes)
  # Example i is draw(rng([split, i]), i % 10), whoever generates it.
  stored = {tf.io.decode_jpeg(ex['image']).numpy().tobytes()
            for ex in examples}
  for i in (0, 7, 199):
    again = synthetic_shapes.draw(np.random.default_rng([0, i]), i % 10)
    decoded = tf.io.decode_jpeg(synthetic_shapes.encode_jpeg(again)).numpy()
    assert decoded.tobytes() in stored


def digest(ex):
  return hashlib.sha1(ex['image']).hexdigest()


@pytest.mark.parametrize('split,processes', [('train', 2), ('validation', 3)])
def test_process_parts_are_disjoint_and_complete(tiny_builder, split,
                                                 processes):
  whole = [digest(ex) for ex in undecoded_examples(tiny_builder, split)]
  parts = [[digest(ex) for ex in undecoded_examples(
      tiny_builder, ip._process_split(split, i, processes))]
           for i in range(processes)]
  assert sum(len(p) for p in parts) == len(whole)
  assert set().union(*parts) == set(whole)


def test_eval_batches_cover_the_split_once_with_padding(tiny_builder):
  per_process = []
  for i in range(3):  # 100 examples: 34, 33, 33 -> 3 batches of 12 each
    batches = list(tfds.as_numpy(ip.create_split(
        tiny_builder, 'validation', global_batch_size=36, train=False,
        crop_size=64, resize=73, process_index=i, process_count=3)))
    per_process.append(batches)
    for b in batches:
      assert b['image'].shape == (12, 64, 64, 3)
      assert b['mask'].dtype == bool
  assert {len(b) for b in per_process} == {3}
  assert sum(b['mask'].sum() for p in per_process for b in p) == 100
  ten = next(iter(tfds.as_numpy(ip.create_split(
      tiny_builder, 'validation', global_batch_size=4, train=False,
      crop_size=64, resize=73, ten_crop=True))))
  assert ten['image'].shape == (4, 10, 64, 64, 3)


def first_batches(builder, n=2, **kw):
  kw = dict(dict(global_batch_size=8, train=True, crop_size=64, resize=73),
            **kw)
  return list(tfds.as_numpy(ip.create_split(builder, 'train', **kw).take(n)))


def test_train_stream_is_deterministic_per_seed_and_process(tiny_builder):
  a, b = first_batches(tiny_builder), first_batches(tiny_builder)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  other_seed = first_batches(tiny_builder, seed=1)
  assert not np.array_equal(a[0]['image'], other_seed[0]['image'])
  other_process = first_batches(tiny_builder, process_index=1,
                                process_count=2, global_batch_size=16)
  assert other_process[0]['image'].shape == (8, 64, 64, 3)
  assert not np.array_equal(a[0]['image'], other_process[0]['image'])


def test_epochs_are_reshuffled_and_a_resumed_epoch_skips_exactly(
    tiny_builder):
  # 200 train images, batches of 8: 25 steps an epoch.
  assert ip.steps_per_epoch(tiny_builder, 'train', 8) == 25
  assert ip.steps_per_epoch(tiny_builder, 'train', 16, process_count=2) == 12
  epoch0 = first_batches(tiny_builder, 25)
  labels = np.concatenate([b['label'] for b in epoch0])
  epoch1 = first_batches(tiny_builder, 25, epoch=1)
  # One epoch is one pass: every class 20 times, and a new order next time.
  np.testing.assert_array_equal(np.bincount(labels), [20] * 10)
  assert not np.array_equal(
      labels, np.concatenate([b['label'] for b in epoch1]))
  resumed = first_batches(tiny_builder, 2, skip_batches=23)
  for want, got in zip(epoch0[23:], resumed):
    np.testing.assert_array_equal(want['image'], got['image'])
  with pytest.raises(ValueError, match='fewer than one batch.*batch_size=256'):
    ip.steps_per_epoch(tiny_builder, 'train', 256)


@pytest.mark.parametrize('name,size,resize', [('imagenet2012', 224, 256),
                                              ('cifar10', 64, 73)])
def test_mock_imagenet_and_cifar10_train_batches(name, size, resize):
  with tfds.testing.mock_data(num_examples=16):
    builder = tfds.builder(name)
    batch = first_batches(builder, 1, global_batch_size=4, crop_size=size,
                          resize=resize)[0]
  assert batch['image'].shape == (4, size, size, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32
  # 0..255 pixels minus the mean, plus a small PCA offset.
  assert -140 < batch['image'].min() and batch['image'].max() < 170
  assert batch['image'].std() > 10


def test_unknown_dataset_is_refused():
  with pytest.raises(ValueError, match="'mnist'.*imagenet2012"):
    ip.dataset_builder('mnist')


def test_missing_imagenet_files_are_named(tmp_path):
  with pytest.raises(ValueError) as error:
    ip.dataset_builder('imagenet2012', data_dir=str(tmp_path))
  message = str(error.value)
  assert 'ILSVRC2012_img_train.tar' in message
  assert 'ILSVRC2012_img_val.tar' in message
  assert str(tmp_path / 'downloads' / 'manual') in message


def test_undecodable_training_images_are_skipped_not_fatal():
  good = tf.io.encode_jpeg(np.full((40, 50, 3), 90, np.uint8)).numpy()

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    images = [b'not an image' if i == 3 else good for i in range(8)]
    return tf.data.Dataset.from_tensor_slices(
        {'image': images, 'label': np.arange(8), 'file_name': [b'x'] * 8})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    builder = tfds.builder('imagenet2012')
    batch = first_batches(builder, 1, global_batch_size=7, crop_size=32,
                          resize=36, shuffle_buffer=1)[0]
    assert sorted(batch['label']) == [0, 1, 2, 4, 5, 6, 7]
  # Evaluation maps preprocess_eval over the split, which stops the run.
  with pytest.raises(tf.errors.InvalidArgumentError):
    ip.preprocess_eval(tf.constant(b'not an image'), crop_size=32, resize=36)


def test_imagenet_manual_archive_end_to_end(tmp_path, imagenet_archives):
  """A tiny archive in ImageNet's manual layout, through the real builder,
  then one split train step on what it produced."""
  rng = np.random.default_rng(0)
  jpeg = lambda: synthetic_shapes.encode_jpeg(synthetic_shapes.draw(
      rng, int(rng.integers(10))))
  synsets = ('n01440764', 'n02105855')
  imagenet_archives(
      str(tmp_path),
      {synset: [(f'{synset}_{k}.JPEG', jpeg()) for k in range(3)]
       for synset in synsets},
      [(f'ILSVRC2012_val_{i:08d}.JPEG', jpeg()) for i in range(1, 5)])

  builder = ip.dataset_builder('imagenet2012', data_dir=str(tmp_path))
  names = builder.info.features['label'].names
  train_examples = undecoded_examples(builder, 'train')
  assert sorted(names[ex['label']] for ex in train_examples) == sorted(
      synsets * 3)
  # Validation labels come from tfds's own file, by image name.
  labels_file = tfds.core.tfds_path(
      'datasets/imagenet2012/validation_labels.txt')
  want = labels_file.read_text().split()[:4]
  got = {ex['file_name'].decode(): names[ex['label']]
         for ex in undecoded_examples(builder, 'validation')}
  assert [got[f'ILSVRC2012_val_{i:08d}.JPEG'] for i in range(1, 5)] == want

  # ImageNet's 1000 classes; the smallest images the net takes.
  config = small_config(batch_size=4, width=0.0625, image_size=64,
                        num_classes=1000)
  batch = first_batches(builder, 1, global_batch_size=4, crop_size=64,
                        resize=73)[0]
  model = steps.create_model(config.model)
  mesh = parallel.make_mesh(config)
  state = parallel.create_train_state(config, model, mesh, jax.random.key(0))
  images, labels = parallel.global_batch(mesh, batch['image'], batch['label'])
  state, metrics = parallel.make_train_step(mesh, state)(
      state, images, labels, jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 1
