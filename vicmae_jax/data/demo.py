"""A small real-data video dataset that builds itself offline: moving handwritten digits.

Each clip shows one of scikit-learn's 1,797 real handwritten digits (`load_digits`, 8x8) upscaled
smoothly, moving along a random smooth path and changing scale over a slowly panning crop of one of
scikit-image's bundled photographs, encoded as a real H.264 mp4. The videos are laid out like
Kinetics (`train.csv` / `val.csv` + `<youtube_id>_<start:06d>_<end:06d>.mp4`) and prepared into
ArrayRecord shards by the same `prepare` step real datasets go through.

The digit images are split once: training clips only show training digits, validation clips and
`heldout_images.npz` only show the held-out ones, so a probe on validation measures generalization to
unseen handwriting. Everything is deterministic in `seed`.

    from vicmae_jax.data.demo import ensure_demo_dataset
    paths = ensure_demo_dataset("/tmp/vicmae_demo")   # ~40 s the first time on 2 cores, then instant
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import fcntl
import functools
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image

from vicmae_jax.data import prepare

logger = logging.getLogger(__name__)

LABEL_NAMES = tuple(str(digit) for digit in range(10))  # sorted names = digit order
HELDOUT_FRACTION = 1 / 3
SHOT_SECONDS = 0.5  # each shot has its own background and digit colour
_MARKER = "demo_complete.json"
_VERSION = 5  # bump when the rendering changes, so cached datasets are rebuilt
_LOCK = ".demo.lock"
# What the builder owns under root, and removes when rebuilding a half-built directory.
_OWNED = (
  "videos",
  "prepared",
  "train.csv",
  "val.csv",
  "train_clips.json",
  "val_clips.json",
  "train_images.npz",
  "heldout_images.npz",
  _MARKER,
)
# Colour photographs and textures bundled with scikit-image (no download needed).
_BACKGROUNDS = (
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
def _load_backgrounds() -> tuple[np.ndarray, ...]:
  """Bundled scikit-image pictures as uint8 [H, W, 3] (loaded once per process)."""
  import skimage.data

  pictures = []
  for name in _BACKGROUNDS:
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


def _smooth_path(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
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
      half + _smooth_path(rng, times) * (frame_size - 2 * half),
      half + _smooth_path(rng, times) * (frame_size - 2 * half),
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


def _build_clips(task: dict[str, Any]) -> list[dict[str, Any]]:
  """Renders and encodes a batch of clips (runs in a worker process); returns their layouts."""
  backgrounds = _load_backgrounds()
  layouts = []
  for clip, digit in zip(task["clips"], task["digits"]):
    rng = np.random.default_rng(clip["seed"])
    frames, layout = render_clip(
      digit,
      backgrounds,
      rng,
      frame_size=task["frame_size"],
      num_frames=task["num_frames"],
      fps=task["fps"],
    )
    encode_mp4(clip["path"], frames, task["fps"])
    layouts.append({**{k: v for k, v in clip.items() if k != "path"}, **layout})
  return layouts


def _plan_split(
  split: str,
  num_clips: int,
  digit_indices: np.ndarray,
  labels: np.ndarray,
  seed: int,
  videos_root: str,
  seconds: float,
) -> list[dict[str, Any]]:
  """Which digit image, background and seed each clip of a split uses; classes balanced."""
  split_code = {"train": 1, "val": 2}[split]
  rng = np.random.default_rng([seed, split_code])
  by_class = {
    digit: rng.permutation(digit_indices[labels[digit_indices] == digit]) for digit in range(10)
  }
  end = int(math.ceil(seconds))
  clips = []
  for index in range(num_clips):
    digit = index % 10
    pool = by_class[digit]
    youtube_id = f"{split}{index:05d}"
    clips.append(
      {
        "youtube_id": youtube_id,
        "clip_id": f"{youtube_id}_{0:06d}_{end:06d}",
        "label": digit,
        "label_name": LABEL_NAMES[digit],
        "digit_index": int(pool[(index // 10) % len(pool)]),
        "background": int(rng.integers(len(_BACKGROUNDS))),
        "seed": [seed, split_code, index],
        "path": os.path.join(
          videos_root, split, LABEL_NAMES[digit], f"{youtube_id}_{0:06d}_{end:06d}.mp4"
        ),
      }
    )
  return clips


def _write_images(
  path: str,
  digits: np.ndarray,
  labels: np.ndarray,
  digit_indices: np.ndarray,
  seed: int,
  frame_size: int,
  tag: int,
) -> None:
  """Still images of the digits `digits` [N, 8, 8] (load_digits rows `digit_indices`) into an npz."""
  backgrounds = _load_backgrounds()
  images = np.empty((len(digit_indices), frame_size, frame_size, 3), np.uint8)
  for row, (digit, index) in enumerate(zip(digits, digit_indices)):
    rng = np.random.default_rng([seed, tag, int(index)])
    images[row] = still_image(digit, backgrounds, rng, frame_size)
  np.savez(
    path,
    images=images,
    labels=labels.astype(np.int32),
    digit_indices=digit_indices.astype(np.int32),
  )


@contextlib.contextmanager
def _locked(root: str):
  """An exclusive lock on root, so concurrent processes build the dataset once."""
  with open(os.path.join(root, _LOCK), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _result(root: str, settings: dict[str, Any]) -> dict[str, Any]:
  prepared = os.path.join(root, "prepared")
  return {
    "root": root,
    "videos_root": os.path.join(root, "videos"),
    "train_csv": os.path.join(root, "train.csv"),
    "val_csv": os.path.join(root, "val.csv"),
    "prepared_dir": prepared,
    "train_meta": os.path.join(prepared, "train_meta.json"),
    "val_meta": os.path.join(prepared, "val_meta.json"),
    "train_clips": os.path.join(root, "train_clips.json"),
    "val_clips": os.path.join(root, "val_clips.json"),
    "train_images": os.path.join(root, "train_images.npz"),
    "heldout_images": os.path.join(root, "heldout_images.npz"),
    "label_names": list(LABEL_NAMES),
    **settings,
  }


def ensure_demo_dataset(
  root: str | os.PathLike,
  *,
  num_train_clips: int = 400,
  num_val_clips: int = 150,
  frame_size: int = 64,
  video_fps: float = 12.0,
  seconds: float = 3.0,
  prepared_fps: float = 8.0,
  seed: int = 0,
  workers: int | None = None,
) -> dict[str, Any]:
  """Builds the digits video dataset under `root` once; later calls return at once.

  A marker file records the settings of a complete build; a directory without it (an interrupted
  build) or built with other settings is rebuilt. Safe to call from several processes at once.

  Returns paths: videos_root, train_csv, val_csv (Kinetics csv), prepared_dir (shards
  `train-*`/`val-*` + `*_meta.json`), train_clips / val_clips (json: per clip digit index and
  per-frame digit centre and size), train_images / heldout_images (npz: images uint8
  [N, frame_size, frame_size, 3], labels int32 [N], digit_indices int32 [N]), label_names, and the settings.
  """
  if num_train_clips < 1 or num_val_clips < 1:
    raise ValueError(
      f"num_train_clips and num_val_clips must be >= 1, got {num_train_clips}, {num_val_clips}"
    )
  if frame_size < 32:
    raise ValueError(f"frame_size must be >= 32 (digits are drawn 16-30 px), got {frame_size}")
  root = os.path.abspath(os.fspath(root))
  os.makedirs(root, exist_ok=True)
  settings = {
    "version": _VERSION,
    "num_train_clips": num_train_clips,
    "num_val_clips": num_val_clips,
    "frame_size": frame_size,
    "video_fps": float(video_fps),
    "seconds": float(seconds),
    "prepared_fps": float(prepared_fps),
    "seed": seed,
  }
  marker = os.path.join(root, _MARKER)
  with _locked(root):
    if os.path.isfile(marker):
      with open(marker) as file:
        if json.load(file) == settings:
          return _result(root, settings)
      logger.info("%s was built with other settings: rebuilding", root)
    for name in _OWNED:
      path = os.path.join(root, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
    started = time.time()
    _build(root, settings, workers or min(2, os.cpu_count() or 1))
    with open(marker, "w") as file:
      json.dump(settings, file)
    logger.info("built the digits demo dataset in %s in %.1f s", root, time.time() - started)
  return _result(root, settings)


def _build(root: str, settings: dict[str, Any], workers: int) -> None:
  from sklearn.datasets import load_digits

  digits = load_digits()
  labels = digits.target
  seed = settings["seed"]
  train_digits, heldout_digits = digit_split(seed)
  videos_root = os.path.join(root, "videos")
  num_frames = int(round(settings["seconds"] * settings["video_fps"]))
  plans = {
    "train": _plan_split(
      "train",
      settings["num_train_clips"],
      train_digits,
      labels,
      seed,
      videos_root,
      settings["seconds"],
    ),
    "val": _plan_split(
      "val",
      settings["num_val_clips"],
      heldout_digits,
      labels,
      seed,
      videos_root,
      settings["seconds"],
    ),
  }
  for clips in plans.values():
    for clip in clips:
      os.makedirs(os.path.dirname(clip["path"]), exist_ok=True)

  all_clips = plans["train"] + plans["val"]
  chunks = [all_clips[i :: max(workers, 1) * 4] for i in range(max(workers, 1) * 4)]
  tasks = [
    {
      "clips": chunk,
      "digits": [digits.images[clip["digit_index"]] for clip in chunk],
      "frame_size": settings["frame_size"],
      "num_frames": num_frames,
      "fps": settings["video_fps"],
    }
    for chunk in chunks
    if chunk
  ]
  image_jobs = [
    (
      os.path.join(root, name),
      digits.images[indices],
      labels[indices],
      indices,
      seed,
      settings["frame_size"],
      tag,
    )
    for name, indices, tag in (
      ("train_images.npz", train_digits, 3),
      ("heldout_images.npz", heldout_digits, 4),
    )
  ]
  layouts = []
  if workers == 1:
    for task in tasks:
      layouts.extend(_build_clips(task))
    for job in image_jobs:
      _write_images(*job)
  else:
    # spawn: the caller may hold JAX / threads, which do not survive fork.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      images = [pool.submit(_write_images, *job) for job in image_jobs]
      for result in pool.map(_build_clips, tasks):
        layouts.extend(result)
      for future in images:
        future.result()
  by_id = {layout["clip_id"]: layout for layout in layouts}

  for split, clips in plans.items():
    with open(os.path.join(root, f"{split}.csv"), "w", newline="") as file:
      writer = csv.writer(file)
      writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
      for clip in clips:
        end = int(math.ceil(settings["seconds"]))
        writer.writerow([clip["label_name"], clip["youtube_id"], 0, end, split])
    with open(os.path.join(root, f"{split}_clips.json"), "w") as file:
      json.dump([by_id[clip["clip_id"]] for clip in clips], file)
    prepare.prepare_dataset(
      "kinetics",
      videos_root,
      os.path.join(root, "prepared"),
      annotations=os.path.join(root, f"{split}.csv"),
      split=split,
      label_names=LABEL_NAMES,
      fps=settings["prepared_fps"],
      short_side=settings["frame_size"],
      num_shards=2,
      workers=workers,
      progress=False,
    )
