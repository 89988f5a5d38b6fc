"""Dataset layout readers on small annotation files in the real layouts (video files are empty stand-ins:
the readers only list paths, they never open them)."""

import json
from pathlib import Path

import pytest

from vicmae_jax.data.formats import (
  VideoEntry,
  list_dataset,
  list_folder,
  list_kinetics,
  list_mit,
  list_ssv2,
  ssv2_class_name,
)


def touch(path: Path) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"")
  return str(path)


KINETICS_CSV = """label,youtube_id,time_start,time_end,split
riding a bike,--07WQ2iBlw,1,11,train
"passing American football (in game)",-0zYl9xEFoE,20,30,train
abseiling,0347ZoDXyP0,0,10,train
riding a bike,zzzMissing1,5,15,train
abseiling,vAL1dAT10n_,100,110,val
"""


@pytest.fixture
def kinetics(tmp_path):
  root = tmp_path / "k400"
  (tmp_path / "train.csv").write_text(KINETICS_CSV)
  files = {
    # Stored under label folders, under a split folder, and flat: all are found by name.
    "--07WQ2iBlw_000001_000011": touch(
      root / "train" / "riding a bike" / "--07WQ2iBlw_000001_000011.mp4"
    ),
    "-0zYl9xEFoE_000020_000030": touch(root / "train" / "-0zYl9xEFoE_000020_000030.mp4"),
    "0347ZoDXyP0_000000_000010": touch(root / "0347ZoDXyP0_000000_000010.mp4"),
    "vAL1dAT10n__000100_000110": touch(root / "val" / "vAL1dAT10n__000100_000110.mp4"),
    "unrelated": touch(root / "train" / "notes.txt"),
  }
  return root, tmp_path / "train.csv", files


def test_kinetics_finds_files_anywhere_and_indexes_sorted_labels(kinetics):
  root, csv_path, files = kinetics
  listing = list_kinetics(root, csv_path, "train")
  entries, label_names = listing
  assert label_names == ["abseiling", "passing American football (in game)", "riding a bike"]
  assert entries == [
    VideoEntry(files["--07WQ2iBlw_000001_000011"], 2, "riding a bike", "--07WQ2iBlw_000001_000011"),
    VideoEntry(
      files["-0zYl9xEFoE_000020_000030"],
      1,
      "passing American football (in game)",
      "-0zYl9xEFoE_000020_000030",
    ),
    VideoEntry(files["0347ZoDXyP0_000000_000010"], 0, "abseiling", "0347ZoDXyP0_000000_000010"),
  ]
  assert [entry.clip_id for entry in listing.missing] == ["zzzMissing1_000005_000015"]
  assert listing.missing[0].label == 2


def test_kinetics_split_filter_and_given_label_names(kinetics):
  root, csv_path, files = kinetics
  entries, label_names = list_kinetics(
    root, csv_path, "val", label_names=["abseiling", "riding a bike", "x"]
  )
  assert label_names == ["abseiling", "riding a bike", "x"]
  assert entries == [
    VideoEntry(files["vAL1dAT10n__000100_000110"], 0, "abseiling", "vAL1dAT10n__000100_000110")
  ]
  entries, _ = list_kinetics(root, csv_path, None)
  assert len(entries) == 4
  with pytest.raises(ValueError, match="split='test'.*train.*val"):
    list_kinetics(root, csv_path, "test")
  with pytest.raises(ValueError, match="passing American"):
    list_kinetics(root, csv_path, "train", label_names=["abseiling", "riding a bike"])


