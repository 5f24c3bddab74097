"""Reads the layers and weights of a Caffe ``.caffemodel`` file.

A caffemodel is one serialized ``caffe.NetParameter`` protocol buffer: the
net's layers, each with a name, a type and its parameter blobs (for a
convolution, the weight and the bias). Rather than depend on Caffe or on code
generated from ``caffe.proto``, this module decodes the protobuf wire format
itself, for the few fields it needs, and skips every other field unread.

Both layer encodings that Caffe has written are read: the current ``layer``
field (``LayerParameter``, type a string such as ``'Convolution'``) and the
deprecated ``layers`` field (``V1LayerParameter``, type an enum), which is
what files of 2014 such as BVLC's AlexNet hold. V1 enum values are given
Caffe's own string names, as Caffe's upgrade does. A blob's shape is its
``shape`` field or, in older files, the legacy ``num, channels, height,
width``, which always give a 4-D shape: an InnerProduct weight comes back as
``(1, 1, out, in)`` and a bias as ``(1, 1, 1, out)``; reshaping them is the
caller's business.

Field numbers, from BVLC/caffe ``src/caffe/proto/caffe.proto`` (master,
9b89154, 2020; the same numbers at 709dc15 of August 2014, the commit BVLC
AlexNet was trained with, where the V1 message was still ``LayerParameter``
and ``BlobProto`` had only the four legacy dims and ``data``/``diff``):

  ===================  ===========================  ======  ===============
  message              field                        number  encoding
  ===================  ===========================  ======  ===============
  NetParameter         layer (LayerParameter)       100     message
  NetParameter         layers (V1LayerParameter)    2       message
  LayerParameter       name                         1       string
  LayerParameter       type                         2       string
  LayerParameter       blobs (BlobProto)            7       message
  V1LayerParameter     layer (V0LayerParameter)     1       message
  V1LayerParameter     name                         4       string
  V1LayerParameter     type (enum LayerType)        5       varint
  V1LayerParameter     blobs (BlobProto)            6       message
  BlobProto            num, channels, height, width 1-4     varint (int32)
  BlobProto            data                         5       packed float
  BlobProto            shape (BlobShape)            7       message
  BlobProto            double_data                  8       packed double
  BlobShape            dim                          1       packed int64
  ===================  ===========================  ======  ===============

Shape and data follow Caffe's ``Blob::FromProto``: if any legacy dim is
present it wins over ``shape``, and a non-empty ``double_data`` wins over
``data``. Repeated numbers are read packed or unpacked, as protobuf parsers
must; a known field number with an unexpected wire type is skipped like an
unknown field, also as protobuf does. Nothing in the file is executed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Wire types (protobuf encoding spec).
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

_NET_LAYER, _NET_LAYERS_V1 = 100, 2
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_V0_LAYER, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6
_BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1

# V1LayerParameter.LayerType number -> the type string Caffe's
# UpgradeV1LayerType (src/caffe/util/upgrade_proto.cpp) gives it.
_V1_LAYER_TYPES = {
    0: '', 35: 'AbsVal', 1: 'Accuracy', 30: 'ArgMax', 2: 'BNLL', 3: 'Concat',
    37: 'ContrastiveLoss', 4: 'Convolution', 5: 'Data', 39: 'Deconvolution',
    6: 'Dropout', 32: 'DummyData', 7: 'EuclideanLoss', 25: 'Eltwise',
    38: 'Exp', 8: 'Flatten', 9: 'HDF5Data', 10: 'HDF5Output',
    28: 'HingeLoss', 11: 'Im2col', 12: 'ImageData', 13: 'InfogainLoss',
    14: 'InnerProduct', 15: 'LRN', 29: 'MemoryData',
    16: 'MultinomialLogisticLoss', 34: 'MVN', 17: 'Pooling', 26: 'Power',
    18: 'ReLU', 19: 'Sigmoid', 27: 'SigmoidCrossEntropyLoss', 36: 'Silence',
    20: 'Softmax', 21: 'SoftmaxWithLoss', 22: 'Split', 33: 'Slice',
    23: 'TanH', 24: 'WindowData', 31: 'Threshold',
}

# protobuf's own parsers stop at 100 levels; a hostile file must not reach
# Python's recursion limit instead.
_MAX_GROUP_DEPTH = 100


@dataclasses.dataclass(frozen=True, eq=False)  # arrays have no truth value
class Layer:
  """One layer of a caffemodel.

  Attributes:
    name: the layer's name, e.g. ``'conv1'``.
    type: Caffe's type string, e.g. ``'Convolution'``; for a V1 enum value
      Caffe does not know, ``'V1_TYPE_<number>'``.
    blobs: the parameter blobs in file order (weight, then bias), float32,
      each shaped as the file says (see the module docstring on legacy
      4-D shapes).
  """
  name: str
  type: str
  blobs: list[np.ndarray]


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
  """Decodes the varint at ``pos``; returns it and the position after it."""
  start, value, shift = pos, 0, 0
  while True:
    if pos >= end:
      raise ValueError(f'truncated varint at byte {start}')
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      # Bits past the 64th are dropped, as protobuf's parsers drop them.
      return value & (1 << 64) - 1, pos
    shift += 7
    if shift >= 70:
      raise ValueError(f'varint longer than 10 bytes at byte {start}')


def _signed64(value: int) -> int:
  """An int32/int64 field's value: negatives are 64-bit two's complement."""
  return value - (1 << 64) if value >= 1 << 63 else value


def _field(buf: memoryview, pos: int, end: int,
           depth: int = 0) -> tuple[int, int, int, int]:
  """Reads the field whose tag is at ``pos``.

  Returns:
    ``(number, wire_type, begin, stop)``: the value is ``buf[begin:stop]``
    (for a length-delimited field, its payload without the length). A group
    is skipped whole (``stop`` is past its end tag); an end-group tag is
    returned with an empty value for the group that reads it.
  """
  tag_at = pos
  tag, pos = _varint(buf, pos, end)
  number, wire = tag >> 3, tag & 7
  if number == 0:
    raise ValueError(f'field number 0 at byte {tag_at}')
  if wire == _VARINT:
    return number, wire, pos, _varint(buf, pos, end)[1]
  if wire in (_I64, _I32):
    size = 8 if wire == _I64 else 4
  elif wire == _LEN:
    size, pos = _varint(buf, pos, end)
  elif wire == _SGROUP:
    if depth >= _MAX_GROUP_DEPTH:
      raise ValueError(f'groups nested deeper than {_MAX_GROUP_DEPTH} at '
                       f'byte {tag_at}')
    stop = pos
    while True:
      if stop >= end:
        raise ValueError(f'group (field {number}) at byte {tag_at} has no '
                         f'end-group tag')
      inner, inner_wire, _, stop = _field(buf, stop, end, depth + 1)
      if inner_wire == _EGROUP:
        if inner != number:
          raise ValueError(f'group (field {number}) at byte {tag_at} closed '
                           f'by an end-group tag of field {inner}')
        return number, wire, pos, stop
  elif wire == _EGROUP:
    if depth == 0:
      raise ValueError(f'end-group tag (field {number}) at byte {tag_at} '
                       f'outside any group')
    return number, wire, pos, pos
  else:
    raise ValueError(f'unsupported wire type {wire} (field {number}) at '
                     f'byte {tag_at}')
  if pos + size > end:
    raise ValueError(f'field {number} at byte {tag_at} needs {size} bytes '
                     f'but its message has {end - pos} left')
  return number, wire, pos, pos + size


def _fields(buf: memoryview, start: int, end: int):
  """Yields ``(number, wire_type, begin, stop)`` for each field in a message."""
  pos = start
  while pos < end:
    number, wire, begin, pos = _field(buf, pos, end)
    yield number, wire, begin, pos


def _text(buf: memoryview, begin: int, stop: int) -> str:
  try:
    return bytes(buf[begin:stop]).decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'string at byte {begin} is not UTF-8: {e}') from None


def _numbers(buf: memoryview, begin: int, stop: int,
             dtype: str) -> np.ndarray:
  """A packed run, or one unpacked element, of little-endian floats."""
  width = np.dtype(dtype).itemsize
  if (stop - begin) % width:
    raise ValueError(f'packed {np.dtype(dtype).name} values at byte {begin} '
                     f'take {stop - begin} bytes, not a multiple of {width}')
  return np.frombuffer(buf[begin:stop], dtype)


def _shape_dims(buf: memoryview, begin: int, stop: int) -> list[int]:
  """BlobShape.dim, packed or not."""
  dims = []
  for number, wire, b, s in _fields(buf, begin, stop):
    if number != _SHAPE_DIM:
      continue
    if wire == _VARINT:
      dims.append(_signed64(_varint(buf, b, s)[0]))
    elif wire == _LEN:
      while b < s:
        value, b = _varint(buf, b, s)
        dims.append(_signed64(value))
  return dims


def _blob(buf: memoryview, begin: int, stop: int, where: str) -> np.ndarray:
  """Decodes one BlobProto into a float32 array of its shape."""
  legacy = {}
  dims = []
  floats, doubles = [], []
  for number, wire, b, s in _fields(buf, begin, stop):
    if number in _BLOB_LEGACY_DIMS and wire == _VARINT:
      legacy[number] = _signed64(_varint(buf, b, s)[0])
    elif number == _BLOB_SHAPE and wire == _LEN:
      # An embedded message given twice is merged, so the dims add up.
      dims += _shape_dims(buf, b, s)
    elif number == _BLOB_DATA and wire in (_LEN, _I32):
      floats.append(_numbers(buf, b, s, '<f4'))
    elif number == _BLOB_DOUBLE_DATA and wire in (_LEN, _I64):
      doubles.append(_numbers(buf, b, s, '<f8'))
  if legacy:
    dims = [legacy.get(n, 0) for n in _BLOB_LEGACY_DIMS]
  if any(d < 0 for d in dims):
    raise ValueError(f'{where} (at byte {begin}) has a negative dimension in '
                     f'its shape {tuple(dims)}')
  chunks = doubles if sum(c.size for c in doubles) else floats
  count = sum(c.size for c in chunks)
  if count != math.prod(dims):
    raise ValueError(f'{where} (at byte {begin}) has {count} values but its '
                     f'shape {tuple(dims)} holds {math.prod(dims)}')
  # Real files hold one packed run per blob: use it as is rather than pay
  # for a concatenation's copy of up to 150 MB (fc6).
  values = (chunks[0] if len(chunks) == 1
            else np.concatenate([np.zeros(0, np.float32), *chunks]))
  # astype copies: a native, writable array that does not keep the file's
  # bytes alive.
  return values.astype(np.float32).reshape(dims)


def _layer(buf: memoryview, begin: int, stop: int, v1: bool) -> Layer:
  """Decodes a LayerParameter, or a V1LayerParameter if ``v1``."""
  name_field, blobs_field = ((_V1_NAME, _V1_BLOBS) if v1
                             else (_LAYER_NAME, _LAYER_BLOBS))
  name, type_ = '', ''
  blob_spans = []
  for number, wire, b, s in _fields(buf, begin, stop):
    if wire == _LEN and number == name_field:
      name = _text(buf, b, s)
    elif wire == _LEN and number == blobs_field:
      blob_spans.append((b, s))
    elif not v1 and wire == _LEN and number == _LAYER_TYPE:
      type_ = _text(buf, b, s)
    elif v1 and wire == _VARINT and number == _V1_TYPE:
      value = _signed64(_varint(buf, b, s)[0])
      type_ = _V1_LAYER_TYPES.get(value, f'V1_TYPE_{value}')
    elif v1 and wire == _LEN and number == _V1_V0_LAYER:
      raise ValueError(
          f'the layer at byte {begin} is in Caffe\'s V0 format (before '
          f'March 2014), which this reader does not decode; upgrade the '
          f'file with Caffe\'s tools/upgrade_net_proto_binary first')
  # Blobs are decoded after the loop so that errors can name the layer,
  # whatever order its fields come in.
  blobs = [_blob(buf, b, s, f'blob {i} of layer {name!r} ({type_})')
           for i, (b, s) in enumerate(blob_spans)]
  return Layer(name, type_, blobs)


def read_layers(data: bytes) -> list[Layer]:
  """Reads the layers of a serialized ``caffe.NetParameter`` (a caffemodel).

  Args:
    data: the file's bytes (or any buffer of them, e.g. an ``mmap``).

  Returns:
    The layers in file order, from the ``layer`` or the V1 ``layers`` field.

  Raises:
    ValueError: if ``data`` is not a well-formed NetParameter (the message
      says what is wrong and at which byte), mixes both layer fields (Caffe
      refuses those files too), holds V0 layers, has a blob whose value
      count differs from its shape's, or holds no layer at all.
  """
  buf = memoryview(data).cast('B')
  layers = []
  seen = set()
  for number, wire, begin, stop in _fields(buf, 0, len(buf)):
    if wire == _LEN and number in (_NET_LAYER, _NET_LAYERS_V1):
      seen.add(number)
      layers.append(_layer(buf, begin, stop, v1=number == _NET_LAYERS_V1))
  if len(seen) == 2:
    raise ValueError(
        'the NetParameter has both \'layer\' (field 100) and V1 \'layers\' '
        '(field 2) entries; Caffe refuses such files as inconsistent')
  if not layers:
    raise ValueError('not a Caffe NetParameter (.caffemodel)? no layer found '
                     f'in {len(buf)} bytes')
  return layers
