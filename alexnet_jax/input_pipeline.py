"""Image preprocessing of the paper (sections 2 and 4.1) in tf.data ops.

Training, the paper's way: rescale the shorter side to 256, take the centre
256x256, then a random ``crop_size`` patch (224, or 227 for the other
convention, see ``models/alexnet.py``) and a random horizontal reflection;
add the PCA colour offset; subtract the mean RGB (or apply another net's
pixel convention, ``Pixels``). Only the pixels of the final patch are
decoded: the patch is mapped back to the original image and cut out by
``tf.io.decode_and_crop_jpeg``, then reflected (still uint8) and resized,
which is the same window as resize-then-crop and much cheaper.

Evaluation: the centre patch, or the paper's ten patches (four corners and
the centre of the 256x256 image, each with its reflection).

Randomness is stateless: every random op takes a seed derived from the
example, so a pipeline is deterministic for a seed however it is
parallelized.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import storage
from alexnet_jax import synthetic_shapes  # registers its tfds builder

# tf.data only runs on the CPU here. A GPU build of TensorFlow (Colab's)
# would otherwise take most of the GPU's memory from JAX on its first op.
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow already initialized by the caller
  pass

# Section 2: the mean training image, here per channel on a 0..255 scale.
MEAN_RGB = (123.68, 116.78, 103.94)
# Section 4.1: the eigenvalues and eigenvectors (columns) of the RGB
# covariance over ImageNet, pixels on a 0..1 scale (the constants of
# fb.resnet.torch, which most public code uses), and the N(0, 0.1) draw.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
PCA_STDDEV = 0.1
# Section 2: the shorter side is rescaled to 256 and the centre 256 kept.
RESIZE = 256
CHANNEL_ORDERS = ('RGB', 'BGR')


@dataclasses.dataclass(frozen=True)
class Pixels:
  """The pixel convention a net's inputs follow: ``(rgb - mean_rgb) /
  std_rgb`` per channel on a 0..255 scale, then the channels in
  ``channel_order``. The paper's (the default): the mean RGB subtracted,
  nothing divided, RGB. Imported nets record theirs in ``config.input``
  (torchvision: its mean and std; Caffe: BGR minus its mean)."""
  mean_rgb: tuple[float, float, float] = MEAN_RGB
  std_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
  channel_order: str = 'RGB'

  @classmethod
  def from_config(cls, input_config) -> 'Pixels':
    """From ``config.input``'s ``mean_rgb``, ``std_rgb``, ``channel_order``.

    Raises:
      ValueError: not three values, a std that is not > 0, or an unknown
        channel order.
    """
    pixels = cls(tuple(float(v) for v in input_config.mean_rgb),
                 tuple(float(v) for v in input_config.std_rgb),
                 input_config.channel_order)
    if len(pixels.mean_rgb) != 3 or len(pixels.std_rgb) != 3:
      raise ValueError(
          f'input.mean_rgb={input_config.mean_rgb} and input.std_rgb='
          f'{input_config.std_rgb} must have one value per channel (R, G, B).')
    if min(pixels.std_rgb) <= 0:
      raise ValueError(f'input.std_rgb={input_config.std_rgb} must be > 0 '
                       f'(1.0 divides by nothing).')
    if pixels.channel_order not in CHANNEL_ORDERS:
      raise ValueError(f'Unknown input.channel_order '
                       f'{input_config.channel_order!r}; use one of '
                       f'{CHANNEL_ORDERS}.')
    return pixels

  def apply(self, rgb, offset=0.0):
    """Network inputs from float RGB pixels (tf or jax, channels last) plus
    ``offset`` (the PCA colour draw, broadcast over the pixels)."""
    x = (rgb + (offset - np.asarray(self.mean_rgb, np.float32))) \
        / np.asarray(self.std_rgb, np.float32)
    return x[..., ::-1] if self.channel_order == 'BGR' else x

  def invert(self, x: np.ndarray) -> np.ndarray:
    """RGB pixels on a 0..255 scale from network inputs (numpy)."""
    x = x[..., ::-1] if self.channel_order == 'BGR' else x
    return x * np.asarray(self.std_rgb) + np.asarray(self.mean_rgb)


PAPER_PIXELS = Pixels()


def _decode_window(image_bytes: tf.Tensor, window_fn) -> tf.Tensor:
  """Decodes only ``window_fn(height, width) -> (top, left, h, w)``.

  JPEG is cut while decoding; other formats (CIFAR-10's PNG) are decoded
  whole and then cut.
  """
  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    window = tf.stack(window_fn(shape[0], shape[1]))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False)
    shape = tf.shape(image)
    return tf.image.crop_to_bounding_box(
        image, *window_fn(shape[0], shape[1]))

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def _resized_window(crop_size: int, resize: int, offset_y, offset_x):
  """The original-image window of a ``crop_size`` patch at ``offset`` of the
  centre ``resize`` x ``resize`` square after the shorter side became
  ``resize``."""
  def window(height, width):
    side = tf.minimum(height, width)
    scale = tf.cast(side, tf.float32) / resize  # original px per resized px
    size = tf.maximum(1, tf.cast(tf.round(crop_size * scale), tf.int32))
    to_original = lambda v: tf.cast(tf.round(tf.cast(v, tf.float32) * scale),
                                    tf.int32)
    top = tf.minimum((height - side) // 2 + to_original(offset_y),
                     height - size)
    left = tf.minimum((width - side) // 2 + to_original(offset_x),
                      width - size)
    return top, left, size, size
  return window


def _to_float(image: tf.Tensor, crop_size: int) -> tf.Tensor:
  """Resized to ``crop_size`` square, float32 on a 0..255 scale.

  Shrinking averages the source pixels each output pixel covers ('area', an
  antialiased resize; bilinear with ``antialias=True`` measured 2x slower and
  would miss the input speed target); enlarging (CIFAR-10) is bilinear.
  """
  size = [crop_size, crop_size]
  return tf.cond(
      tf.shape(image)[0] >= crop_size,
      lambda: tf.image.resize(image, size, method='area'),
      lambda: tf.image.resize(image, size, method='bilinear'))


def pca_offset(seed: tf.Tensor, stddev: float = PCA_STDDEV) -> tf.Tensor:
  """Section 4.1: ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`` on a 0..255 scale,
  with ``a ~ N(0, stddev)`` drawn from ``seed``."""
  alpha = tf.random.stateless_normal([3], seed, stddev=stddev)
  eigvec = tf.constant(PCA_EIGVEC, tf.float32)
  return 255.0 * tf.linalg.matvec(eigvec, alpha * tf.constant(PCA_EIGVAL))


def preprocess_train(image_bytes: tf.Tensor, seed: tf.Tensor, *,
                     crop_size: int, resize: int = RESIZE,
                     crop: str = 'paper',
                     pca_stddev: float = PCA_STDDEV,
                     pixels: Pixels = PAPER_PIXELS) -> tf.Tensor:
  """One training image: float32 ``[crop_size, crop_size, 3]``, mean 0-ish.

  Args:
    image_bytes: an encoded image (JPEG, PNG, ...).
    seed: a ``[2]`` int seed; the same seed gives the same image.
    crop_size: the patch size the model takes (``image_size``).
    resize: the shorter side before the centre square (paper: 256).
    crop: 'paper' (a random ``crop_size`` patch of the centre square) or
      'inception' (a random 8%-100% area, 3/4-4/3 aspect patch, resized).
    pca_stddev: the PCA colour draw's standard deviation (0 turns it off).
    pixels: the net's pixel convention (the paper's: minus the mean RGB).
  """
  crop_seed, flip_seed, pca_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  if crop == 'paper':
    offsets = tf.random.stateless_uniform(
        [2], crop_seed, maxval=resize - crop_size + 1, dtype=tf.int32)
    window_fn = _resized_window(crop_size, resize, offsets[0], offsets[1])
  elif crop == 'inception':
    def window_fn(height, width):
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.stack([height, width, 3]),
          bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
          seed=crop_seed, min_object_covered=0.1,
          aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      return begin[0], begin[1], size[0], size[1]
  else:
    raise ValueError(f"Unknown crop {crop!r}; use 'paper' or 'inception'.")
  patch = _decode_window(image_bytes, window_fn)
  flip = tf.random.stateless_uniform([], flip_seed) < 0.5
  patch = tf.cond(flip, lambda: tf.reverse(patch, [1]), lambda: patch)
  # One pass over the pixels: colour offset and mean together.
  offset = pca_offset(pca_seed, pca_stddev) if pca_stddev else 0.0
  return pixels.apply(_to_float(patch, crop_size), offset)


def preprocess_eval(image_bytes: tf.Tensor, *, crop_size: int,
                    resize: int = RESIZE, ten_crop: bool = False,
                    pixels: Pixels = PAPER_PIXELS) -> tf.Tensor:
  """The centre patch ``[crop_size, crop_size, 3]``, or with ``ten_crop``
  the paper's ten patches ``[10, crop_size, crop_size, 3]``: the four
  corners and the centre of the ``resize`` square, then their reflections."""
  if not ten_crop:
    centre = (resize - crop_size) // 2
    window_fn = _resized_window(crop_size, resize, centre, centre)
    return pixels.apply(_to_float(_decode_window(image_bytes, window_fn),
                                  crop_size))
  square = _decode_window(image_bytes,
                          _resized_window(resize, resize, 0, 0))
  square = _to_float(square, resize)
  far, mid = resize - crop_size, (resize - crop_size) // 2
  corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  crops = [tf.image.crop_to_bounding_box(square, y, x, crop_size, crop_size)
           for y, x in corners]
  crops += [tf.image.flip_left_right(c) for c in crops]
  return pixels.apply(tf.stack(crops))


def centre_square(image_bytes: tf.Tensor, resize: int = RESIZE
                  ) -> tf.Tensor:
  """Section 2 once: the shorter side rescaled to ``resize``, the centre
  square, rounded to uint8 ``[resize, resize, 3]``: the square the ten-crop
  test above cuts its patches from (the prepared store's pixels)."""
  square = _to_float(_decode_window(image_bytes, _resized_window(
      resize, resize, 0, 0)), resize)
  return tf.saturate_cast(tf.round(square), tf.uint8)


# --------------------------------------------------------------------------
# Datasets.

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
DATASETS = ('imagenet2012', 'cifar10', synthetic_shapes.SyntheticShapes.name,
            f'{synthetic_shapes.SyntheticShapes.name}/tiny')


def dataset_builder(name: str, data_dir: str | None = None
                    ) -> tfds.core.DatasetBuilder:
  """The tfds builder of ``name``, prepared (generated, for the synthetic set).

  Raises:
    ValueError: an unknown name, or ImageNet's manual files are missing.
  """
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; use one of {DATASETS}.')
  builder = tfds.builder(name, data_dir=data_dir)
  if name == 'imagenet2012' and not builder.is_prepared():
    manual_dir = storage.join(str(builder.data_dir_root), 'downloads',
                              'manual')
    missing = [f for f in IMAGENET_MANUAL_FILES
               if not storage.exists(storage.join(manual_dir, f))]
    if missing:
      raise ValueError(
          f'ImageNet must be downloaded by hand: put {", ".join(missing)} '
          f'(from image-net.org, ILSVRC2012) in {manual_dir}, then run '
          f'again; the first run converts them (hours).')
  builder.download_and_prepare()
  return builder


def centre_crops(builder: tfds.core.DatasetBuilder, split: str, *,
                 crop_size: int, resize: int, limit: int | None = None,
                 pixels: Pixels = PAPER_PIXELS
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The first ``limit`` (default all) examples of ``split`` in file order
  as evaluation centre crops ``[n, crop_size, crop_size, 3]`` and labels,
  in memory: for small sets and figures, not for training the paper's net.
  """
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  if limit is not None:
    ds = ds.take(limit)
  ds = ds.map(lambda x: (preprocess_eval(x['image'], crop_size=crop_size,
                                         resize=resize, pixels=pixels),
                         x['label']),
              num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = zip(*tfds.as_numpy(ds.batch(1024)))
  return np.concatenate(images), np.concatenate(labels)


def _process_split(split: str, process_index: int, process_count: int):
  """This process's part of ``split``: disjoint parts that cover it."""
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count)


def part_sizes(builder, split: str, process_count: int = 1) -> list[int]:
  """Examples in each process's part of ``split``, from the dataset's
  metadata; counted by reading when it has none (tfds's mock data)."""
  parts = [_process_split(split, i, process_count)
           for i in range(process_count)]
  if builder.info.splits:
    return [builder.info.splits[p].num_examples for p in parts]
  return [int(builder.as_dataset(split=p, decoders={
      'image': tfds.decode.SkipDecoding()}).reduce(0, lambda n, _: n + 1))
          for p in parts]


def steps_per_epoch(builder: tfds.core.DatasetBuilder, split: str,
                    global_batch_size: int, process_count: int = 1) -> int:
  """Whole global batches in one pass over ``split``: the same for every
  process (each epoch leaves out its last partial batch, a different one
  every epoch since the order is reshuffled).

  Raises:
    ValueError: the split is smaller than one global batch.
  """
  return whole_batches(part_sizes(builder, split, process_count),
                       global_batch_size,
                       f'The {split!r} split of {builder.info.full_name}')


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """The rows of every global batch that each process loads.

  Raises:
    ValueError: the batch does not split evenly over the processes.
  """
  if global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} is not '
                     f'divisible by the {process_count} processes.')
  return global_batch_size // process_count


