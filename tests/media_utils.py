"""Small real media files for tests, written with PyAV.

Every good video carries its frame index in the pixels so a decoder's output can be checked exactly:
the top half of each frame is a row of 8 large black/white blocks (bit 7 first) spelling the index in
binary; the bottom half is a fixed colour (red, 200/40/40) so a channel-order swap is visible.
The blocks are 8x24 pixels at 64x48, large enough to survive lossy H.264 / VP9 compression and resizing.
`read_index(frame)` reads the index back from a decoded (possibly resized) frame.

Bad files cover what real datasets contain: zero-byte, truncated mid-file, random bytes with a video
extension, audio-only, and a video too short to give two frames.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

INDEX_BITS = 8
BOTTOM_RGB = (200, 40, 40)
_LOW, _HIGH = 16, 235

_CODEC_FOR_SUFFIX = {".mp4": "libx264", ".webm": "libvpx-vp9", ".mkv": "libx264"}


def frame_pattern(index: int, height: int = 48, width: int = 64) -> np.ndarray:
  """The test picture of frame `index`: uint8 [height, width, 3]."""
  if not 0 <= index < 2**INDEX_BITS:
    raise ValueError(f"frame index {index} does not fit in {INDEX_BITS} bits")
  image = np.empty((height, width, 3), np.uint8)
  image[height // 2 :] = BOTTOM_RGB
  top = image[: height // 2]
  for bit in range(INDEX_BITS):
    lo, hi = bit * width // INDEX_BITS, (bit + 1) * width // INDEX_BITS
    on = (index >> (INDEX_BITS - 1 - bit)) & 1
    top[:, lo:hi] = _HIGH if on else _LOW
  return image


def read_index(frame: np.ndarray) -> int:
  """Reads the frame index written by `frame_pattern` from a decoded frame uint8 [H, W, 3] of any size."""
  height, width = frame.shape[:2]
  luma = frame[: height // 2].astype(np.float32).mean(axis=-1)
  index = 0
  for bit in range(INDEX_BITS):
    lo, hi = bit * width // INDEX_BITS, (bit + 1) * width // INDEX_BITS
    margin = max((hi - lo) // 4, 0)
    # The block centre only: block edges blur under compression and resizing.
    value = luma[height // 8 : 3 * height // 8, lo + margin : hi - margin].mean()
    index = (index << 1) | int(value > (_LOW + _HIGH) / 2)
  return index


def make_video(
  path: str | os.PathLike,
  *,
  num_frames: int = 30,
  fps: float = 10.0,
  width: int = 64,
  height: int = 48,
  codec: str | None = None,
  frame_times: Sequence[float] | None = None,
  gop_size: int | None = None,
  live: bool = False,
) -> Path:
  """Encodes `num_frames` indexed frames into a real video file and returns its path.

  codec: defaults from the suffix (.mp4 -> libx264, .webm -> libvpx-vp9).
  frame_times: optional presentation times in seconds (variable frame rate); default i / fps.
  gop_size: keyframe interval in frames (default: the encoder's).
  live: for webm/mkv, write without duration and cues, as streamed recordings are.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  codec = codec or _CODEC_FOR_SUFFIX[path.suffix.lower()]
  if frame_times is not None and len(frame_times) != num_frames:
    raise ValueError(
      f"frame_times has {len(frame_times)} entries, expected num_frames={num_frames}"
    )
  rate = Fraction(fps).limit_denominator(1001)
  container_options = {"live": "1"} if live else {}
  with av.open(str(path), mode="w", options=container_options) as container:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    if codec == "libvpx-vp9":
      stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
    else:
      stream.options = {"preset": "ultrafast", "crf": "18"}
    if gop_size is not None:
      stream.codec_context.gop_size = gop_size
    # Millisecond ticks let variable frame times be exact.
    time_base = Fraction(1, 1000) if frame_times is not None else 1 / rate
    stream.codec_context.time_base = time_base

    def frame_at(index: int) -> av.VideoFrame:
      frame = av.VideoFrame.from_ndarray(frame_pattern(index, height, width), format="rgb24")
      if frame_times is not None:
        frame.pts = int(round(frame_times[index] * 1000))
      else:
        frame.pts = index
      frame.time_base = time_base
      return frame

    _encode_all(container, stream, map(frame_at, range(num_frames)))
  return path


def _encode_all(container, stream, frames) -> None:
  """Encodes `frames` into `stream` in order, muxing every packet, then flushes the encoder."""
  for frame in frames:
    container.mux(stream.encode(frame))
  container.mux(stream.encode())


def make_zero_byte(path: str | os.PathLike) -> Path:
  path = Path(path)
  path.write_bytes(b"")
  return path


def make_truncated(
  path: str | os.PathLike, *, num_frames: int = 30, keep_fraction: float = 0.5
) -> Path:
  """A good video (container from the suffix) cut after `keep_fraction` of its bytes (an interrupted
  download). An mp4 keeps its index at the end, so a cut mp4 cannot be opened; a cut webm still plays
  up to the cut."""
  path = Path(path)
  make_video(path, num_frames=num_frames)
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep_fraction)])
  return path


def make_random_bytes(path: str | os.PathLike, *, size: int = 4096, seed: int = 0) -> Path:
  path = Path(path)
  path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
  return path


def make_audio_only(path: str | os.PathLike, *, seconds: float = 1.0) -> Path:
  """An audio file with no video stream (AAC in .mp4, Opus in .webm)."""
  path = Path(path)
  codec = "libopus" if path.suffix.lower() == ".webm" else "aac"
  sample_rate = 48000
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono"
    samples_per_frame = 960
    total = int(seconds * sample_rate)

    def frame_at(start: int) -> av.AudioFrame:
      t = (np.arange(start, start + samples_per_frame) / sample_rate).astype(np.float32)
      tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None, :]
      frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
      frame.sample_rate = sample_rate
      frame.pts = start
      frame.time_base = Fraction(1, sample_rate)
      return frame

    _encode_all(container, stream, map(frame_at, range(0, total, samples_per_frame)))
  return path


def make_too_short(path: str | os.PathLike) -> Path:
  """A valid video with a single frame: no frame pair can be drawn from it."""
  return make_video(path, num_frames=1)


def make_bad_files(directory: str | os.PathLike) -> dict[str, Path]:
  """One of each bad kind in `directory`: {kind: path}."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  return {
    "zero_byte": make_zero_byte(directory / "zero_byte.mp4"),
    "truncated": make_truncated(directory / "truncated.mp4"),
    "random_bytes": make_random_bytes(directory / "random_bytes.mp4"),
    "audio_only": make_audio_only(directory / "audio_only.mp4"),
    "too_short": make_too_short(directory / "too_short.mp4"),
  }
