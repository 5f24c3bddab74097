"""Two processes on localhost (CPU, two devices each, gloo collectives), and
the launch recipes in launch/ (real runs of local.sh and slurm.sbatch, the
rest with fake interpreters and commands)."""

import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from alexnet_jax import parallel
from alexnet_jax import prepare
from configs import default
from conftest import TINY_DATASET
from conftest import on_tiny_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / 'tests' / 'multihost_worker.py'
LAUNCH = ROOT / 'launch'


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


def tiny_run_flags(tmp_path):
  """The default config (two CPU devices a process) for 3 steps on the tiny
  generated dataset, prepared by process 0 while the others wait."""
  workdir = tmp_path / 'run'
  return workdir, ['--config=configs/default.py', f'--workdir={workdir}',
                   '--config.num_train_steps=3', '--config.batch_size=16',
                   f'--config.input.dataset={TINY_DATASET}',
                   f'--config.input.data_dir={tmp_path / "data"}']


def assert_tiny_run_finished(workdir):
  (record,) = [json.loads(line) for line in
               (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert record['step'] == 3
  assert (workdir / 'checkpoints' / '3').is_dir()
  assert (workdir / 'conv1_kernels.png').exists()


def write_script(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('#!/usr/bin/env bash\n' + text)
  path.chmod(0o755)
  return path


def run(cmd, env=None, timeout=300, **kwargs):
  return subprocess.run(
      [str(c) for c in cmd], env=dict(os.environ, **(env or {})), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=timeout, **kwargs)


def test_the_main_command_runs_on_two_processes(tmp_path):
  """launch/local.sh 2: a 2x2 mesh with the towers split, each process
  feeding its half of every batch, its lines prefixed with its index."""
  workdir, flags = tiny_run_flags(tmp_path)
  proc = run(['bash', LAUNCH / 'local.sh', 2, *flags],
             env=dict(PYTHON=sys.executable, PYTHONPATH=str(ROOT)))
  out = proc.stdout
  assert proc.returncode == 0, out[-3000:]
  lines = out.splitlines()
  assert any(line.startswith('[process 0] ') and
             "mesh {'data': 2, 'model': 2}" in line for line in lines), (
                 out[-3000:])
  assert any(line.startswith('[process 1] ') for line in lines), out[-3000:]
  assert_tiny_run_finished(workdir)


def test_two_processes_train_from_a_prepared_store(tmp_path):
  """The same run from a raw store: each process opens the store, reads its
  part and sends uint8 patches for its rows of every batch."""
  workdir, flags = tiny_run_flags(tmp_path)
  prepare.prepare(on_tiny_dataset(default.get_config(),
                                  str(tmp_path / 'data'), store_format='raw',
                                  store_dir=str(tmp_path / 'store')))
  proc = run(['bash', LAUNCH / 'local.sh', 2, *flags,
              '--config.input.source=prepared',
              '--config.input.store_format=raw',
              f'--config.input.store_dir={tmp_path / "store"}'],
             env=dict(PYTHON=sys.executable, PYTHONPATH=str(ROOT)))
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert_tiny_run_finished(workdir)


# --- launch/local.sh, with a fake interpreter -------------------------------

# Exits with the status that $STATUSES lists for its --process_id after
# printing its arguments; `-c CODE` (the launcher's port choice) goes to the
# real interpreter.
FAKE_PYTHON = f"""
if [[ $1 == -c ]]; then exec {sys.executable} "$@"; fi
for a; do [[ $a == --process_id=* ]] && id=${{a#*=}}; done
echo "args: $*"
echo "stderr of $id" >&2
statuses=($STATUSES)
exit "${{statuses[id]}}"
"""


@pytest.mark.parametrize('n', ['', '0', '-1', '2x', 'two', '--config=x'])
def test_local_launch_refuses_a_bad_process_count(n, tmp_path):
  fake = write_script(tmp_path / 'python', FAKE_PYTHON)
  proc = subprocess.run(['bash', str(LAUNCH / 'local.sh')] +
                        ([n] if n else []), cwd=ROOT, capture_output=True,
                        text=True, timeout=60,
                        env=dict(os.environ, PYTHON=str(fake), STATUSES='0'))
  assert proc.returncode == 2
  assert 'usage:' in proc.stderr and proc.stdout == ''  # nothing started


@pytest.mark.parametrize('statuses,expected', [
    ('0', 0), ('0 0 0', 0), ('0 75', 75), ('75 75', 75), ('1', 1),
    ('0 75 3 4', 3),  # the first failure other than 75 wins over a 75
    ('75 0 0 2', 2), ('0 0 75', 75),
])
def test_local_launch_exit_status(statuses, expected, tmp_path):
  n = len(statuses.split())
  fake = write_script(tmp_path / 'python', FAKE_PYTHON)
  proc = run(['bash', LAUNCH / 'local.sh', n, '--workdir=/tmp/a b', '--x=1'],
             env=dict(PYTHON=str(fake), STATUSES=statuses), timeout=60)
  assert proc.returncode == expected, proc.stdout
  lines = proc.stdout.splitlines()
  args = sorted(line for line in lines if 'args: ' in line)
  assert len(args) == n, proc.stdout
  port = args[0].split('--coordinator_address=127.0.0.1:')[1].split()[0]
  assert 0 < int(port) < 65536
  for i, line in enumerate(args):  # every process: the same coordinator
    assert line == (f'[process {i}] args: -m alexnet_jax.main --workdir=/tmp/'
                    f'a b --x=1 --coordinator_address=127.0.0.1:{port} '
                    f'--num_processes={n} --process_id={i}')
    assert f'[process {i}] stderr of {i}' in lines


def test_local_launch_takes_the_port_from_env(tmp_path):
  fake = write_script(tmp_path / 'python', FAKE_PYTHON)
  proc = run(['bash', LAUNCH / 'local.sh', 1],
             env=dict(PYTHON=str(fake), STATUSES='0', PORT='23456'),
             timeout=60)
  assert proc.returncode == 0, proc.stdout
  assert '--coordinator_address=127.0.0.1:23456 ' in proc.stdout


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize('to_group', [False, True], ids=['kill', 'killpg'])
def test_local_launch_passes_signals_on(sig, to_group, tmp_path):
  """SIGTERM, or Ctrl-C (SIGINT to the whole group), reaches every process
  as SIGTERM; all are waited for; their 75 is the launcher's status."""
  ready = tmp_path / 'ready'
  ready.mkdir()
  fake = write_script(tmp_path / 'python', f"""
for a; do [[ $a == --process_id=* ]] && id=${{a#*=}}; done
trap 'echo "SIGTERM, saving"; sleep 0.5; echo saved; exit 75' TERM
touch {ready}/$id
for ((i = 0; i < 1200; i++)); do sleep 0.1; done
exit 1
""")
  proc = subprocess.Popen(
      ['bash', str(LAUNCH / 'local.sh'), '2'], cwd=ROOT,
      env=dict(os.environ, PYTHON=str(fake), PORT='1'), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      start_new_session=True)
  deadline = time.monotonic() + 60
  while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
  (os.killpg if to_group else os.kill)(proc.pid, sig)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 75, out
  for i in range(2):
    assert f'[process {i}] SIGTERM, saving' in out
    assert f'[process {i}] saved' in out  # the prefixers outlived a signal


# --- launch/slurm.sbatch, with a fake srun and scontrol ---------------------

def port_is_free(port):
  """Whether the coordinator could bind [::]:port (or 0.0.0.0:port)."""
  family, host = ((socket.AF_INET6, '::') if socket.has_ipv6 else
                  (socket.AF_INET, ''))
  try:
    with socket.socket(family) as s:
      s.bind((host, port))
    return True
  except OSError:
    return False


def free_slurm_job_id():
  """A job id for which JAX's SLURM coordinator port is free."""
  for _ in range(100):
    job_id = random.randrange(10**5, 10**7)
    if port_is_free(job_id % 4096 + 61440):
      return job_id
  raise RuntimeError('no free port in 61440..65535')


def fake_slurm(tmp_path, srun_body):
  """A bin folder with `srun` (srun_body) and an `scontrol` that appends its
  arguments to tmp_path/scontrol; the env that puts it first on PATH."""
  bin_dir = tmp_path / 'bin'
  write_script(bin_dir / 'srun', srun_body)
  write_script(bin_dir / 'scontrol',
               f'echo "$*" >> {tmp_path / "scontrol"}\n')
  return dict(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
              SLURM_JOB_ID=str(free_slurm_job_id()), SLURM_NTASKS='2')


# SLURM_NTASKS copies of the command on this machine, as one node; the
# highest status of theirs is srun's.
FAKE_SRUN = """
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=localhost \\
      SLURM_STEP_NUM_NODES=1 "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid"; s=$?
  ((s > status)) && status=$s
done
exit "$status"
"""


def test_slurm_batch_script_runs_the_main_job(tmp_path):
  """Two tasks that find each other through SLURM's variables alone."""
  env = fake_slurm(tmp_path, FAKE_SRUN)
  workdir, flags = tiny_run_flags(tmp_path)
  proc = run(['bash', LAUNCH / 'slurm.sbatch', *flags],
             env=dict(env, PYTHON=sys.executable, PYTHONPATH=str(ROOT),
                      JAX_NUM_CPU_DEVICES='2'))
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert "mesh {'data': 2, 'model': 2}" in proc.stdout
  assert_tiny_run_finished(workdir)
  assert not (tmp_path / 'scontrol').exists()  # finished: not requeued


@pytest.mark.parametrize('status,requeued', [(75, True), (1, False),
                                             (0, False)])
def test_slurm_batch_script_requeues_a_preempted_job(status, requeued,
                                                     tmp_path):
  env = fake_slurm(tmp_path, f'echo "srun $*"; exit {status}\n')
  proc = run(['bash', LAUNCH / 'slurm.sbatch', '--workdir=/tmp/w'], env=env,
             timeout=60)
  assert proc.returncode == status, proc.stdout
  assert 'srun python -m alexnet_jax.main --workdir=/tmp/w' in proc.stdout
  scontrol = tmp_path / 'scontrol'
  if requeued:
    assert scontrol.read_text() == f'requeue {env["SLURM_JOB_ID"]}\n'
  else:
    assert not scontrol.exists()


def test_slurm_batch_script_passes_the_early_warning_on(tmp_path):
  """--signal=B:USR1@300 warns the batch shell: it asks srun's tasks to save
  (SIGTERM), waits for them and requeues; SLURM's own SIGTERM to the shell
  does not end it early."""
  ready = tmp_path / 'ready'
  env = fake_slurm(tmp_path, f"""
trap 'echo "srun: SIGTERM"; sleep 0.5; exit 75' TERM
touch {ready}
for ((i = 0; i < 1200; i++)); do sleep 0.1; done
exit 1
""")
  proc = subprocess.Popen(
      ['bash', str(LAUNCH / 'slurm.sbatch'), '--workdir=/tmp/w'], cwd=ROOT,
      env=dict(os.environ, **env), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 60
  while not ready.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # SLURM's, to the batch shell: survived
  time.sleep(0.3)
  assert proc.poll() is None
  proc.send_signal(signal.SIGUSR1)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 75, out
  assert 'srun: SIGTERM' in out
  assert (tmp_path / 'scontrol').read_text() == (
      f'requeue {env["SLURM_JOB_ID"]}\n')


def test_slurm_batch_script_asks_for_a_requeueable_job():
  directives = [line.split()[1] for line in
                (LAUNCH / 'slurm.sbatch').read_text().splitlines()
                if line.startswith('#SBATCH ')]
  for option in ['--requeue', '--open-mode=append', '--ntasks-per-node=8',
                 '--gpus-per-node=8']:
    assert option in directives
  assert any(d.startswith('--time=') for d in directives)


# --- launch/multinode.sh ----------------------------------------------------

ECHO_ARGS = 'for a; do echo "$a"; done\n'
NODE_ENV = dict(COORDINATOR='node0:12345', NUM_NODES='2', NODE_RANK='1')


@pytest.mark.parametrize('changes,message', [
    (dict(NODE_RANK=None), 'NODE_RANK'),
    (dict(NODE_RANK='2'), 'NODE_RANK=2 must be below NUM_NODES=2'),
    (dict(NODE_RANK='x'), 'NODE_RANK'),
    (dict(NUM_NODES=None), 'NUM_NODES'),
    (dict(NUM_NODES='0'), 'NUM_NODES'),
    (dict(COORDINATOR=None), 'COORDINATOR'),
    (dict(COORDINATOR='node0'), 'COORDINATOR=node0 is not HOST:PORT'),
])
def test_multinode_launch_checks_its_env(changes, message, tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in NODE_ENV}
  env.update(NODE_ENV, PYTHON=str(write_script(tmp_path / 'py', ECHO_ARGS)))
  env.update({k: v for k, v in changes.items() if v is not None})
  for k in [k for k, v in changes.items() if v is None]:
    del env[k]
  proc = subprocess.run(['bash', str(LAUNCH / 'multinode.sh'), '--x=1'],
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert message in proc.stderr and proc.stdout == ''


def test_multinode_launch_execs_the_main_job(tmp_path):
  fake = write_script(tmp_path / 'py', ECHO_ARGS + 'exit 75\n')
  proc = run(['bash', LAUNCH / 'multinode.sh', '--config=configs/x.py',
              '--workdir=/nfs/a b'], env=dict(NODE_ENV, PYTHON=str(fake)),
             timeout=60)
  assert proc.returncode == 75  # exec: the job's status is the script's
  assert proc.stdout.splitlines() == [
      '-m', 'alexnet_jax.main', '--config=configs/x.py', '--workdir=/nfs/a b',
      '--coordinator_address=node0:12345', '--num_processes=2',
      '--process_id=1']


# --- launch/tpu_pod.sh, with a fake gcloud ----------------------------------

TPU_ENV = dict(TPU_NAME='my-pod', ZONE='us-central2-b', REPO='my repo')


def fake_gcloud(tmp_path):
  """A gcloud that prints its arguments, one a line, then runs --command in
  bash from tmp_path/home, as a worker's ssh would."""
  home = tmp_path / 'home'
  (home / 'my repo').mkdir(parents=True)
  write_script(tmp_path / 'bin' / 'gcloud', f"""
for a; do echo "$a"; done
for a; do [[ $a == --command=* ]] && command=${{a#--command=}}; done
cd {home} && exec bash -c "$command"
""")
  return dict(PATH=f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}')


def test_tpu_pod_launch_runs_the_main_job_on_every_worker(tmp_path):
  env = fake_gcloud(tmp_path)
  # The workers' "interpreter": prints where it runs and its arguments.
  fake = write_script(tmp_path / 'py', 'pwd\n' + ECHO_ARGS)
  flags = ['--config=configs/imagenet.py', '--workdir=gs://b/runs/a b',
           "--config.note=it's \"quoted\" $HOME"]
  proc = run(['bash', LAUNCH / 'tpu_pod.sh', *flags],
             env=dict(env, **TPU_ENV, PYTHON=str(fake)), timeout=60)
  assert proc.returncode == 0, proc.stdout
  lines = proc.stdout.splitlines()
  assert lines[:7] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-pod',
                       '--zone=us-central2-b', '--worker=all']
  assert lines[7].startswith('--command=cd my\\ repo && ')
  assert (' -m alexnet_jax.main --config=configs/imagenet.py --workdir=gs://b/'
          'runs/a\\ b --config.note=' in lines[7])
  # Through the remote shell: in the clone, the flags exactly as given.
  assert lines[8:] == [str(tmp_path / 'home' / 'my repo'), '-m',
                       'alexnet_jax.main', *flags]


@pytest.mark.parametrize('missing', ['TPU_NAME', 'ZONE', 'REPO'])
def test_tpu_pod_launch_checks_its_env(missing, tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in TPU_ENV}
  env.update(TPU_ENV, **fake_gcloud(tmp_path))
  del env[missing]
  proc = subprocess.run(['bash', str(LAUNCH / 'tpu_pod.sh'), '--x=1'],
                        env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert f'set {missing}' in proc.stderr and proc.stdout == ''


def test_sigterm_on_one_process_stops_both_at_the_same_step(tmp_path):
  """JAX's coordination service tells every process of a SIGTERM on one;
  all save the same step and exit 75 (train.EXIT_PREEMPTED)."""
  port, workdir = free_port(), tmp_path / 'run'
  flags = ['--config=configs/default.py', f'--workdir={workdir}',
           '--config.num_train_steps=1000', '--config.batch_size=16',
           '--config.log_every_steps=2',
           f'--config.input.dataset={TINY_DATASET}',
           f'--config.input.data_dir={tmp_path / "data"}',
           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  log1 = tmp_path / 'process1.log'  # a file: nobody reads its pipe early
  with open(log1, 'w') as out1:
    procs = [subprocess.Popen(
        [sys.executable, '-m', 'alexnet_jax.main', *flags,
         f'--process_id={i}'],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
        stdout=subprocess.PIPE if i == 0 else out1,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
  lines = []
  for line in procs[0].stdout:  # training is under way
    lines.append(line)
    if re.search(r'step \d+/1000', line):
      procs[1].send_signal(signal.SIGTERM)  # process 1 only
      break
  outs = [''.join(lines) + procs[0].communicate(timeout=300)[0]]
  procs[1].wait(timeout=300)
  outs.append(log1.read_text())
  stops = []
  for proc, out in zip(procs, outs):
    assert proc.returncode == 75, out[-3000:]
    stops.append(int(re.search(r'Stopped by SIGTERM at step (\d+)',
                               out).group(1)))
  assert stops[0] == stops[1] < 1000
  assert (workdir / 'checkpoints' / str(stops[0])).is_dir()
