"""Writes Caffe ``.caffemodel`` bytes for tests: a hand-written protobuf
encoder for the part of caffe.proto that ``alexnet_jax.caffe_proto`` reads.

Written from the protobuf encoding spec and BVLC/caffe's caffe.proto
independently of the reader, so a round trip checks one against the other
(and ``test_caffe_proto`` checks both against google.protobuf). Field
numbers: NetParameter.layer 100, .layers (V1) 2; LayerParameter name 1,
type 2, blobs 7; V1LayerParameter name 4, type 5 (enum), blobs 6; BlobProto
num/channels/height/width 1-4, data 5, shape 7, double_data 8; BlobShape
dim 1.
"""

import struct

import numpy as np

# V1LayerParameter.LayerType numbers (caffe.proto) of the layer types in
# BVLC AlexNet's train/val and deploy nets.
V1_TYPE_NUMBERS = {
    'Accuracy': 1, 'Concat': 3, 'Convolution': 4, 'Data': 5, 'Dropout': 6,
    'InnerProduct': 14, 'LRN': 15, 'Pooling': 17, 'ReLU': 18, 'Softmax': 20,
    'SoftmaxWithLoss': 21, 'Split': 22,
}

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
  """Base-128, low group first; a negative int as its 64-bit complement."""
  if value < 0:
    value += 1 << 64
  out = bytearray()
  while value >= 0x80:
    out.append(0x80 | value & 0x7F)
    value >>= 7
  out.append(value)
  return bytes(out)


def key(number: int, wire_type: int) -> bytes:
  return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
  return key(number, LEN) + varint(len(payload)) + payload


def unknown_fields() -> bytes:
  """One field of each wire type under numbers no message here uses (the
  group holds a nested group), then numbers that messages here do use, but
  with a wire type none of them reads those numbers with: protobuf parsers
  must skip those as unknown too."""
  group = (key(905, SGROUP) + key(1, VARINT) + varint(7) + key(2, SGROUP)
           + key(2, EGROUP) + key(905, EGROUP))
  return (key(901, VARINT) + varint(-3)
          + key(902, I64) + struct.pack('<d', 1.5)
          + length_delimited(903, b'not read')
          + key(904, I32) + struct.pack('<f', 2.5)
          + group
          + key(1, I32) + struct.pack('<f', 3.5)
          + key(5, I64) + struct.pack('<d', 4.5)
          + key(7, I64) + struct.pack('<d', 5.5))


def encode_blob(array, *, packed=True, legacy_dims=False, double=False,
                noise=False) -> bytes:
  """A BlobProto holding ``array`` (row-major, as Caffe stores blobs).

  Args:
    array: the values; its shape is written too.
    packed: repeated numbers as one packed run, or one field each.
    legacy_dims: the shape as num/channels/height/width (``array`` at most
      4-D, padded with leading 1s as Caffe's old 4-D blobs were) instead
      of a BlobShape.
    double: the values in ``double_data`` instead of float ``data``.
    noise: unknown fields around and between the known ones.
  """
  array = np.asarray(array)
  pad = unknown_fields() if noise else b''
  if legacy_dims:
    if array.ndim > 4:
      raise ValueError(f'legacy dims are 4-D; got shape {array.shape}')
    dims = (1,) * (4 - array.ndim) + array.shape
    shape = b''.join(key(n, VARINT) + varint(d)
                     for n, d in zip((1, 2, 3, 4), dims))
  elif packed:
    shape = length_delimited(
        7, pad + length_delimited(1, b''.join(map(varint, array.shape))))
  else:
    shape = length_delimited(
        7, b''.join(pad + key(1, VARINT) + varint(d) for d in array.shape))
  number, wire, fmt = (8, I64, '<f8') if double else (5, I32, '<f4')
  values = array.astype(fmt).ravel()
  if packed:
    data = length_delimited(number, values.tobytes())
  else:
    data = b''.join(key(number, wire) + v.tobytes() for v in values)
  return pad + shape + pad + data + pad


def encode_layer(name: str, type_: str | int, blobs, *, v1=False,
                 noise=False, **blob_options) -> bytes:
  """A LayerParameter, or a V1LayerParameter if ``v1`` (then ``type_`` may
  be a raw enum number); ``blob_options`` go to :func:`encode_blob`."""
  pad = unknown_fields() if noise else b''
  encoded = [encode_blob(b, noise=noise, **blob_options) for b in blobs]
  if v1:
    number = type_ if isinstance(type_, int) else V1_TYPE_NUMBERS[type_]
    fields = [length_delimited(4, name.encode()),
              key(5, VARINT) + varint(number)]
    fields += [length_delimited(6, b) for b in encoded]
  else:
    fields = [length_delimited(1, name.encode()),
              length_delimited(2, type_.encode())]
    fields += [length_delimited(7, b) for b in encoded]
  return pad + b''.join(f + pad for f in fields)


def encode_net(layers, *, v1=False, noise=False, **blob_options) -> bytes:
  """A NetParameter (the contents of a .caffemodel).

  Args:
    layers: ``(name, type, [arrays])`` per layer, in order.
    v1: the deprecated ``layers`` field (V1LayerParameter, enum types), as
      2014 files such as BVLC AlexNet's have it, instead of ``layer``.
    noise: unknown fields of every wire type around and between the known
      fields of every message.
    **blob_options: ``packed``, ``legacy_dims``, ``double`` for
      :func:`encode_blob`.
  """
  pad = unknown_fields() if noise else b''
  return pad + b''.join(
      length_delimited(2 if v1 else 100,
                       encode_layer(name, type_, blobs, v1=v1, noise=noise,
                                    **blob_options)) + pad
      for name, type_, blobs in layers)
