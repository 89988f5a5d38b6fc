"""Host memory: keep freed large blocks in the process instead of handing them back to the kernel.

glibc's malloc serves a request above its mmap threshold (128 KiB at start, rising after frees to
at most 32 MiB) with a fresh mmap, and so does every thread's own arena for a request larger than
its 64 MiB heaps, whatever the threshold. XLA's CPU backend allocates each execution's temporaries
as one block from its worker threads and frees it after: for the CPU demo's step a 218 MiB block,
mapped and unmapped every step, so every step faulted in 56,000 fresh zeroed pages (a quarter of
the demo's CPU time in the kernel). `keep_freed_memory` makes every thread allocate from the one
main heap (grown with brk, which holds blocks of any size), never from fresh mappings, and keeps up
to 1 GiB of freed memory at its top: the block is reused in place every step. The resident size
stays at its peak, which the process reaches anyway. Call it before threads start (jax's backend,
the loader's threads): a thread keeps the arena it first allocated from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from absl import logging

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 * 2**30
TOP_PAD = 64 * 2**20


def keep_freed_memory() -> bool:
  """One arena, no mmapped blocks, freed memory kept (up to 1 GiB); True when glibc took them.

  Anything else (another C library, a preloaded allocator that ignores mallopt) is left alone, and
  so is a process whose environment tunes glibc's malloc itself (any MALLOC_* variable).
  """
  if any(name.startswith("MALLOC_") for name in os.environ):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  done = all(
    mallopt(parameter, value) == 1
    for parameter, value in (
      (_M_ARENA_MAX, 1),
      (_M_MMAP_MAX, 0),
      (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
      (_M_TOP_PAD, TOP_PAD),
    )
  )
  if not done:
    logging.info("mallopt refused the thresholds; host memory is managed by the defaults")
  return done
