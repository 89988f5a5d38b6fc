"""`config.log.wandb`: a W&B writer beside TensorBoard, tested in offline mode on its run files."""

import glob
import importlib.util
import json
import os
import struct

import pytest

from runs import tiny_config
from vicmae_jax import config_lib, metrics

_BLOCK, _HEADER = 32768, 7  # the .wandb transaction log: LevelDB's log format, 32 KiB blocks


def read_wandb_records(path):
  """The records of a .wandb file (wandb's Record protobufs), by the file's documented layout:
  a 7-byte header (":W&B", magic 0xBEE1, version 0), then chunks (crc32c, length, type)."""
  from wandb.proto import wandb_internal_pb2

  with open(path, "rb") as file:
    data = file.read()
  assert struct.unpack("<4sHB", data[:_HEADER]) == (b":W&B", 0xBEE1, 0)
  pos, pending, out = _HEADER, b"", []
  while pos + _HEADER <= len(data):
    left = _BLOCK - pos % _BLOCK
    if left < _HEADER:
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
    chunk = data[pos + _HEADER : pos + _HEADER + length]
    pos += _HEADER + length
    if kind == 0:
      break
    pending = chunk if kind in (1, 2) else pending + chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      out.append(record)
  return out


def _items(items):
  return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def offline_run(workdir, index):
  runs = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))
  (path,) = glob.glob(os.path.join(runs[index], "run-*.wandb"))
  records = read_wandb_records(path)
  history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
  configs = [_items(r.config.update) for r in records if r.WhichOneof("record_type") == "config"]
  return runs, history, configs


@pytest.mark.slow
def test_offline_run_files_hold_the_logged_values(demo_root, tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  from vicmae_jax import main

  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = str(tmp_path / "run")
  overrides = {
    "log.every_steps": 2,
    "log.image_every_steps": 4,
    "log.wandb.project": "vicmae-test",
    "log.wandb.mode": "offline",
    "checkpoint.every_steps": 2,
  }
  main.run(tiny_config(demo_root, num_steps=4, **overrides), workdir)
  runs, history, configs = offline_run(workdir, 0)
  with open(os.path.join(workdir, "wandb_run_id")) as file:
    run_id = file.read().strip()
  assert runs[0].endswith(run_id)

  # Every scalar of metrics.jsonl is in the W&B history at its step, with the same value.
  with open(os.path.join(workdir, "metrics.jsonl")) as file:
    rows = [json.loads(line) for line in file]
  assert {row["step"] for row in rows} >= {2, 4}
  logged = {}
  for entry in history:
    for key, value in entry.items():
      if not key.startswith("_"):
        logged[(entry["_step"], key)] = value
  for row in rows:
    for key, value in row.items():
      if key != "step":
        assert logged[(row["step"], key)] == pytest.approx(value, rel=1e-12), key
  assert any(key.endswith("/_type") for (_, key) in logged)  # the reconstructions, as images
  images = glob.glob(os.path.join(runs[0], "files", "media", "images", "*.png"))
  assert images

  # The config, logged once, at the start.
  with_config = [c for c in configs if "batch_size" in c]
  assert len(with_config) == 1
  assert with_config[0]["batch_size"] == 16 and with_config[0]["log.wandb.project"] == "vicmae-test"

  # Resumed (the same command again, more steps): the same W&B run, no second config.
  main.run(tiny_config(demo_root, num_steps=6, **overrides), workdir)
  runs, history, configs = offline_run(workdir, 1)
  assert len(runs) == 2 and runs[1].endswith(run_id)
  assert [c for c in configs if "batch_size" in c] == []
  assert {entry["_step"] for entry in history if "train/loss" in entry} == {6}


def test_off_by_default_and_checked_before_compiling(tmp_path, monkeypatch):
  config = tiny_config(str(tmp_path))
  assert config.log.wandb.project == ""
  config_lib.validate_common(config, 1)
  logger = metrics.TrainLogger(str(tmp_path), total_steps=1, global_batch=1, wandb=config.log.wandb)
  logger.close()
  assert not os.path.exists(tmp_path / "wandb") and not os.path.exists(tmp_path / "wandb_run_id")

  config.log.wandb.project = "p"
  config.log.wandb.mode = "sometimes"
  with pytest.raises(config_lib.ConfigError, match="log.wandb.mode"):
    config_lib.validate_common(config, 1)
  config.log.wandb.mode = "offline"
  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
  )
  with pytest.raises(config_lib.ConfigError, match=r"log.wandb.project.*vicmae_jax\[wandb\]"):
    config_lib.validate_common(config, 1)
