"""The notebooks in experiments/ run top to bottom on CPU with small
settings: the test replaces their parameters (a cell right after the one
tagged 'parameters', papermill's convention) and executes every cell in a
fresh kernel; each must end with its pictures displayed."""

import os

import nbclient
import nbformat

from conftest import TINY_DATASET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_notebook(name: str, **parameters) -> nbformat.NotebookNode:
  notebook = nbformat.read(os.path.join(REPO, 'experiments', name),
                           as_version=4)
  (index,) = [i for i, cell in enumerate(notebook.cells)
              if 'parameters' in cell.metadata.get('tags', [])]
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell('\n'.join(
      f'{key} = {value!r}' for key, value in parameters.items())))
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': REPO}}).execute()
  return notebook


def shown(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
  return [output['data'][mime] for cell in notebook.cells
          if cell.cell_type == 'code' for output in cell.outputs
          if mime in output.get('data', {})]


def test_the_relu_tanh_notebook_runs(tiny_data_dir, tmp_path):
  notebook = run_notebook(
      'relu_tanh.ipynb', REPO=REPO, INSTALL=False, WORKDIR=str(tmp_path),
      OVERRIDES={'input.dataset': TINY_DATASET,
                 'input.data_dir': tiny_data_dir, 'batch_size': 20,
                 'num_epochs': 2, 'learning_rates': (0.01,), 'seeds': 1})
  assert len(shown(notebook, 'image/png')) == 1
  (table,) = shown(notebook, 'text/markdown')
  assert '| relu | 0.01 |' in table and '| tanh | 0.01 |' in table


def test_the_trained_model_notebook_runs(tiny_data_dir, tmp_path):
  notebook = run_notebook(
      'trained_model.ipynb', REPO=REPO, INSTALL=False, WORKDIR=str(tmp_path),
      OVERRIDES={'input.dataset': TINY_DATASET,
                 'input.data_dir': tiny_data_dir, 'batch_size': 16,
                 'num_epochs': 1},
      NUM_IMAGES=4, NUM_QUERIES=2, NEIGHBOURS=3, POOL=50)
  # Curves, kernels, predictions, neighbours.
  assert len(shown(notebook, 'image/png')) == 4
  for picture in ('predictions.png', 'neighbours.png'):
    assert (tmp_path / picture).stat().st_size > 0
