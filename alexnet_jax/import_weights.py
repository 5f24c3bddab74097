"""Trained AlexNet weights from torchvision or Caffe, as a workdir.

    python -m alexnet_jax.import_weights --source=torchvision \\
        --file=alexnet-owt-7be5be79.pth --workdir=DIR
    python -m alexnet_jax.import_weights --source=caffe \\
        --file=bvlc_alexnet.caffemodel --workdir=DIR

The workdir holds what a training run leaves: ``config.json`` (the source's
config, ``configs/alexnet_owt.py`` or ``configs/bvlc_alexnet.py``, with any
``--config.*`` overrides), a checkpoint at step 0 with the imported
parameters (momentum zero) and the first-layer figure. ``evaluate``,
``predict``, ``experiments/trained_model.ipynb`` read it as they read a
run's, and ``main`` with the same config fine-tunes from it.

* torchvision: the state dict of ``torchvision.models.alexnet``, read with
  ``torch.load(weights_only=True)`` (tensors only, nothing unpickled or
  run); PyTorch must be installed (the CPU build is enough).
* caffe: a ``.caffemodel`` (``caffe_proto.py`` parses it); BVLC's AlexNet is
  the paper's two-tower net, so its groups become our towers.

The code downloads nothing: docs/other_alexnets.md says where the files are
published. Every tensor is checked before anything is written: a file of
another architecture, or with a tensor missing or of another shape, is
refused with the tensor's name and both shapes, and the workdir is left as
it was. A workdir that already holds a run is refused.
"""

from __future__ import annotations

import functools
import math

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from alexnet_jax import caffe_proto
from alexnet_jax import checkpoint
from alexnet_jax import parallel
from alexnet_jax import schedules
from alexnet_jax import steps
from alexnet_jax import storage
from alexnet_jax import train
from configs import alexnet_owt
from configs import bvlc_alexnet

FLAGS = flags.FLAGS

# Our layer name -> the source's name of its weight and bias.
TORCHVISION_LAYERS = {
    'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
    'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
    'fc7': 'classifier.4', 'fc8': 'classifier.6'}
CAFFE_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
                'fc8')
SOURCES = {'torchvision': alexnet_owt.get_config,
           'caffe': bvlc_alexnet.get_config}


def default_config(source: str) -> ml_collections.ConfigDict:
  """The config of the net ``source``'s weights fit."""
  if source not in SOURCES:
    raise ValueError(f'Unknown --source={source!r}; use one of '
                     f'{sorted(SOURCES)}.')
  return SOURCES[source]()


# --------------------------------------------------------------------------
# Reading: {tensor name: array}, in the source's own layout.

def read_torchvision(path: str) -> dict[str, np.ndarray]:
  """The tensors of a torchvision state dict (``weights_only``)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError('Reading a .pth file needs PyTorch: pip install torch '
                     '(the CPU build is enough).') from e
  with storage.open_binary(path, 'rb') as f:
    try:
      state = torch.load(f, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises pickle/zip errors of many types
      raise ValueError(f'{path} is not a PyTorch state dict that '
                       f'torch.load(weights_only=True) reads: {e}') from e
  if not isinstance(state, dict) or not all(
      isinstance(v, torch.Tensor) for v in state.values()):
    raise ValueError(f'{path} holds a {type(state).__name__}, not a state '
                     f'dict of tensors (save model.state_dict()).')
  return {k: v.detach().float().numpy() for k, v in state.items()}


# The layers that shape the computation, in BVLC AlexNet's order (ReLU,
# dropout, data, loss and the split layers Caffe inserts do not matter here).
_CAFFE_STRUCTURAL = ('Convolution', 'LRN', 'Pooling', 'InnerProduct')


def caffe_order(use_lrn: bool) -> list[str]:
  """The structural layer types of the paper's net as Caffe writes it:
  LRN then pooling after conv1 and conv2, as in the paper and BVLC's net."""
  norm_pool = ['LRN', 'Pooling'] if use_lrn else ['Pooling']
  return (['Convolution', *norm_pool] * 2 + ['Convolution'] * 3
          + ['Pooling'] + ['InnerProduct'] * 3)


