"""Two local processes x 2 CPU devices train like one process x 4 devices, and resume.

The processes join through `jax.distributed` (coordinator on localhost), each reads its own rows
of every global batch, and they save one checkpoint together.
"""

import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from runs import NO_EVALS, REPO, losses, main_cmd, subprocess_env

pytestmark = pytest.mark.slow


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, root, *extra):
  return main_cmd(
    workdir, root, "--config.num_steps=6", "--config.checkpoint.every_steps=2", *NO_EVALS, *extra
  )


def _launch_pair(workdir, root):
  port = _free_port()
  procs = []
  for pid in range(2):
    procs.append(
      subprocess.Popen(
        _cmd(
          workdir,
          root,
          f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={pid}",
        ),
        env=subprocess_env(devices=2),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  return procs


def test_two_processes_match_one_and_resume(demo_root, tmp_path):
  single = tmp_path / "single"
  proc = subprocess.run(
    _cmd(single, demo_root),
    env=subprocess_env(devices=4),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  ref = losses(single)

  multi = tmp_path / "multi"
  procs = _launch_pair(multi, demo_root)
  try:
    # Kill both once the first joint checkpoint exists, as a preempted job would die.
    deadline = time.time() + 1200
    while not (multi / "checkpoints" / "2").is_dir():
      for p in procs:
        if p.poll() is not None:
          pytest.fail(f"process ended early: {p.stderr.read()[-3000:]}")
      assert time.time() < deadline, "no checkpoint from the 2-process run"
      time.sleep(0.1)
    for p in procs:
      p.send_signal(signal.SIGKILL)
      p.wait()
    procs = _launch_pair(multi, demo_root)
    for p in procs:
      _, err = p.communicate(timeout=1200)
      assert p.returncode == 0, err[-3000:]
  finally:
    for p in procs:  # never leave a half of the job waiting for its peer
      if p.poll() is None:
        p.kill()
        p.wait()
  got = losses(multi)
  assert sorted(got) == sorted(ref) == list(range(1, 7))
  np.testing.assert_allclose(
    [got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=1e-5
  )
