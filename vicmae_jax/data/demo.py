"""A small real-data video dataset that builds itself offline: moving handwritten digits.

Each clip shows one of scikit-learn's 1,797 real handwritten digits (`load_digits`, 8x8) upscaled
smoothly, moving along a random smooth path and changing scale over a slowly panning crop of one of
scikit-image's bundled photographs, encoded as a real H.264 mp4. The videos are laid out like
Kinetics (`train.csv` / `val.csv` + `<youtube_id>_<start:06d>_<end:06d>.mp4`) and prepared into
ArrayRecord shards by the same `prepare` step real datasets go through. The rendering is in
demo_render.py.

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
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from typing import Any

import numpy as np

from vicmae_jax.data import demo_render
from vicmae_jax.data import prepare

logger = logging.getLogger(__name__)

LABEL_NAMES = tuple(str(digit) for digit in range(10))  # sorted names = digit order
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


def _build_clips(task: dict[str, Any]) -> list[dict[str, Any]]:
  """Renders and encodes a batch of clips (runs in a worker process); returns their layouts."""
  backgrounds = demo_render.load_backgrounds()
  layouts = []
  for clip, digit in zip(task["clips"], task["digits"]):
    rng = np.random.default_rng(clip["seed"])
    frames, layout = demo_render.render_clip(
      digit,
      backgrounds,
      rng,
      frame_size=task["frame_size"],
      num_frames=task["num_frames"],
      fps=task["fps"],
    )
    demo_render.encode_mp4(clip["path"], frames, task["fps"])
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
        "background": int(rng.integers(len(demo_render.BACKGROUNDS))),
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
  backgrounds = demo_render.load_backgrounds()
  images = np.empty((len(digit_indices), frame_size, frame_size, 3), np.uint8)
  for row, (digit, index) in enumerate(zip(digits, digit_indices)):
    rng = np.random.default_rng([seed, tag, int(index)])
    images[row] = demo_render.still_image(digit, backgrounds, rng, frame_size)
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
  train_digits, heldout_digits = demo_render.digit_split(seed)
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
