"""Transparent huge pages for the host's large buffers (XLA:CPU's arrays).

XLA:CPU allocates every large intermediate (Winograd's transformed
inputs, pooling's views, the LRN's squares: tens to hundreds of MB a step)
with ``malloc``, which maps fresh memory for each one; the first write to
each 4 KiB page then faults. Measured on the 2-core machine: writing a new
167 MB array took 108 ms, 30 ms with huge pages; the paper net's train step
at batch 32, conv1 as patches, ran 1.3x faster (docs/design.md,
"Per-backend implementations").

glibc (2.35 and later) asks the kernel for huge pages for its mapped
chunks when started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``. A
tunable is read once, at process start, so the commands' ``__main__``
blocks call :func:`reexec_with_huge_pages`, which restarts the same
command line (same process id) with it set. Nothing else changes: the
kernel falls back to small pages when no huge page is free. Set
``ALEXNET_JAX_HUGE_PAGES=0`` to run without it.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'ALEXNET_JAX_HUGE_PAGES'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple[int, ...]:
  name, version = platform.libc_ver()
  if name != 'glibc' or not version:
    return ()
  return tuple(int(p) for p in version.split('.')[:2])


def _thp_enabled() -> bool:
  """Whether the kernel gives huge pages to a mapping that asks for them
  (its mode is ``[always]`` or ``[madvise]``, not ``[never]``)."""
  try:
    with open(_THP_MODE) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def tuned_environment(environ: dict[str, str], glibc: tuple[int, ...],
                      thp: bool) -> dict[str, str] | None:
  """The environment to restart with, or None when there is nothing to do
  (already set, opted out, or no glibc >= 2.35 or huge pages here)."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if (TUNABLE in tunables.split(':') or environ.get(OPT_OUT) == '0'
      or glibc < (2, 35) or not thp):
    return None
  return {**environ,
          'GLIBC_TUNABLES': f'{tunables}:{TUNABLE}' if tunables else TUNABLE}


def reexec_with_huge_pages() -> None:
  """Restarts this command with huge pages for malloc, once (see the module
  docstring); returns without doing anything where that does not apply.
  Call it first in a ``__main__`` block, before JAX starts."""
  if sys.platform != 'linux':
    return
  environ = tuned_environment(dict(os.environ), _glibc_version(),
                              _thp_enabled())
  if environ is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)
