"""Two processes on localhost (CPU, two devices each, gloo collectives)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from alexnet_jax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / 'tests' / 'multihost_worker.py'


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(args, devices):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices),
             PYTHONPATH=str(ROOT))
  return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def test_two_processes_agree_with_one(tmp_path):
  port = free_port()
  two = tmp_path / 'two.json'
  procs = [start([two, 3, f'127.0.0.1:{port}', 2, i], devices=2)
           for i in range(2)]
  for proc in procs:
    finish(proc)
  one = tmp_path / 'one.json'
  finish(start([one, 3], devices=4))
  two, one = json.loads(two.read_text()), json.loads(one.read_text())
  assert two['processes'] == 2 and one['processes'] == 1
  assert two['rows'] == [0, 2]  # process 0 fed only its half of each batch
  assert two['losses'] == pytest.approx(one['losses'], rel=1e-5)
  assert two['checksums'] == pytest.approx(one['checksums'], rel=1e-4,
                                           abs=1e-6)


def test_unreachable_coordinator_fails_fast_and_clearly(tmp_path):
  # Process 1 of 2, and nobody listens at the coordinator's port.
  proc = start([tmp_path / 'x.json', 1, f'127.0.0.1:{free_port()}', 2, 1],
               devices=2)
  out, _ = proc.communicate(timeout=120)  # the worker's timeout is 30 s
  assert proc.returncode != 0
  assert 'could not reach the coordinator at 127.0.0.1' in out


@pytest.mark.parametrize('kwargs,match', [
    (dict(coordinator_address='h:1'), 'needs num_processes and process_id'),
    (dict(num_processes=2, process_id=0), 'need coordinator_address'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2),
     'process_id=2'),
    (dict(coordinator_address='nohostport', num_processes=2, process_id=0),
     'HOST:PORT'),
])
def test_bad_flags_are_refused_before_starting(kwargs, match):
  with pytest.raises(ValueError, match=match):
    parallel.initialize_distributed(**kwargs)


def test_the_main_command_runs_on_two_processes(tmp_path):
  """The default config (two CPU devices a process, so a 2x2 mesh with the
  towers split) for 3 steps, each process feeding its half of every batch;
  the tiny generated dataset, prepared by process 0 while process 1 waits."""
  port, workdir = free_port(), tmp_path / 'run'
  flags = ['--config=configs/default.py', f'--workdir={workdir}',
           '--config.num_train_steps=3', '--config.batch_size=16',
           '--config.input.dataset=synthetic_shapes/tiny',
           f'--config.input.data_dir={tmp_path / "data"}',
           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main', *flags, f'--process_id={i}'],
      env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [finish(proc) for proc in procs]
  assert "mesh {'data': 2, 'model': 2}" in outs[0]
  (record,) = [json.loads(line) for line in
               (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert record['step'] == 3
  assert (workdir / 'checkpoints' / '3').is_dir()
  assert (workdir / 'conv1_kernels.png').exists()