def whole_batches(sizes: list[int], global_batch_size: int, what: str
                  ) -> int:
  """Whole global batches when each of ``len(sizes)`` processes reads its
  part of ``sizes[i]`` examples: the smallest part sets it.

  Raises:
    ValueError: naming ``what``, fewer examples than one global batch.
  """
  steps = min(sizes) // (global_batch_size // len(sizes))
  if steps == 0:
    raise ValueError(
        f'{what} has {sum(sizes)} examples, fewer than one batch of '
        f'batch_size={global_batch_size}; use a smaller batch_size.')
  return steps


def create_split(builder: tfds.core.DatasetBuilder, split: str, *,
                 global_batch_size: int, train: bool, crop_size: int,
                 resize: int = RESIZE, crop: str = 'paper',
                 pca_stddev: float = PCA_STDDEV, ten_crop: bool = False,
                 pixels: Pixels = PAPER_PIXELS, seed: int = 0,
                 epoch: int = 0, skip_batches: int = 0,
                 shuffle_buffer: int = 16_384, process_index: int = 0,
                 process_count: int = 1, dtype: str = 'float32'
                 ) -> tf.data.Dataset:
  """This process's batches of ``split``, preprocessed as in the paper.

  Each process reads only its own part of the split and yields its
  ``global_batch_size // process_count`` rows of every global batch
  (``parallel.global_batch`` assembles them):

  * train: epoch ``epoch``: the part in an order shuffled for
    ``(seed, epoch)``, random crops, from batch ``skip_batches`` on (a
    resumed run skips what it has trained on without decoding it); dicts of
    ``image`` ``[b, crop, crop, 3]`` and ``label`` ``[b]`` int32.
    The stream goes on into further reshuffled passes, so that skipped
    undecodable images never leave an epoch short: take
    ``steps_per_epoch(...) - skip_batches`` batches.
  * eval: one pass in order, centre crops (``[b, 10, crop, crop, 3]`` with
    ``ten_crop``), plus ``mask`` ``[b]`` (False on padding): the last batch
    is padded, and every process yields the same number of batches.

  Undecodable images: training skips them (a warning in the log);
  evaluation stops with TensorFlow's decoding error, since skipping would
  silently change the evaluation set.

  Images are computed in float32 and cross to the devices in ``dtype``
  (the model's compute dtype: a bfloat16 or float16 net gets half the
  bytes).

  Deterministic for ``(seed, epoch)``.
  """
  local_batch = local_batch_size(global_batch_size, process_count)
  epoch_seed = _seed(seed, epoch)
  ds = builder.as_dataset(
      split=_process_split(split, process_index, process_count),
      shuffle_files=train, decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=epoch_seed))
  if train:
    ds = ds.shuffle(shuffle_buffer, seed=epoch_seed).repeat()
    ds = augmented_examples(ds, _seed(seed, epoch, process_index),
                            first=skip_batches * local_batch,
                            crop_size=crop_size, resize=resize, crop=crop,
                            pca_stddev=pca_stddev, pixels=pixels,
                            dtype=dtype)
    ds = ds.batch(local_batch, drop_remainder=True)
  else:
    ds = ds.map(lambda ex: {
        'image': tf.cast(preprocess_eval(ex['image'], crop_size=crop_size,
                                         resize=resize, ten_crop=ten_crop,
                                         pixels=pixels), dtype),
        'label': tf.cast(ex['label'], tf.int32), 'mask': True},
                num_parallel_calls=tf.data.AUTOTUNE)
    padding = _eval_padding(builder, split, local_batch, process_count,
                            process_index)
    blank = tf.data.Dataset.from_tensors(
        {'image': tf.zeros(ds.element_spec['image'].shape, dtype),
         'label': 0, 'mask': False})
    ds = ds.concatenate(blank.repeat(padding)).batch(local_batch)
  return ds.prefetch(tf.data.AUTOTUNE)


