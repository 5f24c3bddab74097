"""caffe_proto's reader against the test encoder, google.protobuf and bad
input; the numpy reference AlexNet's layers against plain loops."""

import math

import caffe_wire as wire
import numpy as np
import numpy_caffe_alexnet as ref
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

from alexnet_jax import caffe_proto


def _sample_layers(rng):
  """A small net with AlexNet's layer kinds: some with blobs, some without."""
  return [
      ('data', 'Data', []),
      ('conv1', 'Convolution', [rng.normal(size=(4, 3, 5, 5)),
                                rng.normal(size=4)]),
      ('relu1', 'ReLU', []),
      ('norm1', 'LRN', []),
      ('pool1', 'Pooling', []),
      ('fc6', 'InnerProduct', [rng.normal(size=(6, 10)), rng.normal(size=6)]),
      ('drop6', 'Dropout', []),
      ('loss', 'SoftmaxWithLoss', []),
  ]


def _legacy_shape(shape):
  return (1,) * (4 - len(shape)) + tuple(shape)


def _one_layer(*blob_fields, name=b'conv1', type_=b'Convolution'):
  layer = (wire.length_delimited(1, name) + wire.length_delimited(2, type_)
           + b''.join(wire.length_delimited(7, b) for b in blob_fields))
  return wire.length_delimited(100, layer)


def _check_layers(layers, expected, legacy_dims=False):
  assert [(l.name, l.type) for l in layers] == [
      (name, type_) for name, type_, _ in expected]
  for layer, (_, _, blobs) in zip(layers, expected):
    assert len(layer.blobs) == len(blobs)
    for got, want in zip(layer.blobs, blobs):
      shape = _legacy_shape(want.shape) if legacy_dims else want.shape
      assert got.dtype == np.float32 and got.shape == shape
      np.testing.assert_array_equal(got, want.astype(np.float32).reshape(shape))


@pytest.mark.parametrize('v1', [False, True], ids=['layer', 'v1'])
@pytest.mark.parametrize('packed', [True, False], ids=['packed', 'unpacked'])
@pytest.mark.parametrize('legacy_dims', [False, True], ids=['shape', 'legacy'])
@pytest.mark.parametrize('double', [False, True], ids=['float', 'double'])
@pytest.mark.parametrize('noise', [False, True], ids=['plain', 'noise'])
def test_round_trip(v1, packed, legacy_dims, double, noise):
  expected = _sample_layers(np.random.default_rng(0))
  data = wire.encode_net(expected, v1=v1, packed=packed,
                         legacy_dims=legacy_dims, double=double, noise=noise)
  _check_layers(caffe_proto.read_layers(data), expected, legacy_dims)


def test_blobs_are_independent_writable_copies():
  data = bytearray(wire.encode_net([('fc', 'InnerProduct', [np.ones(3)])]))
  blob, = caffe_proto.read_layers(data)[0].blobs
  data[:] = bytes(len(data))
  blob += 1
  np.testing.assert_array_equal(blob, [2, 2, 2])


def test_field_order_does_not_matter():
  """The name may follow the blobs; errors still name the layer."""
  blob = wire.encode_blob(np.arange(6.0).reshape(2, 3))
  late_name = wire.length_delimited(2, b'ReLU') + wire.length_delimited(
      1, b'late')
  got, = caffe_proto.read_layers(wire.length_delimited(
      100, wire.length_delimited(7, blob) + late_name))
  assert (got.name, got.type) == ('late', 'ReLU')
  np.testing.assert_array_equal(got.blobs[0], np.arange(6.0).reshape(2, 3))
  short_blob = wire.length_delimited(7, wire.length_delimited(1, b'\x02'))
  with pytest.raises(ValueError, match="layer 'late' \\(ReLU\\)"):
    caffe_proto.read_layers(wire.length_delimited(
        100, wire.length_delimited(7, short_blob) + late_name))


