"""Worker processes that end with the prepare that started them (Linux: prctl PR_SET_PDEATHSIG;
elsewhere a thread watching the parent pid), and the pool that runs the shard jobs in them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT_POLL_SECONDS = 1.0


def _die_with_parent() -> bool:
  """Linux: has the kernel SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
  except (OSError, AttributeError):
    return False


def _exit_when_parent_dies(parent_pid: int, interval: float = _PARENT_POLL_SECONDS) -> None:
  """Watches the parent pid from a daemon thread and ends this process once it changes: a dead
  parent's children are handed to another process (init or a subreaper)."""

  def watch():
    while True:
      if os.getppid() != parent_pid:
        os._exit(1)
      time.sleep(interval)

  threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_init(parent_pid: int) -> None:
  if not _die_with_parent():
    _exit_when_parent_dies(parent_pid)
  if os.getppid() != parent_pid:  # the parent died before the line above took effect
    os._exit(1)


class WorkerPool:
  """Runs jobs in up to `max_processes` worker processes (spawned on first use, closed with
  `stack`); with one worker, or a single job, in this process."""

  def __init__(self, workers: int, max_processes: int, stack: contextlib.ExitStack):
    self._workers = workers
    self._max_processes = max_processes
    self._stack = stack
    self._pool = None

  def run_each(
    self, function: Callable[[Any], Any], jobs: Sequence[Any]
  ) -> Iterator[tuple[dict[str, Any], Any]]:
    """(job, function(job)) for every job, in worker processes when there are several."""
    if self._workers == 1 or len(jobs) <= 1:
      for job in jobs:
        yield job, function(job)
      return
    if self._pool is None:
      # spawn: the caller may hold JAX / threads, which do not survive fork.
      self._pool = self._stack.enter_context(
        concurrent.futures.ProcessPoolExecutor(
          min(self._workers, self._max_processes),
          mp_context=multiprocessing.get_context("spawn"),
          initializer=_worker_init,
          initargs=(os.getpid(),),
        )
      )
    futures = {self._pool.submit(function, job): job for job in jobs}
    for future in concurrent.futures.as_completed(futures):
      yield futures[future], future.result()
