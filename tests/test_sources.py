"""Sources on real files: prepared ArrayRecord shards, raw mp4/webm, TFDS array_record, image folders, npz."""

import io
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from media_utils import make_bad_files, make_video, read_index
from vicmae_jax.data import prepare, records, sources

FPS = 10.0
NUM_FRAMES = 30


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """A folder-format video dataset: class_a/{a0.mp4, a1.webm}, class_b/{b0.mp4, live.webm}."""
  root = tmp_path_factory.mktemp("videos")
  (root / "class_a").mkdir()
  (root / "class_b").mkdir()
  paths = {
    "a0": make_video(root / "class_a" / "a0.mp4", num_frames=NUM_FRAMES, fps=FPS),
    "a1": make_video(root / "class_a" / "a1.webm", num_frames=NUM_FRAMES, fps=FPS),
    "b0": make_video(root / "class_b" / "b0.mp4", num_frames=NUM_FRAMES, fps=FPS),
    # Streamed webm: the container states no duration and no frame count.
    "live": make_video(root / "class_b" / "live.webm", num_frames=NUM_FRAMES, fps=FPS, live=True),
  }
  return root, paths


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
  root, _ = videos
  output = tmp_path_factory.mktemp("prepared")
  summary = prepare.prepare_dataset(
    "folder", root, output, split="train", fps=FPS, short_side=None, num_shards=2, progress=False
  )
  assert summary["num_clips"] == 4
  return output


def test_prepared_source_reads_every_clip(prepared):
  source = sources.build_source(
    {"name": "clips", "kind": "prepared", "path": str(prepared), "split": "train"}
  )
  assert len(source) == 4 and len(source.shards) == 2
  assert source.label_names == ["class_a", "class_b"]
  labels = []
  for index in range(len(source)):
    example = source[index]
    assert example["kind"] == "clip" and example["record_index"] == index
    assert len(example["frames"]) == NUM_FRAMES == len(example["timestamps"])
    np.testing.assert_allclose(example["timestamps"], np.arange(NUM_FRAMES) / FPS, atol=1e-3)
    # The JPEG frames are the video's frames, in order.
    for i in (0, 17, NUM_FRAMES - 1):
      assert read_index(np.asarray(Image.open(io.BytesIO(example["frames"][i])))) == i
    labels.append(example["label"])
  assert sorted(labels) == [0, 0, 1, 1]
  # A shard glob works as the path too.
  assert (
    len(sources.build_source({"kind": "prepared", "path": str(prepared / "train-*.array_record")}))
    == 4
  )
  with pytest.raises(IndexError, match="out of range"):
    source[4]


class CountingRecords:
  """The source's real ArrayRecord data source, counting which records are read."""

  def __init__(self, records_source):
    self.records_source, self.read = records_source, []

  def __len__(self):
    return len(self.records_source)

  def __getitem__(self, index):
    self.read.append(index)
    return self.records_source[index]


def test_prepared_source_reads_only_the_frames_asked_for(prepared):
  source = sources.build_source({"name": "clips", "kind": "prepared", "path": str(prepared)})
  assert source.index is not None and source.index.num_records == 4 * NUM_FRAMES
  counting = CountingRecords(source._records)
  source._records = counting
  example = source[3]
  assert counting.read == []  # the index answers everything but the pixels
  first = int(source.index.first_frame[3])
  frame = example["frames"][17]
  assert counting.read == [first + 17]
  assert read_index(np.asarray(Image.open(io.BytesIO(frame)))) == 17
  assert read_index(np.asarray(Image.open(io.BytesIO(example["frames"][-1])))) == NUM_FRAMES - 1
  with pytest.raises(IndexError, match="frame 30 out of range"):
    example["frames"][NUM_FRAMES]


def _jpeg(value):
  buffer = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, "JPEG")
  return buffer.getvalue()


def _clip(clip_id, count, **overrides):
  return {
    "clip_id": clip_id,
    "label": 1,
    "label_name": "x",
    "source_fps": 10.0,
    "timestamps": np.arange(count, dtype=np.float32) / 10,
    "frames": [_jpeg(10 * i) for i in range(count)],
    "height": 8,
    "width": 8,
    **overrides,
  }


