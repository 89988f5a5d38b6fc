"""The video sources: clips prepared by prepare.py (ArrayRecord shards) and raw video files decoded
on the fly, and the clip lengths the config check reads from them without decoding.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import av
import grain
import numpy as np

from vicmae_jax.data import formats
from vicmae_jax.data import records
from vicmae_jax.data import video_io
from vicmae_jax.data.source_base import (
  MIN_CLIP_FRAMES,
  RecordReadError,
  Skipped,
  SkipLog,
  Source,
)

# --------------------------------------------------------------------------------------------------
# Prepared clips (ArrayRecord shards written by prepare.py).


def prepared_shard_paths(path: str, split: str) -> list[str]:
  """Shard files of a prepared split: `path` is the prepared directory, a glob, or one shard file."""
  path = os.path.expanduser(str(path))
  if os.path.isdir(path):
    pattern = os.path.join(path, f"{split}-*-of-*.array_record")
  elif glob.has_magic(path):
    pattern = path
  elif os.path.isfile(path):
    return [path]
  else:
    raise FileNotFoundError(f"prepared dataset path not found: {path}")
  shards = sorted(glob.glob(pattern))
  if not shards:
    raise FileNotFoundError(f"no ArrayRecord shards match {pattern}")
  return shards


def _open_shards(shards: Sequence[str]):
  """grain's reader over `shards`; one that does not open raises records.DamagedShardError naming it
  (the reader's own error names no file)."""
  try:
    return grain.sources.ArrayRecordDataSource(shards)
  except Exception:
    for shard in shards:
      records.count_records(shard)  # raises on the first damaged one
    raise


class FrameRecords(Sequence):
  """The T frames of one prepared clip, read from the shards only when indexed: `frames[i]` -> JPEG bytes.

  A frame pair thus reads two records, however long the clip. A record that cannot be read raises
  RecordReadError (a ValueError), which the pipeline counts as a skipped example.
  """

  def __init__(self, records_source, first: int, count: int, clip_id: str):
    self._records, self._first, self._count, self.clip_id = (
      records_source,
      int(first),
      int(count),
      clip_id,
    )

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self._count))]
    index = int(index)
    if index < 0:
      index += self._count
    if not 0 <= index < self._count:
      raise IndexError(f"clip {self.clip_id!r}: frame {index} out of range [0, {self._count})")
    try:
      return self._records[self._first + index]
    except Exception as error:  # the reader raises several types for a damaged chunk
      raise RecordReadError(
        f"clip {self.clip_id!r} frame {index}: {type(error).__name__}: {error}"
      ) from error


def prepared_meta_path(shards: Sequence[str], split: str) -> str:
  """Where prepare wrote the `<split>_meta.json` of these shards: beside the first one."""
  return os.path.join(os.path.dirname(shards[0]), f"{split}_meta.json")


def prepared_max_clip_seconds(path: str, split: str = "train") -> float | None:
  """Duration of the longest clip in the shards that `path` selects, from the meta json; None if unknown.

  Unknown when no shard matches, when there is no meta json, when it predates per-shard durations,
  or when a selected shard is not listed in it.
  """
  try:
    shards = prepared_shard_paths(path, split)
  except FileNotFoundError:
    return None
  meta_path = prepared_meta_path(shards, split)
  if not os.path.isfile(meta_path):
    return None
  with open(meta_path, encoding="utf-8") as file:
    meta = json.load(file)
  if "shard_max_clip_seconds" not in meta or "shards" not in meta:
    return None
  per_shard = dict(zip(meta["shards"], meta["shard_max_clip_seconds"]))
  selected = [per_shard.get(os.path.basename(shard)) for shard in shards]
  if any(value is None for value in selected):
    return None
  return float(max(selected))


