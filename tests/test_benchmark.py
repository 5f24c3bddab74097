"""The benchmark command: one JSON line with the documented fields."""

import dataclasses
import importlib.util
import itertools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax import benchmark
from configs import alexnet_owt
from configs import default
from configs import imagenet
from conftest import on_tiny_dataset
from conftest import small_config

FIELDS = {'images_per_sec', 'step_ms', 'compile_s', 'batch_size',
          'image_size', 'dtype', 'devices', 'mesh', 'backend'}


def smallest_config():
  """The smallest images the net takes (64x64), width 1/16, batch 2."""
  return small_config(batch_size=2, width=0.0625, image_size=64)


def test_benchmark_reports_step_and_lrn_share():
  result = benchmark.benchmark(smallest_config(), steps=2, warmup=1,
                               lrn_share=True)
  assert FIELDS <= set(result)
  assert result['batch_size'] == 2 and result['image_size'] == 64
  # conftest makes four CPU devices; model_axis_size 0 splits the towers.
  assert result['backend'] == 'cpu' and result['devices'] == 4
  assert result['mesh'] == {'data': 2, 'model': 2}
  assert result['images_per_sec'] == pytest.approx(
      2 / (result['step_ms'] / 1e3), rel=0.01)
  assert result['images_per_sec_without_lrn'] > 0
  assert result['lrn_share'] < 1


def test_command_line_prints_one_json_line():
  """Also for another model than the paper's: torchvision's one-tower net,
  data parallel over the four devices."""
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.benchmark',
       '--config=configs/alexnet_owt.py', '--config.batch_size=4',
       '--config.model.width=0.0625', '--config.model.image_size=64',
       '--steps=1', '--warmup=0'],
      capture_output=True, text=True, check=True, timeout=300)
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert FIELDS <= set(result) and result['batch_size'] == 4
  assert result['model'] == 'alexnet_owt' and not result['use_lrn']
  assert result['mesh'] == {'data': 4, 'model': 1}


@pytest.mark.parametrize('kwargs,match', [
    (dict(steps=0, warmup=0, lrn_share=False), 'steps=0'),
    (dict(steps=1, warmup=-1, lrn_share=False), 'warmup=-1'),
])
def test_bad_step_counts_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    benchmark.benchmark(smallest_config(), **kwargs)


def test_lrn_share_needs_lrn():
  config = smallest_config()
  config.model.use_lrn = False
  with pytest.raises(ValueError, match='use_lrn'):
    benchmark.benchmark(config, steps=1, warmup=0, lrn_share=True)
  with pytest.raises(ValueError, match="'alexnet_owt', use_lrn=False"):
    benchmark.benchmark(alexnet_owt.get_config(), steps=1, warmup=0,
                        lrn_share=True)


def test_input_benchmark_reports_per_core_rate():
  config = smallest_config()
  config.batch_size = 4
  config.input.resize = 73
  result = benchmark.benchmark_input(config, steps=2, warmup=1)
  assert result['part'] == 'input' and result['image_size'] == 64
  assert result['images_per_sec_per_core'] == pytest.approx(
      result['images_per_sec'] / result['cores'], rel=0.01)
  assert result['jpeg_shape'] == [375, 500]


@pytest.mark.parametrize('fmt', ['jpeg', 'raw'])
def test_input_benchmark_from_a_store_sends_uint8(fmt):
  config = smallest_config()
  config.batch_size = 4
  config.input.update(resize=73, source='prepared', store_format=fmt)
  result = benchmark.benchmark_input(config, steps=2, warmup=1)
  assert result['source'] == 'prepared' and result['store_format'] == fmt
  assert result['image_dtype'] == 'uint8'
  # The patch, its label, reflection bit and PCA draw.
  assert result['image_bytes_to_device_per_image'] == 64 * 64 * 3
  assert result['bytes_to_device_per_image'] == 64 * 64 * 3 + 4 + 1 + 12
  side = 73 * 73 * 3
  if fmt == 'raw':
    assert result['store_bytes_per_image'] == side
  else:
    assert 0 < result['store_bytes_per_image'] < side
  tfds = benchmark.benchmark_input(smallest_config(), steps=1, warmup=0)
  assert tfds['image_dtype'] == 'float32'
  assert tfds['bytes_to_device_per_image'] == 4 * 64 * 64 * 3 + 4


