"""A dataset the project generates itself, so learning is observable offline.

``synthetic_shapes`` (a tfds builder; importing this module registers it):
ten classes of shapes (circle, square, triangle, diamond, pentagon, hexagon,
star, cross, ring, crescent) drawn at a random size, position (inside the
centre square that the paper's preprocessing keeps), rotation and colour
over a random background (a colour gradient with noise), saved as JPEGs of
random width and height so that the pipeline's resize and crop are exercised
as on ImageNet. Example ``i`` of a split depends only on the split
and ``i``: generation is deterministic.

Configs: ``default`` (10,000 train / 2,000 validation images, generated in
well under two minutes on a 2-core CPU) and ``tiny`` (200 / 100, for tests).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from PIL import ImageDraw

SHAPES = ('circle', 'square', 'triangle', 'diamond', 'pentagon', 'hexagon',
          'star', 'cross', 'ring', 'crescent')
MIN_SIDE, MAX_SIDE = 72, 144  # image width and height, drawn independently
JPEG_QUALITY = 90


def _polygon(n: int, radius: float, angle: float, star: bool = False):
  """Vertices of a regular polygon (or a star) around the origin."""
  points = 2 * n if star else n
  radii = [radius if k % 2 == 0 or not star else radius * 0.45
           for k in range(points)]
  return [(r * np.cos(angle + 2 * np.pi * k / points),
           r * np.sin(angle + 2 * np.pi * k / points))
          for k, r in enumerate(radii)]


def _outline(shape: str, radius: float, angle: float):
  """(kind, geometry) of ``shape`` centred at the origin."""
  sides = {'triangle': 3, 'square': 4, 'pentagon': 5, 'hexagon': 6}
  if shape in sides:
    return 'polygon', _polygon(sides[shape], radius, angle)
  if shape == 'diamond':  # a rhombus: a square squashed along one diagonal
    return 'polygon', [(x * 0.6, y) for x, y in _polygon(4, radius, 0.0)]
  if shape == 'star':
    return 'polygon', _polygon(5, radius, angle, star=True)
  if shape == 'cross':
    a, b = radius, radius * 0.33
    arm = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a),
           (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    c, s = np.cos(angle), np.sin(angle)
    return 'polygon', [(c * x - s * y, s * x + c * y) for x, y in arm]
  return shape, radius  # circle, ring, crescent: drawn from the radius


def background(rng: np.random.Generator, height: int, width: int):
  """A two-colour gradient in a random direction, with pixel noise."""
  a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  direction = rng.uniform(0, 2 * np.pi)
  y, x = np.mgrid[:height, :width]
  t = (np.cos(direction) * x / width + np.sin(direction) * y / height)
  t = (t - t.min()) / max(np.ptp(t), 1e-6)
  image = a + t[..., None] * (b - a)
  image += rng.normal(0, rng.uniform(2, 20), image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def draw(rng: np.random.Generator, label: int) -> np.ndarray:
  """One ``uint8 [height, width, 3]`` image of shape ``SHAPES[label]``."""
  height, width = rng.integers(MIN_SIDE, MAX_SIDE + 1, 2)
  back = background(rng, height, width)
  image = Image.fromarray(back)
  canvas = ImageDraw.Draw(image)
  # Inside the centre square, which is what the paper's preprocessing keeps.
  side = min(height, width)
  radius = rng.uniform(0.15, 0.4) * side
  cy = (height - side) / 2 + rng.uniform(radius, side - radius)
  cx = (width - side) / 2 + rng.uniform(radius, side - radius)
  colour = tuple(int(c) for c in rng.integers(0, 256, 3))
  kind, geometry = _outline(SHAPES[label], radius, rng.uniform(0, 2 * np.pi))
  box = lambda r: (cx - r, cy - r, cx + r, cy + r)
  if kind == 'polygon':
    canvas.polygon([(cx + x, cy + y) for x, y in geometry], fill=colour)
  elif kind == 'circle':
    canvas.ellipse(box(radius), fill=colour)
  elif kind == 'ring':
    canvas.ellipse(box(radius), outline=colour, width=max(2, int(radius / 3)))
  else:  # crescent: a disc with the background put back over a bite
    canvas.ellipse(box(radius), fill=colour)
    bite = rng.uniform(0, 2 * np.pi)
    bx, by = cx + 0.5 * radius * np.cos(bite), cy + 0.5 * radius * np.sin(bite)
    mask = Image.new('L', image.size)
    ImageDraw.Draw(mask).ellipse((bx - 0.8 * radius, by - 0.8 * radius,
                                  bx + 0.8 * radius, by + 0.8 * radius),
                                 fill=255)
    image.paste(Image.fromarray(back), mask=mask)
  return np.asarray(image)


def encode_jpeg(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=JPEG_QUALITY)
  return buf.getvalue()


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  num_train: int = 10_000
  num_validation: int = 2_000


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on noisy gradients, ten classes, JPEG, varying sizes."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', description='10,000 / 2,000 images.'),
      ShapesConfig(name='tiny', description='200 / 100 images, for tests.',
                   num_train=200, num_validation=100),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=SHAPES),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {
        'train': self._generate_examples(0, self.builder_config.num_train),
        'validation': self._generate_examples(
            1, self.builder_config.num_validation),
    }

  def _generate_examples(self, split_seed: int, count: int):
    for i in range(count):
      rng = np.random.default_rng([split_seed, i])
      label = i % len(SHAPES)  # balanced classes
      yield i, {'image': io.BytesIO(encode_jpeg(draw(rng, label))),
                'label': label}