def test_v1_type_names():
  """Every enum number the encoder knows (typed from caffe.proto) gets the
  name Caffe's upgrade gives it; an unknown number keeps its number."""
  names = list(wire.V1_TYPE_NUMBERS) + [99]
  data = wire.encode_net([(f'l{i}', t, []) for i, t in enumerate(names)],
                         v1=True)
  types = [l.type for l in caffe_proto.read_layers(data)]
  assert types == list(wire.V1_TYPE_NUMBERS) + ['V1_TYPE_99']


def test_legacy_dims_win_over_shape():
  """As in Caffe's Blob::FromProto: any legacy dim present means a 4-D
  (num, channels, height, width) shape, whatever BlobShape says."""
  blob = (wire.length_delimited(7, wire.length_delimited(1, wire.varint(6)))
          + b''.join(wire.key(n, wire.VARINT) + wire.varint(d)
                     for n, d in zip((1, 2, 3, 4), (1, 1, 2, 3)))
          + wire.length_delimited(5, np.arange(6, dtype='<f4').tobytes()))
  got, = caffe_proto.read_layers(_one_layer(blob))[0].blobs
  np.testing.assert_array_equal(got, np.arange(6).reshape(1, 1, 2, 3))


def test_absent_legacy_dims_are_zero():
  """Caffe reads an absent num/channels/height/width as 0."""
  blob = wire.key(3, wire.VARINT) + wire.varint(2)
  got, = caffe_proto.read_layers(_one_layer(blob))[0].blobs
  assert got.shape == (0, 0, 2, 0)


def test_double_data_wins_over_data():
  """Also as in Blob::FromProto, when a blob has both."""
  blob = (wire.length_delimited(7, wire.length_delimited(1, wire.varint(3)))
          + wire.length_delimited(5, np.zeros(3, '<f4').tobytes())
          + wire.length_delimited(8, np.arange(3, dtype='<f8').tobytes()))
  got, = caffe_proto.read_layers(_one_layer(blob))[0].blobs
  np.testing.assert_array_equal(got, [0, 1, 2])


# --- Independence: the same messages through google.protobuf. ---

# The V1 enum as caffe.proto spells it, with the name Caffe's upgrade
# (upgrade_proto.cpp) gives each: typed again here, apart from both the
# reader's and the encoder's tables.
_CAFFE_V1_ENUM = {
    'NONE': (0, ''), 'ACCURACY': (1, 'Accuracy'), 'CONCAT': (3, 'Concat'),
    'CONVOLUTION': (4, 'Convolution'), 'DATA': (5, 'Data'),
    'DROPOUT': (6, 'Dropout'), 'INNER_PRODUCT': (14, 'InnerProduct'),
    'LRN': (15, 'LRN'), 'POOLING': (17, 'Pooling'), 'RELU': (18, 'ReLU'),
    'SOFTMAX': (20, 'Softmax'), 'SOFTMAX_LOSS': (21, 'SoftmaxWithLoss'),
    'SPLIT': (22, 'Split'),
}
_TYPE_TO_ENUM = {name: enum for enum, (_, name) in _CAFFE_V1_ENUM.items()}


