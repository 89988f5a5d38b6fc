"""The names and small files of a prepared folder: shard names, the temporary names unique to each
writer and the removal of those a dead run left, the hidden per-shard state json, atomic json writes,
and the lock that lets one prepare at a time write to an output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from typing import Any

from vicmae_jax import dirlock

LOCK_NAME = ".prepare.lock"


class OutputLockedError(RuntimeError):
  """Another prepare holds the lock on the output folder."""


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def _state_path(output: str, name: str) -> str:
  return os.path.join(output, f".{name}.json")


def _temp_path(path: str) -> str:
  """A temporary name beside `path`, unique to this writer: its pid and a random suffix."""
  return f"{path}.{os.getpid()}-{secrets.token_hex(4)}.incomplete"


# `<name>.<pid>-<hex>.incomplete`, and the plain `<name>.incomplete` of earlier versions.
_TEMP_SUFFIX = re.compile(r"\.(?:\d+-[0-9a-f]+\.)?incomplete$")


def _remove_stale_temporaries(output: str, names: set[str]) -> int:
  """Deletes the temporary files of `names` left by runs that died; returns how many."""
  removed = 0
  for entry in os.listdir(output):
    match = _TEMP_SUFFIX.search(entry)
    if match and entry[: match.start()] in names:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(output, entry))
        removed += 1
  return removed


def _write_json(path: str, value: Any, **options) -> None:
  """Writes `value` to `path` atomically (a temporary file renamed into place)."""
  temp = _temp_path(path)
  try:
    with open(temp, "w") as file:
      json.dump(value, file, **options)
    os.replace(temp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temp)


def _output_lock(output: str) -> dirlock.DirLock:
  """One prepare per output folder; the lock file is removed when a run ends, so one found later
  names a prepare that was killed."""
  return dirlock.DirLock(output, name=LOCK_NAME, what="prepare output", remove_on_release=True)
