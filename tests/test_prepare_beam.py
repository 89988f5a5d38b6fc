"""`vicmae-prepare --runner=beam`: the same shards, indexes and meta as the local path.

The Beam tests need the `beam` extra (scripts/test.sh installs it in an environment of its own and
runs this file there); without it they skip, and the missing-extra error is checked.
"""

import json
import os
import shutil

import sys

import pytest

from media_utils import make_random_bytes, make_truncated
from vicmae_jax.data import prepare, records


@pytest.fixture
def beam():
  return pytest.importorskip("apache_beam")


@pytest.fixture(scope="module")
def videos(demo_root, tmp_path_factory):
  """The demo's training videos (Kinetics layout) plus a corrupt, a truncated and a missing one,
  spread so that several shards (workers) each skip a file."""
  root = tmp_path_factory.mktemp("beam_videos")
  shutil.copytree(os.path.join(demo_root, "videos", "train"), root / "train")
  with open(os.path.join(demo_root, "train.csv")) as file:
    header, *rows = file.read().splitlines()
  make_random_bytes(root / "train" / "0" / "noise_000000_000003.mp4")
  make_truncated(root / "train" / "1" / "cut_000000_000003.mp4")
  rows.insert(1, "0,noise,0,3,train")
  rows.insert(14, "1,cut,0,3,train")
  rows.append("2,gone,0,3,train")
  csv_path = root / "train.csv"
  csv_path.write_text("\n".join([header, *rows]) + "\n")
  return root, csv_path


def _folder_bytes(folder):
  """Every file of a prepared folder (shards, indexes, hidden shard states), by name."""
  out = {}
  for name in sorted(os.listdir(folder)):
    if name.endswith("_meta.json"):
      continue
    with open(os.path.join(folder, name), "rb") as file:
      out[name] = file.read()
  return out


def _meta(folder):
  with open(os.path.join(folder, "train_meta.json")) as file:
    return json.load(file)


def test_beam_writes_the_bytes_of_the_local_path(beam, videos, tmp_path):
  root, csv_path = videos
  common = [
    "--format=kinetics",
    f"--root={root}",
    f"--annotations={csv_path}",
    "--split=train",
    "--fps=4",
    "--short_side=32",
    "--num_shards=4",
    "--no_progress",
  ]
  local = prepare.main([*common, f"--output={tmp_path / 'local'}", "--workers=2"])
  beam = prepare.main([*common, f"--output={tmp_path / 'beam'}", "--workers=2", "--runner=beam"])
  local_files, beam_files = _folder_bytes(tmp_path / "local"), _folder_bytes(tmp_path / "beam")
  assert sorted(beam_files) == sorted(local_files)
  assert sum(name.endswith(".array_record") for name in beam_files) == 4
  assert beam_files == local_files  # shards, indexes and shard states, byte for byte

  # The meta json is the local one but for where it was written.
  local_meta, beam_meta = _meta(tmp_path / "local"), _meta(tmp_path / "beam")
  assert beam_meta == local_meta
  assert beam_meta["num_clips"] == 24
  # The skipped files of every worker, merged: shards 0 and 1 each skipped one, the listing one.
  skipped = {os.path.basename(item["path"]): item["reason"] for item in beam_meta["skipped"]}
  assert sorted(skipped) == [
    "cut_000000_000003.mp4",
    "gone_000000_000003.mp4",
    "noise_000000_000003.mp4",
  ]
  assert sum(beam_meta["skipped_by_reason"].values()) == 3
  with open(os.path.join(tmp_path / "beam", ".train-00000-of-00004.array_record.json")) as f:
    assert [os.path.basename(s["path"]) for s in json.load(f)["skipped"]] == [
      "noise_000000_000003.mp4"
    ]
  assert beam["skipped"] == local["skipped"]
  clips = records.read_clips(beam["shard_paths"][0])
  assert len(clips) == beam_meta["shard_num_clips"][0] and clips[0]["frames"]

  # A rerun on the Beam output finds every shard intact and writes nothing.
  again = prepare.main([*common, f"--output={tmp_path / 'beam'}", "--runner=beam"])
  assert again["resumed_shards"] == 4
  assert _folder_bytes(tmp_path / "beam") == local_files


def test_dry_run_prints_the_pipeline_options(beam, capsys, tmp_path):
  outcome = prepare.main(
    [
      "--runner=beam",
      "--dry_run",
      f"--output={tmp_path}",
      "--",
      "--runner=DataflowRunner",
      "--project=my-project",
      "--region=us-central1",
      "--temp_location=gs://my-bucket/tmp",
      "--num_workers=64",
    ]
  )
  printed = json.loads(capsys.readouterr().out)
  assert printed == outcome
  options = printed["pipeline_options"]
  assert options["runner"] == "DataflowRunner"
  assert options["project"] == "my-project" and options["region"] == "us-central1"
  assert options["temp_location"] == "gs://my-bucket/tmp" and options["num_workers"] == 64
  assert not os.listdir(tmp_path)  # nothing written

  local = prepare.main(["--runner=beam", "--dry_run", f"--output={tmp_path}", "--workers=3"])
  assert local["pipeline_options"]["runner"] == "DirectRunner"
  assert local["pipeline_options"]["direct_num_workers"] == 3
  assert local["pipeline_options"]["direct_running_mode"] == "multi_processing"


def test_pipeline_options_need_the_beam_runner(tmp_path):
  with pytest.raises(SystemExit):
    prepare.main(["--format=folder", f"--root={tmp_path}", f"--output={tmp_path}", "--", "--x=1"])


def test_without_beam_the_error_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam now fails
  with pytest.raises(
    ValueError, match=r"--runner=beam needs Apache Beam: pip install 'vicmae_jax\[beam\]'"
  ):
    prepare.main(["--runner=beam", "--dry_run", f"--output={tmp_path}"])