def _net_class(packed):
  """google.protobuf's NetParameter for the subset of caffe.proto we read,
  built from a FileDescriptorProto; ``packed`` as caffe.proto has it."""
  fd = descriptor_pb2.FileDescriptorProto(
      name=f'caffe_subset_{packed}.proto', package='caffe_subset',
      syntax='proto2')
  t = descriptor_pb2.FieldDescriptorProto
  optional, repeated = t.LABEL_OPTIONAL, t.LABEL_REPEATED

  def message(name, *fields):
    proto = fd.message_type.add(name=name)
    for field_name, number, label, type_, type_name in fields:
      field = proto.field.add(name=field_name, number=number, label=label,
                              type=type_)
      if type_name:
        field.type_name = f'.caffe_subset.{type_name}'
      if label == repeated and type_ not in (t.TYPE_MESSAGE, t.TYPE_STRING):
        field.options.packed = packed
    return proto

  message('BlobShape', ('dim', 1, repeated, t.TYPE_INT64, None))
  message('BlobProto',
          ('num', 1, optional, t.TYPE_INT32, None),
          ('channels', 2, optional, t.TYPE_INT32, None),
          ('height', 3, optional, t.TYPE_INT32, None),
          ('width', 4, optional, t.TYPE_INT32, None),
          ('data', 5, repeated, t.TYPE_FLOAT, None),
          ('shape', 7, optional, t.TYPE_MESSAGE, 'BlobShape'),
          ('double_data', 8, repeated, t.TYPE_DOUBLE, None))
  message('LayerParameter',
          ('name', 1, optional, t.TYPE_STRING, None),
          ('type', 2, optional, t.TYPE_STRING, None),
          ('blobs', 7, repeated, t.TYPE_MESSAGE, 'BlobProto'))
  v1 = message('V1LayerParameter',
               ('name', 4, optional, t.TYPE_STRING, None),
               ('type', 5, optional, t.TYPE_ENUM,
                'V1LayerParameter.LayerType'),
               ('blobs', 6, repeated, t.TYPE_MESSAGE, 'BlobProto'))
  enum = v1.enum_type.add(name='LayerType')
  for enum_name, (number, _) in _CAFFE_V1_ENUM.items():
    enum.value.add(name=enum_name, number=number)
  message('NetParameter',
          ('layers', 2, repeated, t.TYPE_MESSAGE, 'V1LayerParameter'),
          ('layer', 100, repeated, t.TYPE_MESSAGE, 'LayerParameter'))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fd)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName('caffe_subset.NetParameter'))


@pytest.fixture(scope='module')
def net_classes():
  return {packed: _net_class(packed) for packed in (True, False)}


def _google_net(net_class, layers, v1, legacy_dims, double):
  net = net_class()
  for name, type_, blobs in layers:
    layer = net.layers.add() if v1 else net.layer.add()
    layer.name = name
    if v1:
      layer.type = _CAFFE_V1_ENUM[_TYPE_TO_ENUM[type_]][0]
    else:
      layer.type = type_
    for array in blobs:
      blob = layer.blobs.add()
      if legacy_dims:
        (blob.num, blob.channels, blob.height,
         blob.width) = _legacy_shape(array.shape)
      else:
        blob.shape.dim.extend(array.shape)
      (blob.double_data if double else blob.data).extend(array.ravel())
  return net


@pytest.mark.parametrize('v1', [False, True], ids=['layer', 'v1'])
@pytest.mark.parametrize('packed', [True, False], ids=['packed', 'unpacked'])
@pytest.mark.parametrize('legacy_dims', [False, True], ids=['shape', 'legacy'])
@pytest.mark.parametrize('double', [False, True], ids=['float', 'double'])
def test_reads_google_protobuf_bytes(net_classes, v1, packed, legacy_dims,
                                     double):
  expected = _sample_layers(np.random.default_rng(1))
  net = _google_net(net_classes[packed], expected, v1, legacy_dims, double)
  layers = caffe_proto.read_layers(net.SerializeToString())
  _check_layers(layers, expected, legacy_dims)


