"""Rendering of the demo clips: a real handwritten digit moving over a panning photograph.

`render_clip` draws one of scikit-learn's 8x8 handwritten digits (`load_digits`), upscaled smoothly,
moving along a random smooth path and changing scale over a slowly panning crop of one of
scikit-image's bundled photographs, in shots of `SHOT_SECONDS` (each with its own background and
digit colour); `encode_mp4` writes the frames as a real H.264 mp4; `digit_split` splits the digit
images once into training and held-out ones. Every draw comes from the generator passed in.
demo.py lays the clips out as a dataset.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image

HELDOUT_FRACTION = 1 / 3
SHOT_SECONDS = 0.5  # each shot has its own background and digit colour
# Colour photographs and textures bundled with scikit-image (no download needed).
BACKGROUNDS = (
  "astronaut",
  "coffee",
  "chelsea",
  "rocket",
  "hubble_deep_field",
  "immunohistochemistry",
  "grass",
  "gravel",
  "brick",
)


def digit_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Indices into `load_digits()` for training and held-out digits (disjoint, stratified by class)."""
  from sklearn.datasets import load_digits

  labels = load_digits().target
  rng = np.random.default_rng([seed, 7])
  train, heldout = [], []
  for digit in range(10):
    members = rng.permutation(np.flatnonzero(labels == digit))
    cut = int(round(len(members) * HELDOUT_FRACTION))
    heldout.extend(members[:cut])
    train.extend(members[cut:])
  return np.sort(np.asarray(train)), np.sort(np.asarray(heldout))


@functools.cache
def load_backgrounds() -> tuple[np.ndarray, ...]:
  """Bundled scikit-image pictures as uint8 [H, W, 3] (loaded once per process)."""
  import skimage.data

  pictures = []
  for name in BACKGROUNDS:
    picture = np.asarray(getattr(skimage.data, name)(), np.uint8)
    if picture.ndim == 2:
      picture = np.repeat(picture[..., None], 3, axis=-1)
    pictures.append(picture[..., :3])
  return tuple(pictures)


def render_digit(digit: np.ndarray, size: int) -> np.ndarray:
  """An 8x8 digit (values 0..16) as a smooth alpha mask float32 [size, size] in [0, 1]."""
  image = Image.fromarray(np.asarray(digit, np.float32) / 16.0)
  mask = np.asarray(image.resize((size, size), Image.BICUBIC), np.float32)
  return np.clip(mask, 0.0, 1.0)