def test_conv_part_times_every_layer_in_every_lowering():
  """Each of the five layers with the shapes the net gives it, in every
  lowering; the fastest is one of those timed."""
  results = benchmark.benchmark_convolutions(smallest_config(), steps=1,
                                             warmup=0)
  assert [r['layer'] for r in results] == [f'conv{i}' for i in range(1, 6)]
  conv1, conv2, conv3 = results[:3]
  assert conv1['input_shape'] == [2, 64, 64, 3] and conv1['shared_input']
  assert (conv1['kernel_size'], conv1['stride']) == (11, 4)
  assert conv2['input_shape'][0] == 2 and not conv2['shared_input']
  assert conv3['shared_input'] and conv3['kernels_per_tower'] == 12
  for r in results:
    assert set(r['ms_forward_and_backward']) == {
        'per_tower', 'grouped', 'patches', 'winograd'}
  for r in results:
    assert r['towers'] == 2 and r['batch_size'] == 2
    assert all(ms > 0 for ms in r['ms_forward_and_backward'].values())
    assert r['fastest'] in r['ms_forward_and_backward']
  assert [r['auto'] for r in results] == ['winograd'] + ['per_tower'] * 4
  with pytest.raises(ValueError, match="'alexnet_owt' has none"):
    benchmark.benchmark_convolutions(alexnet_owt.get_config(), 1, 0)


def test_conv_part_passes_a_shared_input_once():
  """As in the net, conv3's towers get one array: 'grouped' is then one
  convolution with both towers' kernels, not a grouped one."""
  layer, shapes, shared = benchmark.conv_layers(smallest_config())[2]
  runner = benchmark._ConvRunner(layer, shapes, shared, 'grouped',
                                 jnp.float32, first=False)
  assert layer.name == 'conv3' and shared and len(runner.inputs) == 1
  jaxpr = str(jax.make_jaxpr(runner.step)(*runner.args))
  assert 'feature_group_count=1' in jaxpr
  assert 'feature_group_count=2' not in jaxpr


def test_sweep_times_each_choice_left_at_auto():
  """Fields set in the config stay fixed; the others' choices are all
  timed; one of them is what 'auto' picks."""
  config = smallest_config()
  config.model.update(conv1_impl='per_tower', conv_impl='per_tower',
                      pool_impl='strided_views')  # lrn_impl left at auto
  assert benchmark.sweep_variants(config) == [
      {'lrn_impl': 'custom_vjp'}, {'lrn_impl': 'autodiff'}]
  reported = []
  results = benchmark.sweep(config, steps=1, warmup=0, batch_sizes=[4],
                            report=reported.append)
  assert reported == results
  assert [(r['batch_size'], r['lrn_impl'], r['auto']) for r in results] == [
      (4, 'custom_vjp', True), (4, 'autodiff', False)]
  assert all(r['conv_impl'] == 'per_tower' and r['images_per_sec'] > 0
             for r in results)


def test_the_table_puts_the_fastest_first_per_batch_size():
  names = ('conv1_impl', 'conv_impl', 'pool_impl', 'lrn_impl')
  results = [dict(zip(names, (c1, 'per_tower', 'reduce_window', 'autodiff')),
                  batch_size=batch, dtype='float32', images_per_sec=rate,
                  auto=c1 == 'patches')
             for batch, c1, rate in ((8, 'patches', 10.0), (8, 'grouped', 20.0),
                                     (2, 'grouped', 4.0), (2, 'patches', 5.0))]
  table = benchmark.fastest_table(results).splitlines()
  assert table[0] == ('| batch | dtype | conv1_impl | conv_impl | pool_impl | '
                      'lrn_impl | images/s | vs fastest | vs auto | auto |')
  cells = [row[2:-2].split(' | ') for row in table[2:]]
  assert [(c[0], c[2], c[6], c[7], c[8], c[9]) for c in cells] == [
      ('2', 'patches', '5.00', '1.00', '1.00', 'yes'),
      ('2', 'grouped', '4.00', '0.80', '0.80', ''),
      ('8', 'grouped', '20.00', '1.00', '2.00', ''),
      ('8', 'patches', '10.00', '0.50', '1.00', 'yes')]


def test_sweep_of_every_choice_and_of_a_model_without_choices():
  config = smallest_config()
  variants = benchmark.sweep_variants(config)
  assert len(variants) == 4 * 4 * 3 * 2 and len(
      {tuple(v.items()) for v in variants}) == len(variants)
  config.model.use_lrn = False  # then the LRN's choice is not swept
  assert len(benchmark.sweep_variants(config)) == 4 * 4 * 3
  with pytest.raises(ValueError, match="'alexnet_owt' has none"):
    benchmark.sweep_variants(alexnet_owt.get_config())
  with pytest.raises(ValueError, match='batch_size must be >= 1; got 0'):
    benchmark.sweep(smallest_config(), steps=1, warmup=0, batch_sizes=[0])


