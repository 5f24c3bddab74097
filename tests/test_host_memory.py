"""When the commands restart themselves with huge pages for malloc."""

import subprocess
import sys

from alexnet_jax import host_memory

GLIBC = (2, 36)


def test_adds_the_tunable_once_keeping_others():
  env = host_memory.tuned_environment({'PATH': '/bin'}, GLIBC, thp=True)
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  other = host_memory.tuned_environment(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, GLIBC, thp=True)
  assert other['GLIBC_TUNABLES'] == (
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
  # Already restarted: nothing to do, so there is no restart loop.
  assert host_memory.tuned_environment(env, GLIBC, thp=True) is None


def test_nothing_to_do_where_it_cannot_help_or_is_turned_off():
  assert host_memory.tuned_environment({}, (2, 31), thp=True) is None
  assert host_memory.tuned_environment({}, (), thp=True) is None  # musl, macOS
  assert host_memory.tuned_environment({}, GLIBC, thp=False) is None
  assert host_memory.tuned_environment(
      {host_memory.OPT_OUT: '0'}, GLIBC, thp=True) is None


def test_a_command_restarts_with_the_same_arguments_and_process(tmp_path):
  """The restarted process is the same process (a scheduler's signals still
  reach it) and sees the same command line."""
  script = tmp_path / 'command.py'
  script.write_text(
      'import os, sys\n'
      'from alexnet_jax import host_memory\n'
      'print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])\n'
      'host_memory.reexec_with_huge_pages()\n')
  env = {'PYTHONPATH': '.', 'PATH': '/usr/bin:/bin'}
  out = subprocess.run([sys.executable, str(script), '--flag=1'], env=env,
                       capture_output=True, text=True, check=True).stdout
  lines = out.splitlines()
  expected = host_memory.tuned_environment(
      env, host_memory._glibc_version(), host_memory._thp_enabled())
  if expected is None:  # not applicable on this machine: one run, no restart
    assert len(lines) == 1
    return
  first, second = (line.split(' ', 2) for line in lines)
  assert first[0] == second[0]  # same process id
  assert first[1] == 'None' and second[1] == 'glibc.malloc.hugetlb=1'
  assert first[2] == second[2] == "['--flag=1']"
