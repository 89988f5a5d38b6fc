"""Pretraining end to end through `vicmae_jax.main`: runs, exact resume, SIGTERM, NaN, config errors.

All runs use the embedded demo at its `tiny` size (a real mp4 dataset built once per test run,
prepared into ArrayRecord shards) and 8 fake CPU devices.
"""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from runs import CONFIG, NO_EVALS, REPO, subprocess_env, losses, main_cmd, run_main, tiny_config  # noqa: F401
from vicmae_jax import weights


@pytest.mark.slow
def test_run_writes_checkpoints_metrics_images_and_evals(demo_root, tmp_path):
  proc = run_main(tmp_path, demo_root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ckpts = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert ckpts[-1] == 6 and 3 in ckpts
  for item in ("state", "data", "config"):
    assert (tmp_path / "checkpoints" / "6" / item).is_dir()
  assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard event file"
  recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in recs if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  for r in train:
    for key in (
      "train/loss_recon",
      "train/loss_contrast",
      "train/lr",
      "train/grad_norm",
      "train/param_norm",
      "train/update_norm",
      "train/pairs_per_s",
    ):
      assert np.isfinite(r[key]), key
    assert (
      abs(r["train/loss"] - (0.97 * r["train/loss_recon"] + 0.03 * r["train/loss_contrast"])) < 1e-5
    )
  evals = [r for r in recs if "eval/knn_top1" in r]
  assert [r["step"] for r in evals] == [0, 6]
  assert all(0.0 <= r["eval/linear_probe_top1"] <= 1.0 for r in evals)
  assert all(0.0 <= r["eval/attentive_probe_top1"] <= 1.0 for r in evals)
  assert "step 6/6" in proc.stderr


@pytest.mark.slow
def test_killed_run_resumes_exactly(demo_root, reference, tmp_path):
  ref = losses(reference)
  cmd = main_cmd(
    tmp_path, demo_root, "--config.num_steps=10", "--config.checkpoint.every_steps=3", *NO_EVALS
  )
  proc = subprocess.Popen(
    cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 300
  while not (tmp_path / "checkpoints" / "3").is_dir():
    assert proc.poll() is None, "run ended before its first checkpoint"
    assert time.time() < deadline
    time.sleep(0.05)
  time.sleep(random.uniform(0.0, 0.5))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = run_main(
    tmp_path, demo_root, "--config.num_steps=10", "--config.checkpoint.every_steps=3", *NO_EVALS
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Resumed from" in done.stderr
  got = losses(tmp_path)
  assert sorted(got) == list(range(1, 11))
  for step in range(1, 11):
    assert got[step] == ref[step], (step, got[step], ref[step])
  _assert_same_params(reference, tmp_path, 10)


@pytest.mark.slow
def test_sigterm_saves_and_resumes(demo_root, reference, tmp_path):
  cmd = main_cmd(
    tmp_path, demo_root, "--config.num_steps=10", "--config.checkpoint.every_steps=100", *NO_EVALS
  )
  proc = subprocess.Popen(
    cmd,
    env=subprocess_env(),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and "train/loss" in metrics.read_text()):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert "termination signal" in err
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert len(saved) == 1 and 1 <= saved[0] < 10  # saved where it stopped, not at a schedule
  done = run_main(
    tmp_path, demo_root, "--config.num_steps=10", "--config.checkpoint.every_steps=100", *NO_EVALS
  )
  assert done.returncode == 0, done.stderr[-3000:]
  ref, got = losses(reference), losses(tmp_path)
  for step in range(1, 11):
    assert got[step] == ref[step], (step, got[step], ref[step])


def _assert_same_params(workdir_a, workdir_b, step):

  a = weights.flatten(
    weights.load_pretrained_tree(str(Path(workdir_a) / "checkpoints" / str(step)))["params"]
  )
  b = weights.flatten(
    weights.load_pretrained_tree(str(Path(workdir_b) / "checkpoints" / str(step)))["params"]
  )
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_nan_stops_without_saving_bad_state(demo_root, tmp_path):
  from vicmae_jax import main

  config = tiny_config(
    demo_root, num_steps=6, warmup_steps=0, **{"checkpoint.every_steps": 1, "optim.lr": 1e30}
  )
  with pytest.raises(FloatingPointError, match="non-finite training metrics at step"):
    main.run(config, str(tmp_path))
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())

  for step in saved:
    params = weights.flatten(
      weights.load_pretrained_tree(str(tmp_path / "checkpoints" / str(step)))["params"]
    )
    assert all(np.all(np.isfinite(v)) for v in params.values()), step
  recs = losses(tmp_path)
  bad = [s for s, v in recs.items() if not np.isfinite(v)]
  assert not saved or not bad or max(saved) < min(bad) + 1


@pytest.mark.parametrize(
  "overrides,field",
  [
    ({"batch_size": 12}, "config.batch_size"),
    ({"model.mask_ratio": 1.0}, "config.model.mask_ratio"),
    ({"data.sources.digits.path": "/nonexistent/k400"}, "/nonexistent/k400"),
  ],
)
def test_config_errors_fail_before_compiling(demo_root, tmp_path, overrides, field):
  from vicmae_jax import config_lib, main

  config = tiny_config(demo_root, **overrides)
  start = time.time()
  with pytest.raises((config_lib.ConfigError, FileNotFoundError), match=field):
    main.run(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
  assert time.time() - start < 30  # refused before anything compiles


def test_mistyped_override_exits_2_with_one_line(demo_root, tmp_path):
  proc = run_main(tmp_path, demo_root, "--config.batch_size=abc", timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "batch_size" in last, last
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_init_from_another_run_loads_its_params(demo_root, reference, tmp_path):
  from vicmae_jax import main

  config = tiny_config(
    demo_root,
    num_steps=1,
    warmup_steps=0,
    init_from=reference,
    **{"optim.lr": 1e-12, "optim.weight_decay": 0.0, "checkpoint.every_steps": 1},
  )
  main.run(config, str(tmp_path))
  ours = weights.flatten(weights.load_pretrained_tree(str(tmp_path))["params"])
  theirs = weights.flatten(weights.load_pretrained_tree(reference)["params"])
  assert ours.keys() == theirs.keys()
  for k in ours:  # one step at lr 1e-12 moves nothing visible
    np.testing.assert_allclose(ours[k], theirs[k], rtol=0, atol=1e-9, err_msg=k)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="holds no usable checkpoint"):
    main.run(tiny_config(demo_root, num_steps=1, init_from=str(empty)), str(tmp_path / "x"))
