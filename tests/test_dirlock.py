"""The directory lock: a second holder is refused with the first one named; a killed holder's
lock is taken over."""

import os
import signal
import subprocess
import sys

import pytest

from vicmae_jax import dirlock

_HOLD = """
import sys, time
from vicmae_jax import dirlock
lock = dirlock.DirLock(sys.argv[1], what="workdir").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _start_holder(directory):
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(directory)], stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_holder_refused_then_takes_over_after_kill(tmp_path):
  holder = _start_holder(tmp_path)
  try:
    with pytest.raises(dirlock.LockedError) as info:
      dirlock.DirLock(str(tmp_path), what="workdir").acquire()
    message = str(info.value)
    assert f"workdir {tmp_path} is in use by another run" in message
    assert f"pid {holder.pid}" in message and "host " in message and "started 20" in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The lock file stays behind, naming the dead process; the next run takes the lock over.
  assert os.path.exists(tmp_path / ".lock")
  with dirlock.DirLock(str(tmp_path)) as lock:
    assert f'"pid": {os.getpid()}' in open(lock.path).read()


def test_release_and_reacquire_in_one_process(tmp_path):
  first = dirlock.DirLock(str(tmp_path)).acquire()
  with pytest.raises(dirlock.LockedError):  # a second open file description is excluded too
    dirlock.DirLock(str(tmp_path)).acquire()
  first.release()
  dirlock.DirLock(str(tmp_path)).acquire().release()


def test_separate_names_do_not_conflict(tmp_path):
  with dirlock.DirLock(str(tmp_path), name=".lock.p0"):
    with dirlock.DirLock(str(tmp_path), name=".lock.p1"):
      pass