def _seed(*keys: int) -> int:
  """A 32-bit seed mixed from ``keys`` (uncorrelated for nearby keys)."""
  return int(np.random.SeedSequence(keys).generate_state(1)[0])


def augmented_examples(ds: tf.data.Dataset, stream_seed: int, *,
                       first: int = 0, crop_size: int, resize: int = RESIZE,
                       crop: str = 'paper', pca_stddev: float = PCA_STDDEV,
                       pixels: Pixels = PAPER_PIXELS, dtype: str = 'float32'
                       ) -> tf.data.Dataset:
  """``preprocess_train`` over ``{'image': encoded, 'label': int}`` examples,
  from example ``first`` on, images cast to ``dtype``.

  Example ``i`` of the stream draws from seed ``(stream_seed, i)``. An image
  that does not decode is skipped with a logged warning; the others keep
  their seeds, as those come from positions taken before decoding.
  """
  stream = tf.constant(stream_seed, tf.int64)
  ds = ds.enumerate().skip(first).map(
      lambda i, ex: {
          'image': tf.cast(preprocess_train(
              ex['image'], tf.stack([stream, i]), crop_size=crop_size,
              resize=resize, crop=crop, pca_stddev=pca_stddev,
              pixels=pixels), dtype),
          'label': tf.cast(ex['label'], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  return ds.ignore_errors(log_warning=True)


def _eval_padding(builder, split, local_batch, process_count, process_index):
  """Blank examples this process appends so that all yield whole batches,
  as many as the process with the most examples."""
  counts = part_sizes(builder, split, process_count)
  batches = -(-max(counts) // local_batch)
  return batches * local_batch - counts[process_index]
