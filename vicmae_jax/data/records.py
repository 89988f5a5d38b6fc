"""One prepared clip as one msgpack record.

A clip record holds the clip's frames as JPEG bytes at a fixed rate plus what the input pipeline needs
to sample frame pairs from it without decoding the video again:

    clip_id      str                 stable identifier (file stem or dataset id)
    label        int                 class index, -1 when unknown
    label_name   str                 class name, "" when unknown
    source_fps   float               frame rate of the source video
    timestamps   np.float32 [T]      time of each stored frame in seconds, strictly increasing
    frames       list[bytes] (T)     JPEG-encoded frames, all of the same size
    height       int                 frame height in pixels
    width        int                 frame width in pixels

Timestamps are stored as raw little-endian float32 bytes so a record decodes without numpy pickling.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

FORMAT_VERSION = 1

_REQUIRED_KEYS = ("clip_id", "label", "label_name", "source_fps", "timestamps", "frames", "height", "width")


def _validate(clip: Mapping[str, Any]) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in clip]
    if missing:
        raise KeyError(f"clip record is missing field(s) {missing}")
    frames = clip["frames"]
    timestamps = np.asarray(clip["timestamps"])
    if not isinstance(frames, (list, tuple)) or not all(isinstance(f, (bytes, bytearray)) for f in frames):
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


def encode_clip(clip: Mapping[str, Any]) -> bytes:
    """Serializes a clip dict (keys in the module docstring) into msgpack bytes.

    Raises KeyError / TypeError / ValueError naming the offending field.
    """
    _validate(clip)
    payload = {
        "version": FORMAT_VERSION,
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
    if payload["version"] != FORMAT_VERSION:
        raise ValueError(f"clip record version {payload['version']} is not supported (expected {FORMAT_VERSION})")
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