@pytest.mark.parametrize('v1', [False, True], ids=['layer', 'v1'])
@pytest.mark.parametrize('packed', [True, False], ids=['packed', 'unpacked'])
@pytest.mark.parametrize('legacy_dims', [False, True], ids=['shape', 'legacy'])
@pytest.mark.parametrize('double', [False, True], ids=['float', 'double'])
def test_google_protobuf_reads_encoder_bytes(net_classes, v1, packed,
                                             legacy_dims, double):
  """With unknown fields everywhere, which google.protobuf must skip too."""
  expected = _sample_layers(np.random.default_rng(2))
  data = wire.encode_net(expected, v1=v1, packed=packed,
                         legacy_dims=legacy_dims, double=double, noise=True)
  net = net_classes[packed].FromString(data)
  layers = net.layers if v1 else net.layer
  assert len(net.layer if v1 else net.layers) == 0
  assert len(layers) == len(expected)
  for layer, (name, type_, blobs) in zip(layers, expected):
    assert layer.name == name
    assert layer.type == (_CAFFE_V1_ENUM[_TYPE_TO_ENUM[type_]][0] if v1
                          else type_)
    for blob, array in zip(layer.blobs, blobs, strict=True):
      if legacy_dims:
        assert (blob.num, blob.channels, blob.height,
                blob.width) == _legacy_shape(array.shape)
        assert not blob.HasField('shape')
      else:
        assert tuple(blob.shape.dim) == array.shape
      values = blob.double_data if double else blob.data
      assert len(blob.data if double else blob.double_data) == 0
      np.testing.assert_array_equal(
          values, array.ravel().astype(np.float64 if double else np.float32))


def test_repeated_shape_merges_like_google_protobuf(net_classes):
  """A message field given twice is merged: BlobShape's dims add up."""
  blob_class = type(net_classes[True]().layer.add().blobs.add())
  blob_bytes = (wire.length_delimited(5, np.arange(6, dtype='<f4').tobytes())
                + wire.length_delimited(7, wire.length_delimited(1, b'\x02'))
                + wire.length_delimited(7, wire.length_delimited(1, b'\x03')))
  assert tuple(blob_class.FromString(blob_bytes).shape.dim) == (2, 3)
  got, = caffe_proto.read_layers(_one_layer(blob_bytes))[0].blobs
  np.testing.assert_array_equal(got, np.arange(6).reshape(2, 3))


# --- Bad input. ---


@pytest.mark.parametrize('data, match', [
    pytest.param(b'', r'not a Caffe NetParameter \(\.caffemodel\)\? no '
                 r'layer found in 0 bytes', id='empty'),
    pytest.param(wire.length_delimited(1, b'AlexNet'),
                 'no layer found in 9 bytes', id='no_layers'),
    pytest.param(b'\x08\xff', 'truncated varint at byte 1', id='varint_cut'),
    pytest.param(b'\x08' + b'\xff' * 11,
                 'varint longer than 10 bytes at byte 1', id='varint_long'),
    pytest.param(wire.key(100, wire.LEN) + wire.varint(50) + b'abc',
                 'field 100 at byte 0 needs 50 bytes but its message has 3 '
                 'left', id='length_past_end'),
    pytest.param(b'\x0d\x00\x00', 'field 1 at byte 0 needs 4 bytes',
                 id='fixed32_cut'),
    pytest.param(wire.key(3, 6),
                 r'unsupported wire type 6 \(field 3\) at byte 0',
                 id='wire_type_6'),
    pytest.param(b'\x08\x01' + wire.key(9, 7),
                 'unsupported wire type 7 .* at byte 2', id='wire_type_7'),
    pytest.param(b'\x00\x01', 'field number 0 at byte 0', id='field_0'),
    pytest.param(wire.key(5, wire.EGROUP),
                 'end-group tag .* at byte 0 outside any', id='stray_egroup'),
    pytest.param(wire.key(5, wire.SGROUP) + b'\x08\x01',
                 r'group \(field 5\) at byte 0 has no end-group tag',
                 id='open_group'),
    pytest.param(wire.key(5, wire.SGROUP) + wire.key(6, wire.EGROUP),
                 'closed by an end-group tag of field 6', id='wrong_egroup'),
    pytest.param(wire.key(5, wire.SGROUP) * 200,
                 'groups nested deeper than 100', id='deep_groups'),
    pytest.param(_one_layer(wire.encode_blob(np.zeros((2, 3)))[:-4]),
                 'field 5 at byte 31 needs 24 bytes but its message has 20 '
                 'left', id='blob_cut'),
    pytest.param(
        _one_layer(wire.length_delimited(7, wire.length_delimited(1, b'\x02'))
                   + wire.length_delimited(5, b'\x00' * 6)),
        'packed float32 values at byte 32 take 6 bytes, not a multiple of '
        '4',
        id='packed_floats_cut'),
    pytest.param(_one_layer(name=b'\xff'), 'string at byte 5 is not UTF-8',
                 id='name_not_utf8'),
    # What a user may pass by mistake.
    pytest.param(b'name: "AlexNet"\nlayer {\n  name: "conv1"\n',
                 r'unsupported wire type 6 \(field 13\) at byte 0',
                 id='prototxt'),
    pytest.param(b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR', 'at byte 10',
                 id='png'),
    pytest.param(np.random.default_rng(0).bytes(1000), r'at byte \d+',
                 id='random_bytes'),
])
def test_bad_input(data, match):
  with pytest.raises(ValueError, match=match):
    caffe_proto.read_layers(data)


