"""host_memory.keep_freed_memory: blocks freed in a thread are reused, not faulted in again."""

import subprocess
import sys

from runs import REPO

_SCRIPT = """
import ctypes, resource, sys, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "keep":
  from vicmae_jax import host_memory
  assert host_memory.keep_freed_memory()

def work():
  for _ in range(8):  # a 96 MiB block, written and freed, as XLA's step temporaries are
    block = libc.malloc(96 * 2**20)
    ctypes.memset(block, 1, 96 * 2**20)
    libc.free(block)

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
  out = subprocess.run(
    [sys.executable, "-c", _SCRIPT, mode],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
    env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
  )
  return int(out.stdout.split()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
  pages = 96 * 2**20 // 4096
  default = _faults("default")
  kept = _faults("keep")
  assert default > 6 * pages  # glibc's defaults: a fresh mapping (and its faults) every time
  assert kept < 2 * pages, (kept, default)  # faulted in once, then reused