def check_caffe_order(layers: list[caffe_proto.Layer], use_lrn: bool,
                      path: str) -> None:
  """Raises ValueError unless the layers come in the paper net's order
  (e.g. CaffeNet, ``bvlc_reference_caffenet``, pools before it normalizes:
  the same weights' shapes, another net)."""
  found = [layer.type for layer in layers if layer.type in _CAFFE_STRUCTURAL]
  want = caffe_order(use_lrn)
  if found != want:
    raise ValueError(
        f'{path} has its layers in the order {found}; the paper\'s net (BVLC '
        f'AlexNet) is {want}. CaffeNet (bvlc_reference_caffenet), for one, '
        f'pools before it normalizes: a different net.')


def caffe_tensors(layers: list[caffe_proto.Layer], path: str
                  ) -> dict[str, np.ndarray]:
  """The blobs of a caffemodel's layers as ``'<layer>.weight'``/
  ``'<layer>.bias'`` (layers without blobs, such as ReLU or data layers,
  are left out)."""
  tensors = {}
  for layer in layers:
    if not layer.blobs:
      continue
    if len(layer.blobs) != 2:
      raise ValueError(f'Layer {layer.name!r} ({layer.type}) of {path} has '
                       f'{len(layer.blobs)} blobs, not a weight and a bias.')
    tensors[f'{layer.name}.weight'], tensors[f'{layer.name}.bias'] = (
        layer.blobs)
  return tensors


# --------------------------------------------------------------------------
# Converting: the source's layout -> our parameter tree.

def _squeeze_to(array: np.ndarray, ndim: int) -> np.ndarray:
  """Drops leading axes of size 1 down to ``ndim`` axes (Caffe's legacy
  blobs are 4-D: an InnerProduct weight ``(1, 1, out, in)``)."""
  while array.ndim > ndim and array.shape[0] == 1:
    array = array[0]
  return array


def _take(tensors: dict, name: str, want: tuple[int, ...], model_name: str
          ) -> np.ndarray:
  if name not in tensors:
    raise ValueError(f'The file has no tensor {name!r}, which {model_name} '
                     f'needs with shape {want}.')
  array = _squeeze_to(np.asarray(tensors[name], np.float32), len(want))
  if array.shape != want:
    raise ValueError(f'Tensor {name!r} has shape {tuple(tensors[name].shape)} '
                     f'in the file, but {model_name} with this config needs '
                     f'{want}.')
  return array


def _conv_kernel(weight: np.ndarray, towers: int) -> np.ndarray:
  """``(out, in, kh, kw)`` (groups: ``towers`` blocks of outputs) to HWIO,
  with a leading tower axis when ``towers`` is set."""
  if not towers:
    return weight.transpose(2, 3, 1, 0)
  out, inputs, kh, kw = weight.shape
  return weight.reshape(towers, out // towers, inputs, kh, kw).transpose(
      0, 3, 4, 2, 1)


def _dense_kernel(weight: np.ndarray, towers: int, inputs_chw=None
                  ) -> np.ndarray:
  """``(out, in)`` to ``(in, out)``, with a leading tower axis of the
  outputs when ``towers`` is set. ``inputs_chw``: fc6 reads a feature map
  that the source flattened in C, H, W order and we in H, W, C order (per
  tower, towers first)."""
  if inputs_chw is not None:
    c, h, w = inputs_chw
    t = max(towers, 1)
    weight = weight.reshape(-1, t, c // t, h, w).transpose(
        0, 1, 3, 4, 2).reshape(weight.shape[0], -1)
  kernel = weight.T
  if not towers:
    return kernel
  return kernel.reshape(kernel.shape[0], towers, -1).transpose(1, 0, 2)