def test_compare_against_pytorch_reports_both_ratios():
  """One step of each of the four, on the smallest net the port builds
  (the port's shapes at every width: test_the_port_builds_the_configs_net)."""
  result = benchmark.compare(smallest_config(), steps=1, warmup=0)
  torch_rates = result['pytorch']
  assert torch_rates['framework'].startswith('pytorch ')
  # The rates are rounded to 0.01 images/s (a few percent at batch 2 on a
  # CPU); the ratios are of the unrounded ones.
  assert result['speedup_with_lrn'] == pytest.approx(
      result['images_per_sec'] / torch_rates['images_per_sec'], rel=0.05)
  assert result['speedup_without_lrn'] == pytest.approx(
      result['images_per_sec_without_lrn']
      / torch_rates['images_per_sec_without_lrn'], rel=0.05)


def test_untimed_steps_run_but_are_never_recorded():
  """compare's settling step before each process's turn."""
  calls = []

  class Fake:
    def run(self, index, record):
      calls.append((index, record))

  benchmark._interleaved([benchmark._Untimed(Fake()), Fake()], steps=2,
                         warmup=1)
  assert calls == [(0, False), (0, False), (1, False), (1, True), (2, False),
                   (2, True)]


def test_compare_refuses_nets_the_port_cannot_build():
  one_tower = smallest_config()
  one_tower.model.towers = 1
  with pytest.raises(ValueError, match="ports the paper's net.*towers=2"):
    benchmark.compare(one_tower, steps=1, warmup=0)
  pooled_2x2 = smallest_config()
  pooled_2x2.model.update(pool_window=2, pool_stride=2)
  with pytest.raises(ValueError, match='3/2 pooling.*--part=conv --compare'):
    benchmark.benchmark_convolutions(pooled_2x2, steps=1, warmup=0,
                                     against_pytorch=True)


def baseline_module():
  spec = importlib.util.spec_from_file_location('pytorch_baseline',
                                                benchmark.BASELINE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('get_config', [default.get_config,
                                        imagenet.get_config, smallest_config])
def test_the_port_builds_the_configs_net(get_config):
  """The PyTorch port of configs/default.py's narrow net (96 inputs, 10
  classes), the paper's and the smallest: as many parameters as ours, and
  each convolution with our kernels, stride and input size."""
  port = baseline_module()
  config = get_config()
  config.batch_size = 2
  net = benchmark._ported_net(config, 'test')
  torch_net = port.alexnet(True, **net)
  model = benchmark._model(config)
  size = model.image_size
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                         train=False))
  assert sum(p.numel() for p in torch_net.parameters()) == sum(
      x.size for x in jax.tree_util.tree_leaves(params))
  runners = port.conv_runners(torch_net, 2, size)
  for (layer, shapes, shared), runner in zip(benchmark.conv_layers(config),
                                             runners.values()):
    conv, x = runner.conv, runner.x
    assert conv.out_channels == 2 * layer.features
    assert (conv.kernel_size, conv.stride) == ((layer.kernel_size,) * 2,
                                               (layer.stride,) * 2)
    n, h, _, c = shapes[0]
    assert x.shape[:2] == (n, c if shared else 2 * c)
    if layer.padding is None:  # 'SAME'; conv1's overhang is in the port's
      assert x.shape[2:] == (h, h)  # input, in ours the conv's padding
    else:
      assert x.shape[2:] == (h + layer.padding[0][1],) * 2


def test_conv_part_against_pytorch_times_the_same_layers():
  """Each layer has PyTorch's time, and the ratio is over the lowering
  'auto' picks (the smallest net: every layer in every lowering compiles)."""
  results = benchmark.benchmark_convolutions(smallest_config(), steps=1,
                                             warmup=0, against_pytorch=True)
  assert [r['layer'] for r in results] == [f'conv{i}' for i in range(1, 6)]
  for r in results:
    assert r['pytorch']['framework'].startswith('pytorch ')
    ours = r['ms_forward_and_backward'][r['auto']]
    assert r['speedup_vs_pytorch'] == pytest.approx(r['pytorch_ms'] / ours,
                                                    rel=0.05)


