"""One writer per directory: an exclusive, non-blocking lock on a file inside it.

Used for a training workdir (`main.run`) and a prepare output folder. The lock is an
`fcntl.flock` on `DIR/<name>`, which the kernel drops when the holding process dies (`kill -9`
included), so a stale lock file left by a killed run is simply taken over by the next one; the
file also records who holds it (host, pid, start time) for the message a second run prints.

Filesystems: on local disks flock is exact. On NFS (v4, or v3 with lockd) Linux maps flock to
byte-range locks that the server enforces between clients, so two hosts are excluded too; on
filesystems without lock support (some FUSE mounts, object-store mounts) taking the lock fails
with an OSError, and `acquire` then logs a warning and goes on unlocked rather than refusing to
run. Multi-host runs take one lock per process (`name` carries the process index), so a second
launch of the same job on a shared workdir is refused on every host.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time

logger = logging.getLogger(__name__)

try:
  import fcntl
except ImportError:  # Windows: no flock; the lock becomes a no-op with a warning
  fcntl = None


class LockedError(RuntimeError):
  """Another live process holds the directory's lock; the message names it."""


class DirLock:
  """`with DirLock(directory, what="workdir"):` -- raises LockedError when already held."""

  def __init__(self, directory: str, *, name: str = ".lock", what: str = "directory"):
    self.directory = os.path.abspath(directory)
    self.path = os.path.join(self.directory, name)
    self.what = what
    self._fd: int | None = None

  def acquire(self) -> "DirLock":
    os.makedirs(self.directory, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
      logger.warning("%s: no file locking on this platform; not locked", self.path)
      os.close(fd)
      return self
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        os.close(fd)
        logger.warning("%s: this filesystem refuses file locks (%s); not locked", self.path, e)
        return self
      holder = _describe(_read_holder(fd))
      os.close(fd)
      raise LockedError(
        f"{self.what} {self.directory} is in use by another run ({holder}); "
        f"stop it or use another {self.what} (lock file {self.path})"
      ) from None
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fd, self._fd = self._fd, None
      os.close(fd)  # closing drops the flock; the file stays (a new holder rewrites it)

  def __enter__(self) -> "DirLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return "holder unknown"
  started = holder.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
  return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"