def test_prepared_source_skips_short_clips_and_checks_its_index(tmp_path):
  records.write_shard(
    tmp_path / "train-00000-of-00002.array_record", [_clip("good", 3), _clip("single", 1)]
  )
  records.write_shard(tmp_path / "train-00001-of-00002.array_record", [_clip("later", 2)])
  log = sources.SkipLog()
  source = sources.PreparedClipSource(str(tmp_path), "train", name="clips", skip_log=log)
  assert len(source) == 3
  assert (
    isinstance(source[1], sources.Skipped)
    and source[1].key == "single"
    and source[1].reason == "too short"
  )
  later = source[2]
  # Frame records are numbered on across shards: the second shard's first frame is record 4.
  assert later["clip_id"] == "later" and list(later["frames"]) == [_jpeg(0), _jpeg(10)]
  np.testing.assert_array_equal(later["timestamps"], np.array([0.0, 0.1], np.float32))
  assert log.count == 1

  # An index that does not match its shard, or shards of two formats, are refused by name.
  other = tmp_path / "other"
  other.mkdir()
  records.write_shard(other / "train-00000-of-00001.array_record", [_clip("a", 2)])
  records.write_shard(tmp_path / "spare.array_record", [_clip("b", 3)])
  os.replace(
    records.index_path(tmp_path / "spare.array_record"),
    records.index_path(other / "train-00000-of-00001.array_record"),
  )
  with pytest.raises(ValueError, match="list 3 frame records, the shards hold 2"):
    sources.PreparedClipSource(str(other), "train")
  os.remove(records.index_path(tmp_path / "train-00001-of-00002.array_record"))
  with pytest.raises(ValueError, match="mixes shard formats: 1 shard"):
    sources.PreparedClipSource(str(tmp_path), "train")