def test_blob_count_mismatch_names_the_layer():
  blob = (wire.length_delimited(7, wire.length_delimited(1, b'\x02\x03'))
          + wire.length_delimited(5, np.zeros(5, '<f4').tobytes()))
  with pytest.raises(ValueError, match=(
      r"blob 0 of layer 'conv1' \(Convolution\) \(at byte \d+\) has 5 values "
      r'but its shape \(2, 3\) holds 6')):
    caffe_proto.read_layers(_one_layer(blob))


def test_blob_negative_dim():
  blob = wire.length_delimited(7, wire.key(1, wire.VARINT) + wire.varint(-2))
  with pytest.raises(ValueError, match=r'negative dimension .*\(-2,\)'):
    caffe_proto.read_layers(_one_layer(blob))


def test_mixed_layer_fields_refused():
  data = (wire.encode_net([('a', 'ReLU', [])])
          + wire.encode_net([('b', 'ReLU', [])], v1=True))
  with pytest.raises(ValueError, match="both 'layer' .* and V1 'layers'"):
    caffe_proto.read_layers(data)


def test_v0_layer_refused():
  v0 = wire.length_delimited(1, wire.length_delimited(1, b'conv1'))
  with pytest.raises(ValueError, match="V0 format .*upgrade_net_proto_binary"):
    caffe_proto.read_layers(wire.length_delimited(2, v0))


def test_damaged_files_raise_only_value_error():
  """Every truncation and many byte flips of a real-format file either
  still parse (a cut between layers) or raise ValueError, never another
  error."""
  data = wire.encode_net(_sample_layers(np.random.default_rng(3)), v1=True,
                         legacy_dims=True, noise=True)
  rng = np.random.default_rng(4)
  damaged = [data[:cut] for cut in range(len(data))]
  for _ in range(300):
    flipped = bytearray(data)
    flipped[rng.integers(len(data))] = rng.integers(256)
    damaged.append(bytes(flipped))
  for bad in damaged:
    try:
      caffe_proto.read_layers(bad)
    except ValueError:
      pass


# --- The numpy reference AlexNet against plain loops. ---


def loop_convolution(x, weight, bias, stride, pad, group):
  n, _, h, w = x.shape
  out_channels, group_in, kh, kw = weight.shape
  x = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
  ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
  out = np.zeros((n, out_channels, ho, wo))
  for i in range(n):
    for o in range(out_channels):
      first = o // (out_channels // group) * group_in
      for y in range(ho):
        for z in range(wo):
          total = bias[o]
          for c in range(group_in):
            for dy in range(kh):
              for dz in range(kw):
                total += (x[i, first + c, y * stride + dy, z * stride + dz]
                          * weight[o, c, dy, dz])
          out[i, o, y, z] = total
  return out


