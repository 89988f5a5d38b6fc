"""Which frames to read from a clip: frame pairs a set time apart, and frame clips for video models.

All choices are made in time (seconds), from the clip's own frame timestamps, never from frame counts,
so a clip stored at 8 fps and a raw video at 30 fps give pairs the same time apart.

Randomness: every draw takes an `np.random.Generator`. `example_rng(seed, source_key, record_index,
epoch)` builds one from exactly those numbers, so the pair drawn for a record depends on nothing else
(not on batch order, process count or worker count) and a resumed run sees the same pairs.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

DEFAULT_FRAME_GAP_SECONDS = 1.06

# Streams of one example's randomness: pair choice and each view's augmentation draw from separate
# generators so that changing one augmentation spec does not move the frames picked.
STREAM_SAMPLING = 0
STREAM_VIEW = 1  # view k uses STREAM_VIEW + k


def source_key(name: str) -> int:
  """A stable 32-bit number for a source name (mixes sources without index collisions)."""
  return zlib.crc32(name.encode("utf-8"))


def example_rng(
  seed: int, source: int, record_index: int, epoch: int, stream: int = 0
) -> np.random.Generator:
  """The generator of one example: a function of (seed, source, record_index, epoch, stream) only."""
  for name, value in (
    ("seed", seed),
    ("source", source),
    ("record_index", record_index),
    ("epoch", epoch),
  ):
    if int(value) < 0:
      raise ValueError(f"{name} must be non-negative, got {value}")
  return np.random.default_rng(
    np.random.SeedSequence([int(seed), int(source), int(record_index), int(epoch), int(stream)])
  )


def validate_gap(frame_gap_seconds: float | None, frame_gap_range: Sequence[float] | None) -> None:
  """Raises ValueError naming the field when the gap settings are unusable."""
  if frame_gap_range is not None:
    if len(frame_gap_range) != 2:
      raise ValueError(f"frame_gap_range must be (lo, hi), got {frame_gap_range!r}")
    lo, hi = (float(v) for v in frame_gap_range)
    if not 0.0 <= lo <= hi:
      raise ValueError(f"frame_gap_range must satisfy 0 <= lo <= hi, got {frame_gap_range!r}")
  elif frame_gap_seconds is None or not float(frame_gap_seconds) >= 0.0:
    raise ValueError(f"frame_gap_seconds must be >= 0, got {frame_gap_seconds!r}")


class FrameGap:
  """The time between a pair's two frames: fixed, or uniform in range=(lo, hi) when given.

  The settings are checked once, when it is made (`validate_gap`); `draw` only draws.
  """

  def __init__(
    self,
    seconds: float | None = DEFAULT_FRAME_GAP_SECONDS,
    range: Sequence[float] | None = None,  # noqa: A002  (the config's name)
  ):
    validate_gap(seconds, range)
    self.seconds = None if seconds is None else float(seconds)
    self.range = None if range is None else (float(range[0]), float(range[1]))

  def bounds(self) -> tuple[float, float]:
    """The smallest and largest gap it can draw."""
    return self.range if self.range is not None else (self.seconds, self.seconds)

  def draw(self, rng: np.random.Generator) -> float:
    """One gap; the generator is advanced by one draw in both modes, so switching modes keeps later
    draws aligned."""
    unit = rng.random()
    if self.range is not None:
      lo, hi = self.range
      return lo + (hi - lo) * unit
    return self.seconds


def draw_gap_seconds(
  rng: np.random.Generator,
  frame_gap_seconds: float = DEFAULT_FRAME_GAP_SECONDS,
  frame_gap_range: Sequence[float] | None = None,
) -> float:
  """One gap from the given settings (checked on every call; loaders draw from a FrameGap)."""
  return FrameGap(frame_gap_seconds, frame_gap_range).draw(rng)


def pair_indices(
  timestamps: np.ndarray, gap_seconds: float, rng: np.random.Generator
) -> tuple[int, int]:
  """Indices (i, j) of two frames about `gap_seconds` apart, in random order.

  timestamps: [T] seconds, increasing. The earlier frame is drawn uniformly among the frames that
  still have a frame `gap_seconds` later (within half a frame); the later frame is the one nearest
  in time to earlier + gap, so |t_j - t_i - gap| is at most half the local frame interval.
  When the clip is shorter than the gap, the first and last frames (its largest gap) are returned.
  A gap of 0 returns the same frame twice (the no-gap ablation). gap_seconds >= 0 (a FrameGap
  draw; the gap settings are checked once, by FrameGap).
  """
  times = np.asarray(timestamps, dtype=np.float64)
  if times.ndim != 1 or times.size == 0:
    raise ValueError(f"timestamps must be a non-empty [T] array, got shape {times.shape}")
  count = times.size
  if count == 1:
    return 0, 0
  if gap_seconds >= times[-1] - times[0]:
    first, second = 0, count - 1
  else:
    # Frames whose target time lands no later than half an interval past the end of the clip.
    last_interval = times[-1] - times[-2]
    num_starts = int(
      np.searchsorted(times, times[-1] - gap_seconds + 0.5 * last_interval, side="right")
    )
    num_starts = max(1, min(num_starts, count))
    first = int(rng.integers(num_starts))
    second = _nearest_index(times, times[first] + gap_seconds)
  if rng.random() < 0.5:
    first, second = second, first
  return first, second


def pair_times(
  duration_s: float, gap_seconds: float, rng: np.random.Generator
) -> tuple[float, float]:
  """Two times in [0, duration_s] `gap_seconds` apart, in random order (for raw videos).

  duration_s is the time of the last frame. The earlier time is uniform in [0, duration_s - gap];
  a clip shorter than the gap gives (0, duration_s). gap_seconds >= 0 (a FrameGap draw).
  """
  if duration_s < 0:
    raise ValueError(f"duration_s must be >= 0, got {duration_s}")
  if gap_seconds >= duration_s:
    first, second = 0.0, float(duration_s)
  else:
    first = float(rng.uniform(0.0, duration_s - gap_seconds))
    second = first + gap_seconds
  if rng.random() < 0.5:
    first, second = second, first
  return first, second


def _nearest_index(times: np.ndarray, target: float) -> int:
  right = int(np.searchsorted(times, target, side="left"))
  if right == 0:
    return 0
  if right >= times.size:
    return times.size - 1
  return right if times[right] - target < target - times[right - 1] else right - 1


def clip_indices(
  num_available: int, num_frames: int, stride: int, rng: np.random.Generator | None
) -> np.ndarray:
  """Indices [num_frames] of `num_frames` frames `stride` apart: a random window, or the centre one.

  rng=None gives the centred window (evaluation). A clip shorter than the window repeats its last
  frame, so any frame count works on any clip.
  """
  _check_clip_args(num_available, num_frames, stride)
  span = (num_frames - 1) * stride + 1
  max_start = max(num_available - span, 0)
  start = int(rng.integers(max_start + 1)) if rng is not None else max_start // 2
  return np.minimum(start + stride * np.arange(num_frames), num_available - 1)


def multi_view_clip_indices(
  num_available: int, num_frames: int, stride: int, num_views: int
) -> np.ndarray:
  """Indices [num_views, num_frames] of windows spread uniformly over the clip (multi-view testing).

  Window starts are evenly spaced from the first possible start to the last; with one view, the centre.
  """
  _check_clip_args(num_available, num_frames, stride)
  if num_views < 1:
    raise ValueError(f"num_views must be >= 1, got {num_views}")
  span = (num_frames - 1) * stride + 1
  max_start = max(num_available - span, 0)
  if num_views == 1:
    starts = np.array([max_start // 2])
  else:
    starts = np.round(np.linspace(0, max_start, num_views)).astype(np.int64)
  indices = starts[:, None] + stride * np.arange(num_frames)[None, :]
  return np.minimum(indices, num_available - 1)


def clip_times(
  duration_s: float, num_frames: int, stride_seconds: float, rng: np.random.Generator | None
) -> np.ndarray:
  """Times [num_frames] in seconds for a raw video: `num_frames` times `stride_seconds` apart.

  Random start in [0, duration_s - span] with rng, centred without; clamped to the last frame's time.
  """
  if num_frames < 1 or stride_seconds < 0:
    raise ValueError(
      f"need num_frames >= 1 and stride_seconds >= 0, got {num_frames}, {stride_seconds}"
    )
  span = (num_frames - 1) * stride_seconds
  max_start = max(duration_s - span, 0.0)
  start = float(rng.uniform(0.0, max_start)) if rng is not None else max_start / 2
  return np.minimum(start + stride_seconds * np.arange(num_frames), duration_s)


def _check_clip_args(num_available: int, num_frames: int, stride: int) -> None:
  if num_available < 1:
    raise ValueError(f"clip has no frames (num_available={num_available})")
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
