"""Prepared clips on disk: one ArrayRecord record per frame plus a small clip index per shard.

(Over 400 lines on purpose: the whole on-disk format, clip record, index codec, writer and readers,
in one file, so what writes the format and what reads it are read, and changed, together.)

A clip, as the rest of the package sees it, is a dict:

    clip_id      str                 stable identifier (file stem or dataset id)
    label        int                 class index, -1 when unknown
    label_name   str                 class name, "" when unknown
    source_fps   float               frame rate of the source video
    timestamps   np.float32 [T]      time of each stored frame in seconds, strictly increasing
    frames       list[bytes] (T)     JPEG-encoded frames, all of the same size
    height       int                 frame height in pixels
    width        int                 frame width in pixels

Shard format (FORMAT_VERSION 2), written by `ShardWriter`:

    <name>.array_record         one record per frame: the JPEG bytes and nothing else; the frames of
                                a clip are consecutive. Written with group_size 1 and no compression
                                (JPEG does not compress), so reading a frame reads only that frame.
    <name>.array_record.index   msgpack, loaded once by the reader: per clip its id, label, label
                                name, source fps, height, width, number of frames and first frame
                                record; the timestamps of every frame record, in record order.

A frame pair therefore reads two small records, not the whole clip. The index of a K400-sized
split at 8 fps (240k clips, 19M frames) is about 80 MB, mostly timestamps.

A shard or index file that cannot be read (cut short by a full disk or an interrupted copy, or
otherwise damaged) raises `DamagedShardError`: one line naming the file, saying to prepare it again.

The earlier format (version 1) stored a whole clip as one msgpack record (`encode_clip` /
`decode_clip`); readers still accept such shards (they have no index file), `prepare` rewrites them.
Numbers are stored as raw little-endian bytes so nothing needs numpy pickling.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

FORMAT_VERSION = 2  # frame records + clip index
CLIP_RECORD_VERSION = 1  # a whole clip in one record (the earlier shard format)
INDEX_SUFFIX = ".index"

_REQUIRED_KEYS = (
  "clip_id",
  "label",
  "label_name",
  "source_fps",
  "timestamps",
  "frames",
  "height",
  "width",
)


class DamagedShardError(ValueError):
  """A shard or clip index file on disk that cannot be read: truncated or otherwise damaged."""

  def __init__(self, path: str | os.PathLike, detail: str = ""):
    self.path = os.fspath(path)
    detail = " ".join(str(detail).split())  # one line, whatever the reader said
    if len(detail) > 200:
      detail = detail[:197] + "..."
    self.detail = detail
    super().__init__(
      f"{self.path} is truncated or damaged" + (f" ({detail})" if detail else "") + ": re-run "
      "python -m vicmae_jax.data.prepare with the same options to prepare it again "
      "(--verify --output=DIR checks a prepared folder)"
    )


def open_reader(shard_path: str | os.PathLike):
  """An ArrayRecordReader on `shard_path`; a file that does not open raises DamagedShardError."""
  from array_record.python.array_record_module import ArrayRecordReader

  shard_path = os.fspath(shard_path)
  if not os.path.isfile(shard_path):
    raise FileNotFoundError(f"shard not found: {shard_path}")
  try:
    reader = ArrayRecordReader(shard_path)
  except Exception as error:  # the reader raises RuntimeError / ValueError for a damaged file
    raise DamagedShardError(shard_path, str(error)) from None
  if not reader.ok():  # a file cut short opens, reports 0 records, and says why on close
    try:
      reader.close()
      detail = "the reader reports an error"
    except Exception as error:
      detail = str(error)
    raise DamagedShardError(shard_path, detail)
  return reader


def count_records(shard_path: str | os.PathLike) -> int:
  """The number of records in a shard (reads only its footer); raises DamagedShardError."""
  reader = open_reader(shard_path)
  try:
    count = int(reader.num_records())
  finally:
    reader.close()
  return count


def _validate(clip: Mapping[str, Any]) -> None:
  missing = [key for key in _REQUIRED_KEYS if key not in clip]
  if missing:
    raise KeyError(f"clip record is missing field(s) {missing}")
  frames = clip["frames"]
  timestamps = np.asarray(clip["timestamps"])
  if not isinstance(frames, (list, tuple)) or not all(
    isinstance(f, (bytes, bytearray)) for f in frames
  ):
    raise TypeError("clip field 'frames' must be a list of JPEG bytes")
  if timestamps.ndim != 1 or timestamps.shape[0] != len(frames):
    raise ValueError(
      f"clip field 'timestamps' has shape {timestamps.shape}, expected [{len(frames)}] (one per frame)"
    )
  if timestamps.shape[0] > 1 and not np.all(np.diff(timestamps.astype(np.float64)) > 0):
    raise ValueError("clip field 'timestamps' must be strictly increasing")
  for key in ("height", "width"):
    if int(clip[key]) <= 0:
      raise ValueError(f"clip field '{key}' must be positive, got {clip[key]}")


# --------------------------------------------------------------------------------------------------
# Whole-clip records (format 1).


def encode_clip(clip: Mapping[str, Any]) -> bytes:
  """Serializes a clip dict (keys in the module docstring) into one msgpack record (format 1).

  Raises KeyError / TypeError / ValueError naming the offending field.
  """
  _validate(clip)
  payload = {
    "version": CLIP_RECORD_VERSION,
    "clip_id": str(clip["clip_id"]),
    "label": int(clip["label"]),
    "label_name": str(clip["label_name"]),
    "source_fps": float(clip["source_fps"]),
    "timestamps": np.asarray(clip["timestamps"], dtype="<f4").tobytes(),
    "frames": [bytes(f) for f in clip["frames"]],
    "height": int(clip["height"]),
    "width": int(clip["width"]),
  }
  return msgpack.packb(payload, use_bin_type=True)


def decode_clip(data: bytes) -> dict[str, Any]:
  """Inverse of `encode_clip`: returns the clip dict with `timestamps` as np.float32 [T]."""
  try:
    payload = msgpack.unpackb(data, raw=False)
  except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as error:
    raise ValueError(f"not a clip record: {error}") from error
  if not isinstance(payload, dict) or "version" not in payload:
    raise ValueError("not a clip record: missing 'version'")
  if payload["version"] != CLIP_RECORD_VERSION:
    raise ValueError(
      f"clip record version {payload['version']} is not supported (expected {CLIP_RECORD_VERSION})"
    )
  return {
    "clip_id": payload["clip_id"],
    "label": int(payload["label"]),
    "label_name": payload["label_name"],
    "source_fps": float(payload["source_fps"]),
    "timestamps": np.frombuffer(payload["timestamps"], dtype="<f4").astype(np.float32),
    "frames": list(payload["frames"]),
    "height": int(payload["height"]),
    "width": int(payload["width"]),
  }


# --------------------------------------------------------------------------------------------------
# Frame records + clip index (format 2).


def index_path(shard_path: str | os.PathLike) -> str:
  """The clip index file of a shard: `<shard>.index`."""
  return os.fspath(shard_path) + INDEX_SUFFIX


@dataclasses.dataclass(frozen=True)
class ClipIndex:
  """The clips of one or more shards, with frame records numbered across the shards in order.

  N clips, F frame records:
    clip_id [N] str, label int32 [N], label_name [N] str, source_fps float32 [N],
    height int32 [N], width int32 [N], num_frames int32 [N],
    first_frame int64 [N] (record number of the clip's first frame), timestamps float32 [F].
  """

  clip_id: list[str]
  label: np.ndarray
  label_name: list[str]
  source_fps: np.ndarray
  height: np.ndarray
  width: np.ndarray
  num_frames: np.ndarray
  first_frame: np.ndarray
  timestamps: np.ndarray

  def __len__(self) -> int:
    return len(self.clip_id)

  @property
  def num_records(self) -> int:
    return int(self.timestamps.shape[0])

  def clip_timestamps(self, clip: int) -> np.ndarray:
    """float32 [T] seconds of clip `clip` (a view, no copy)."""
    start = int(self.first_frame[clip])
    return self.timestamps[start : start + int(self.num_frames[clip])]

  @staticmethod
  def concatenate(indexes: Sequence["ClipIndex"]) -> "ClipIndex":
    """One index over shards read in this order (frame records numbered on across shards)."""
    offsets = np.cumsum([0] + [index.num_records for index in indexes[:-1]]).astype(np.int64)
    return ClipIndex(
      clip_id=[clip_id for index in indexes for clip_id in index.clip_id],
      label=np.concatenate([index.label for index in indexes]),
      label_name=[name for index in indexes for name in index.label_name],
      source_fps=np.concatenate([index.source_fps for index in indexes]),
      height=np.concatenate([index.height for index in indexes]),
      width=np.concatenate([index.width for index in indexes]),
      num_frames=np.concatenate([index.num_frames for index in indexes]),
      first_frame=np.concatenate(
        [index.first_frame + offset for index, offset in zip(indexes, offsets)]
      ),
      timestamps=np.concatenate([index.timestamps for index in indexes]),
    )


_INDEX_ARRAYS = {
  "label": "<i4",
  "source_fps": "<f4",
  "height": "<i4",
  "width": "<i4",
  "num_frames": "<i4",
  "first_frame": "<i8",
  "timestamps": "<f4",
}


def encode_index(index: ClipIndex) -> bytes:
  payload: dict[str, Any] = {
    "version": FORMAT_VERSION,
    "clip_id": list(index.clip_id),
    "label_name": list(index.label_name),
  }
  for field, dtype in _INDEX_ARRAYS.items():
    payload[field] = np.asarray(getattr(index, field), dtype=dtype).tobytes()
  return msgpack.packb(payload, use_bin_type=True)


def decode_index(data: bytes, where: str = "clip index") -> ClipIndex:
  """Inverse of `encode_index`; raises ValueError naming `where` when the bytes are not an index."""
  try:
    payload = msgpack.unpackb(data, raw=False)
  except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as error:
    raise ValueError(f"{where}: not a clip index ({error})") from error
  if not isinstance(payload, dict) or payload.get("version") != FORMAT_VERSION:
    version = payload.get("version") if isinstance(payload, dict) else None
    raise ValueError(
      f"{where}: clip index version {version!r} is not supported (expected {FORMAT_VERSION})"
    )
  try:
    arrays = {
      field: np.frombuffer(payload[field], dtype=dtype).astype(dtype[1:])
      for field, dtype in _INDEX_ARRAYS.items()
    }
    index = ClipIndex(
      clip_id=list(payload["clip_id"]), label_name=list(payload["label_name"]), **arrays
    )
  except (KeyError, TypeError, ValueError) as error:
    raise ValueError(f"{where}: damaged clip index ({type(error).__name__}: {error})") from error
  count = len(index.clip_id)
  if any(
    len(getattr(index, field)) != count
    for field in (
      "label",
      "label_name",
      "source_fps",
      "height",
      "width",
      "num_frames",
      "first_frame",
    )
  ):
    raise ValueError(f"{where}: damaged clip index (per-clip fields of different lengths)")
  if count and (
    np.any(index.first_frame < 0)
    or np.any(index.num_frames < 0)
    or int((index.first_frame + index.num_frames).max()) > index.num_records
  ):
    raise ValueError(
      f"{where}: damaged clip index (frame ranges outside its {index.num_records} records)"
    )
  return index


def read_index(path: str | os.PathLike) -> ClipIndex:
  """The clip index file at `path` (see `index_path`); one that does not decode raises
  DamagedShardError (a ValueError) naming it."""
  path = os.fspath(path)
  with open(path, "rb") as file:
    data = file.read()
  try:
    return decode_index(data, where=path)
  except ValueError as error:
    raise DamagedShardError(path, str(error).removeprefix(f"{path}: ")) from None


class ShardWriter:
  """Writes clips into one shard of format 2: every frame a record, the clip index beside it.

  The index goes to `index_file` (default `index_path(shard_path)`) on `close()`; nothing is
  renamed here, so a caller that needs atomic shards writes to temporary names and renames both.
  """

  def __init__(self, shard_path: str | os.PathLike, index_file: str | os.PathLike | None = None):
    from array_record.python.array_record_module import ArrayRecordWriter

    self.shard_path = os.fspath(shard_path)
    self.index_file = os.fspath(index_file) if index_file is not None else index_path(shard_path)
    self._writer = ArrayRecordWriter(self.shard_path, "group_size:1,uncompressed")
    self._clips: list[Mapping[str, Any]] = []
    self._timestamps: list[np.ndarray] = []
    self.num_records = 0
    self.index: ClipIndex | None = None  # set by close()

  def write(self, clip: Mapping[str, Any]) -> None:
    """Appends one clip dict (keys in the module docstring); raises naming a bad field."""
    _validate(clip)
    for frame in clip["frames"]:
      self._writer.write(bytes(frame))
    count = len(clip["frames"])
    self._clips.append(
      {
        "clip_id": str(clip["clip_id"]),
        "label": int(clip["label"]),
        "label_name": str(clip["label_name"]),
        "source_fps": float(clip["source_fps"]),
        "height": int(clip["height"]),
        "width": int(clip["width"]),
        "num_frames": count,
        "first_frame": self.num_records,
      }
    )
    self._timestamps.append(np.asarray(clip["timestamps"], np.float32))
    self.num_records += count

  def close(self) -> ClipIndex:
    """Finishes the shard and writes its index; returns the index."""
    self._writer.close()
    clips = self._clips
    index = ClipIndex(
      clip_id=[c["clip_id"] for c in clips],
      label=np.array([c["label"] for c in clips], np.int32),
      label_name=[c["label_name"] for c in clips],
      source_fps=np.array([c["source_fps"] for c in clips], np.float32),
      height=np.array([c["height"] for c in clips], np.int32),
      width=np.array([c["width"] for c in clips], np.int32),
      num_frames=np.array([c["num_frames"] for c in clips], np.int32),
      first_frame=np.array([c["first_frame"] for c in clips], np.int64),
      timestamps=np.concatenate(self._timestamps)
      if self._timestamps
      else np.zeros((0,), np.float32),
    )
    with open(self.index_file, "wb") as file:
      file.write(encode_index(index))
    self.index = index
    return index

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def write_shard(shard_path: str | os.PathLike, clips: Sequence[Mapping[str, Any]]) -> ClipIndex:
  """Writes `clips` (dicts as in the module docstring) as one shard of format 2 with its index."""
  with ShardWriter(shard_path) as writer:
    for clip in clips:
      writer.write(clip)
  return writer.index


def read_clips(shard_path: str | os.PathLike) -> list[dict[str, Any]]:
  """Every clip of one shard as a full clip dict (all frames read): for checks and tools, not training.

  Reads format 2 (with an index file) and the earlier whole-clip format 1 (without one).
  """
  shard_path = os.fspath(shard_path)
  reader = open_reader(shard_path)
  try:
    records = reader.read_all()
  except Exception as error:  # a damaged chunk inside the file
    raise DamagedShardError(shard_path, str(error)) from None
  finally:
    try:
      reader.close()
    except Exception:  # already reported by read_all
      pass
  if not os.path.isfile(index_path(shard_path)):
    return [decode_clip(data) for data in records]
  index = read_index(index_path(shard_path))
  if index.num_records != len(records):
    raise ValueError(
      f"{index_path(shard_path)} lists {index.num_records} frame records, "
      f"{shard_path} holds {len(records)}: prepare the shard again"
    )
  clips = []
  for clip in range(len(index)):
    start, count = int(index.first_frame[clip]), int(index.num_frames[clip])
    clips.append(
      {
        "clip_id": index.clip_id[clip],
        "label": int(index.label[clip]),
        "label_name": index.label_name[clip],
        "source_fps": float(index.source_fps[clip]),
        "timestamps": index.clip_timestamps(clip).copy(),
        "frames": list(records[start : start + count]),
        "height": int(index.height[clip]),
        "width": int(index.width[clip]),
      }
    )
  return clips
