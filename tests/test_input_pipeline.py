"""The paper's crops, reflections and colour augmentation, op by op."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import input_pipeline as ip
from configs import imagenet
from conftest import image_bytes
from conftest import positions


def encode(array, fmt='PNG'):
  """``array`` as a PNG or JPEG file, the string tensor the pipeline reads."""
  return tf.constant(image_bytes(array, fmt))


def unnormalize(image):
  """(row, column) of every pixel of a preprocessed ``positions`` image."""
  rgb = np.asarray(image) + np.array(ip.MEAN_RGB)
  return np.stack([rgb[..., 0], 2 * rgb[..., 1] + rgb[..., 2]], -1)


def test_window_of_a_resized_patch_by_hand():
  # 300x400: shorter side 300 -> 256, scale 300/256; centre square starts
  # at column 50. A 224 patch covers round(224 * 300 / 256) = 262 pixels.
  window = ip._resized_window(224, 256, 10, 32)(tf.constant(300),
                                                tf.constant(400))
  top, left, h, w = (int(v) for v in window)
  assert (h, w) == (262, 262)
  assert top == round(10 * 300 / 256)
  assert left == 50 + round(32 * 300 / 256)
  # The far corner stays inside the image.
  top, left, h, _ = (int(v) for v in ip._resized_window(224, 256, 32, 32)(
      tf.constant(300), tf.constant(400)))
  assert top + h <= 300 and left + h <= 50 + 300


def test_ten_crops_are_the_corners_centre_and_reflections():
  crops = unnormalize(ip.preprocess_eval(encode(positions(256, 256)),
                                         crop_size=224, ten_crop=True))
  assert crops.shape == (10, 224, 224, 2)
  starts = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
  for i, (y, x) in enumerate(starts):
    np.testing.assert_allclose(crops[i][0, 0], (y, x), atol=0.01)
    np.testing.assert_allclose(crops[i][223, 223], (y + 223, x + 223),
                               atol=0.01)
    np.testing.assert_allclose(crops[5 + i], crops[i][:, ::-1], atol=1e-4)


def test_centre_crop_of_a_non_square_image():
  # 256x320: the centre square starts at column 32, the patch 16 further in.
  image = unnormalize(ip.preprocess_eval(encode(positions(256, 320)),
                                         crop_size=224))
  assert image.shape == (224, 224, 2)
  np.testing.assert_allclose(image[0, 0], (16, 48), atol=0.01)


def test_train_crops_lie_in_the_centre_square_and_flip_half_the_time():
  image = encode(positions(256, 320))
  flips, tops, lefts = 0, set(), set()
  for i in range(200):
    out = unnormalize(ip.preprocess_train(image, tf.constant([3, i]),
                                          crop_size=224, pca_stddev=0.0))
    y, x0, x1 = out[0, 0, 0], out[0, 0, 1], out[0, 223, 1]
    flipped = x0 > x1
    flips += flipped
    left = x1 if flipped else x0
    tops.add(round(float(y)))
    lefts.add(round(float(left)))
  assert 70 <= flips <= 130
  assert min(tops) == 0 and max(tops) == 32       # 256 - 224 = 32 positions
  assert min(lefts) == 32 and max(lefts) == 64    # inside columns 32..288
  assert len(tops) > 20 and len(lefts) > 20


def test_pca_offsets_have_the_papers_statistics():
  offsets = np.stack([ip.pca_offset(tf.constant([0, i])) for i in range(3000)])
  eigvec, eigval = np.array(ip.PCA_EIGVEC), np.array(ip.PCA_EIGVAL)
  # offset = 255 * V (a * l), a ~ N(0, 0.1): covariance 255^2 V diag((0.1 l)^2) V^T
  cov = 255 ** 2 * eigvec @ np.diag((0.1 * eigval) ** 2) @ eigvec.T
  np.testing.assert_allclose(offsets.mean(0), 0, atol=0.1 * np.sqrt(cov[0, 0]))
  np.testing.assert_allclose(np.cov(offsets.T), cov, rtol=0.1,
                             atol=0.02 * cov[0, 0])
  # Same colour shift on every pixel of an image.
  image = encode(np.full((256, 256, 3), 128))
  a = ip.preprocess_train(image, tf.constant([1, 2]), crop_size=224)
  b = ip.preprocess_train(image, tf.constant([1, 2]), crop_size=224,
                          pca_stddev=0.0)
  shift = np.asarray(a - b)
  np.testing.assert_allclose(shift, shift[0, 0] * np.ones_like(shift),
                             atol=1e-3)
  assert np.abs(shift[0, 0]).max() > 0.01


def test_same_seed_same_image_and_jpeg_windows():
  rng = np.random.default_rng(0)
  photo = encode(rng.integers(0, 256, (375, 500, 3)), 'JPEG')
  a = ip.preprocess_train(photo, tf.constant([5, 6]), crop_size=224)
  b = ip.preprocess_train(photo, tf.constant([5, 6]), crop_size=224)
  c = ip.preprocess_train(photo, tf.constant([5, 7]), crop_size=224)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.dtype == tf.float32 and a.shape == (224, 224, 3)
  # Mean-subtracted 0..255 pixels plus a small colour offset.
  assert np.asarray(a).min() >= -130 and np.asarray(a).max() <= 160
  # decode_and_crop_jpeg cuts the same pixels as decoding then cropping,
  # but for chroma upsampling at the window's last column.
  window = (40, 60, 200, 210)
  cut = np.asarray(tf.io.decode_and_crop_jpeg(photo, window, channels=3))
  whole = np.asarray(tf.io.decode_jpeg(photo, channels=3))[40:240, 60:270]
  np.testing.assert_array_equal(cut[:, :-1], whole[:, :-1])


def test_another_pixel_convention_by_hand():
  """torchvision's or Caffe's inputs: (rgb - mean) / std, then the channel
  order; the same crop, reflection and colour draw as the paper's."""
  photo = encode(np.random.default_rng(2).integers(0, 256, (300, 400, 3)),
                 'JPEG')
  pixels = ip.Pixels(mean_rgb=(10.0, 20.0, 30.0), std_rgb=(2.0, 4.0, 8.0),
                     channel_order='BGR')
  seed = tf.constant([3, 4])
  rgb = np.asarray(ip.preprocess_train(photo, seed, crop_size=224)) + \
      ip.MEAN_RGB
  got = ip.preprocess_train(photo, seed, crop_size=224, pixels=pixels)
  want = ((rgb - [10.0, 20.0, 30.0]) / [2.0, 4.0, 8.0])[..., ::-1]
  np.testing.assert_allclose(got, want, atol=1e-4)
  np.testing.assert_allclose(pixels.invert(np.asarray(got)), rgb, atol=1e-3)


@pytest.mark.parametrize('field,value,match', [
    ('channel_order', 'RBG', r"Unknown input.channel_order 'RBG'"),
    ('std_rgb', (1.0, 0.0, 1.0), r'std_rgb=\(1.0, 0.0, 1.0\) must be > 0'),
    ('mean_rgb', (1.0, 2.0), r'one value per channel'),
])
def test_bad_pixel_conventions_are_named(field, value, match):
  config = imagenet.get_config()
  config.input[field] = value
  with pytest.raises(ValueError, match=match):
    ip.Pixels.from_config(config.input)


@pytest.mark.parametrize('crop', ['paper', 'inception'])
def test_crop_modes_give_the_model_size(crop):
  photo = encode(np.random.default_rng(1).integers(0, 256, (300, 200, 3)),
                 'JPEG')
  for size in (224, 227, 64):
    out = ip.preprocess_train(photo, tf.constant([0, 1]), crop_size=size,
                              resize=max(256, size), crop=crop)
    assert out.shape == (size, size, 3)


def test_unknown_crop_is_refused():
  with pytest.raises(ValueError, match="'random'.*paper.*inception"):
    ip.preprocess_train(encode(positions(64, 64)), tf.constant([0, 0]),
                        crop_size=32, crop='random')