def test_a_truncated_shard_or_index_is_one_error_naming_the_file(prepared, tmp_path):
  """A shard or index cut short on disk: one line naming the file, not the reader's bare message."""
  for victim in ("train-00001-of-00002.array_record", "train-00000-of-00002.array_record.index"):
    copy = tmp_path / victim.replace(".", "_")
    shutil.copytree(prepared, copy)
    data = (copy / victim).read_bytes()
    (copy / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(records.DamagedShardError) as caught:
      sources.build_source({"name": "clips", "kind": "prepared", "path": str(copy)})
    message = str(caught.value)
    assert "\n" not in message and caught.value.path == str(copy / victim)
    assert message.startswith(f"{copy / victim} is truncated or damaged")
    assert "re-run python -m vicmae_jax.data.prepare" in message and "--verify" in message
    with pytest.raises(records.DamagedShardError, match=victim.replace(".", "\\.")):
      records.read_clips(copy / victim.removesuffix(records.INDEX_SUFFIX))


def test_prepared_source_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
    sources.build_source({"kind": "prepared", "path": str(tmp_path / "nowhere")})
  with pytest.raises(FileNotFoundError, match="train-\\*-of-\\*.array_record"):
    sources.build_source({"kind": "prepared", "path": str(tmp_path)})
  with pytest.raises(ValueError, match="path is required"):
    sources.build_source({"name": "x", "kind": "prepared"})
  with pytest.raises(ValueError, match="kind must be one of"):
    sources.build_source({"name": "x", "kind": "videos"})


def test_whole_clip_shards_still_read_and_skip_corrupt_and_short_records(tmp_path):
  """Shards of the earlier format (one whole-clip record each, no index file)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  frame = io.BytesIO()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frame, "JPEG")
  good = {
    "clip_id": "good",
    "label": 1,
    "label_name": "x",
    "source_fps": 10.0,
    "timestamps": np.array([0.0, 0.1], np.float32),
    "frames": [frame.getvalue()] * 2,
    "height": 8,
    "width": 8,
  }
  short = dict(
    good, clip_id="short", timestamps=np.array([0.0], np.float32), frames=[frame.getvalue()]
  )
  writer = ArrayRecordWriter(str(tmp_path / "train-00000-of-00001.array_record"), "group_size:1")
  for payload in (records.encode_clip(good), b"not msgpack at all", records.encode_clip(short)):
    writer.write(payload)
  writer.close()
  log = sources.SkipLog()
  source = sources.PreparedClipSource(str(tmp_path), "train", name="mixed", skip_log=log)
  assert source[0]["clip_id"] == "good"
  bad, too_short = source[1], source[2]
  assert (
    isinstance(bad, sources.Skipped) and bad.reason == "corrupt record" and bad.key == "record 1"
  )
  assert isinstance(too_short, sources.Skipped) and too_short.key == "short"
  source[1]  # met again (next epoch): counted once, seen twice
  assert log.count == 2 and log.events == 3
  assert log.by_reason() == {"corrupt record": 1, "too short": 1}


def test_raw_source_durations_and_labels(videos):
  root, paths = videos
  source = sources.build_source(
    {"name": "raw", "kind": "raw", "format": "folder", "path": str(root), "short_side": 0}
  )
  assert len(source) == 4 and source.label_names == ["class_a", "class_b"]
  by_path = {source.entries[i].path: source[i] for i in range(len(source))}
  for name in ("a0", "a1", "b0", "live"):
    example = by_path[str(paths[name])]
    assert example["kind"] == "video"
    # The last frame is at (30 - 1) / 10 s, whether or not the container states a duration.
    assert example["duration_s"] == pytest.approx((NUM_FRAMES - 1) / FPS, abs=0.051), name
    frames = source.decode(example, [0.0, 1.0, example["duration_s"]])
    assert [read_index(f) for f in frames] == [0, 10, NUM_FRAMES - 1]
  assert by_path[str(paths["b0"])]["label"] == 1 and by_path[str(paths["a1"])]["label"] == 0


def test_raw_source_skips_and_counts_bad_files(tmp_path):
  root = tmp_path / "videos"
  make_bad_files(root / "broken")
  make_video(root / "broken" / "fine.mp4", num_frames=12, fps=FPS)
  log = sources.SkipLog()
  source = sources.RawVideoSource("folder", str(root), name="raw", skip_log=log)
  assert len(source) == 6
  results = [source[i] for i in range(len(source))]
  skipped = [r for r in results if isinstance(r, sources.Skipped)]
  good = [r for r in results if not isinstance(r, sources.Skipped)]
  assert len(good) == 1 and good[0]["path"].endswith("fine.mp4")
  assert sorted(os.path.basename(s.key) for s in skipped) == [
    "audio_only.mp4",
    "random_bytes.mp4",
    "too_short.mp4",
    "truncated.mp4",
    "zero_byte.mp4",
  ]
  assert log.count == 5
  assert log.by_reason()["too short"] == 1 and log.by_reason()["empty file"] == 1
  assert log.by_reason().get("no video stream") == 1


def test_raw_clip_seconds_probes_a_fixed_sample_and_skips_files_that_do_not_open(tmp_path):
  root = tmp_path / "videos"
  make_bad_files(root / "broken")
  make_video(root / "broken" / "fine.mp4", num_frames=12, fps=FPS)
  probed = sources.raw_clip_seconds("folder", str(root))
  # zero_byte, random_bytes, audio_only do not open; the truncated mp4 (cut before its index) neither.
  assert (probed.num_files, probed.failed, len(probed.seconds)) == (6, 4, 2)
  assert probed.longest == pytest.approx(1.2, abs=1e-3)  # fine.mp4; too_short.mp4 lasts 0.1 s
  assert probed.describe() == ", longest of 2 probed of 6 files"
  # A sample: the same files every time, spread over the listing, first and last included.
  assert sources.probe_sample(6, 32).tolist() == list(range(6))
  sample = sources.probe_sample(1000, 32)
  assert len(sample) == 32 and sample[0] == 0 and sample[-1] == 999
  assert np.all(np.diff(sample) > 0) and sample.tolist() == sources.probe_sample(1000, 32).tolist()
  # Files 0 and 5 of the sorted listing, audio_only.mp4 and zero_byte.mp4: no length known.
  few = sources.raw_clip_seconds("folder", str(root), max_files=2)
  assert (few.num_files, few.failed, few.longest) == (6, 2, None)


def test_raw_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
    sources.build_source({"kind": "raw", "format": "folder", "path": str(tmp_path / "missing")})
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  with pytest.raises(ValueError, match=str(tmp_path / "empty")):
    sources.build_source({"kind": "raw", "format": "folder", "path": str(tmp_path / "empty")})


def test_image_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  for class_name, count in (("cat", 2), ("dog", 3)):
    (tmp_path / class_name).mkdir()
    for i in range(count):
      Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(
        tmp_path / class_name / f"{i}.png"
      )
  (tmp_path / "dog" / "notes.txt").write_text("not an image")
  source = sources.build_source({"kind": "image_folder", "path": str(tmp_path)})
  assert len(source) == 5 and source.label_names == ["cat", "dog"]
  labels = [source[i]["label"] for i in range(5)]
  assert labels == [0, 0, 1, 1, 1]
  decoded = sources.decode_image(source[2]["image"])
  np.testing.assert_array_equal(
    np.asarray(decoded), np.asarray(Image.open(tmp_path / "dog" / "0.png"))
  )
  with pytest.raises(FileNotFoundError, match="image folder not found"):
    sources.build_source({"kind": "image_folder", "path": str(tmp_path / "nope")})
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images"):
    sources.build_source({"kind": "image_folder", "path": str(tmp_path / "empty")})


def test_npz_source(tmp_path):
  images = np.random.default_rng(1).integers(0, 255, (4, 9, 9, 3), dtype=np.uint8)
  np.savez(tmp_path / "images.npz", images=images, labels=np.array([3, 1, 4, 1], np.int32))
  source = sources.build_source({"kind": "npz", "path": str(tmp_path / "images.npz")})
  assert len(source) == 4 and source[2]["label"] == 4
  np.testing.assert_array_equal(source[3]["image"], images[3])
  np.savez(tmp_path / "bad.npz", images=images.astype(np.float32))
  with pytest.raises(ValueError, match="uint8"):
    sources.build_source({"kind": "npz", "path": str(tmp_path / "bad.npz")})


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A real TFDS dataset (3 classes of small photos) prepared in array_record format."""
  import tensorflow_datasets as tfds

  class VicmaeTinyPhotos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["r", "g", "b"]),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(9), "validation": self._generate_examples(3)}

    def _generate_examples(self, count):
      for i in range(count):
        image = np.zeros((16 + i, 20, 3), np.uint8)
        image[..., i % 3] = 200  # the label is the bright channel
        yield i, {"image": image, "label": i % 3}

  data_dir = tmp_path_factory.mktemp("tfds")
  VicmaeTinyPhotos(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_source(tfds_dir):
  source = sources.build_source(
    {
      "name": "photos",
      "kind": "tfds",
      "dataset": "vicmae_tiny_photos",
      "split": "train",
      "path": str(tfds_dir),
    }
  )
  assert len(source) == 9 and source.label_names == ["r", "g", "b"]
  for index in range(9):
    example = source[index]
    assert isinstance(example["image"], bytes)  # still encoded: decoded once by the pipeline
    pixels = np.asarray(sources.decode_image(example["image"]))
    assert int(np.argmax(pixels.reshape(-1, 3).mean(0))) == example["label"]
  with pytest.raises(FileNotFoundError, match="vicmae_no_such_dataset"):
    sources.build_source(
      {"kind": "tfds", "dataset": "vicmae_no_such_dataset", "path": str(tfds_dir)}
    )


def test_skip_log_is_thread_safe():
  log = sources.SkipLog()

  def work(offset):
    for i in range(200):
      log.record(sources.Skipped("s", str((offset + i) % 300), "corrupt"))

  threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert log.events == 800 and log.count == 300