class PreparedClipSource(Source):
  """Clips from prepared ArrayRecord shards (records.py): the clip index is loaded once, frames on demand.

  Shards of the earlier whole-clip format (no index file beside them) are still read, one whole
  clip record per example, with a warning: prepare them again for speed. All shards of a source
  must be of one format.
  """

  kind = "prepared"

  def __init__(
    self,
    path: str,
    split: str = "train",
    *,
    name: str = "prepared",
    skip_log: SkipLog | None = None,
  ):
    super().__init__(name, skip_log)
    self.shards = prepared_shard_paths(path, split)
    self._records = _open_shards(self.shards)
    index_files = [records.index_path(shard) for shard in self.shards]
    present = [os.path.isfile(index_file) for index_file in index_files]
    if any(present) and not all(present):
      missing = [shard for shard, has_index in zip(self.shards, present) if not has_index]
      raise ValueError(
        f"prepared dataset {path} (split {split!r}) mixes shard formats: {len(missing)} shard(s) have no "
        f"clip index (e.g. {missing[0]}): prepare the split again into one directory"
      )
    self.index: records.ClipIndex | None = None
    if all(present):
      self.index = records.ClipIndex.concatenate([records.read_index(f) for f in index_files])
      if self.index.num_records != len(self._records):
        raise ValueError(
          f"prepared dataset {path} (split {split!r}): the clip indexes list {self.index.num_records} frame "
          f"records, the shards hold {len(self._records)}: prepare the split again"
        )
      size = len(self.index)
    else:
      logging.warning(
        "Source %r: %s holds whole-clip records (format %d): every example reads a whole clip. Prepare it "
        "again (python -m vicmae_jax.data.prepare) for frame records with a clip index.",
        name,
        path,
        records.CLIP_RECORD_VERSION,
      )
      size = len(self._records)
    if size == 0:
      raise ValueError(f"prepared dataset {path} (split {split!r}) has no records")
    self._size = size
    meta_path = prepared_meta_path(self.shards, split)
    if os.path.isfile(meta_path):
      with open(meta_path, encoding="utf-8") as file:
        self.label_names = list(json.load(file).get("label_names", []))

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
    index = self._check_index(index)
    if self.index is None:
      return self._whole_clip(index)
    clip_id = self.index.clip_id[index]
    num_frames = int(self.index.num_frames[index])
    if num_frames < MIN_CLIP_FRAMES:
      return self.skip(clip_id, video_io.REASON_TOO_SHORT, f"{num_frames} frame(s)")
    return {
      "kind": "clip",
      "record_index": index,
      "label": int(self.index.label[index]),
      "clip_id": clip_id,
      "timestamps": self.index.clip_timestamps(index),
      "frames": FrameRecords(self._records, self.index.first_frame[index], num_frames, clip_id),
    }

  def _whole_clip(self, index: int) -> dict[str, Any] | Skipped:
    try:
      clip = records.decode_clip(self._records[index])
    except (ValueError, KeyError, TypeError) as error:
      return self.skip(f"record {index}", "corrupt record", str(error))
    if len(clip["frames"]) < MIN_CLIP_FRAMES:
      return self.skip(
        clip["clip_id"], video_io.REASON_TOO_SHORT, f"{len(clip['frames'])} frame(s)"
      )
    return {
      "kind": "clip",
      "record_index": index,
      "label": clip["label"],
      "clip_id": clip["clip_id"],
      "timestamps": clip["timestamps"],
      "frames": clip["frames"],
    }


# --------------------------------------------------------------------------------------------------
# Raw videos.


# Files of a raw video source probed for their length when the config is validated.
RAW_PROBE_FILES = 32


@dataclasses.dataclass(frozen=True)
class ProbedClipSeconds:
  """Lengths of a deterministic sample of a raw source's videos (video_io.clip_seconds).

  seconds: one per file that probed; num_files: videos the source lists; failed: sampled files that
  did not open (skipped, as training skips them).
  """

  seconds: tuple[float, ...]
  num_files: int
  failed: int

  @property
  def longest(self) -> float | None:
    return max(self.seconds) if self.seconds else None

  def describe(self) -> str:
    """How far the sample reaches, for messages: "" when every listed file probed."""
    if len(self.seconds) == self.num_files:
      return ""
    return f", longest of {len(self.seconds)} probed of {self.num_files} files"


def probe_sample(num_files: int, max_files: int = RAW_PROBE_FILES) -> np.ndarray:
  """Indices of the files to probe: all of them up to max_files, else max_files spread evenly."""
  if num_files <= max_files:
    return np.arange(num_files)
  return np.unique(np.round(np.linspace(0, num_files - 1, max_files)).astype(int))


_PROBED: dict[tuple[Any, ...], ProbedClipSeconds] = {}