def test_one_at_a_time_variants_change_one_field_from_auto():
  config = smallest_config()
  variants = benchmark.one_at_a_time_variants(config)
  auto = benchmark._model(config).implementations()
  assert variants[0] == {}
  # Every choice auto does not take, once, alone: 1 + 3 + 3 + 2 + 1.
  assert len(variants) == 10
  for variant in variants[1:]:
    (name, value), = variant.items()
    assert value != auto[name]
  config.model.conv1_impl = 'grouped'  # set in the config: stays fixed
  assert all('conv1_impl' not in v
             for v in benchmark.one_at_a_time_variants(config))


def test_suite_runs_its_plan_and_writes_json_and_markdown(tiny_data_dir,
                                                          tmp_path):
  """A tiny plan on CPU: the auto variant in bfloat16, the split over two of
  conftest's four devices, one epoch of a small config on the tiny set;
  then the sweep's other variants, here cut by the budget."""
  plan = benchmark.SuitePlan('test', (2,), ('bfloat16',), steps=1, warmup=0,
                             epochs=1)
  epochs_config = on_tiny_dataset(small_config(batch_size=20, width=0.0625,
                                               image_size=64), tiny_data_dir)
  epochs_config.input.resize = 73
  reported = []
  # Each task takes 10 s: at 30 s a fourth sweep task, as long as the
  # first, would end at 40, past the budget of 35.
  times = itertools.chain([0, 0, 10, 10, 20, 20, 30, 30],
                          itertools.repeat(30))
  results = benchmark.suite(smallest_config(), epochs_config, plan,
                            str(tmp_path), budget_s=35,
                            report=reported.append, clock=lambda: next(times))
  assert [r['dtype'] for r in results['sweep']] == ['bfloat16']
  assert results['sweep'][0]['auto'] and results['sweep'][0]['mesh'] == {
      'data': 1, 'model': 1}
  assert results['split'][0]['mesh'] == {'data': 1, 'model': 2}
  epochs = results['default_config']
  assert epochs['epochs'] == 1 and epochs['steps'] == 10  # 200 / 20
  assert 0 <= epochs['top1_error'] <= 1
  assert len(results['skipped']) == 9 and all(
      s.startswith('sweep batch 2 bfloat16 {') for s in results['skipped'])
  assert reported == results['sweep'] + results['split'] + [epochs]
  written = json.loads((tmp_path / 'suite.json').read_text())
  assert written['sweep'] == results['sweep']
  markdown = (tmp_path / 'suite.md').read_text()
  assert benchmark.fastest_table(results['sweep']) in markdown
  assert 'Not run (no budget left): sweep batch 2' in markdown
  assert results['errors'] == [] and results['seconds'] == 30
  with pytest.raises(ValueError, match='suite.json.*another --out'):
    benchmark.suite(smallest_config(), epochs_config, plan, str(tmp_path))


def test_suite_records_a_failing_task_and_goes_on(tiny_data_dir, tmp_path):
  """The default config's epochs at a batch the four devices' mesh cannot
  split: the error is listed and the files are written all the same."""
  epochs_config = on_tiny_dataset(small_config(batch_size=3), tiny_data_dir)
  plan = benchmark.SuitePlan('test', (2,), (), steps=1, warmup=0)
  results = benchmark.suite(smallest_config(), epochs_config, plan,
                            str(tmp_path), report=lambda r: None)
  (error,) = results['errors']
  assert error.startswith('default_config epochs: ValueError: batch_size=3')
  written = json.loads((tmp_path / 'suite.json').read_text())
  assert written['errors'] == results['errors']
  assert 'Failed: default_config epochs' in (tmp_path / 'suite.md').read_text()


def test_suite_command_on_a_cpu_says_so(tmp_path):
  """No accelerator: it names the CPU plan, and with no budget left writes
  the files with everything listed as not run."""
  command = [sys.executable, '-m', 'alexnet_jax.benchmark', '--suite',
             '--config=configs/imagenet.py', '--budget_s=0']
  out = subprocess.run(command + [f'--out={tmp_path}'], capture_output=True,
                       text=True, check=True, timeout=300)
  assert "No GPU or TPU here (JAX backend 'cpu'): running the CPU plan" in (
      out.stderr)
  written = json.loads((tmp_path / 'suite.json').read_text())
  assert written['plan'] == json.loads(json.dumps(dataclasses.asdict(
      benchmark.CPU_PLAN)))
  assert written['sweep'] == [] and 'default_config epochs' in (
      written['skipped'])
  for extra, message in [([], '--suite needs --out=DIR'),
                         (['--out=x', '--sweep'], '--sweep and --suite')]:
    bad = subprocess.run(command + extra, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and message in bad.stderr
