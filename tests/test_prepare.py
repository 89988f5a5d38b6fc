"""Clip records, shards of frame records with their clip index, and the prepare step, end to end on real
encoded videos (good and bad)."""

import io
import json
import os

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from PIL import Image

from media_utils import (
  make_audio_only,
  make_random_bytes,
  make_too_short,
  make_truncated,
  make_video,
  make_zero_byte,
  read_index,
)
from vicmae_jax.data import prepare, records

FPS = 10.0


def test_record_round_trip_is_exact():
  clip = {
    "clip_id": "abc_000001_000011",
    "label": 3,
    "label_name": "riding a bike",
    "source_fps": 29.97,
    "timestamps": np.array([0.0, 0.125, 0.25], np.float32),
    "frames": [b"\xff\xd8one", b"\xff\xd8two", b"\xff\xd8three"],
    "height": 48,
    "width": 64,
  }
  decoded = records.decode_clip(records.encode_clip(clip))
  assert decoded.keys() == clip.keys()
  assert decoded["timestamps"].dtype == np.float32
  np.testing.assert_array_equal(decoded["timestamps"], clip["timestamps"])
  assert decoded["frames"] == clip["frames"]
  for key in ("clip_id", "label", "label_name", "source_fps", "height", "width"):
    assert decoded[key] == clip[key] and type(decoded[key]) is type(clip[key])


def test_record_errors_name_the_field():
  clip = {
    "clip_id": "x",
    "label": -1,
    "label_name": "",
    "source_fps": 8.0,
    "timestamps": np.array([0.0, 0.1]),
    "frames": [b"a", b"b"],
    "height": 4,
    "width": 4,
  }
  with pytest.raises(KeyError, match="width"):
    records.encode_clip({k: v for k, v in clip.items() if k != "width"})
  with pytest.raises(ValueError, match="timestamps"):
    records.encode_clip({**clip, "timestamps": np.array([0.0])})
  with pytest.raises(ValueError, match="increasing"):
    records.encode_clip({**clip, "timestamps": np.array([0.1, 0.1])})
  with pytest.raises(TypeError, match="frames"):
    records.encode_clip({**clip, "frames": ["a", "b"]})
  with pytest.raises(ValueError, match="clip record"):
    records.decode_clip(b"\x93\x01\x02\x03")


def expected_indices(num_frames, source_fps, target_fps):
  """Nearest source frame to each k / target_fps, ties to the earlier frame, each kept once."""
  times = np.arange(num_frames) / source_fps
  grid = np.arange(0, times[-1] + 1e-9, 1 / target_fps)
  return sorted({int(np.argmin(np.abs(times - t) + 1e-9 * np.arange(num_frames))) for t in grid})