def raw_clip_seconds(
  format: str,
  path: str,
  *,
  annotations: str | None = None,
  split: str | None = None,
  labels: str | None = None,
  max_files: int = RAW_PROBE_FILES,
) -> ProbedClipSeconds:
  """Clip lengths of up to `max_files` videos of a raw source, read from the container headers
  (a demux of the packet timestamps, no decoding, when a header states no duration).

  The sample is the same on every call and host (`probe_sample` over the sorted listing); a file that
  does not open is counted in `failed`, never raised. Cached per process, as validation runs more
  than once per run.
  """
  key = (format, os.path.abspath(os.path.expanduser(str(path))), annotations, split, labels)
  key += (int(max_files),)
  cached = _PROBED.get(key)
  if cached is not None:
    return cached
  listing = formats.list_dataset(
    format, os.path.expanduser(str(path)), annotations=annotations, split=split, labels=labels
  )
  entries = listing.entries
  seconds, failed = [], 0
  for index in probe_sample(len(entries), max_files):
    try:
      seconds.append(video_io.clip_seconds(entries[index].path))
    except (video_io.VideoDecodeError, av.FFmpegError, OSError, ValueError) as error:
      failed += 1
      logging.info("Not probed: %s (%s)", entries[index].path, error)
  result = ProbedClipSeconds(tuple(seconds), len(entries), failed)
  _PROBED[key] = result
  return result


class RawVideoSource(Source):
  """Video files listed by formats.py, decoded on the fly (seek + decode of the frames needed).

  The time of the last frame comes from the container header; for containers that do not state a
  duration (live-recorded webm, some mkv) from the packet timestamps (no decoding); cached per file.
  """

  kind = "raw"

  def __init__(
    self,
    format: str,
    path: str,
    *,
    annotations: str | None = None,
    split: str | None = None,
    labels: str | None = None,
    short_side: int | None = 256,
    name: str = "raw",
    skip_log: SkipLog | None = None,
  ):
    super().__init__(name, skip_log)
    if not os.path.exists(os.path.expanduser(str(path))):
      raise FileNotFoundError(f"raw video dataset path not found: {path}")
    listing = formats.list_dataset(
      format, os.path.expanduser(str(path)), annotations=annotations, split=split, labels=labels
    )
    self.entries = list(listing.entries)
    if not self.entries:
      raise ValueError(f"raw video dataset {path} ({format}) lists no video files")
    if listing.missing:
      logging.warning(
        "Source %r: %d annotated videos not found under %s", name, len(listing.missing), path
      )
    self.label_names = list(listing.label_names)
    self.short_side = short_side
    self._last_frame_time: dict[int, float | Skipped] = {}

  def __len__(self) -> int:
    return len(self.entries)

  def last_frame_time(self, index: int) -> float | Skipped:
    """Seconds from the stream start to the last frame of video `index` (cached), or a Skipped marker."""
    cached = self._last_frame_time.get(index)
    if cached is not None:
      return cached
    path = self.entries[index].path
    result: float | Skipped
    try:
      info = video_io.probe(path)
      if info.num_frames is not None and info.num_frames < MIN_CLIP_FRAMES:
        result = Skipped(self.name, path, video_io.REASON_TOO_SHORT, f"{info.num_frames} frame(s)")
      elif info.duration_s is not None:
        frame_interval = 1.0 / info.fps if info.fps else 0.0
        result = max(info.duration_s - frame_interval, 0.0)
      else:
        # No duration in the header: read the packet timestamps (no decoding).
        times = video_io.frame_times(path)
        result = float(times[-1]) if times.size >= MIN_CLIP_FRAMES else 0.0
    except video_io.VideoDecodeError as error:
      result = Skipped(self.name, path, error.reason, error.detail or "")
    if not isinstance(result, Skipped) and result <= 0.0:
      result = Skipped(self.name, path, video_io.REASON_TOO_SHORT, "a single frame")
    self._last_frame_time[index] = result
    return result

  def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
    index = self._check_index(index)
    duration = self.last_frame_time(index)
    if isinstance(duration, Skipped):
      return self.skip_log.record(duration)
    entry = self.entries[index]
    return {
      "kind": "video",
      "record_index": index,
      "label": entry.label,
      "clip_id": entry.clip_id,
      "path": entry.path,
      "duration_s": duration,
      "short_side": self.short_side,
    }

  def decode(self, example: Mapping[str, Any], times_s: Sequence[float]) -> np.ndarray | Skipped:
    """Frames nearest to `times_s`: uint8 [n, H, W, 3], or a Skipped marker when decoding fails."""
    try:
      return video_io.decode_at_times(example["path"], times_s, short_side=example["short_side"])
    except video_io.VideoDecodeError as error:
      return self.skip(example["path"], error.reason, error.detail or "")