def _towers(model, shapes) -> int:
  """How many towers the parameters' leading tower axis holds (0: the
  model's parameters have no tower axis)."""
  if model.tower_axes(shapes)['conv1']['kernel'] is None:
    return 0
  return shapes['conv1']['kernel'].shape[0]


def _source_shapes(model, shapes) -> dict[str, tuple[int, ...]]:
  """The source's weight and bias shapes that our parameter ``shapes``
  (a tree of arrays' shapes) need, per our layer name."""
  towers = _towers(model, shapes)
  t = max(towers, 1)
  out = {}
  for layer, p in shapes.items():
    kernel, bias = p['kernel'].shape, p['bias'].shape
    if towers and layer != 'fc8':
      kernel, bias = kernel[1:], bias[1:]
    if len(kernel) == 4:  # kh, kw, in, out (per tower)
      out[layer] = ((kernel[3] * t, kernel[2], kernel[0], kernel[1]),
                    (kernel[3] * t,))
    elif layer == 'fc8' and towers:  # (towers, in per tower, classes)
      out[layer] = ((kernel[2], kernel[0] * kernel[1]), bias)
    else:
      out[layer] = ((kernel[1] * t, kernel[0]), (bias[0] * t,))
  return out


def to_params(tensors: dict, names: dict[str, str], model, shapes,
              model_name: str) -> dict:
  """Our parameter tree from the source's ``tensors``; ``names`` maps our
  layer names to the source's. Raises ValueError naming any tensor that is
  missing, of another shape or not used."""
  unused = sorted(set(tensors) - {f'{names[layer]}.{kind}' for layer in names
                                  for kind in ('weight', 'bias')})
  if unused:
    raise ValueError(
        f'The file has tensors {model_name} does not use: {unused[:8]}'
        f'{" ..." if len(unused) > 8 else ""}. Is it another architecture? '
        f'It needs {sorted(f"{n}.weight" for n in names.values())} and the '
        f'biases.')
  towers = _towers(model, shapes)
  want = _source_shapes(model, shapes)
  params = {}
  for layer, source in names.items():
    weight = _take(tensors, f'{source}.weight', want[layer][0], model_name)
    bias = _take(tensors, f'{source}.bias', want[layer][1], model_name)
    if weight.ndim == 4:
      kernel = _conv_kernel(weight, towers)
    elif layer == 'fc6':
      channels = shapes['conv5']['kernel'].shape[-1] * max(towers, 1)
      side = math.isqrt(weight.shape[1] // channels)
      kernel = _dense_kernel(weight, towers, (channels, side, side))
    elif layer == 'fc8' and towers:  # one block of inputs per tower
      kernel = weight.T.reshape(towers, -1, weight.shape[0])
    else:
      kernel = _dense_kernel(weight, towers)
    if towers and layer != 'fc8':
      bias = bias.reshape(towers, -1)
    params[layer] = {'kernel': kernel, 'bias': bias}
  return params


def convert(tensors: dict[str, np.ndarray], source: str,
            config: ml_collections.ConfigDict) -> dict:
  """``config``'s model's parameters, as numpy arrays in our layout, from
  ``source``'s ``tensors`` (the layout conversion is linear: gradients
  convert alike). Raises ValueError naming a misfit tensor."""
  model = steps.create_model(config.model)
  shapes = jax.eval_shape(functools.partial(steps.init_params, model),
                          jax.random.key(0))
  names = (TORCHVISION_LAYERS if source == 'torchvision'
           else {n: n for n in CAFFE_LAYERS})
  model_name = f'{config.model.name!r}'
  if set(shapes) != set(names):
    raise ValueError(f'--source={source} fits the layers {sorted(names)}; '
                     f'model {model_name} has {sorted(shapes)}. Use that '
                     f'source\'s config (configs/alexnet_owt.py for '
                     f'torchvision, configs/bvlc_alexnet.py for caffe).')
  return to_params(tensors, names, model, shapes, model_name)


def load(source: str, path: str, config: ml_collections.ConfigDict) -> dict:
  """The parameters in ``path`` (of ``source``) for ``config``'s model; a
  ValueError before anything is written."""
  if source == 'torchvision':
    return convert(read_torchvision(path), source, config)
  layers = caffe_proto.read_layers(storage.read_bytes(path))
  params = convert(caffe_tensors(layers, path), source, config)
  check_caffe_order(layers, config.model.get('use_lrn', False), path)
  return params


# --------------------------------------------------------------------------
# Writing the workdir.

def check_new_workdir(workdir: str) -> None:
  """Refuses a workdir that holds a run (a config.json or a checkpoint)."""
  if not workdir:
    raise ValueError('A workdir is required: --workdir=/path/to/new/dir.')
  found = [name for name in (train.CONFIG_FILE, checkpoint.DIRNAME)
           if storage.exists(storage.join(workdir, name))]
  if found:
    raise ValueError(f'{workdir} already holds a run ({", ".join(found)}); '
                     f'import into a new --workdir.')


def write_workdir(config: ml_collections.ConfigDict, params: dict,
                  workdir: str) -> None:
  """A run directory at step 0 holding ``params``; if writing fails, what it
  wrote is removed again (a half-written import would be refused as a run)."""
  created = not storage.exists(workdir)
  train.prepare_workdir(workdir)
  try:
    _write_run(config, params, workdir)
  except BaseException:
    for name in (checkpoint.DIRNAME, train.CONFIG_FILE, train.KERNELS_FIGURE):
      storage.remove(storage.join(workdir, name))
    if created:
      storage.remove(workdir)
    raise


def _write_run(config, params, workdir):
  one_device = ml_collections.ConfigDict(config.to_dict())
  one_device.model_axis_size = 1
  mesh = parallel.make_mesh(one_device, jax.devices()[:1])
  state = train.create_state(one_device, mesh, jax.random.key(config.seed))
  state = state.replace(params=jax.tree.map(
      lambda new, old: jax.device_put(new, old.sharding), params,
      state.params))
  manager = checkpoint.create_manager(workdir, config)
  try:
    checkpoint.save(manager, state, config, dict(
        plateau=schedules.Plateau.from_config(config).state(),
        epoch_loss=[0.0, 0]))
  finally:
    manager.close()
  storage.write_text(storage.join(workdir, train.CONFIG_FILE),
                     config.to_json(indent=2))
  train.save_figures(workdir, state, [], config.input.channel_order)


def import_weights(source: str, path: str, workdir: str,
                   config: ml_collections.ConfigDict | None = None) -> None:
  """``path`` (of ``source``) into a new ``workdir`` with ``config`` (by
  default the source's, see ``SOURCES``)."""
  config = default_config(source) if config is None else config
  train.check_config(config)
  check_new_workdir(workdir)
  if not storage.exists(path):
    raise ValueError(f'--file={path} does not exist.')
  write_workdir(config, load(source, path, config), workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  config = FLAGS.config if FLAGS.config is not None else default_config(
      FLAGS.source)
  import_weights(FLAGS.source, FLAGS.file, FLAGS.workdir, config)
  print(f'Wrote {FLAGS.workdir}: evaluate it with python -m '
        f'alexnet_jax.evaluate --config=<the config> --workdir='
        f'{FLAGS.workdir}')


if __name__ == '__main__':
  # Defined here, not on import (see evaluate.py).
  flags.DEFINE_enum('source', None, sorted(SOURCES), 'Whose weights.')
  flags.DEFINE_string('file', None, 'The .pth or .caffemodel file.')
  flags.DEFINE_string('workdir', None, 'A new directory for the workdir.')
  config_flags.DEFINE_config_file(
      'config', None, 'Optional: the config (default: configs/alexnet_owt.py '
      'for torchvision, configs/bvlc_alexnet.py for caffe).')
  flags.mark_flags_as_required(['source', 'file', 'workdir'])
  app.run(main)
