"""BVLC AlexNet's forward pass in plain numpy (float64, NCHW), for tests.

Written from Caffe's own definitions, independently of the JAX model, so
that weights imported from a caffemodel can be checked against what Caffe
would compute. The net is BVLC/caffe models/bvlc_alexnet/deploy.prototxt
(input 227x227):

  conv1 11x11/4 -> relu -> norm1 -> pool1 3/2
  conv2 5x5 pad 2 group 2 -> relu -> norm2 -> pool2 3/2
  conv3 3x3 pad 1 -> relu
  conv4 3x3 pad 1 group 2 -> relu
  conv5 3x3 pad 1 group 2 -> relu -> pool5 3/2
  fc6 -> relu -> fc7 -> relu -> fc8       (dropout is off at test time)

with LRN across channels (local_size 5, alpha 1e-4, beta 0.75, k 1, Caffe's
default) and max pooling. Channel and unit counts come from the weights, so
tests can run a narrow variant of the net quickly.
"""

import numpy as np

# Per convolution: (stride, pad, group), from deploy.prototxt.
CONVOLUTIONS = {
    'conv1': (4, 0, 1), 'conv2': (1, 2, 2), 'conv3': (1, 1, 1),
    'conv4': (1, 1, 2), 'conv5': (1, 1, 2),
}


def convolution(x, weight, bias, *, stride=1, pad=0, group=1):
  """Caffe's Convolution: ``x`` (N, C, H, W), ``weight`` (O, C/group, kh,
  kw), ``bias`` (O,); output (N, O, Ho, Wo), ``Ho = (H + 2 pad - kh) //
  stride + 1``. Group g maps input channels [g C/group, (g+1) C/group) to
  outputs [g O/group, (g+1) O/group). im2col and one matmul per group."""
  x = np.asarray(x, np.float64)
  weight = np.asarray(weight, np.float64)
  out_channels, group_in, kh, kw = weight.shape
  if x.shape[1] != group_in * group or out_channels % group:
    raise ValueError(f'{x.shape[1]} input channels, weight {weight.shape} '
                     f'and group {group} do not fit together')
  x = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
  # (N, C, Ho, Wo, kh, kw): every output position's input window.
  windows = np.lib.stride_tricks.sliding_window_view(
      x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
  n, _, ho, wo = windows.shape[:4]
  group_out = out_channels // group
  outputs = []
  for g in range(group):
    cols = windows[:, g * group_in:(g + 1) * group_in]
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, -1)
    kernels = weight[g * group_out:(g + 1) * group_out].reshape(group_out, -1)
    outputs.append(cols @ kernels.T)
  y = np.concatenate(outputs, axis=1).reshape(n, ho, wo, out_channels)
  return y.transpose(0, 3, 1, 2) + np.asarray(bias)[:, None, None]


def relu(x):
  return np.maximum(x, 0)


def lrn(x, *, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
  """Caffe's LRN, ACROSS_CHANNELS: ``x * (k + alpha / n * S) ** -beta``, with
  ``S`` the sum of squares over the ``n = local_size`` channels centred on
  each channel, zero-padded at both ends."""
  half = (local_size - 1) // 2
  squares = np.pad(np.square(x), [(0, 0), (half, half), (0, 0), (0, 0)])
  channels = x.shape[1]
  total = sum(squares[:, j:j + channels] for j in range(local_size))
  return x * (k + alpha / local_size * total) ** -beta


def max_pool(x, *, kernel=3, stride=2):
  """Caffe's MAX Pooling without padding: ``Ho = ceil((H - kernel) / stride)
  + 1``, the last window clipped at the edge when it runs past it."""
  n, c, h, w = x.shape
  ho = -(-(h - kernel) // stride) + 1
  wo = -(-(w - kernel) // stride) + 1
  # -inf past the edge: a clipped window takes the max of what it covers.
  x = np.pad(x, [(0, 0), (0, 0), (0, (ho - 1) * stride + kernel - h),
                 (0, (wo - 1) * stride + kernel - w)],
             constant_values=-np.inf)
  return np.lib.stride_tricks.sliding_window_view(
      x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride].max(
          axis=(4, 5))


def inner_product(x, weight, bias):
  """Caffe's InnerProduct: ``x`` flattened per image in (C, H, W) order,
  ``weight`` (out, in), ``bias`` (out,)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x @ np.asarray(weight, np.float64).T + np.asarray(bias)


def forward(blobs: dict[str, list[np.ndarray]],
            images_nchw: np.ndarray) -> np.ndarray:
  """The logits (fc8's output) of BVLC AlexNet.

  Args:
    blobs: Caffe layer name (conv1..conv5, fc6, fc7, fc8) -> [weight, bias]
      in Caffe's layout: convolution weight (out, in/group, kh, kw),
      InnerProduct weight (out, in), bias (out,).
    images_nchw: (N, 3, 227, 227), preprocessed as the net expects (BGR,
      mean subtracted: that is the caller's business).

  Returns:
    float64 (N, fc8 outputs).
  """
  for name, (weight, bias) in blobs.items():
    if np.ndim(bias) != 1 or np.ndim(weight) != (2 if name[:2] == 'fc' else 4):
      raise ValueError(
          f'{name}: weight {np.shape(weight)}, bias {np.shape(bias)} are not '
          f'in Caffe\'s current layout (squeeze legacy 4-D blobs first)')
  x = np.asarray(images_nchw, np.float64)
  for name, (stride, pad, group) in CONVOLUTIONS.items():
    x = relu(convolution(x, *blobs[name], stride=stride, pad=pad,
                         group=group))
    if name in ('conv1', 'conv2'):
      x = max_pool(lrn(x))
  x = max_pool(x)
  x = relu(inner_product(x, *blobs['fc6']))
  x = relu(inner_product(x, *blobs['fc7']))
  return inner_product(x, *blobs['fc8'])
