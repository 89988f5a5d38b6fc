"""What every source shares: the Source base class, the Skipped marker and the SkipLog of unusable
examples, the RecordReadError of a stored record, and `decode_image`.

The source kinds are in video_sources.py (prepared clips, raw videos) and image_sources.py (TFDS,
image folders, npz); sources.py builds one from the config and names them all.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from typing import Any

from absl import logging
import numpy as np

from vicmae_jax.data import augment

# A pair needs two distinct frames; shorter clips are skipped rather than paired with themselves.
MIN_CLIP_FRAMES = 2
_LOGGED_SKIPS_PER_SOURCE = 20


@dataclasses.dataclass(frozen=True)
class Skipped:
  """Marker for an example that cannot be used: which source, which record/file, and why."""

  source: str
  key: str
  reason: str
  detail: str = ""


class SkipLog:
  """Thread-safe record of skipped examples, readable after (or during) a run.

  `count` is the number of distinct bad records/files; `events` counts every time one was met
  (a bad file is met again each epoch). Each distinct skip is logged once (the first
  _LOGGED_SKIPS_PER_SOURCE per source in full, then a running count).
  With worker processes (worker_count > 0) each process keeps its own log; this one sees only
  the skips of the process it lives in.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._seen: dict[tuple[str, str], Skipped] = {}
    self.events = 0

  def record(self, skipped: Skipped) -> Skipped:
    with self._lock:
      self.events += 1
      key = (skipped.source, skipped.key)
      if key in self._seen:
        return skipped
      self._seen[key] = skipped
      per_source = sum(1 for source, _ in self._seen if source == skipped.source)
    if per_source <= _LOGGED_SKIPS_PER_SOURCE:
      logging.warning(
        "Skipping %s in source %r: %s %s",
        skipped.key,
        skipped.source,
        skipped.reason,
        skipped.detail,
      )
    elif per_source % 100 == 0:
      logging.warning("Source %r: %d bad records skipped so far", skipped.source, per_source)
    return skipped

  @property
  def count(self) -> int:
    with self._lock:
      return len(self._seen)

  def skipped(self) -> list[Skipped]:
    with self._lock:
      return list(self._seen.values())

  def by_reason(self) -> dict[str, int]:
    with self._lock:
      return dict(collections.Counter(s.reason for s in self._seen.values()))

  def __getstate__(self):
    # Sources travel to worker processes by pickling; the lock cannot, and counts start afresh there.
    return {"_seen": dict(self._seen), "events": self.events}

  def __setstate__(self, state):
    self.__init__()
    self._seen.update(state["_seen"])
    self.events = state["events"]


class Source:
  """Shared parts: a name, label names, the skip log, bounds checking."""

  kind: str = ""

  def __init__(self, name: str, skip_log: SkipLog | None):
    self.name = name
    self.skip_log = skip_log if skip_log is not None else SkipLog()
    self.label_names: list[str] = []

  def __len__(self) -> int:
    raise NotImplementedError

  def _check_index(self, index: int) -> int:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"source {self.name!r}: index {index} out of range [0, {len(self)})")
    return index

  def skip(self, key: Any, reason: str, detail: str = "") -> Skipped:
    return self.skip_log.record(Skipped(self.name, str(key), reason, detail))

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r}, len={len(self)})"


class RecordReadError(ValueError):
  """A stored record could not be read."""


def existing_path(path: str | os.PathLike, what: str, *, folder: bool) -> str:
  """`path` with `~` expanded; FileNotFoundError naming `what` when it is no folder / no file."""
  expanded = os.path.expanduser(str(path))
  if not (os.path.isdir if folder else os.path.isfile)(expanded):
    raise FileNotFoundError(f"{what} not found: {path}")
  return expanded


def decode_image(data: Any) -> np.ndarray:
  """uint8 [H, W, 3] RGB from encoded bytes or an array, decoded as the augmentations decode
  (augment.to_array: libjpeg-turbo / OpenCV / Pillow); raises ValueError if undecodable."""
  return augment.to_array(bytes(data) if isinstance(data, memoryview) else data)
