"""The moving-digits demo dataset: real mp4s in the Kinetics layout, prepared shards, held-out digits."""

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from vicmae_jax.data import demo, demo_render, formats, records, video_io

NUM_TRAIN, NUM_VAL = 20, 10


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  return demo.ensure_demo_dataset(root, num_train_clips=NUM_TRAIN, num_val_clips=NUM_VAL, workers=1)


def correlation(a, b):
  a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def read_clips(paths):
  clips = []
  for path in paths:
    clips.extend(records.read_clips(path))
  return clips


def test_kinetics_layout_and_csv(built):
  for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
    with open(built[f"{split}_csv"], newline="") as file:
      rows = list(csv.DictReader(file))
    assert len(rows) == count
    assert list(rows[0]) == ["label", "youtube_id", "time_start", "time_end", "split"]
    assert {row["split"] for row in rows} == {split}
    # Classes are balanced: clip i shows digit i % 10.
    assert [row["label"] for row in rows] == [demo.LABEL_NAMES[i % 10] for i in range(count)]
    entries, label_names = formats.list_kinetics(built["videos_root"], built[f"{split}_csv"], split)
    assert len(entries) == count and label_names == list(demo.LABEL_NAMES)
    assert all(os.path.basename(entry.path) == f"{entry.clip_id}.mp4" for entry in entries)


def test_videos_are_real_h264_with_the_digit_where_the_layout_says(built):
  digits = load_digits()
  with open(built["train_clips"]) as file:
    layouts = json.load(file)
  entries, _ = formats.list_kinetics(built["videos_root"], built["train_csv"], "train")
  path_of = {entry.clip_id: entry.path for entry in entries}
  for layout in layouts[:3]:
    info = video_io.probe(path_of[layout["clip_id"]])
    assert (info.width, info.height, info.fps, info.num_frames) == (64, 64, 12.0, 36)
    frames, _, _ = video_io.read_frames(path_of[layout["clip_id"]])
    template = digits.images[layout["digit_index"]]
    others = digits.images[digits.target != layout["label"]][:30]
    for t in (0, 17, 35):
      size = layout["digit_size"][t]
      x0, y0 = np.round(np.asarray(layout["center_xy"][t]) - size / 2).astype(int)
      crop = frames[t, y0 : y0 + size, x0 : x0 + size].astype(np.float32).mean(-1)
      own = correlation(crop, demo_render.render_digit(template, size))
      other = max(correlation(crop, demo_render.render_digit(image, size)) for image in others)
      assert own > 0.85, own
      assert own > other, (own, other)


def test_prepared_shards_hold_every_clip_at_8_fps(built):
  with open(built["train_meta"]) as file:
    meta = json.load(file)
  assert meta["num_clips"] == NUM_TRAIN and meta["skipped"] == []
  assert meta["label_names"] == list(demo.LABEL_NAMES) and meta["fps"] == 8.0
  clips = read_clips([os.path.join(built["prepared_dir"], name) for name in meta["shards"]])
  assert sorted(clip["label"] for clip in clips) == sorted(i % 10 for i in range(NUM_TRAIN))
  # 36 frames at 12 fps resampled to 8 fps: grid 0, 1/8, ... 23/8 s -> 24 distinct frames.
  source_times = np.arange(36) / 12.0
  grid = np.arange(24) / 8.0
  expected_times = np.unique(source_times[[int(np.argmin(np.abs(source_times - t))) for t in grid]])
  for clip in clips:
    assert clip["label_name"] == demo.LABEL_NAMES[clip["label"]]
    assert (clip["height"], clip["width"], clip["source_fps"]) == (64, 64, 12.0)
    assert len(clip["frames"]) == 24
    np.testing.assert_allclose(clip["timestamps"], expected_times, atol=1e-3)
    assert np.asarray(Image.open(io.BytesIO(clip["frames"][5]))).shape == (64, 64, 3)
  with open(built["val_meta"]) as file:
    assert json.load(file)["num_clips"] == NUM_VAL


