"""Writing one shard: decoding a video into a clip of JPEG frames, writing a shard and its index
under temporary names with its state json, and reading back the state of a shard already written
(refusing one made with other settings or from other videos).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from vicmae_jax.data import formats, records, video_io
from vicmae_jax.data.shard_check import _file_record
from vicmae_jax.data.shard_files import _state_path, _temp_path, _write_json

# The prepare's logger: its messages keep the name they are configured by.
logger = logging.getLogger("vicmae_jax.data.prepare")

REASON_UNEXPECTED = "unexpected error"


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
  """uint8 [H, W, 3] -> JPEG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def read_clip(entry: formats.VideoEntry, settings: dict[str, Any]) -> tuple[dict[str, Any], float]:
  """Decodes one video into (clip dict as in records.py, duration in seconds). Raises VideoDecodeError."""
  frames, timestamps, source_fps = video_io.read_frames(
    entry.path,
    target_fps=settings["fps"],
    short_side=settings["short_side"],
    max_frames=settings["max_frames"],
  )
  if len(frames) < 2:
    raise video_io.VideoDecodeError(
      entry.path, video_io.REASON_TOO_SHORT, f"{len(frames)} frame(s)"
    )
  # The time the kept frames cover: each lasts one interval of the stored rate (or of the source,
  # when that is slower and every source frame was kept).
  stored_fps = min(settings["fps"], source_fps) if source_fps > 0 else settings["fps"]
  duration = float(timestamps[-1] - timestamps[0]) + 1.0 / stored_fps
  if duration < settings["min_duration"] - 1e-6:
    raise video_io.VideoDecodeError(
      entry.path,
      video_io.REASON_TOO_SHORT,
      f"{duration:.2f} s < min_duration {settings['min_duration']} s",
    )
  clip = {
    "clip_id": entry.clip_id,
    "label": entry.label,
    "label_name": entry.label_name,
    "source_fps": source_fps,
    "timestamps": timestamps.astype(np.float32),
    "frames": [encode_jpeg(frame, settings["jpeg_quality"]) for frame in frames],
    "height": frames.shape[1],
    "width": frames.shape[2],
  }
  return clip, duration


def _entries_digest(entries: Sequence[formats.VideoEntry]) -> str:
  digest = hashlib.sha256()
  for entry in entries:
    digest.update(f"{entry.path}\0{entry.label}\0{entry.clip_id}\n".encode())
  return digest.hexdigest()[:16]


def _write_shard(task: dict[str, Any], on_clip=None) -> dict[str, Any]:
  """Writes one shard and its index; returns its state (counts, skips, longest clip, settings,
  sizes and sha256 of both files)."""
  output, name, entries, settings = task["output"], task["name"], task["entries"], task["settings"]
  final_path = os.path.join(output, name)
  shard_temp = _temp_path(final_path)
  index_temp = _temp_path(records.index_path(final_path))
  try:
    writer = records.ShardWriter(shard_temp, index_temp)
    num_clips = num_frames = 0
    max_clip_seconds = 0.0
    skipped = []
    try:
      for entry in entries:
        try:
          clip, duration = read_clip(entry, settings)
        except video_io.VideoDecodeError as error:
          skipped.append({"path": entry.path, "reason": error.reason, "detail": error.detail or ""})
        except Exception as error:  # noqa: BLE001 - one odd file must not stop a day-long job
          detail = f"{type(error).__name__}: {error}"
          skipped.append({"path": entry.path, "reason": REASON_UNEXPECTED, "detail": detail})
        else:
          writer.write(clip)
          num_clips += 1
          num_frames += len(clip["frames"])
          max_clip_seconds = max(max_clip_seconds, duration)
        if on_clip is not None:
          on_clip()
    finally:
      writer.close()
    state = {
      "name": name,
      "format_version": records.FORMAT_VERSION,
      "num_clips": num_clips,
      "num_frames": num_frames,
      "max_clip_seconds": max_clip_seconds,
      "skipped": skipped,
      "settings": settings,
      "entries_digest": task["entries_digest"],
      "files": _file_record(shard_temp, index_temp),
    }
    # State first, the shard itself last: a shard file present means its index and state are
    # complete (and a rerun checks both files against the sizes and sums in the state).
    _write_json(_state_path(output, name), state)
    os.replace(index_temp, records.index_path(final_path))
    os.replace(shard_temp, final_path)
  finally:
    for temp in (shard_temp, index_temp):
      with contextlib.suppress(FileNotFoundError):
        os.remove(temp)
  return state


_OLD_FORMAT = "old format"


def _completed_state(
  output: str, name: str, settings: dict[str, Any], entries_digest: str
) -> dict[str, Any] | str | None:
  """The state of an already written shard; None if absent; _OLD_FORMAT if it must be written again.

  Raises if the shard was made with other settings or from other videos. Its files are checked
  against the state later (`_check_shard`).
  """
  if not os.path.isfile(os.path.join(output, name)) or not os.path.isfile(
    _state_path(output, name)
  ):
    return None
  try:
    with open(_state_path(output, name)) as file:
      state = json.load(file)
  except ValueError:
    logger.warning("%s: unreadable, preparing %s again", _state_path(output, name), name)
    return None
  for key, value in settings.items():
    if state["settings"].get(key) != value:
      raise ValueError(
        f"{os.path.join(output, name)} was prepared with {key}={state['settings'].get(key)!r}, "
        f"this run asks for {key}={value!r}: use another --output or delete the old shards"
      )
  if state["entries_digest"] != entries_digest:
    raise ValueError(
      f"{os.path.join(output, name)} was prepared from a different list of videos: "
      "use another --output or delete the old shards"
    )
  if state.get("format_version") != records.FORMAT_VERSION or not os.path.isfile(
    records.index_path(os.path.join(output, name))
  ):
    return _OLD_FORMAT
  return state
