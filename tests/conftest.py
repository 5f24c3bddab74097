"""Shared test set-up and helpers.

Environment: quiet TensorFlow; CPU only, with four CPU devices so that the
split tests have a 2x2 mesh. Set before JAX is first imported. JAX's
persistent compilation cache in a temporary folder for the session (unless
``JAX_COMPILATION_CACHE_DIR`` is set), shared by its processes.

Fixtures:

* ``tiny_data_dir``, ``tiny_builder``: the generated tiny dataset
  (``TINY_DATASET``: 200 train / 100 validation images), built once per
  xdist worker.
* ``imagenet_archives``: writes ImageNet's manual-download files from given
  images.

Helpers (``from conftest import ...``; plain functions, so that the helpers
of a test module and tests/multihost_worker.py can call them too):

* ``small_config``: configs/imagenet.py with the small net ``SMALL_NET``.
* ``on_tiny_dataset``: a config reading ``TINY_DATASET``.
* ``scaled``: weights x20, so that every layer's gradient matters.
* ``value_and_vjp``: a function's value and gradients in one jitted call.
* ``positions``, ``image_bytes``, ``photos``, ``undecoded_examples``: test
  images whose pixels say where they are, images as file bytes, smooth
  random photos as PNG files, a split's examples with their image bytes.
"""

import io
import os
import shutil
import tarfile
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')

# TensorFlow (tensorflow_datasets, input_pipeline) is imported only where a
# helper needs it: tests/multihost_worker.py imports this file too.
import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

from configs import imagenet  # pylint: disable=g-import-not-at-top

TINY_DATASET = 'synthetic_shapes/tiny'

# The paper's net with every tensor small (width 1/8, 67x67 images: conv1
# 15x15, pool5 1x1; 10 classes); the wiring is the same.
SMALL_NET = dict(width=0.125, image_size=67, num_classes=10)

# Weights x20 (std 0.2): with the paper's N(0, 0.01) a small net's early
# gradients are ~1e-7 and would hide any error, and LRN and tanh stay
# almost linear.
WEIGHT_SCALE = 20


# --------------------------------------------------------------------------
# Configs and weights.

def small_config(*, batch_size: int | None = None,
                 model_axis_size: int | None = None,
                 **model) -> ml_collections.ConfigDict:
  """configs/imagenet.py (the paper's recipe) with the small net: model
  fields ``SMALL_NET``, then ``model`` (e.g. ``width=0.0625,
  image_size=64``, ``dropout_rate=0.0``); ``batch_size`` and
  ``model_axis_size`` set where given (else the config's)."""
  config = imagenet.get_config()
  if batch_size is not None:
    config.batch_size = batch_size
  if model_axis_size is not None:
    config.model_axis_size = model_axis_size
  config.model.update({**SMALL_NET, **model})
  return config


def on_tiny_dataset(config: ml_collections.ConfigDict, data_dir: str,
                    **input_fields) -> ml_collections.ConfigDict:
  """``config``, changed in place, reading ``TINY_DATASET`` from
  ``data_dir``; ``input_fields`` then update ``config.input`` (they may
  override the dataset too)."""
  config.input.update({'dataset': TINY_DATASET, 'data_dir': data_dir,
                       **input_fields})
  return config


def value_and_vjp(f, cotangent, *args):
  """``f(*args)`` and the gradients of ``vdot(f(*args), cotangent)`` with
  respect to each of ``args``, as one jitted call: op by op, the CPU
  lowerings' many small operations compile one by one (90 s in one test)."""
  def run(*args):
    y, vjp = jax.vjp(f, *args)
    return y, vjp(cotangent)
  return jax.jit(run)(*args)


def scaled(tree, factor: float = WEIGHT_SCALE):
  """The weights times ``factor`` (``WEIGHT_SCALE``, 20, unless given):
  ``tree`` is a params pytree, or a train state (anything with ``params``
  and ``replace``), whose params are scaled."""
  if hasattr(tree, 'params') and hasattr(tree, 'replace'):
    return tree.replace(params=scaled(tree.params, factor))
  return jax.tree.map(lambda p: factor * p, tree)


# --------------------------------------------------------------------------
# Images and examples.