@pytest.fixture
def kinetics_dataset(tmp_path):
  """6 good clips (2 classes, various lengths) and one of each bad kind, in the Kinetics layout."""
  videos = tmp_path / "videos"
  (videos / "train").mkdir(parents=True)
  rows = ["label,youtube_id,time_start,time_end,split"]
  lengths = {}
  for i in range(6):
    num_frames = 20 + 3 * i
    lengths[f"good{i}_000000_000010"] = num_frames
    make_video(videos / "train" / f"good{i}_000000_000010.mp4", num_frames=num_frames, fps=FPS)
    rows.append(f"{['cat', 'dog'][i % 2]},good{i},0,10,train")
  make_truncated(videos / "cut_000000_000010.mp4")
  make_audio_only(videos / "mute_000000_000010.mp4")
  make_too_short(videos / "blip_000000_000010.mp4")
  make_zero_byte(videos / "empty_000000_000010.mp4")
  make_random_bytes(videos / "noise_000000_000010.mp4")
  for name in ("cut", "mute", "blip", "empty", "noise", "gone"):
    rows.append(f"cat,{name},0,10,train")
  (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
  return videos, tmp_path / "train.csv", lengths


def read_shards(paths):
  return [clip for path in paths for clip in records.read_clips(path)]


def raw_records(path):
  reader = ArrayRecordReader(str(path))
  try:
    return reader.read_all()
  finally:
    reader.close()


def test_prepare_writes_decodable_clips_and_skips_bad_files(kinetics_dataset, tmp_path):
  videos, csv_path, lengths = kinetics_dataset
  output = tmp_path / "prepared"
  summary = prepare.prepare_dataset(
    "kinetics",
    videos,
    output,
    annotations=csv_path,
    split="train",
    fps=4.0,
    short_side=24,
    num_shards=3,
    workers=1,
    progress=False,
  )
  assert summary["num_clips"] == 6
  assert summary["skipped_by_reason"] == {
    "file not found": 1,
    "corrupt": 2,
    "no video stream": 1,
    "too short": 1,
    "empty file": 1,
  }
  assert sorted(os.path.basename(item["path"]).split("_")[0] for item in summary["skipped"]) == [
    "blip",
    "cut",
    "empty",
    "gone",
    "mute",
    "noise",
  ]
  assert sorted(os.listdir(output)) == sorted(
    [f"train-0000{i}-of-00003.array_record" for i in range(3)]
    + [f"train-0000{i}-of-00003.array_record.index" for i in range(3)]
    + [f".train-0000{i}-of-00003.array_record.json" for i in range(3)]
    + ["train_meta.json"]
  )
  with open(output / "train_meta.json") as file:
    meta = json.load(file)
  assert meta["label_names"] == ["cat", "dog"] and meta["fps"] == 4.0 and meta["short_side"] == 24
  assert meta["num_clips"] == sum(meta["shard_num_clips"]) == 6
  assert meta["skipped"] == summary["skipped"]

  clips = read_shards(summary["shard_paths"])
  assert sorted(clip["clip_id"] for clip in clips) == sorted(lengths)
  assert meta["num_frames"] == sum(len(clip["frames"]) for clip in clips)
  for clip in clips:
    expected = expected_indices(lengths[clip["clip_id"]], FPS, 4.0)
    frames = [np.asarray(Image.open(io.BytesIO(data))) for data in clip["frames"]]
    assert all(frame.shape == (24, 32, 3) for frame in frames)
    assert (clip["height"], clip["width"]) == (24, 32)
    assert [read_index(frame) for frame in frames] == expected
    np.testing.assert_allclose(clip["timestamps"], np.array(expected) / FPS, atol=1e-3)
    assert clip["source_fps"] == FPS
    number = int(clip["clip_id"][4])
    assert (clip["label"], clip["label_name"]) == (number % 2, ["cat", "dog"][number % 2])

  # Every record is one JPEG frame, stored uncompressed: its bytes appear verbatim in the file.
  for path in summary["shard_paths"]:
    frames = raw_records(path)
    index = records.read_index(records.index_path(path))
    assert len(frames) == index.num_records == int(index.num_frames.sum())
    assert all(frame[:2] == b"\xff\xd8" for frame in frames)
    with open(path, "rb") as file:
      stored = file.read()
    assert all(frame in stored for frame in frames)
  # The longest clip of each shard: the time its kept frames cover, one 4 fps interval past the last.
  for path, longest in zip(summary["shard_paths"], meta["shard_max_clip_seconds"]):
    durations = [
      clip["timestamps"][-1] - clip["timestamps"][0] + 1 / 4.0 for clip in records.read_clips(path)
    ]
    assert longest == pytest.approx(
      max(durations, default=0.0), abs=1e-6
    )  # 0 for a shard of bad files
  assert meta["max_clip_seconds"] == max(meta["shard_max_clip_seconds"])
  longest = max(
    (expected_indices(n, FPS, 4.0)[-1] - expected_indices(n, FPS, 4.0)[0]) / FPS + 0.25
    for n in lengths.values()
  )
  assert meta["max_clip_seconds"] == pytest.approx(longest, abs=1e-3)


def test_min_duration_and_max_frames(kinetics_dataset, tmp_path):
  videos, csv_path, lengths = kinetics_dataset
  # Clips are 2.0 .. 3.5 s long: a 2.6 s minimum keeps those with at least 26 frames.
  summary = prepare.prepare_dataset(
    "kinetics",
    videos,
    tmp_path / "long",
    annotations=csv_path,
    fps=5.0,
    min_duration=2.6,
    progress=False,
  )
  clips = read_shards(summary["shard_paths"])
  assert sorted(clip["clip_id"] for clip in clips) == sorted(
    k for k, n in lengths.items() if n >= 26
  )
  assert summary["skipped_by_reason"]["too short"] == 1 + sum(n < 26 for n in lengths.values())
  assert all(clip["timestamps"][-1] + 1 / 5.0 >= 2.6 - 1e-6 for clip in clips)

  summary = prepare.prepare_dataset(
    "kinetics",
    videos,
    tmp_path / "first4",
    annotations=csv_path,
    fps=5.0,
    short_side=None,
    max_frames=4,
    progress=False,
  )
  clips = read_shards(summary["shard_paths"])
  assert len(clips) == 6
  for clip in clips:
    frames = [np.asarray(Image.open(io.BytesIO(data))) for data in clip["frames"]]
    assert [read_index(frame) for frame in frames] == [0, 2, 4, 6]
    assert (clip["height"], clip["width"]) == (48, 64)


def test_parallel_and_resumed_runs_write_the_same_records(kinetics_dataset, tmp_path):
  videos, csv_path, _ = kinetics_dataset
  options = dict(annotations=csv_path, fps=4.0, short_side=24, num_shards=3, progress=False)
  serial = prepare.prepare_dataset("kinetics", videos, tmp_path / "serial", workers=1, **options)
  parallel = prepare.prepare_dataset(
    "kinetics", videos, tmp_path / "parallel", workers=2, **options
  )

  def shard_bytes(summary):
    result = []
    for path in summary["shard_paths"]:
      with open(records.index_path(path), "rb") as file:
        result.append((raw_records(path), file.read()))
    return result

  assert shard_bytes(parallel) == shard_bytes(serial)
  assert parallel["skipped_by_reason"] == serial["skipped_by_reason"]

  # An interrupted run: one shard never finished (its temporary file is left behind).
  unfinished = serial["shard_paths"][1]
  os.replace(unfinished, unfinished + ".incomplete")
  resumed = prepare.prepare_dataset("kinetics", videos, tmp_path / "serial", workers=1, **options)
  assert resumed["resumed_shards"] == 2
  assert shard_bytes(resumed) == shard_bytes(serial)
  assert resumed["num_clips"] == serial["num_clips"] and resumed["skipped"] == serial["skipped"]
  assert not os.path.exists(unfinished + ".incomplete")
  again = prepare.prepare_dataset("kinetics", videos, tmp_path / "serial", workers=1, **options)
  assert again["resumed_shards"] == 3

  with pytest.raises(ValueError, match="short_side=24.*short_side=32"):
    prepare.prepare_dataset(
      "kinetics", videos, tmp_path / "serial", **{**options, "short_side": 32}
    )


def test_shards_of_the_whole_clip_format_are_prepared_again(kinetics_dataset, tmp_path, caplog):
  """A directory written in format 1 (one whole-clip record per clip, no index) is redone, not resumed."""
  videos, csv_path, _ = kinetics_dataset
  options = dict(annotations=csv_path, fps=4.0, short_side=24, num_shards=2, progress=False)
  current = prepare.prepare_dataset("kinetics", videos, tmp_path / "current", **options)
  old = tmp_path / "old"
  old.mkdir()
  for path in current["shard_paths"]:
    name = os.path.basename(path)
    writer = ArrayRecordWriter(str(old / name), "group_size:1")
    for clip in records.read_clips(path):
      writer.write(records.encode_clip(clip))
    writer.close()
    with open(os.path.join(os.path.dirname(path), f".{name}.json")) as file:
      state = json.load(file)
    for key in ("format_version", "max_clip_seconds"):  # what a format-1 run did not write
      del state[key]
    with open(old / f".{name}.json", "w") as file:
      json.dump(state, file)
  assert records.read_clips(old / os.path.basename(current["shard_paths"][0]))[0][
    "frames"
  ]  # format 1 reads

  with caplog.at_level("WARNING", logger=prepare.logger.name):
    redone = prepare.prepare_dataset("kinetics", videos, old, **options)
  assert redone["resumed_shards"] == 0
  assert redone["rewritten_old_format"] == [os.path.basename(p) for p in current["shard_paths"]]
  assert "whole-clip records (format 1, one record per clip); preparing them again" in caplog.text
  for new, reference in zip(redone["shard_paths"], current["shard_paths"]):
    assert raw_records(new) == raw_records(reference)
    assert os.path.isfile(records.index_path(new))
  assert prepare.prepare_dataset("kinetics", videos, old, **options)["resumed_shards"] == 2


def test_shard_writer_and_index_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  clips = []
  for number, count in enumerate((3, 1, 5)):
    clips.append(
      {
        "clip_id": f"c{number}",
        "label": number - 1,
        "label_name": f"n{number}",
        "source_fps": 25.0 + number,
        "timestamps": np.sort(rng.uniform(0, 9, count)).astype(np.float32),
        "frames": [rng.bytes(int(rng.integers(1, 50))) for _ in range(count)],
        "height": 6 + number,
        "width": 8,
      }
    )
  path = tmp_path / "s.array_record"
  index = records.write_shard(path, clips)
  np.testing.assert_array_equal(index.first_frame, [0, 3, 4])
  np.testing.assert_array_equal(index.num_frames, [3, 1, 5])
  assert raw_records(path) == [frame for clip in clips for frame in clip["frames"]]
  loaded = records.read_index(records.index_path(path))
  np.testing.assert_array_equal(loaded.timestamps, np.concatenate([c["timestamps"] for c in clips]))
  np.testing.assert_array_equal(loaded.clip_timestamps(2), clips[2]["timestamps"])
  for got, want in zip(records.read_clips(path), clips):
    assert got.keys() == want.keys()
    np.testing.assert_array_equal(got.pop("timestamps"), want["timestamps"])
    assert got == {key: value for key, value in want.items() if key != "timestamps"}
  # Indexes of several shards number their frame records on across shards.
  both = records.ClipIndex.concatenate([loaded, loaded])
  np.testing.assert_array_equal(both.first_frame, [0, 3, 4, 9, 12, 13])
  assert both.clip_id == ["c0", "c1", "c2"] * 2 and both.num_records == 18

  with pytest.raises(KeyError, match="width"):
    records.write_shard(
      tmp_path / "bad.array_record", [{k: v for k, v in clips[0].items() if k != "width"}]
    )
  (tmp_path / "junk.index").write_bytes(b"\x93\x01\x02")
  with pytest.raises(ValueError, match="junk.index"):
    records.read_index(tmp_path / "junk.index")
  with pytest.raises(ValueError, match="version"):
    records.decode_index(records.encode_clip(clips[0]))


def test_cli_on_a_class_folder(tmp_path, capsys):
  for label in ("up", "down"):
    for i in range(2):
      make_video(tmp_path / "videos" / label / f"{i}.webm", num_frames=12, fps=FPS)
  summary = prepare.main(
    [
      "--format=folder",
      f"--root={tmp_path / 'videos'}",
      f"--output={tmp_path / 'out'}",
      "--split=val",
      "--fps=5",
      "--short_side=0",
      "--workers=1",
      "--no_progress",
    ]
  )
  assert summary["num_clips"] == 4 and summary["label_names"] == ["down", "up"]
  clips = read_shards([str(tmp_path / "out" / "val-00000-of-00001.array_record")])
  assert sorted((clip["clip_id"], clip["label"]) for clip in clips) == [
    ("down/0", 0),
    ("down/1", 0),
    ("up/0", 1),
    ("up/1", 1),
  ]
  assert all(len(clip["frames"]) == len(expected_indices(12, FPS, 5.0)) for clip in clips)


def test_nothing_to_prepare_is_an_error(tmp_path):
  (tmp_path / "train.csv").write_text(
    "label,youtube_id,time_start,time_end,split\na,x,0,10,train\n"
  )
  (tmp_path / "videos").mkdir()
  with pytest.raises(ValueError, match="no video files.*1 annotated but missing"):
    prepare.prepare_dataset(
      "kinetics", tmp_path / "videos", tmp_path / "out", annotations=tmp_path / "train.csv"
    )
