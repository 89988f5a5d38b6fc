"""Checkpoint faults: a damaged newest step, a full disk, a NaN stop with a save in flight.

Each damage is done to a copy of the session's reference run (10 steps, checkpoints at 3, 6, 9
and 10, the last 2 kept), and the run is then continued through `main.run` or the real command.
"""

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from runs import NO_EVALS, REPO, losses, main_cmd, subprocess_env, tiny_config
from vicmae_jax import weights


def _files(step_dir: Path, pattern: str) -> list[Path]:
  found = sorted(Path(p) for p in glob.glob(str(step_dir / pattern), recursive=True))
  found = [p for p in found if p.is_file()]
  assert found, f"nothing matches {pattern} in {step_dir}"
  return found


def _truncate_state_data(step_dir):
  largest = max(_files(step_dir, "state/**/d/*"), key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def _delete_state_manifest(step_dir):
  for path in _files(step_dir, "state/**/manifest.ocdbt"):
    path.unlink()


def _delete_state_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def _truncate_data_iterator(step_dir):
  for path in _files(step_dir, "data/*"):
    path.write_bytes(path.read_bytes()[:7])


def _empty_state_folder(step_dir):
  shutil.rmtree(step_dir / "state")
  (step_dir / "state").mkdir()


DAMAGES = {
  "truncated state data file": _truncate_state_data,
  "state manifest deleted": _delete_state_manifest,
  "state metadata deleted": _delete_state_metadata,
  "data iterator truncated": _truncate_data_iterator,
  "step folder never completed": _empty_state_folder,
}


def _copy_run(reference, tmp_path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("events.out.*", ".lock*"))
  return workdir


def _run(workdir, demo_root, *args):
  return subprocess.run(
    main_cmd(workdir, demo_root, *args, *NO_EVALS),
    env=subprocess_env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _params(step_dir):

  return weights.flatten(weights.load_pretrained_tree(str(step_dir))["params"])


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_step_is_moved_aside_and_the_run_resumes_from_the_one_before(
  demo_root, reference, tmp_path, damage, caplog
):
  from vicmae_jax import main

  workdir = _copy_run(reference, tmp_path)
  ckpts = workdir / "checkpoints"
  assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) == [9, 10]
  DAMAGES[damage](ckpts / "10")
  # The same run again: it resumes from 9, so step 10 is computed again from step 9's state.
  config = tiny_config(demo_root, num_steps=10, **{"checkpoint.every_steps": 3})
  with caplog.at_level("WARNING"):
    summary = main.run(config, str(workdir))
  assert summary["final_step"] == 10
  aside = [d for d in os.listdir(ckpts) if d.startswith("10.corrupt-")]
  assert len(aside) == 1, os.listdir(ckpts)
  assert (ckpts / aside[0]).is_dir()  # kept for inspection, never deleted
  assert any(
    "checkpoint" in r.getMessage() and "/10 does not load" in r.getMessage() for r in caplog.records
  ), [r.getMessage() for r in caplog.records]
  assert any(
    f"moved the damaged checkpoint {ckpts}/10 aside" in r.getMessage() for r in caplog.records
  )
  # Step 10 again, from step 9's state and data stream: the same loss and parameters as before.
  assert losses(workdir)[10] == losses(reference)[10]
  ref10, new10 = _params(Path(reference) / "checkpoints" / "10"), _params(ckpts / "10")
  for key in ref10:
    np.testing.assert_array_equal(new10[key], ref10[key], err_msg=key)


def test_no_step_loads_names_the_folder_and_moves_nothing(demo_root, reference, tmp_path):
  from vicmae_jax import checkpoint, main

  workdir = _copy_run(reference, tmp_path)
  ckpts = workdir / "checkpoints"
  for step in (9, 10):
    _delete_state_manifest(ckpts / str(step))
  with pytest.raises(checkpoint.CheckpointError) as info:
    main.run(tiny_config(demo_root, num_steps=12), str(workdir))
  message = str(info.value)
  assert message.startswith(f"no checkpoint in {ckpts} loads (steps 10, 9;")
  assert "\n" not in message
  assert sorted(os.listdir(ckpts)) == ["10", "9"]


def _can_mount_tmpfs(path) -> bool:
  os.makedirs(path, exist_ok=True)
  proc = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True
  )
  if proc.returncode:
    return False
  subprocess.run(["umount", str(path)], check=True)
  return True


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_a_rerun_resumes_exactly(demo_root, reference, tmp_path):
  """A size-limited tmpfs workdir: the third save finds no space; the rerun after freeing space
  (a bigger mount) resumes from the last good step with the reference run's losses."""
  mount = tmp_path / "small_disk"
  if not _can_mount_tmpfs(mount):
    pytest.skip("cannot mount a tmpfs here (needs root)")
  step_bytes = sum(p.stat().st_size for p in _files(Path(reference) / "checkpoints" / "10", "**/*"))
  size_kib = (2 * step_bytes + 600_000) // 1024  # two steps, the metrics and events, then full
  subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)], check=True
  )
  try:
    workdir = mount / "run"
    args = (
      "--config.num_steps=10",
      "--config.checkpoint.every_steps=2",
      "--config.checkpoint.keep=10",
    )
    proc = _run(workdir, demo_root, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: saving the checkpoint of step "), last
    failed = int(last.split("of step ")[1].split()[0])
    assert f"to {workdir}/checkpoints/{failed} failed: No space left on device;" in last, last
    assert f"the last good checkpoint (step {failed - 2}) is untouched" in last, last
    assert failed < 10 and proc.stderr.count("error:") == 1
    good = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert good and good[-1] == failed - 2
    # Space freed: the same command resumes from the last good step, with the same losses.
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
    done = _run(workdir, demo_root, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {failed - 2}" in done.stderr
    got, ref = losses(workdir), losses(reference)
    for step in range(1, 11):
      assert got[step] == ref[step], (step, got[step], ref[step])
    assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]
  finally:
    subprocess.run(["umount", "-l", str(mount)])


@pytest.mark.slow
def test_nan_stop_completes_the_save_in_flight(demo_root, tmp_path):
  """Saving every step, the NaN at step s is seen while the save of step s-1 is being written:
  the process must finish that save before it exits, so the newest step is complete and loads."""
  workdir = tmp_path / f"nan-{uuid.uuid4().hex[:6]}"
  proc = _run(
    workdir,
    demo_root,
    "--config.num_steps=6",
    "--config.warmup_steps=0",
    "--config.optim.lr=3000",  # finite at step 1, inf grads at step 2
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.keep=10",
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite training metrics at step "), last
  bad_step = int(last.split("at step ")[1].split(":")[0])
  names = os.listdir(workdir / "checkpoints")
  assert not [n for n in names if "tmp" in n], names  # nothing left half written
  steps = sorted(int(n) for n in names if n.isdigit())
  assert bad_step >= 2 and steps == list(range(1, bad_step)), (steps, bad_step)
  params = _params(workdir / "checkpoints" / str(steps[-1]))
  assert all(np.all(np.isfinite(v)) for v in params.values())
