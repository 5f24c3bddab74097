"""Where runs and datasets live: local paths and URLs (``gs://bucket/run``).

Every file the project reads or writes itself (``config.json``,
``metrics.jsonl``, figures, the workdir's write check, ImageNet's manual
files) goes through these few functions, which use ``tf.io.gfile``: the
file layer TensorBoard's writer already uses, with Google Cloud Storage
built in (``gs://``), an in-memory file system for tests (``ram://``) and
more through plug-ins (``s3://``, ``hdfs://`` with ``tensorflow-io``).

Two libraries bring their own file layers: orbax writes checkpoints
(TensorStore) and tfds reads datasets; both open local paths and ``gs://``.
``check`` refuses any other URL for a workdir or data directory before any
work starts, since they would otherwise write it as a relative local path
(``./s3:/bucket/run``).
"""

from __future__ import annotations

import os
import uuid

import tensorflow as tf

# The URL schemes a run can use: the ones that orbax (TensorStore) and tfds
# open besides local paths.
URL_SCHEMES = ('gs',)


def scheme(path: str) -> str:
  """``'gs'`` for ``gs://bucket/x``; ``''`` for a local path."""
  head, sep, _ = path.partition('://')
  return head if sep else ''


def check(path: str, what: str) -> str:
  """``path`` if a run can use it as its workdir or data directory: a local
  path, or a URL of ``URL_SCHEMES`` that ``tf.io.gfile`` opens.

  Raises:
    ValueError: naming ``what`` (e.g. 'workdir'), the scheme and the fix.
  """
  kind = scheme(path)
  if kind and kind not in URL_SCHEMES:
    raise ValueError(
        f'{what} {path!r}: {kind}:// is not supported (checkpoints and '
        f'datasets open local paths and '
        f'{", ".join(s + "://" for s in URL_SCHEMES)} only); mount the bucket '
        f'(gcsfuse, s3fs, mountpoint-s3) and pass the mounted path.')
  if kind and kind not in tf.io.gfile.get_registered_schemes():
    raise ValueError(
        f'{what} {path!r}: this TensorFlow cannot open {kind}:// paths; '
        f'install the TensorFlow that requirements.txt pins (tensorflow-cpu, '
        f'which has {kind}:// built in).')
  return path


def join(*parts: str) -> str:
  return tf.io.gfile.join(*parts)


def absolute(path: str) -> str:
  """A local path made absolute (orbax needs one); URLs as they are."""
  return path if scheme(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return tf.io.gfile.exists(path)


def makedirs(path: str) -> None:
  tf.io.gfile.makedirs(path)


def check_writable(directory: str) -> None:
  """Creates ``directory`` if needed and writes (then removes) a file in it.

  Raises:
    OSError: it cannot be created or written.
  """
  try:
    makedirs(directory)
    probe = join(directory, f'.write_check_{uuid.uuid4().hex}')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('')
    tf.io.gfile.remove(probe)
  except tf.errors.OpError as e:
    raise OSError(e.message) from e


def read_text(path: str) -> str:
  with tf.io.gfile.GFile(path, 'r') as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes ``path`` whole: a reader sees the old or the new text, never a
  part (a temporary file of its own, then a rename; on GCS the upload itself
  is whole). Writers racing on one path leave one whole text.
  """
  temporary = f'{path}.{uuid.uuid4().hex}.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def read_bytes(path: str) -> bytes:
  with tf.io.gfile.GFile(path, 'rb') as f:
    return f.read()


def open_binary(path: str, mode: str = 'rb'):
  """A file object (figures are written through it)."""
  return tf.io.gfile.GFile(path, mode)


def remove(path: str) -> None:
  """Removes a file or a whole directory, if it exists."""
  if not exists(path):
    return
  if tf.io.gfile.isdir(path):
    tf.io.gfile.rmtree(path)
  else:
    tf.io.gfile.remove(path)


def rename(source: str, target: str) -> None:
  """Moves a file or a directory. On object stores, where a directory is
  only a prefix of object names, each file moves on its own."""
  if not scheme(source) or not tf.io.gfile.isdir(source):
    tf.io.gfile.rename(source, target)
    return
  for root, _, files in tf.io.gfile.walk(source):
    into = join(target, root[len(source):].strip('/'))
    makedirs(into)
    for name in files:
      tf.io.gfile.rename(join(root, name), join(into, name))
  tf.io.gfile.rmtree(source)