@pytest.mark.parametrize('stride, pad, group, kernel', [
    (1, 0, 1, (3, 3)), (4, 0, 1, (3, 3)), (2, 1, 2, (3, 2)), (1, 2, 2, (5, 5)),
])
def test_convolution(stride, pad, group, kernel):
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 4, 9, 8))
  weight = rng.normal(size=(6, 4 // group) + kernel)
  bias = rng.normal(size=6)
  np.testing.assert_allclose(
      ref.convolution(x, weight, bias, stride=stride, pad=pad, group=group),
      loop_convolution(x, weight, bias, stride, pad, group), rtol=1e-12,
      atol=1e-12)


def test_convolution_refuses_mismatched_group():
  with pytest.raises(ValueError, match='group 2'):
    ref.convolution(np.zeros((1, 4, 5, 5)), np.zeros((6, 4, 3, 3)),
                    np.zeros(6), group=2)


@pytest.mark.parametrize('channels', [1, 3, 7])
def test_lrn(channels):
  x = np.random.default_rng(6).normal(size=(2, channels, 3, 4)) * 10
  n, alpha, beta, k = 5, 0.3, 0.75, 1.0
  want = np.empty_like(x)
  for c in range(channels):
    window = x[:, max(0, c - 2):min(channels, c + 3)]
    want[:, c] = x[:, c] * (k + alpha / n * np.sum(window ** 2, 1)) ** -beta
  np.testing.assert_allclose(ref.lrn(x, alpha=alpha), want, rtol=1e-12)


@pytest.mark.parametrize('h, w', [(13, 13), (8, 9), (55, 55)])
def test_max_pool_ceil_mode(h, w):
  """8 -> ceil(5/2)+1 = 4 windows, the last clipped to 2 rows."""
  x = np.random.default_rng(7).normal(size=(2, 3, h, w))
  ho, wo = math.ceil((h - 3) / 2) + 1, math.ceil((w - 3) / 2) + 1
  want = np.empty((2, 3, ho, wo))
  for y in range(ho):
    for z in range(wo):
      want[:, :, y, z] = x[:, :, 2 * y:min(2 * y + 3, h),
                           2 * z:min(2 * z + 3, w)].max(axis=(2, 3))
  np.testing.assert_array_equal(ref.max_pool(x), want)


def test_inner_product_flattens_c_h_w():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(2, 3, 2, 4))
  weight, bias = rng.normal(size=(5, 24)), rng.normal(size=5)
  want = np.empty((2, 5))
  for i in range(2):
    for o in range(5):
      want[i, o] = bias[o] + sum(
          x[i, c, y, z] * weight[o, (c * 2 + y) * 4 + z]
          for c in range(3) for y in range(2) for z in range(4))
  np.testing.assert_allclose(ref.inner_product(x, weight, bias), want,
                             rtol=1e-12)


def test_forward_of_a_narrow_alexnet():
  """227x227 in, fc8 out: the spatial sizes (55, 27, 13, 6) must come out
  right for fc6's weight to fit; fast enough for tests."""
  rng = np.random.default_rng(9)
  widths = {'conv1': 12, 'conv2': 32, 'conv3': 48, 'conv4': 48, 'conv5': 32}
  blobs, channels = {}, 3
  for name, width in widths.items():
    size = {'conv1': 11, 'conv2': 5}.get(name, 3)
    group = ref.CONVOLUTIONS[name][2]
    blobs[name] = [rng.normal(size=(width, channels // group, size, size))
                   * 0.05, rng.normal(size=width) * 0.1]
    channels = width
  for name, (fan_in, units) in {'fc6': (32 * 6 * 6, 64), 'fc7': (64, 64),
                                'fc8': (64, 10)}.items():
    blobs[name] = [rng.normal(size=(units, fan_in)) * 0.05,
                   rng.normal(size=units) * 0.1]
  images = rng.normal(size=(2, 3, 227, 227)) * 50
  logits = ref.forward(blobs, images)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  assert np.abs(logits[0] - logits[1]).max() > 0  # the images differ
  blobs['fc6'][1] = blobs['fc6'][1].reshape(1, 1, 1, -1)
  with pytest.raises(ValueError, match=r'fc6: .*\(squeeze legacy 4-D blobs'):
    ref.forward(blobs, images)
