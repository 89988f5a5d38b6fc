"""Faults around prepared data, through the real commands in subprocesses: a prepare killed with
SIGKILL, two prepares on one folder, shards damaged after they were written, and training on them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from media_utils import make_video

REPO = Path(__file__).resolve().parents[1]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = ""  # one CPU device
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def _run(*args, timeout=120):
  return subprocess.run(
    [sys.executable, *args], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
  )


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory):
  """8 short videos in two class folders."""
  root = tmp_path_factory.mktemp("small_videos")
  for number in range(8):
    make_video(root / f"c{number % 2}" / f"v{number}.mp4", num_frames=20, fps=10.0)
  return root


def _prepare_args(root, output, *extra):
  return (
    "-m",
    "vicmae_jax.data.prepare",
    "--format=folder",
    f"--root={root}",
    f"--output={output}",
    "--fps=5",
    "--short_side=32",
    "--no_progress",
    *extra,
  )


def test_training_on_a_truncated_shard_stops_with_one_line_naming_it(small_videos, tmp_path):
  output = tmp_path / "prepared"
  assert _run(*_prepare_args(small_videos, output, "--num_shards=2", "--workers=1")).returncode == 0
  shard = output / "train-00001-of-00002.array_record"
  data = shard.read_bytes()
  shard.write_bytes(data[: len(data) // 3])
  proc = _run(
    "-m",
    "vicmae_jax.main",
    "--config=configs/pretrain_k400.py:runlocal=True",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.sources.k400.path={output}",
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {shard} is truncated or damaged"), last
  assert "--verify" in last
