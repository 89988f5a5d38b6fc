"""The entry point as a user meets it: one run per workdir, SIGTERM at start-up, error texts.

Subprocesses, since a second process, a signal or the console text is the point.
"""

import os
import signal
import subprocess
import time

import pytest

from runs import CONFIG, NO_EVALS, REPO, losses, main_cmd, run_main, subprocess_env


def _start(workdir, demo_root, *overrides):
  return subprocess.Popen(
    main_cmd(workdir, demo_root, *overrides, *NO_EVALS),
    env=subprocess_env(),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait_for_line(proc, text, timeout=300) -> str:
  """Reads the process's stderr until a line containing `text`; returns what was read."""
  seen = []
  deadline = time.time() + timeout
  while time.time() < deadline:
    line = proc.stderr.readline()
    if not line:
      raise AssertionError(f"process ended before {text!r}:\n{''.join(seen)[-3000:]}")
    seen.append(line)
    if text in line:
      return "".join(seen)
  raise AssertionError(f"no {text!r} within {timeout} s")


@pytest.mark.slow
def test_second_run_on_a_workdir_is_refused_and_a_killed_holder_is_taken_over(demo_root, tmp_path):
  workdir = tmp_path / "run"
  with open(tmp_path / "first.log", "w") as log:
    first = subprocess.Popen(
      main_cmd(
        workdir, demo_root, "--config.num_steps=100000", "--config.checkpoint.every_steps=2"
      ),
      env=subprocess_env(),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=log,
    )
  try:
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "2").is_dir():
      assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
      assert time.time() < deadline
      time.sleep(0.1)
    second = run_main(workdir, demo_root, *NO_EVALS, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: workdir {workdir} is in use by another run (host "), last
    assert f"pid {first.pid}, started " in last, last
    assert second.stderr.count("error:") == 1
    assert first.poll() is None  # the first run is untouched
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The lock file of the killed run remains; the next run takes it over and resumes.
  saved = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  third = run_main(workdir, demo_root, f"--config.num_steps={saved + 2}", *NO_EVALS)
  assert third.returncode == 0, third.stderr[-3000:]
  assert f"at step {saved}" in third.stderr
  assert max(losses(workdir)) == saved + 2


@pytest.mark.parametrize("when", ["imports", "Data:", "Model:"])
def test_sigterm_before_the_training_loop_exits_0_with_one_line(demo_root, tmp_path, when):
  proc = _start(tmp_path, demo_root, "--config.num_steps=6")
  if when == "imports":
    time.sleep(1.0)
  else:
    _wait_for_line(proc, when)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("stopped: SIGTERM outside the training loop; nothing new to save"), last
  assert f"in {tmp_path}" in last
  assert "Traceback" not in err
  assert (
    not (tmp_path / "metrics.jsonl").exists()
    or "train/loss" not in (tmp_path / "metrics.jsonl").read_text()
  )


@pytest.mark.parametrize(
  "override,expected",
  [
    (
      "--config.model.mask_ration=0.6",
      "--config.model.mask_ration: no such field (did you mean model.mask_ratio?)",
    ),
    ("--config.modl.depth=2", "--config.modl.depth: no such field (did you mean model?)"),
    (
      "--config.model.mask_ratio.x=1",
      "--config.model.mask_ratio.x: no such field (model.mask_ratio is a value, not a group)",
    ),
  ],
)
def test_override_messages_name_the_field(override, expected):
  from vicmae_jax import main

  argv = ["main", f"--config={CONFIG}:tiny", "--workdir=/tmp/unused", override]
  assert main._override_message(argv, KeyError("raised by the flag parser")) == expected


@pytest.mark.parametrize(
  "override,expected",
  [
    (
      "--config.model.mask_ration=0.6",
      "error: --config.model.mask_ration: no such field (did you mean model.mask_ratio?)",
    ),
    ("--config.model.mask_ratio=1.0", "error: config.model.mask_ratio: must be in [0, 1), got 1.0"),
  ],
)
def test_config_error_texts_printed_once(demo_root, tmp_path, override, expected):
  proc = run_main(tmp_path, demo_root, override, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == expected
  assert proc.stderr.count(expected[len("error: ") :]) == 1, proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
