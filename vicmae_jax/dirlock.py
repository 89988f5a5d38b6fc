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

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
from typing import Any

logger = logging.getLogger(__name__)

try:
  import fcntl
except ImportError:  # Windows: no flock; the lock becomes a no-op with a warning
  fcntl = None


class LockedError(RuntimeError):
  """Another live process holds the directory's lock; the message names it (`holder`: who)."""

  def __init__(self, message: str, holder: dict[str, Any] | None = None):
    super().__init__(message)
    self.holder = holder or {}


class DirLock:
  """`with DirLock(directory, what="workdir"):` -- raises LockedError when already held.

  `previous`: the holder recorded in a lock file left by a process that was killed (None when the
  file was new or removed at the last release). `remove_on_release`: delete the file when done, so
  a lock file found later always names a run that did not end normally.
  """

  def __init__(
    self,
    directory: str,
    *,
    name: str = ".lock",
    what: str = "directory",
    remove_on_release: bool = False,
  ):
    self.directory = os.path.abspath(directory)
    self.path = os.path.join(self.directory, name)
    self.what = what
    self.remove_on_release = remove_on_release
    self.previous: dict[str, Any] | None = None
    self._fd: int | None = None

  def acquire(self) -> "DirLock":
    os.makedirs(self.directory, exist_ok=True)
    if fcntl is None:
      logger.warning("%s: no file locking on this platform; not locked", self.path)
      return self
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          os.close(fd)
          logger.warning("%s: this filesystem refuses file locks (%s); not locked", self.path, e)
          return self
        holder = _read_holder(fd)
        os.close(fd)
        raise LockedError(
          f"{self.what} {self.directory} is in use by another run ({describe(holder)}); "
          f"stop it or use another {self.what} (lock file {self.path})",
          holder,
        ) from None
      # The holder before may have removed the file between our open and flock: lock the new one.
      try:
        if os.path.samestat(os.fstat(fd), os.stat(self.path)):
          break
      except FileNotFoundError:
        pass
      os.close(fd)
    self.previous = _read_holder(fd)
    holder = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fd, self._fd = self._fd, None
      if self.remove_on_release:
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
      os.close(fd)  # closing drops the flock

  def __enter__(self) -> "DirLock":
    return self if self._fd is not None else self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


def held_by(directory: str, name: str = ".lock") -> dict[str, Any] | None:
  """Who holds `directory`'s lock now ({} when unknown), or None when nobody does. Takes nothing:
  a shared lock is tried and dropped at once on the file opened read-only."""
  path = os.path.join(directory, name)
  if fcntl is None or not os.path.isfile(path):
    return None
  fd = os.open(path, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_holder(fd) or {}
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _read_holder(fd: int) -> dict[str, Any] | None:
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


def describe(holder: dict[str, Any] | None) -> str:
  """'host H, pid P, started T' of a lock holder."""
  if not holder:
    return "holder unknown"
  return (
    f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
    f"started {holder.get('started', '?')}"
  )
