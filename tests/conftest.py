"""Shared test set-up: quiet TensorFlow; CPU only, with four CPU devices so
that the split tests have a 2x2 mesh. Set before JAX is first imported.

Fixtures: ``imagenet_archives``, which writes ImageNet's manual-download
files from given images."""

import io
import os
import tarfile

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')


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