def positions(height: int, width: int) -> np.ndarray:
  """An image whose pixels say where they are: red is the row, green and
  blue the column (col = 2 green + blue); uint8-safe up to 256x512."""
  assert height <= 256 and width <= 512
  y, x = np.mgrid[:height, :width]
  return np.stack([y, x // 2, x % 2], -1)


def image_bytes(array, fmt: str = 'PNG', mode: str = 'RGB',
                quality: int = 95) -> bytes:
  """``array`` (cast to uint8) as an image file: ``fmt`` 'PNG' (lossless)
  or 'JPEG' (at ``quality``), converted to ``mode`` first (e.g. 'CMYK')."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).convert(mode).save(
      buf, format=fmt, quality=quality)
  return buf.getvalue()


def photos(directory, n: int = 2, side: int = 256, seed: int = 0):
  """``n`` smooth random RGB images (8x8 noise scaled up) written as PNG
  files into ``directory``: their paths and pixels ``[n, side, side, 3]``."""
  rng = np.random.default_rng(seed)
  arrays, paths = [], []
  for i in range(n):
    coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    array = np.asarray(Image.fromarray(coarse).resize((side, side),
                                                      Image.BILINEAR))
    path = os.path.join(str(directory), f'photo{i}.png')
    with open(path, 'wb') as f:
      f.write(image_bytes(array))
    arrays.append(array)
    paths.append(path)
  return paths, np.stack(arrays)


def undecoded_examples(builder, split: str) -> list[dict]:
  """Every example of ``split`` in the builder's order, as numpy, with the
  image as its stored (encoded) bytes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return list(tfds.as_numpy(ds))


# --------------------------------------------------------------------------
# One compilation cache for the session.

# Compiles that took at least this long are kept (JAX's default is 1 s).
CACHE_MIN_COMPILE_S = '0.5'
# A size limit turns on JAX's file lock around every read and write of the
# cache, which the processes share (a suite's entries take far less).
CACHE_MAX_BYTES = str(8 << 30)


def pytest_configure(config):
  """JAX's persistent compilation cache in a new temporary folder, shared by
  the xdist workers and the runs tests start (through the environment they
  inherit) and removed at the end: many tests compile the same train and
  eval steps (the tiny config's, every run of test_train.py's), which
  otherwise compile again in every run, for 5-10 s each on the 2-core
  machine. Each session starts empty, so its time is what a clean clone
  takes; what runs is the same compiled code. A cache the environment
  already names is used as it is, and kept."""
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # the first process
    config.compilation_cache = tempfile.mkdtemp(prefix='alexnet_jax_jit_')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = config.compilation_cache
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = (
        CACHE_MIN_COMPILE_S)
    os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = CACHE_MAX_BYTES
  # jax read the environment when conftest imported it.
  jax.config.update('jax_compilation_cache_dir',
                    os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(
      os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS',
                     CACHE_MIN_COMPILE_S)))
  jax.config.update('jax_compilation_cache_max_size', int(
      os.environ.get('JAX_COMPILATION_CACHE_MAX_SIZE', CACHE_MAX_BYTES)))


def pytest_unconfigure(config):
  if hasattr(config, 'compilation_cache'):
    shutil.rmtree(config.compilation_cache, ignore_errors=True)


# --------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory) -> str:
  """A tfds data_dir with ``TINY_DATASET`` generated in it (200 train / 100
  validation images of 10 shapes), built once per xdist worker and shared
  by every test module; tests only read it."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('tfds'))
  input_pipeline.dataset_builder(TINY_DATASET, path)
  return path


@pytest.fixture(scope='session')
def tiny_builder(tiny_data_dir):
  """The tfds builder of ``TINY_DATASET`` in ``tiny_data_dir``."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.dataset_builder(TINY_DATASET, tiny_data_dir)


def _tar_add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def imagenet_archives():
  """``write(data_dir, train, validation)``: ILSVRC2012_img_train.tar (a tar
  of per-synset tars) from ``train`` ``{synset: [(file name, bytes)]}`` and
  ILSVRC2012_img_val.tar from ``validation`` ``[(file name, bytes)]``, in
  ``data_dir``'s downloads/manual, where tfds's builder looks."""
  def write(data_dir, train, validation):
    manual = os.path.join(data_dir, 'downloads', 'manual')
    os.makedirs(manual, exist_ok=True)
    with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_train.tar'),
                      'w') as train_tar:
      for synset, files in train.items():
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode='w') as per_synset:
          for name, data in files:
            _tar_add(per_synset, name, data)
        _tar_add(train_tar, f'{synset}.tar', inner.getvalue())
    with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_val.tar'),
                      'w') as val_tar:
      for name, data in validation:
        _tar_add(val_tar, name, data)
  return write