def smooth_path(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
  """A random smooth curve in [0, 1] sampled at `times` [T]: two sinusoids, ~0.2-0.8 Hz."""
  slow = rng.uniform(0.15, 0.4) * 2 * np.pi
  fast = rng.uniform(0.4, 0.8) * 2 * np.pi
  phase_slow, phase_fast = rng.uniform(0, 2 * np.pi, size=2)
  return 0.5 + 0.35 * np.sin(slow * times + phase_slow) + 0.15 * np.sin(fast * times + phase_fast)


def render_clip(
  digit: np.ndarray,
  backgrounds: tuple[np.ndarray, ...],
  rng: np.random.Generator,
  *,
  frame_size: int,
  num_frames: int,
  fps: float,
) -> tuple[np.ndarray, dict[str, Any]]:
  """Renders one clip: uint8 [num_frames, frame_size, frame_size, 3] and its per-frame layout.

  The layout {"center_xy": [T, 2], "digit_size": [T], "shot_colors", "shot_frames"} says where the digit is (the top
  left corner of frame t's digit square is round(center - size / 2)).
  """
  times = np.arange(num_frames) / fps
  base_size = rng.uniform(34, 42)
  sizes = np.round(
    base_size
    * (1 + 0.15 * np.sin(rng.uniform(0.3, 0.7) * 2 * np.pi * times + rng.uniform(0, 2 * np.pi)))
  ).astype(int)
  sizes = np.clip(sizes, 16, frame_size - 2)
  half = sizes.max() / 2 + 1
  centers = np.stack(
    [
      half + smooth_path(rng, times) * (frame_size - 2 * half),
      half + smooth_path(rng, times) * (frame_size - 2 * half),
    ],
    axis=-1,
  )

  # The clip is cut into shots of ~0.5 s; each shot pans over its own dimmed photograph and draws
  # the digit in its own colour. Two frames ~1 s apart then share only the digit's shape (not the
  # scenery, not the colour), which is what the contrastive objective can learn to match.
  shot_frames = max(1, int(round(SHOT_SECONDS * fps)))
  masks = {size: render_digit(digit, size) for size in np.unique(sizes)}
  frames = np.empty((num_frames, frame_size, frame_size, 3), np.uint8)
  colors = []
  for shot_start in range(0, num_frames, shot_frames):
    count = min(shot_frames, num_frames - shot_start)
    background = backgrounds[rng.integers(len(backgrounds))]
    margin = frame_size // 4
    canvas_size = frame_size + margin
    crop = min(int(rng.uniform(0.3, 0.8) * min(background.shape[:2])), *background.shape[:2])
    top = rng.integers(0, background.shape[0] - crop + 1)
    left = rng.integers(0, background.shape[1] - crop + 1)
    patch = Image.fromarray(np.ascontiguousarray(background[top : top + crop, left : left + crop]))
    canvas = (
      np.asarray(patch.resize((canvas_size, canvas_size), Image.BILINEAR), np.float32) / 255.0
    )
    canvas = 0.08 + 0.3 * canvas  # dimmed so the bright digit stays the most salient thing
    pan_start, pan_end = rng.integers(0, margin + 1, size=(2, 2))
    color = rng.uniform(0.7, 1.0, size=3).astype(np.float32)
    color[rng.integers(3)] = 1.0
    colors.append(color.tolist())
    for t in range(shot_start, shot_start + count):
      fraction = (t - shot_start) / max(count - 1, 1)
      dy, dx = np.round(pan_start + fraction * (pan_end - pan_start)).astype(int)
      frame = canvas[dy : dy + frame_size, dx : dx + frame_size].copy()
      size = sizes[t]
      y0, x0 = np.round(centers[t, ::-1] - size / 2).astype(int)
      alpha = masks[size][..., None]
      region = frame[y0 : y0 + size, x0 : x0 + size]
      frame[y0 : y0 + size, x0 : x0 + size] = region * (1 - alpha) + color * alpha
      frames[t] = np.round(frame * 255).astype(np.uint8)
  layout = {
    "center_xy": centers.tolist(),
    "digit_size": sizes.tolist(),
    "shot_colors": colors,
    "shot_frames": shot_frames,
  }
  return frames, layout


def encode_mp4(path: str, frames: np.ndarray, fps: float) -> None:
  """uint8 [T, H, W, 3] -> H.264 mp4 (yuv420p, constant rate)."""
  rate = Fraction(fps).limit_denominator(1001)
  with av.open(path, mode="w") as container:
    # Constant quantizer, one thread, no lookahead/mb-tree/adaptive quantization: with those,
    # x264's output varied from process to process here, and the demo must be the same bytes
    # on every machine and with any number of build workers.
    stream = container.add_stream(
      "libx264",
      rate=rate,
      options={
        "preset": "veryfast",
        "qp": "16",
        "threads": "1",
        "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:sync-lookahead=0:"
        "no-mbtree=1:rc-lookahead=0:aq-mode=0",
      },
    )
    stream.codec_context.thread_count = 1
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for index, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      frame.pts = index
      frame.time_base = 1 / rate
      container.mux(stream.encode(frame))
    container.mux(stream.encode())


def still_image(
  digit: np.ndarray, backgrounds: tuple[np.ndarray, ...], rng: np.random.Generator, frame_size: int
) -> np.ndarray:
  """One digit (random place and size) on a random background crop: uint8 [frame_size, frame_size, 3]."""
  frames, _ = render_clip(digit, backgrounds, rng, frame_size=frame_size, num_frames=1, fps=1.0)
  return frames[0]