def test_validation_digits_are_never_seen_in_training(built):
  digits = load_digits()
  train_split, heldout_split = demo_render.digit_split(0)
  assert len(np.intersect1d(train_split, heldout_split)) == 0
  assert len(train_split) + len(heldout_split) == len(digits.target)
  with open(built["train_clips"]) as file:
    train_used = {clip["digit_index"] for clip in json.load(file)}
  with open(built["val_clips"]) as file:
    val_clips = json.load(file)
  val_used = {clip["digit_index"] for clip in val_clips}
  assert train_used <= set(train_split) and val_used <= set(heldout_split)
  assert all(digits.target[clip["digit_index"]] == clip["label"] for clip in val_clips)

  heldout = np.load(built["heldout_images"])
  train_images = np.load(built["train_images"])
  np.testing.assert_array_equal(heldout["digit_indices"], heldout_split)
  np.testing.assert_array_equal(train_images["digit_indices"], train_split)
  np.testing.assert_array_equal(heldout["labels"], digits.target[heldout_split])
  assert (
    heldout["images"].shape == (len(heldout_split), 64, 64, 3)
    and heldout["images"].dtype == np.uint8
  )
  # No held-out digit image coincides pixel for pixel with a training one.
  train_flat = {image.tobytes() for image in digits.images[train_split]}
  assert not any(image.tobytes() in train_flat for image in digits.images[heldout_split])


@pytest.mark.slow
def test_second_call_reuses_and_half_built_directory_is_rebuilt(built):
  shard = os.path.join(built["prepared_dir"], "train-00000-of-00002.array_record")
  stamp = os.stat(shard).st_mtime_ns
  clips_before = read_clips([shard])
  again = demo.ensure_demo_dataset(
    built["root"], num_train_clips=NUM_TRAIN, num_val_clips=NUM_VAL, workers=1
  )
  assert again == built and os.stat(shard).st_mtime_ns == stamp

  # An interrupted build: no marker, a stray partial file.
  os.remove(os.path.join(built["root"], "demo_complete.json"))
  stray = os.path.join(built["videos_root"], "train", "0", "partial.mp4")
  open(stray, "wb").close()
  rebuilt = demo.ensure_demo_dataset(
    built["root"], num_train_clips=NUM_TRAIN, num_val_clips=NUM_VAL, workers=2
  )
  assert rebuilt == built and not os.path.exists(stray)
  assert os.path.exists(os.path.join(built["root"], "demo_complete.json"))
  # The same seed gives the same clips, whatever the worker count (1 before, 2 now).
  clips_after = read_clips([shard])
  assert [clip["frames"] for clip in clips_after] == [clip["frames"] for clip in clips_before]


def test_rendering_is_deterministic_in_the_seed():
  digit = load_digits().images[0]
  background = (np.random.default_rng(0).integers(0, 256, size=(100, 120, 3), dtype=np.uint8),)
  first, layout = demo_render.render_clip(
    digit, background, np.random.default_rng(5), frame_size=64, num_frames=6, fps=12
  )
  second, _ = demo_render.render_clip(
    digit, background, np.random.default_rng(5), frame_size=64, num_frames=6, fps=12
  )
  third, _ = demo_render.render_clip(
    digit, background, np.random.default_rng(6), frame_size=64, num_frames=6, fps=12
  )
  np.testing.assert_array_equal(first, second)
  assert not np.array_equal(first, third)
  assert first.shape == (6, 64, 64, 3) and len(layout["digit_size"]) == 6
  assert all(16 <= size <= 62 for size in layout["digit_size"])


def test_frames_a_second_apart_share_the_digit_not_the_background():
  digit = load_digits().images[0]
  # Flat backgrounds of distinct colours: a pan inside a shot changes nothing, a new shot does.
  backgrounds = tuple(np.full((100, 120, 3), value, np.uint8) for value in (0, 80, 160, 240))
  frames, layout = demo_render.render_clip(
    digit, backgrounds, np.random.default_rng(1), frame_size=64, num_frames=36, fps=12
  )
  shot = layout["shot_frames"]
  assert shot == 6 and len(layout["shot_colors"]) == 6
  corner = lambda f: frames[f, :3, :3].astype(float).mean()  # the digit stays >= 1 px inside
  for start in range(0, 36, shot):
    assert all(abs(corner(start) - corner(f)) < 2 for f in range(start, start + shot))
  firsts = [corner(start) for start in range(0, 36, shot)]
  assert len({round(v) for v in firsts}) >= 2  # shots draw their own background
  colors = np.asarray(layout["shot_colors"])
  assert len({tuple(np.round(c, 3)) for c in colors}) == len(colors)  # and their own digit colour
