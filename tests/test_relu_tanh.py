"""The ReLU/tanh experiment (Figure 1): the four-layer net learns the tiny
generated dataset, the sweep keeps each activation's fastest rate, and the
results, table and figure are written."""

import json
import os

import pytest
import tensorflow_datasets as tfds

from configs import relu_tanh as relu_tanh_config
from conftest import on_tiny_dataset
from experiments import relu_tanh


@pytest.fixture(scope='module')
def config(tiny_data_dir):
  config = on_tiny_dataset(relu_tanh_config.get_config(), tiny_data_dir)
  config.update(batch_size=20, num_epochs=10, target_train_error=0.7,
                seeds=2)
  return config


def test_each_activation_keeps_its_fastest_rate(config, tmp_path):
  # A rate of 0 never learns (chance is 90%): the sweep must pick 0.01 and
  # stop the rate-0 run once it has trained as many epochs as the fastest.
  config.learning_rates = (0.01, 0.0)
  results = relu_tanh.run(config, str(tmp_path))
  for activation in ('relu', 'tanh'):
    r = results[activation]
    assert r['learning_rate'] == 0.01
    fastest = r['epochs'][0]
    assert fastest is not None and r['sweep']['0.01'][-1] <= 0.7
    assert len(r['sweep']['0.0']) == fastest
    assert min(r['sweep']['0.0']) > 0.8
    assert len(r['curves']) == 2 and r['curves'][0] == r['sweep']['0.01']
  with open(tmp_path / 'results.json') as f:
    assert json.load(f) == results
  assert os.path.getsize(tmp_path / 'relu_tanh.png') > 0
  assert '| relu | 0.01 |' in (tmp_path / 'results.md').read_text()


def test_the_fastest_rate():
  config = relu_tanh_config.get_config()  # target 25%
  pick = lambda sweep: relu_tanh._fastest(config, sweep)
  # Fewest epochs wins, wherever it stands in the sweep.
  assert pick({0.01: [0.5, 0.3, 0.2], 0.03: [0.4, 0.2]}) == 0.03
  # A tie goes to the lower error at the target epoch.
  assert pick({0.01: [0.5, 0.24], 0.03: [0.4, 0.21]}) == 0.03
  assert pick({0.01: [0.5, 0.2], 0.03: [0.4, 0.21]}) == 0.01
  # A rate that reached the target beats one that did not.
  assert pick({0.1: [0.3, 0.26], 0.01: [0.9, 0.5, 0.25]}) == 0.01
  # None reached it: the lowest final error.
  assert pick({0.1: [0.9, 0.8], 0.01: [0.9, 0.6]}) == 0.01


def test_epochs_to_target_and_the_table():
  assert relu_tanh.epochs_to_target([0.9, 0.5, 0.2, 0.3], 0.25) == 3
  assert relu_tanh.epochs_to_target([0.9, 0.5], 0.25) is None
  table = relu_tanh.markdown(
      {'relu': {'learning_rate': 0.1, 'epochs': [3, 5]},
       'tanh': {'learning_rate': 0.01, 'epochs': [20, None]}}, 0.25)
  assert '| relu | 0.1 | 3, 5 | 4.0 |' in table
  assert '| tanh | 0.01 | 20, - | not reached by every seed |' in table


def test_the_config_runs_unchanged_on_cifar10(tmp_path):
  config = relu_tanh_config.get_config()
  config.input.dataset = 'cifar10'
  config.update(num_epochs=1, learning_rates=(0.01,), seeds=1,
                batch_size=8)
  with tfds.testing.mock_data(num_examples=24):
    images, labels = relu_tanh.load_images(config, 'train')
    results = relu_tanh.run(config, str(tmp_path))
  assert images.shape == (24, 24, 24, 3) and labels.shape == (24,)
  assert [len(r['curves'][0]) for r in results.values()] == [1, 1]
