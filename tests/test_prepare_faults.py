"""Faults around prepared data, through the real commands in subprocesses: a prepare killed with
SIGKILL, two prepares on one folder, shards damaged after they were written, and training on them."""

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from media_utils import make_random_bytes, make_truncated, make_video, make_zero_byte
from vicmae_jax.data import prepare, shard_files

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


def _start(*args, **popen_kwargs):
  """Starts what `_run` runs without waiting for it; its output is dropped unless asked for."""
  popen_kwargs = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen_kwargs}
  return subprocess.Popen([sys.executable, *args], env=_env(), cwd=REPO, **popen_kwargs)


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory):
  """8 short videos in two class folders."""
  root = tmp_path_factory.mktemp("small_videos")
  for number in range(8):
    make_video(root / f"c{number % 2}" / f"v{number}.mp4", num_frames=20, fps=10.0)
  return root


@pytest.fixture(scope="module")
def longer_videos(tmp_path_factory):
  """16 videos of 150 frames at 160x120: 8 shards of 2 take a couple of seconds to prepare."""
  root = tmp_path_factory.mktemp("longer_videos")
  for number in range(16):
    make_video(
      root / f"c{number % 2}" / f"v{number:02d}.mp4", num_frames=150, width=160, height=120
    )
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


# --------------------------------------------------------------------------------------------------
# Processes.


def _stat(pid):
  """(state, parent pid) of a process from /proc, None once it is gone."""
  try:
    with open(f"/proc/{pid}/stat") as file:
      fields = file.read().rsplit(")", 1)[1].split()
  except (FileNotFoundError, ProcessLookupError):
    return None
  return fields[0], int(fields[1])


def _alive(pid):
  """Running (a zombie, dead but not yet reaped by whoever adopted it, does not count)."""
  stat = _stat(pid)
  return stat is not None and stat[0] not in ("Z", "X")


def _children(pid):
  children = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      stat = _stat(int(entry))
      if stat is not None and stat[1] == pid:
        children.append(int(entry))
  return children


def _cmdline(pid):
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
      return file.read().replace(b"\0", b" ").decode()
  except OSError:
    return ""


def _wait_until_gone(pids, seconds):
  deadline = time.time() + seconds
  while any(_alive(pid) for pid in pids) and time.time() < deadline:
    time.sleep(0.05)
  return [pid for pid in pids if _alive(pid)]


def _end(pids):
  for pid in pids:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def _folder_bytes(folder):
  return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


LINUX_PROC = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")


@pytest.mark.slow
@LINUX_PROC
def test_kill_9_leaves_no_worker_and_a_rerun_matches_an_uninterrupted_prepare(
  longer_videos, tmp_path
):
  options = ("--workers=2", "--num_shards=8", "--fps=15", "--short_side=0")
  reference = tmp_path / "reference"
  assert _run(*_prepare_args(longer_videos, reference, *options)).returncode == 0

  seed = random.randrange(1 << 30)
  wanted = random.Random(seed).randint(1, 3)  # finished shards before the kill
  output = tmp_path / "killed"
  proc = _start(*_prepare_args(longer_videos, output, *options))
  deadline = time.time() + 120
  while len(glob.glob(str(output / "train-*.array_record"))) < wanted:
    assert proc.poll() is None and time.time() < deadline, f"seed {seed}: not killed in time"
    time.sleep(0.005)
  children = _children(proc.pid)
  workers = [pid for pid in children if "multiprocessing.spawn" in _cmdline(pid)]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  try:
    assert not (output / "train_meta.json").exists(), f"seed {seed}: it had finished"
    assert workers, f"seed {seed}: no worker process was running: {children}"
    survivors = _wait_until_gone(children, seconds=5)
    assert not survivors, f"seed {seed}: still running after the kill: {survivors}"
  finally:
    _end(children)

  rerun = _run(*_prepare_args(longer_videos, output, *options))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "an earlier prepare there did not finish" in rerun.stderr
  # Every file: shards, indexes, per-shard states and the meta json (it holds no timing field, so
  # it is compared whole); the lock file is gone once a run ends.
  assert _folder_bytes(output) == _folder_bytes(reference), f"seed {seed}"