def test_kinetics_test_csv_without_labels(tmp_path):
  (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nabc,3,13,test\n")
  path = touch(tmp_path / "videos" / "abc_000003_000013.mp4")
  entries, label_names = list_kinetics(tmp_path / "videos", tmp_path / "test.csv", "test")
  assert entries == [VideoEntry(path, -1, "", "abc_000003_000013")] and label_names == []


def test_kinetics_errors_name_the_path(kinetics, tmp_path):
  root, csv_path, _ = kinetics
  with pytest.raises(FileNotFoundError, match="nowhere"):
    list_kinetics(tmp_path / "nowhere", csv_path, "train")
  with pytest.raises(FileNotFoundError, match="absent.csv"):
    list_kinetics(root, tmp_path / "absent.csv", "train")
  (tmp_path / "empty.csv").write_text("label,youtube_id,time_start,time_end,split\n")
  with pytest.raises(ValueError, match="empty.csv"):
    list_kinetics(root, tmp_path / "empty.csv", "train")
  (tmp_path / "wrong.csv").write_text("name,id\na,b\n")
  with pytest.raises(ValueError, match="wrong.csv.*youtube_id"):
    list_kinetics(root, tmp_path / "wrong.csv", "train")


def test_moments_in_time_with_category_file(tmp_path):
  root = tmp_path / "Moments_in_Time_256x256_30fps"
  (root).mkdir()
  (root / "moments_categories.txt").write_text("clapping,1\nadult+female+singing,0\nbarking,2\n")
  (root / "trainingSet.csv").write_text(
    "clapping/yt-abc_12.mp4,clapping,3,0\n"
    "adult+female+singing/getty-xyz.mp4,adult+female+singing,3,1\n"
    "barking/flickr-gone.mp4,barking,2,1\n"
  )
  clap = touch(root / "training" / "clapping" / "yt-abc_12.mp4")
  sing = touch(root / "training" / "adult+female+singing" / "getty-xyz.mp4")
  touch(root / "validation" / "barking" / "flickr-gone.mp4")  # the other split: not a match
  listing = list_mit(root, root / "trainingSet.csv", "training")
  entries, label_names = listing
  assert label_names == ["adult+female+singing", "clapping", "barking"]
  assert entries == [
    VideoEntry(clap, 1, "clapping", "clapping/yt-abc_12"),
    VideoEntry(sing, 0, "adult+female+singing", "adult+female+singing/getty-xyz"),
  ]
  assert [entry.clip_id for entry in listing.missing] == ["barking/flickr-gone"]
  # The validation split reads its own folder; "val" is accepted for "validation".
  (root / "validationSet.csv").write_text("barking/flickr-gone.mp4,barking,2,1\n")
  entries, _ = list_mit(root, root / "validationSet.csv", "val")
  assert [(entry.label, entry.clip_id) for entry in entries] == [(2, "barking/flickr-gone")]


def test_moments_in_time_without_category_file_sorts_csv_labels(tmp_path):
  (tmp_path / "train.csv").write_text("b/x.mp4,b,3,0\na/y.mp4,a,3,0\n")
  touch(tmp_path / "training" / "b" / "x.mp4")
  touch(tmp_path / "training" / "a" / "y.mp4")
  entries, label_names = list_mit(tmp_path, tmp_path / "train.csv", "train")
  assert label_names == ["a", "b"]
  assert [(entry.clip_id, entry.label) for entry in entries] == [("b/x", 1), ("a/y", 0)]
  with pytest.raises(ValueError, match="split"):
    list_mit(tmp_path, tmp_path / "train.csv", "testing")


def test_something_something_v2(tmp_path):
  root = tmp_path / "20bn-something-something-v2"
  labels = {
    "Holding something next to something": "1",
    "Approaching something with your camera": "0",
    "Putting something onto something": "2",
  }
  (tmp_path / "labels.json").write_text(json.dumps(labels))
  train = [
    {
      "id": "78687",
      "label": "holding potato next to vicks vaporub bottle",
      "template": "Holding [something] next to [something]",
      "placeholders": ["potato", "vicks vaporub bottle"],
    },
    {
      "id": "42326",
      "label": "approaching a cup with your camera",
      "template": "Approaching [something] with your camera",
      "placeholders": ["a cup"],
    },
    {
      "id": "99999",
      "label": "putting a pen onto a book",
      "template": "Putting [something] onto [something]",
      "placeholders": ["a pen", "a book"],
    },
  ]
  (tmp_path / "train.json").write_text(json.dumps(train))
  first = touch(root / "78687.webm")
  second = touch(root / "42326.webm")
  listing = list_ssv2(root, tmp_path / "labels.json", tmp_path / "train.json")
  entries, label_names = listing
  assert label_names == [
    "Approaching something with your camera",
    "Holding something next to something",
    "Putting something onto something",
  ]
  assert entries == [
    VideoEntry(first, 1, "Holding something next to something", "78687"),
    VideoEntry(second, 0, "Approaching something with your camera", "42326"),
  ]
  assert [entry.clip_id for entry in listing.missing] == ["99999"]
  assert (
    ssv2_class_name("Pretending to put [something] into [something]")
    == "Pretending to put something into something"
  )
  # The dispatcher finds labels.json beside the split file.
  assert list_dataset("ssv2", root, annotations=tmp_path / "train.json").entries == entries
  # A template that is not a class is a data error that names the id.
  (tmp_path / "bad.json").write_text(json.dumps([{"id": "1", "template": "Juggling [something]"}]))
  with pytest.raises(ValueError, match="id 1.*Juggling something"):
    list_ssv2(root, tmp_path / "labels.json", tmp_path / "bad.json")
  # The test split has no templates: unlabelled.
  (tmp_path / "test.json").write_text(json.dumps([{"id": "42326"}]))
  assert list_ssv2(root, tmp_path / "labels.json", tmp_path / "test.json").entries == [
    VideoEntry(second, -1, "", "42326")
  ]


def test_folder_labels_from_sorted_subfolders(tmp_path):
  cat = touch(tmp_path / "cat" / "b.mp4")
  cat_nested = touch(tmp_path / "cat" / "more" / "a.webm")
  dog = touch(tmp_path / "dog" / "a.MKV")
  touch(tmp_path / "dog" / "readme.txt")
  (tmp_path / "empty_class").mkdir()
  entries, label_names = list_folder(tmp_path)
  assert label_names == ["cat", "dog"]
  assert entries == [
    VideoEntry(cat, 0, "cat", "cat/b"),
    VideoEntry(cat_nested, 0, "cat", "cat/more/a"),
    VideoEntry(dog, 1, "dog", "dog/a"),
  ]


def test_folder_without_class_folders_is_unlabelled(tmp_path):
  clip = touch(tmp_path / "clip.mp4")
  entries, label_names = list_folder(tmp_path)
  assert entries == [VideoEntry(clip, -1, "", "clip")] and label_names == []
  (tmp_path / "nothing_here").mkdir()
  with pytest.raises(ValueError, match="no videos.*nothing_here"):
    list_folder(tmp_path / "nothing_here")
  with pytest.raises(FileNotFoundError, match="absent"):
    list_folder(tmp_path / "absent")


def test_dispatcher_checks_format_and_annotations(tmp_path):
  with pytest.raises(ValueError, match="format"):
    list_dataset("ucf", tmp_path)
  with pytest.raises(ValueError, match="annotation"):
    list_dataset("kinetics", tmp_path)
