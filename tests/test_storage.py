"""alexnet_jax/storage.py: the path layer, on local paths and on
TensorFlow's in-memory file system (a URL scheme that works offline)."""

import uuid

import pytest
import tensorflow as tf

from alexnet_jax import storage


@pytest.fixture
def url():
  return f'ram://{uuid.uuid4().hex}'


def test_scheme_and_absolute(tmp_path, monkeypatch):
  assert storage.scheme('gs://bucket/run') == 'gs'
  assert storage.scheme('/tmp/run') == storage.scheme('run') == ''
  monkeypatch.chdir(tmp_path)
  assert storage.absolute('run') == str(tmp_path / 'run')
  assert storage.absolute('gs://bucket/run') == 'gs://bucket/run'


def test_text_files_and_directories_on_a_url(url):
  storage.check_writable(f'{url}/a/b')  # creates it, leaves nothing in it
  assert tf.io.gfile.listdir(f'{url}/a/b') == []
  path = storage.join(url, 'a', 'b', 'metrics.jsonl')
  assert path == f'{url}/a/b/metrics.jsonl'
  storage.write_text(path, 'one\n')
  storage.write_text(path, 'two\n')  # replaces it whole
  assert storage.read_text(path) == 'two\n'
  assert tf.io.gfile.listdir(f'{url}/a/b') == ['metrics.jsonl']
  with storage.open_binary(storage.join(url, 'x.png'), 'wb') as f:
    f.write(b'\x89PNG')
  with storage.open_binary(storage.join(url, 'x.png')) as f:
    assert f.read() == b'\x89PNG'
  storage.rename(f'{url}/a', f'{url}/moved')
  assert storage.exists(f'{url}/moved/b/metrics.jsonl')
  assert not storage.exists(f'{url}/a')


def test_an_unwritable_directory_is_an_os_error(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(OSError):
    storage.check_writable(str(tmp_path / 'file' / 'run'))


def test_check_accepts_local_paths_and_gs():
  assert storage.check('/tmp/run', 'workdir') == '/tmp/run'
  assert storage.check('gs://bucket/run', 'workdir') == 'gs://bucket/run'


def test_check_names_an_unsupported_scheme_and_the_fix():
  with pytest.raises(ValueError, match=r"workdir 's3://b/run': s3:// is not "
                     r'supported .* mount the bucket'):
    storage.check('s3://b/run', 'workdir')


def test_check_names_a_tensorflow_without_gcs(monkeypatch):
  monkeypatch.setattr(tf.io.gfile, 'get_registered_schemes',
                      lambda: ['', 'file'])
  with pytest.raises(ValueError, match=r"input.data_dir 'gs://b/tfds': this "
                     r'TensorFlow cannot open gs:// paths; install'):
    storage.check('gs://b/tfds', 'input.data_dir')
