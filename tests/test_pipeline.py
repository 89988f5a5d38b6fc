"""The grain pipelines end to end on real media whose frames show their own index."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from media_utils import make_bad_files, make_video, read_index
from vicmae_jax.data import pipeline, prepare, records, sampling

FPS = 10.0
NUM_FRAMES = 30
NUM_VIDEOS = 6
# "decode|resize" keeps the whole frame, so the index stays readable from the pixels.
READABLE_VIEWS = ("decode|resize", "decode|resize")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """Six 3 s videos at 10 fps, one per class folder (label = video number), prepared at 10 fps.

  Also square 48x48 copies for clip tests (spatial crops keep the whole index row).
  """
  root = tmp_path_factory.mktemp("pipeline_media")
  videos = root / "videos"
  for number in range(NUM_VIDEOS):
    suffix = ".webm" if number % 3 == 2 else ".mp4"
    (videos / f"class{number}").mkdir(parents=True)
    make_video(
      videos / f"class{number}" / f"v{number}{suffix}",
      num_frames=NUM_FRAMES,
      fps=FPS,
      live=number == 5,
    )
  prepare.prepare_dataset(
    "folder", videos, root / "prepared", fps=FPS, short_side=None, num_shards=2, progress=False
  )
  square = root / "square"
  for number in range(2):
    (square / f"class{number}").mkdir(parents=True)
    make_video(
      square / f"class{number}" / f"s{number}.mp4",
      num_frames=NUM_FRAMES,
      fps=FPS,
      width=48,
      height=48,
    )
  prepare.prepare_dataset(
    "folder", square, root / "square_prepared", fps=FPS, short_side=None, progress=False
  )
  images = np.random.default_rng(0).integers(0, 255, (5, 40, 40, 3), dtype=np.uint8)
  np.savez(root / "images.npz", images=images, labels=np.arange(100, 105, dtype=np.int32))
  return root


def _config(**sources):
  cfg = pipeline.default_data_config()
  for name, fields in sources.items():
    cfg.sources[name] = pipeline.default_source_config(**fields)
  cfg.num_threads = 2
  return cfg


def _prepared_config(media, **overrides):
  cfg = _config(clips=dict(kind="prepared", path=str(media / "prepared")))
  cfg.view_augmentations = READABLE_VIEWS
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def _prepared_loader(media, **kwargs):
  """A loader over the prepared videos, with views that keep the frame index readable."""
  return pipeline.make_pretrain_loader(_prepared_config(media), **kwargs)


def _batches(loader, count):
  iterator = iter(loader)
  return [next(iterator) for _ in range(count)]


def _process_loaders(cfg, process_count, **kwargs):
  """The loaders of the `process_count` processes of one run, by process index."""
  return [
    pipeline.make_pretrain_loader(
      cfg, process_index=process_index, process_count=process_count, **kwargs
    )
    for process_index in range(process_count)
  ]


def _pairs(batches):
  """[(label, index of view 1, index of view 2)] read from the pixels."""
  return [
    (int(label), read_index(v[0]), read_index(v[1]))
    for b in batches
    for label, v in zip(b["label"], b["views"])
  ]


# ---------------------------------------------------------------------------------------------------
# Frame pairs.


def test_prepared_pairs_are_the_requested_time_apart(media):
  loader = _prepared_loader(media, global_batch_size=4, image_size=32, seed=0)
  batches = _batches(loader, 6)
  assert batches[0]["views"].shape == (4, 2, 32, 32, 3) and batches[0]["views"].dtype == np.uint8
  assert batches[0]["label"].dtype == np.int32
  pairs = _pairs(batches)
  # 1.06 s at 10 fps is 10.6 frames: the nearest frame is 11 apart (within one frame of the gap).
  assert {abs(a - b) for _, a, b in pairs} == {11}
  assert any(a > b for _, a, b in pairs) and any(a < b for _, a, b in pairs)  # both orders
  assert sorted({label for label, _, _ in pairs}) == list(range(NUM_VIDEOS))


def test_gap_range_and_zero_gap(media):
  cfg = _prepared_config(media, frame_gap_range=(0.3, 2.0))
  pairs = _pairs(
    _batches(
      pipeline.make_pretrain_loader(
        cfg, global_batch_size=6, image_size=32, seed=1, process_index=0, process_count=1
      ),
      10,
    )
  )
  gaps = [abs(a - b) for _, a, b in pairs]
  assert min(gaps) >= 3 and max(gaps) <= 20 and len(set(gaps)) >= 8
  cfg = _prepared_config(media, frame_gap_seconds=0.0)
  pairs = _pairs(
    _batches(
      pipeline.make_pretrain_loader(
        cfg, global_batch_size=6, image_size=32, seed=1, process_index=0, process_count=1
      ),
      2,
    )
  )
  assert all(a == b for _, a, b in pairs)


def test_raw_video_pairs_mp4_webm_and_live_webm(media):
  cfg = _config(raw=dict(kind="raw", format="folder", path=str(media / "videos"), short_side=0))
  cfg.view_augmentations = READABLE_VIEWS
  loader = pipeline.make_pretrain_loader(
    cfg, global_batch_size=6, image_size=32, seed=0, process_index=0, process_count=1
  )
  pairs = _pairs(_batches(loader, 4))
  assert sorted({label for label, _, _ in pairs}) == list(range(NUM_VIDEOS))
  # Times 1.06 s apart; decode_at_times gives the nearest frame to each: 10 or 11 frames apart.
  assert {abs(a - b) for _, a, b in pairs} <= {10, 11}
  assert loader.skip_log.count == 0


def test_bad_raw_files_are_skipped_and_counted(media, tmp_path):
  root = tmp_path / "videos"
  make_bad_files(root / "bad")
  make_video(root / "good" / "g.mp4", num_frames=NUM_FRAMES, fps=FPS)
  cfg = _config(raw=dict(kind="raw", format="folder", path=str(root), short_side=0))
  cfg.view_augmentations = READABLE_VIEWS
  loader = pipeline.make_pretrain_loader(
    cfg, global_batch_size=4, image_size=32, seed=0, process_index=0, process_count=1
  )
  batches = _batches(loader, 3)
  assert all(
    label == 1 for label, _, _ in _pairs(batches)
  )  # only the good video ("good" is class 1)
  assert loader.skip_log.count == 5
  assert loader.skip_log.events >= 5
  reasons = loader.skip_log.by_reason()
  assert reasons["too short"] == 1 and sum(reasons.values()) == 5
  # Each row says how many records it replaced: what the training loop logs as data/skipped.
  replaced = sum(int(b["skipped"].sum()) for b in batches)
  assert 1 <= replaced <= loader.skip_log.events


# ---------------------------------------------------------------------------------------------------
# Determinism, sharding, state.


def test_same_pairs_for_a_record_whatever_the_process_count(media):
  """A record's pair depends on (seed, record, epoch) only, not on how the index is split."""

  def first_epoch(process_count):
    found = {}
    loaders = _process_loaders(
      _prepared_config(media), process_count, global_batch_size=process_count, image_size=32, seed=5
    )
    for loader in loaders:
      for label, a, b in _pairs(_batches(loader, NUM_VIDEOS // process_count)):
        found[label] = (a, b)
    return found

  one, three = first_epoch(1), first_epoch(3)
  assert sorted(one) == list(range(NUM_VIDEOS)) and one == three
  other_seed = _prepared_loader(media, global_batch_size=6, image_size=32, seed=6)
  assert {label: (a, b) for label, a, b in _pairs(_batches(other_seed, 1))} != one


@pytest.mark.parametrize("process_count", [2, 3, 4])
def test_process_shards_are_disjoint_and_cover_the_index(media, process_count):
  seen = []
  loaders = _process_loaders(
    _prepared_config(media), process_count, global_batch_size=process_count, image_size=32, seed=0
  )
  for process_index, loader in enumerate(loaders):
    share = len(range(process_index, NUM_VIDEOS, process_count))
    labels = [label for label, _, _ in _pairs(_batches(loader, share))]
    assert len(set(labels)) == share  # one pass over its own part, no repeats
    seen.append(set(labels))
  assert set().union(*seen) == set(range(NUM_VIDEOS))
  assert sum(len(s) for s in seen) == NUM_VIDEOS


def _mixture_config(media, clips_path=None):
  cfg = _config(
    clips=dict(kind="prepared", path=str(clips_path or media / "prepared"), weight=2.0),
    images=dict(kind="npz", path=str(media / "images.npz"), weight=1.0),
  )
  cfg.view_augmentations = tuple(
    pipeline.augment.DEFAULT_VIEW_SPECS
  )  # the full recipe: every draw matters
  return cfg


def _global_batches(cfg, process_count, count, global_batch=8, seed=4):
  """The first `count` global batches of a run over `process_count` processes: host batches concatenated."""
  per_process = []
  loaders = _process_loaders(
    cfg, process_count, global_batch_size=global_batch, image_size=16, seed=seed
  )
  for loader in loaders:
    assert loader.host_batch_size == global_batch // process_count
    per_process.append(_batches(loader, count))
  return [
    {key: np.concatenate([batches[k][key] for batches in per_process]) for key in per_process[0][k]}
    for k in range(count)
  ]


def test_global_batches_are_the_same_for_any_process_count(media):
  """Process p reads rows [p * b, (p + 1) * b) of each global batch of one global stream."""
  cfg = _mixture_config(media)
  count = 6  # 48 rows: the 6 clips and the 5 images each go round several epochs
  single = _global_batches(cfg, 1, count)
  sources_seen = np.concatenate([b["source"] for b in single])
  labels = np.concatenate([b["label"] for b in single])
  assert set(sources_seen) == {0, 1}
  clip_labels = labels[sources_seen == 0]
  assert len(clip_labels) > 2 * NUM_VIDEOS and set(clip_labels) == set(
    range(NUM_VIDEOS)
  )  # across epochs
  for process_count in (2, 4):
    for k, (want, got) in enumerate(zip(single, _global_batches(cfg, process_count, count))):
      assert want.keys() == got.keys()
      for key in want:
        np.testing.assert_array_equal(
          got[key], want[key], err_msg=f"{process_count} processes, batch {k}, {key}"
        )
  # A different seed is a different stream (the comparison above is not vacuous).
  assert not np.array_equal(_global_batches(cfg, 1, 1, seed=5)[0]["views"], single[0]["views"])


def test_unusable_records_are_replaced_the_same_way_for_any_process_count(media, tmp_path):
  """A clip whose frames do not decode is replaced by another record chosen from its position alone."""
  clips = records.read_clips(media / "prepared" / "train-00000-of-00002.array_record")
  broken = dict(
    clips[0], clip_id="broken", label=99, frames=[b"not a jpeg"] * len(clips[0]["frames"])
  )
  records.write_shard(tmp_path / "train-00000-of-00001.array_record", [broken] + clips[1:])
  cfg = _mixture_config(media, clips_path=tmp_path)
  single = _global_batches(cfg, 1, 4)
  assert 99 not in np.concatenate([b["label"] for b in single])
  for want, got in zip(single, _global_batches(cfg, 2, 4)):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  loader = pipeline.make_pretrain_loader(
    cfg, global_batch_size=8, image_size=16, seed=4, process_index=0, process_count=1
  )
  _batches(loader, 4)
  assert loader.skip_log.by_reason() == {"undecodable frame": 1}

  records.write_shard(tmp_path / "train-00000-of-00001.array_record", [broken])
  only_broken = _config(clips=dict(kind="prepared", path=str(tmp_path)))
  loader = pipeline.make_pretrain_loader(
    only_broken, global_batch_size=2, image_size=16, seed=0, process_index=0, process_count=1
  )
  with pytest.raises(Exception, match="data.sources.clips: 65 records in a row could not be used"):
    _batches(loader, 1)


def test_epochs_reshuffle_and_redraw_pairs(media):
  loader = _prepared_loader(media, global_batch_size=6, image_size=32, seed=0)
  epoch0, epoch1 = (_pairs([b]) for b in _batches(loader, 2))
  assert (
    sorted(label for label, _, _ in epoch0)
    == sorted(label for label, _, _ in epoch1)
    == list(range(NUM_VIDEOS))
  )
  assert epoch0 != epoch1


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_iterator_state_round_trip(media, prefetch_batches):
  cfg = _prepared_config(media, prefetch_batches=prefetch_batches)
  cfg.view_augmentations = tuple(
    pipeline.augment.DEFAULT_VIEW_SPECS
  )  # the full recipe: every draw matters

  def make():
    return pipeline.make_pretrain_loader(
      cfg, global_batch_size=4, image_size=32, seed=3, process_index=0, process_count=1
    )

  iterator = iter(make())
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  restored = iter(make())
  restored.set_state(json.loads(json.dumps(state)))  # the state survives a JSON round trip
  for want in expected:
    got = next(restored)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.slow
def test_worker_processes(media):
  """Any worker count gives the in-process stream; with 2 workers the state still restores exactly."""

  def make(workers):
    cfg = _prepared_config(media, worker_count=workers)
    return pipeline.make_pretrain_loader(
      cfg, global_batch_size=4, image_size=16, seed=0, process_index=0, process_count=1
    )

  in_process = _batches(make(0), 3)
  for workers in (1, 2):
    iterator = iter(make(workers))
    try:
      for want in in_process:
        got = next(iterator)
        for key in want:
          np.testing.assert_array_equal(got[key], want[key], err_msg=f"{workers} workers")
    finally:
      iterator.close()
  first, second = iter(make(2)), iter(make(2))
  try:
    next(first)
    state = first.get_state()
    expected = next(first)
    second.set_state(state)
    got = next(second)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  finally:
    first.close()
    second.close()


@pytest.mark.slow
def test_orbax_save_and_restore_in_a_fresh_process(media, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  cfg = _prepared_config(media)
  loader = pipeline.make_pretrain_loader(
    cfg, global_batch_size=4, image_size=32, seed=2, process_index=0, process_count=1
  )
  iterator = iter(loader)
  for _ in range(2):
    next(iterator)
  manager = ocp.CheckpointManager(
    tmp_path / "ckpt",
    item_names=("data",),
    item_handlers={"data": grain.checkpoint.CheckpointHandler()},
  )
  manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = next(iterator)
  with open(tmp_path / "cfg.json", "w") as file:
    json.dump(cfg.to_dict(), file)

  script = textwrap.dedent(f"""
        import json, grain, ml_collections, numpy as np, orbax.checkpoint as ocp
        from vicmae_jax.data import pipeline
        cfg = ml_collections.ConfigDict(json.load(open({str(tmp_path / "cfg.json")!r})))
        cfg.view_augmentations = tuple(cfg.view_augmentations)
        loader = pipeline.make_pretrain_loader(cfg, global_batch_size=4, image_size=32, seed=2,
                                               process_index=0, process_count=1)
        iterator = iter(loader)
        manager = ocp.CheckpointManager({str(tmp_path / "ckpt")!r}, item_names=("data",),
                                        item_handlers={{"data": grain.checkpoint.CheckpointHandler()}})
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator)))
        np.savez({str(tmp_path / "next.npz")!r}, **next(iterator))
    """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path), JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=240)
  restored = np.load(tmp_path / "next.npz")
  for key in expected:
    np.testing.assert_array_equal(restored[key], expected[key])


# ---------------------------------------------------------------------------------------------------
# Mixtures and images.


def test_mixture_proportions_and_image_views(media):
  cfg = _config(
    clips=dict(kind="prepared", path=str(media / "prepared"), weight=3.0),
    images=dict(kind="npz", path=str(media / "images.npz"), weight=1.0),
  )
  cfg.view_augmentations = ("decode|random_resized_crop", "decode|random_resized_crop")
  loader = pipeline.make_pretrain_loader(
    cfg, global_batch_size=8, image_size=24, seed=0, process_index=0, process_count=1
  )
  assert loader.source_names == ("clips", "images")
  batches = _batches(loader, 50)
  source = np.concatenate([b["source"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert abs(np.mean(source == 1) - 0.25) < 0.02  # 3:1 over 400 examples
  assert set(labels[source == 1]) == set(range(100, 105)) and set(labels[source == 0]) == set(
    range(NUM_VIDEOS)
  )
  # An image gives two different augmentations of itself.
  views = np.concatenate([b["views"] for b in batches])[source == 1]
  assert all(not np.array_equal(v[0], v[1]) for v in views[:10])

  cfg.sources.images.weight = 1.0
  cfg.sources.clips.weight = 1.0
  even = pipeline.make_pretrain_loader(
    cfg, global_batch_size=8, image_size=24, seed=0, process_index=0, process_count=1
  )
  source = np.concatenate([b["source"] for b in _batches(even, 25)])
  assert abs(np.mean(source == 1) - 0.5) < 0.02


def test_image_views_without_cropping_equal_the_image(media):
  cfg = _config(images=dict(kind="npz", path=str(media / "images.npz")))
  cfg.view_augmentations = ("decode", "decode|flip(1.0)")
  loader = pipeline.make_pretrain_loader(
    cfg, global_batch_size=5, image_size=40, seed=0, process_index=0, process_count=1
  )
  batch = _batches(loader, 1)[0]
  images = np.load(media / "images.npz")["images"]
  for label, views in zip(batch["label"], batch["views"]):
    np.testing.assert_array_equal(views[0], images[label - 100])
    np.testing.assert_array_equal(views[1], images[label - 100][:, ::-1])


def test_batch_size_must_split_over_processes(media):
  with pytest.raises(ValueError, match="batch_size"):
    _prepared_loader(
      media, global_batch_size=10, image_size=32, seed=0, process_index=0, process_count=3
    )


# ---------------------------------------------------------------------------------------------------
# Config.


def test_validate_data_config_names_the_field(media, tmp_path):
  cfg = pipeline.default_data_config()
  with pytest.raises(ValueError, match="data.sources: no sources"):
    pipeline.validate_data_config(cfg)
  cfg = _prepared_config(media)
  pipeline.validate_data_config(cfg)
  bad = _prepared_config(media)
  bad.sources.clips.path = str(tmp_path / "missing")
  with pytest.raises(
    ValueError, match=f"data.sources.clips.path: not found: {tmp_path / 'missing'}"
  ):
    pipeline.validate_data_config(bad)
  bad = _prepared_config(media)
  bad.sources.clips.kind = "mp4"
  with pytest.raises(ValueError, match="data.sources.clips.kind"):
    pipeline.validate_data_config(bad)
  bad = _prepared_config(media)
  bad.sources.clips.weight = 0.0
  with pytest.raises(ValueError, match="data.sources.clips.weight"):
    pipeline.validate_data_config(bad)
  with pytest.raises(ValueError, match="data.frame_gap_range"):
    pipeline.validate_data_config(_prepared_config(media, frame_gap_range=(2.0, 1.0)))
  with pytest.raises(ValueError, match="data.view_augmentations: unknown augmentation op 'blurr'"):
    pipeline.validate_data_config(
      _prepared_config(media, view_augmentations=("decode|blurr", "decode"))
    )
  with pytest.raises(ValueError, match="data.worker_count"):
    pipeline.validate_data_config(_prepared_config(media, worker_count=-1))
  with pytest.raises(ValueError, match="data.sources.raw.annotations"):
    pipeline.validate_data_config(
      _config(raw=dict(kind="raw", format="kinetics", path=str(media / "videos")))
    )


def test_a_gap_longer_than_every_clip_is_refused(media, tmp_path):
  """The media clips hold 30 frames at 10 fps: 3.0 s each (the last frame lasts to 3.0 s)."""
  with open(media / "prepared" / "train_meta.json") as file:
    assert json.load(file)["max_clip_seconds"] == pytest.approx(3.0, abs=1e-3)
  pipeline.validate_data_config(_prepared_config(media, frame_gap_seconds=3.0))
  with pytest.raises(
    ValueError,
    match=r"data.frame_gap_seconds: a gap of 3.5 s is longer than the longest clip of "
    r"every video source \(clips: 3 s\)",
  ):
    pipeline.validate_data_config(_prepared_config(media, frame_gap_seconds=3.5))
  pipeline.validate_data_config(
    _prepared_config(media, frame_gap_seconds=3.5), frame_pairs=False
  )  # clips only
  with pytest.raises(ValueError, match="data.frame_gap_range: a gap of 3.2 s"):
    pipeline.validate_data_config(_prepared_config(media, frame_gap_range=(3.2, 5.0)))
  pipeline.validate_data_config(
    _prepared_config(media, frame_gap_range=(1.0, 5.0))
  )  # part of the range fits
  # Images hold no clips; a raw video source's clips are probed (the same 3 s videos).
  with_images = _mixture_config(media)
  with_images.frame_gap_seconds = 3.5
  with pytest.raises(ValueError, match="data.frame_gap_seconds"):
    pipeline.validate_data_config(with_images)
  with_raw = _config(
    clips=dict(kind="prepared", path=str(media / "prepared")),
    raw=dict(kind="raw", format="folder", path=str(media / "videos")),
  )
  with_raw.frame_gap_seconds = 3.5
  with pytest.raises(
    ValueError,
    match=r"data.frame_gap_seconds: a gap of 3.5 s is longer than the longest clip of "
    r"every video source \(clips: 3 s, raw: 3 s\), so no frame pair",
  ):
    pipeline.validate_data_config(with_raw)

  # One long clip is enough; the short ones keep giving their largest gap (first and last frame).
  videos = tmp_path / "videos"
  make_video(videos / "long" / "l.mp4", num_frames=NUM_FRAMES, fps=FPS)
  make_video(videos / "short" / "s.mp4", num_frames=5, fps=FPS)
  prepare.prepare_dataset(
    "folder", videos, tmp_path / "prepared", fps=FPS, short_side=None, progress=False
  )
  cfg = _config(clips=dict(kind="prepared", path=str(tmp_path / "prepared")))
  cfg.view_augmentations = READABLE_VIEWS
  cfg.frame_gap_seconds = 2.0
  pipeline.validate_data_config(cfg)
  loader = pipeline.make_pretrain_loader(
    cfg, global_batch_size=4, image_size=32, seed=0, process_index=0, process_count=1
  )
  pairs = _pairs(_batches(loader, 3))
  assert {abs(a - b) for label, a, b in pairs if label == 1} == {
    4
  }  # "short" (class 1): frames 0 and 4
  assert {abs(a - b) for label, a, b in pairs if label == 0} == {20}
  cfg.frame_gap_seconds = 3.1
  with pytest.raises(ValueError, match=r"data.frame_gap_seconds: .*\(clips: 3 s\)"):
    pipeline.validate_data_config(cfg)


def _raw_config(path, **overrides):
  cfg = _config(raw=dict(kind="raw", format="folder", path=str(path), short_side=0))
  cfg.view_augmentations = READABLE_VIEWS
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def test_raw_sources_refuse_a_gap_longer_than_every_probed_clip(media, tmp_path):
  """Raw videos (mp4, webm, a live webm without a duration) of 3 s: the loader builder refuses a
  gap of 3.5 s with the prepared sources' message; 3 s still trains on pairs 29 frames apart."""
  with pytest.raises(
    ValueError,
    match=r"^data.frame_gap_seconds: a gap of 3.5 s is longer than the longest clip of every "
    r"video source \(raw: 3 s\), so no frame pair can be that far apart: ask for a shorter gap",
  ):
    pipeline.make_pretrain_loader(
      _raw_config(media / "videos", frame_gap_seconds=3.5),
      global_batch_size=4,
      image_size=32,
      seed=0,
    )
  with pytest.raises(ValueError, match=r"^data.frame_gap_range: a gap of 3.2 s .*\(raw: 3 s\)"):
    pipeline.validate_data_config(_raw_config(media / "videos", frame_gap_range=(3.2, 4.0)))
  pipeline.validate_data_config(_raw_config(media / "videos", frame_gap_range=(2.0, 4.0)))
  loader = pipeline.make_pretrain_loader(
    _raw_config(media / "videos", frame_gap_seconds=3.0),
    global_batch_size=4,
    image_size=32,
    seed=0,
  )
  assert {abs(a - b) for _, a, b in _pairs(_batches(loader, 2))} == {NUM_FRAMES - 1}

  # Corrupt and unreadable files are left out of the probe, not fatal: the one good clip decides.
  videos = tmp_path / "videos"
  make_bad_files(videos / "broken")
  make_video(videos / "fine" / "f.mp4", num_frames=12, fps=FPS)
  with pytest.raises(ValueError, match=r"\(raw: 1.2 s, longest of 2 probed of 6 files\)"):
    pipeline.validate_data_config(_raw_config(videos, frame_gap_seconds=2.0))
  pipeline.validate_data_config(_raw_config(videos, frame_gap_seconds=1.2))
  # Nothing opens: the length is unknown, so nothing is refused (training skips the files).
  only_bad = tmp_path / "only_bad"
  make_bad_files(only_bad / "broken")
  (only_bad / "broken" / "too_short.mp4").unlink()
  pipeline.validate_data_config(_raw_config(only_bad, frame_gap_seconds=100.0))
  # Clips (frame_pairs=False) never probe for the gap.
  pipeline.validate_data_config(_raw_config(videos, frame_gap_seconds=2.0), frame_pairs=False)


def test_raw_source_warns_when_most_probed_clips_are_shorter_than_the_gap(tmp_path, monkeypatch):
  videos = tmp_path / "videos"
  for number, frames in enumerate((5, 8, 30)):  # 0.5 s, 0.8 s, 3 s
    make_video(videos / "c" / f"v{number}.mp4", num_frames=frames, fps=FPS)
  warnings = []
  monkeypatch.setattr(
    pipeline.logging, "warning", lambda message, *args: warnings.append(message % args)
  )
  pipeline.validate_data_config(_raw_config(videos, frame_gap_seconds=1.0))
  assert warnings == [
    (
      "data.sources.raw: 2 of its 3 probed clips last less than the frame gap of up to 1 s "
      "(data.frame_gap_seconds); such clips give their largest gap (first and last frame) instead"
    )
  ]
  warnings.clear()
  pipeline.validate_data_config(_raw_config(videos, frame_gap_seconds=0.6))
  assert warnings == []


def test_dataset_size(media):
  cfg = _config(
    clips=dict(kind="prepared", path=str(media / "prepared")),
    images=dict(kind="npz", path=str(media / "images.npz")),
  )
  assert pipeline.dataset_size(cfg) == NUM_VIDEOS + 5


# ---------------------------------------------------------------------------------------------------
# Evaluation and clips.


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_loader_pads_and_keeps_every_example(media, process_count):
  cfg = _config(images=dict(kind="npz", path=str(media / "images.npz")))
  images = np.load(media / "images.npz")["images"]
  per_process = []
  for process_index in range(process_count):
    loader = pipeline.make_eval_loader(
      cfg,
      batch_size=2 * process_count,
      image_size=32,
      process_index=process_index,
      process_count=process_count,
    )
    batches = list(loader)
    assert len(batches) == len(loader)
    per_process.append(batches)
    for batch in batches:
      assert batch["image"].shape == (2, 32, 32, 3) and batch["valid"].dtype == np.bool_
      for image, label, valid in zip(batch["image"], batch["label"], batch["valid"]):
        if not valid:
          assert label == -1 and image.max() == 0
          continue
        # Resize the shorter side to 32 / 0.875 = 36, then the centre 32 x 32.
        from PIL import Image

        resized = np.asarray(
          Image.fromarray(images[label - 100]).resize((36, 36), Image.Resampling.BICUBIC)
        )
        np.testing.assert_array_equal(image, resized[2:34, 2:34])
  assert (
    len({len(batches) for batches in per_process}) == 1
  )  # every process runs the same number of steps
  labels = [
    int(l) for batches in per_process for b in batches for l, v in zip(b["label"], b["valid"]) if v
  ]
  assert sorted(labels) == list(range(100, 105))


def test_eval_loader_uses_the_middle_frame_of_clips(media):
  cfg = _config(clips=dict(kind="prepared", path=str(media / "prepared")))
  cfg.eval_augmentation = "decode|resize"
  batches = list(
    pipeline.make_eval_loader(cfg, batch_size=4, image_size=32, process_index=0, process_count=1)
  )
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == NUM_VIDEOS and len(valid) == 8
  frames = np.concatenate([b["image"] for b in batches])[valid]
  assert {read_index(frame) for frame in frames} == {NUM_FRAMES // 2}


@pytest.mark.parametrize("kind", ["prepared", "raw"])
def test_clip_loader_frames_and_views(media, kind):
  if kind == "prepared":
    cfg = _config(square=dict(kind="prepared", path=str(media / "square_prepared")))
  else:
    cfg = _config(
      square=dict(kind="raw", format="folder", path=str(media / "square"), short_side=0)
    )
  loader = pipeline.make_clip_loader(
    cfg, batch_size=2, image_size=32, num_frames=4, stride=2, process_index=0, process_count=1
  )
  batch = next(iter(loader))
  assert batch["video"].shape == (2, 4, 32, 32, 3) and batch["valid"].all()
  # One centred window: starts at (30 - 7) // 2 = 11.
  for video in batch["video"]:
    assert [read_index(frame) for frame in video] == [11, 13, 15, 17]
  multi = pipeline.make_clip_loader(
    cfg,
    batch_size=2,
    image_size=32,
    num_frames=4,
    stride=2,
    num_temporal_views=3,
    num_spatial_views=2,
  )
  batch = next(iter(multi))
  assert batch["video"].shape == (2, 6, 4, 32, 32, 3)
  starts = [read_index(batch["video"][0, view, 0]) for view in range(6)]
  assert starts == [
    0,
    0,
    12,
    12,
    23,
    23,
  ]  # 3 temporal windows (0, 11.5 -> 12, 23) x 2 spatial crops


def test_clip_loader_training_stream(media):
  cfg = _config(square=dict(kind="prepared", path=str(media / "square_prepared")))
  cfg.clip_augmentation = "decode|resize"
  loader = pipeline.make_clip_loader(
    cfg, batch_size=2, image_size=32, train=True, seed=0, num_frames=5, stride=3
  )
  starts = set()
  for batch in _batches(loader, 8):
    assert batch["video"].shape == (2, 5, 32, 32, 3) and batch["valid"].all()
    for video in batch["video"]:
      indices = [read_index(frame) for frame in video]
      assert np.all(np.diff(indices) == 3)
      starts.add(indices[0])
  assert len(starts) > 3  # random windows
  # The crop is drawn once per clip: the red lower half covers the same share of every frame.
  cfg.clip_augmentation = "decode|random_resized_crop|flip"
  loader = pipeline.make_clip_loader(
    cfg, batch_size=2, image_size=32, train=True, seed=0, num_frames=5, stride=3
  )
  shares = []
  for video in _batches(loader, 4)[0]["video"]:
    red = (video[..., 0] > 150) & (video[..., 1] < 100)
    per_frame = red.reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(per_frame, per_frame[0], atol=0.02)
    shares.append(per_frame[0])
  assert len(set(np.round(shares, 3))) > 1  # but differs between clips


# ---------------------------------------------------------------------------------------------------
# Global arrays.


def test_to_global_places_the_host_batch_on_the_mesh(media):
  devices = np.array(jax.devices())
  mesh = jax.sharding.Mesh(devices, ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  loader = _prepared_loader(media, global_batch_size=len(devices), image_size=16, seed=0)
  batch = next(iter(loader))
  arrays = pipeline.to_global(batch, sharding)
  assert arrays["views"].shape == (len(devices), 2, 16, 16, 3) and arrays["views"].dtype == np.uint8
  assert arrays["views"].sharding == sharding
  np.testing.assert_array_equal(np.asarray(arrays["views"]), batch["views"])
  np.testing.assert_array_equal(np.asarray(arrays["label"]), batch["label"])


def test_example_rng_is_what_the_pipeline_uses(media):
  """The pair of a record can be recomputed from (seed, source name, record index, epoch) alone."""
  loader = _prepared_loader(media, global_batch_size=6, image_size=32, seed=9)
  pairs = {label: (a, b) for label, a, b in _pairs(_batches(loader, 1))}
  source = pipeline.build_sources(_prepared_config(media))[0][2]
  for record in range(NUM_VIDEOS):
    example = source[record]
    rng = sampling.example_rng(9, sampling.source_key("clips"), record, 0, sampling.STREAM_SAMPLING)
    gap = sampling.draw_gap_seconds(rng)
    assert pairs[example["label"]] == sampling.pair_indices(example["timestamps"], gap, rng)