@LINUX_PROC
def test_a_second_prepare_on_the_same_output_is_refused_with_one_line(longer_videos, tmp_path):
  output = tmp_path / "out"
  options = ("--workers=1", "--num_shards=4")
  first = _start(*_prepare_args(longer_videos, output, *options))
  lock = output / shard_files.LOCK_NAME
  holder = None
  deadline = time.time() + 60
  while holder is None:
    assert first.poll() is None and time.time() < deadline
    try:
      holder = json.loads(lock.read_text())
    except (FileNotFoundError, ValueError):
      time.sleep(0.005)
  os.kill(first.pid, signal.SIGSTOP)  # the first holds the lock as long as it wants
  try:
    started = time.time()
    second = _run(*_prepare_args(longer_videos, output, *options))
    seconds = time.time() - started
    verify = _run("-m", "vicmae_jax.data.prepare", "--verify", f"--output={output}")
  finally:
    os.kill(first.pid, signal.SIGCONT)
  assert first.wait(timeout=120) == 0
  assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
  described = f"host {holder['host']}, pid {first.pid}, started {holder['started']}"
  assert second.returncode == 1 and seconds < 30
  assert second.stderr.strip().splitlines() == [
    f"error: {output} is in use by another prepare ({described}): wait for it to end, or use "
    "another --output"
  ]
  assert verify.returncode == 1
  assert verify.stderr.strip().splitlines() == [
    f"error: {output} is being prepared now ({described}): verify it once that prepare has ended"
  ]
  assert not lock.exists()
  assert _run("-m", "vicmae_jax.data.prepare", "--verify", f"--output={output}").returncode == 0


@LINUX_PROC
def test_workers_ask_the_kernel_to_end_them_with_their_parent():
  code = (
    "import ctypes\n"
    "from vicmae_jax.data import prepare_workers\n"
    "prepare_workers._worker_init(__import__('os').getppid())\n"
    "signal = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
    "print(signal.value)\n"
  )
  proc = _run("-c", code)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == [str(int(signal.SIGKILL))]


@LINUX_PROC
def test_without_prctl_a_worker_still_ends_with_its_parent(tmp_path):
  """The fallback for systems without PR_SET_PDEATHSIG: a thread watching the parent pid."""
  child_code = (
    "import sys, time\n"
    "from vicmae_jax.data import prepare_workers\n"
    "prepare_workers._exit_when_parent_dies(int(sys.argv[1]), interval=0.05)\n"
    "time.sleep(120)\n"
  )
  parent_code = (
    "import os, subprocess, sys, time\n"
    f"child = subprocess.Popen([sys.executable, '-c', {child_code!r}, str(os.getpid())])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(120)\n"
  )
  parent = _start("-c", parent_code, stdout=subprocess.PIPE, stderr=None, text=True)
  child = int(parent.stdout.readline())
  try:
    time.sleep(1.0)  # the child is up and watching
    assert _alive(child)
    parent.kill()
    parent.wait()
    assert not _wait_until_gone([child], seconds=5)
  finally:
    _end([child])
    parent.stdout.close()


def test_temporary_names_are_unique_per_writer_and_stale_ones_are_removed(small_videos, tmp_path):
  first, second = (
    shard_files._temp_path("/x/a.array_record"),
    shard_files._temp_path("/x/a.array_record"),
  )
  assert first != second and f".{os.getpid()}-" in first and first.endswith(".incomplete")
  output = tmp_path / "out"
  assert _run(*_prepare_args(small_videos, output, "--num_shards=2", "--workers=1")).returncode == 0
  intact = _folder_bytes(output)
  name = "train-00001-of-00002.array_record"
  for stale in (f"{name}.123-0a1b2c3d.incomplete", f"{name}.index.9-ff.incomplete"):
    (output / stale).write_bytes(b"left by a killed run")
  rerun = _run(*_prepare_args(small_videos, output, "--num_shards=2", "--workers=1"))
  assert "removed 2 unfinished file(s) of an earlier run" in rerun.stderr
  assert _folder_bytes(output) == intact


# --------------------------------------------------------------------------------------------------
# Damaged shards.


def _damage(output):
  """Cuts one shard short and flips a byte of another shard's index: returns those two paths."""
  shard = output / "train-00001-of-00004.array_record"
  data = shard.read_bytes()
  shard.write_bytes(data[: len(data) // 2])
  index = output / "train-00002-of-00004.array_record.index"
  data = bytearray(index.read_bytes())
  data[len(data) // 2] ^= 0xFF
  index.write_bytes(bytes(data))
  return shard, index


def test_a_rerun_verifies_finished_shards_and_redoes_damaged_ones(small_videos, tmp_path):
  output = tmp_path / "out"
  options = ("--num_shards=4", "--workers=2")
  assert _run(*_prepare_args(small_videos, output, *options)).returncode == 0
  intact = _folder_bytes(output)
  meta = json.loads((output / "train_meta.json").read_text())
  assert [item["name"] for item in meta["shard_files"]] == meta["shards"]
  for item in meta["shard_files"]:
    shard = output / item["name"]
    assert item["size"] == shard.stat().st_size
    assert item["index_size"] == (output / (item["name"] + ".index")).stat().st_size
    assert len(item["sha256"]) == len(item["index_sha256"]) == 64
    state = json.loads((output / f".{item['name']}.json").read_text())
    assert state["files"] == {key: value for key, value in item.items() if key != "name"}

  shard, index = _damage(output)
  size = len(intact[shard.name])
  rerun = _run(*_prepare_args(small_videos, output, *options))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  lines = rerun.stderr.splitlines()
  assert (
    f"{shard}: truncated ({size // 2} bytes, {size} when written); preparing the shard again"
    in lines
  )
  assert (
    f"{index}: damaged (its sha256 differs from the one recorded when it was written); preparing "
    "the shard again" in lines
  )
  assert (
    f"{output}: 2 of 4 shards already complete (sizes and sha256 verified), skipping them" in lines
  )
  assert _folder_bytes(output) == intact


def test_verify_names_each_damaged_file_and_writes_nothing(small_videos, tmp_path):
  output = tmp_path / "out"
  assert _run(*_prepare_args(small_videos, output, "--num_shards=4", "--workers=1")).returncode == 0
  verify = ("-m", "vicmae_jax.data.prepare", "--verify", f"--output={output}")
  fine = _run(*verify)
  assert fine.returncode == 0, fine.stderr
  assert fine.stdout.splitlines() == [
    f"{output}: 4 shard(s) of split(s) train verified, every shard and index file intact"
  ]

  shard, index = _damage(output)
  missing = output / "train-00003-of-00004.array_record.index"
  missing.unlink()
  before = {path.name: (path.stat().st_mtime_ns, path.stat().st_size) for path in output.iterdir()}
  damaged = _run(*verify, "--split=train")
  assert damaged.returncode == 1
  size = shard.stat().st_size * 2
  assert damaged.stdout.splitlines() == [
    f"{shard}: truncated ({size // 2} bytes, {size} when written)",
    f"{index}: damaged (its sha256 differs from the one recorded when it was written)",
    f"{missing}: missing",
    f"{output}: 3 damaged or missing file(s) in 4 shard(s) of split(s) train: re-run the prepare "
    "command with the same options to prepare them again",
  ]
  after = {path.name: (path.stat().st_mtime_ns, path.stat().st_size) for path in output.iterdir()}
  assert after == before
  nothing = _run("-m", "vicmae_jax.data.prepare", "--verify", f"--output={tmp_path}")
  assert nothing.returncode == 1
  assert nothing.stderr.strip().splitlines() == [
    f"error: no *_meta.json in {tmp_path}: not a prepared folder, or its prepare has not finished"
  ]


def test_shards_written_before_checksums_are_checked_and_then_recorded(small_videos, tmp_path):
  """States and meta without sizes and sums (an earlier version): a structural check, then the sums
  are recorded; a shard cut short is prepared again."""
  output = tmp_path / "out"
  options = dict(fps=5.0, short_side=32, num_shards=4, progress=False)
  prepare.prepare_dataset("folder", small_videos, output, **options)
  intact = _folder_bytes(output)
  for path in output.glob(".*.json"):
    state = json.loads(path.read_text())
    del state["files"]
    path.write_text(json.dumps(state))
  meta = json.loads((output / "train_meta.json").read_text())
  del meta["shard_files"]
  (output / "train_meta.json").write_text(json.dumps(meta, indent=1))
  result = prepare.verify_output(output)
  assert result["problems"] == [] and result["unchecked"] == [str(output / "train_meta.json")]
  shard = output / "train-00001-of-00004.array_record"
  shard.write_bytes(intact[shard.name][:1000])
  problems = prepare.verify_output(output)["problems"]
  assert len(problems) == 1 and problems[0].startswith(f"{shard}: truncated or damaged (")

  summary = prepare.prepare_dataset("folder", small_videos, output, **options)
  assert summary["rewritten_damaged"] == [shard.name] and summary["resumed_shards"] == 3
  assert _folder_bytes(output) == intact


def test_a_refused_run_leaves_no_lock_behind(small_videos, tmp_path):
  """A settings mismatch is refused (before anything is checked or written); the lock goes with it."""
  output = tmp_path / "out"
  prepare.prepare_dataset("folder", small_videos, output, fps=5.0, num_shards=2, progress=False)
  with pytest.raises(ValueError, match="fps=5.0.*fps=4.0"):
    prepare.prepare_dataset("folder", small_videos, output, fps=4.0, num_shards=2, progress=False)
  assert not (output / shard_files.LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------------
# Skipped inputs.


def _gif(path):
  frames = [Image.new("RGB", (16, 16), (value, 0, 0)) for value in (0, 128, 255)]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


def test_every_skipped_input_is_counted_in_the_summary_and_the_meta(tmp_path):
  root = tmp_path / "videos"
  for number in range(3):
    make_video(root / "c0" / f"v{number}.mp4", num_frames=12)
  _gif(root / "c0" / "anim.gif")
  (root / "notes.txt").write_text("shot on a phone")
  make_zero_byte(root / "c0" / "empty.mp4")
  make_random_bytes(root / "c0" / "noise.webm")
  output = root / "prepared"  # inside the root: its own files are not inputs
  for attempt in range(2):
    proc = _run(*_prepare_args(root, output, "--workers=1"))
    assert proc.returncode == 0, proc.stderr
    meta_path = output / "train_meta.json"
    lines = proc.stderr.splitlines()
    assert f"train: 3 clips in 1 shard(s) under {output} (" in lines[-9] and lines[-9].endswith(
      f"); 4 skipped, every one with its reason in {meta_path}"
    ), lines
    assert sorted(lines[-8:-4]) == [
      "  1 x corrupt",
      "  1 x empty file",
      "  1 x not a video file (.gif)",
      "  1 x not a video file (.txt)",
    ]
    meta = json.loads(meta_path.read_text())
    assert meta["skipped_by_reason"] == {
      "not a video file (.gif)": 1,
      "not a video file (.txt)": 1,
      "empty file": 1,
      "corrupt": 1,
    }
    assert sorted(os.path.basename(item["path"]) for item in meta["skipped"]) == [
      "anim.gif",
      "empty.mp4",
      "noise.webm",
      "notes.txt",
    ]


def test_a_source_whose_every_file_is_bad_ends_with_one_line(tmp_path):
  root = tmp_path / "bad"
  (root / "a").mkdir(parents=True)
  (root / "b").mkdir()
  make_zero_byte(root / "a" / "empty.mp4")
  make_random_bytes(root / "a" / "noise.mp4")
  make_truncated(root / "b" / "cut.mp4")
  _gif(root / "b" / "anim.gif")
  output = tmp_path / "out"
  proc = _run(*_prepare_args(root, output, "--workers=2", "--num_shards=2"))
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  meta_path = output / "train_meta.json"
  assert proc.stderr.strip().splitlines()[-1] == (
    "error: no clip could be prepared for split 'train': all 4 input(s) were skipped (2 x corrupt, "
    f"1 x not a video file (.gif), 1 x empty file); every file with its reason is in {meta_path}"
  )
  assert len(json.loads(meta_path.read_text())["skipped"]) == 4

  shutil.rmtree(root / "a")
  for video in (root / "b").glob("*.mp4"):
    video.unlink()
  (root / "b" / "notes.txt").write_text("")
  proc = _run(*_prepare_args(root, tmp_path / "out2"))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
    f"error: no videos listed in {root}: its 2 file(s) are not videos (video files end in "
    ".mp4, .webm, .mkv, .avi, .mov, .m4v, .mpg, .mpeg, .ogv, .3gp, .flv)"
  ]
