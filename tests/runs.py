"""Helpers for tests that run training through `vicmae_jax.main` (in-process or as a subprocess).

All runs use the embedded demo at its `tiny` size and 8 fake CPU devices.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "demo.py")


def subprocess_env(devices=8):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["VICMAE_COMPILE_CACHE"] = os.environ.get("VICMAE_TEST_COMPILE_CACHE", "")
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


NO_EVALS = (
  "--config.evals.knn.every_steps=-1",
  "--config.evals.linear_probe.every_steps=-1",
  "--config.evals.attentive_probe.every_steps=-1",
  "--config.log.image_every_steps=0",
)


def main_cmd(workdir, demo_root, *overrides):
  return [
    sys.executable,
    "-m",
    "vicmae_jax.main",
    f"--config={CONFIG}:tiny",
    f"--workdir={workdir}",
    f"--config.demo_data.root={demo_root}",
    *overrides,
  ]


def run_main(workdir, demo_root, *overrides, timeout=600):
  return subprocess.run(
    main_cmd(workdir, demo_root, *overrides),
    env=subprocess_env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def losses(workdir) -> dict[int, float]:
  """step -> loss from metrics.jsonl (the last line for a step wins: a resumed run re-logs)."""
  out = {}
  path = Path(workdir) / "metrics.jsonl"
  for line in path.read_text().splitlines():
    rec = json.loads(line)
    if "train/loss" in rec:
      out[rec["step"]] = rec["train/loss"]
  return out


def load_config(name: str, arg: str | None = None):
  """`configs/<name>` (a path relative to configs/, or absolute) with its option string `arg`."""
  from vicmae_jax import config_lib

  path = name if os.path.isabs(name) else str(REPO / "configs" / name)
  return config_lib.load_config_file(path + (f":{arg}" if arg else ""))


def set_fields(config, overrides: dict):
  """Sets dotted `overrides` (`{"a.b": v}`) on `config`; returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_config(demo_root, **overrides):
  c = load_config("demo.py", "tiny")
  c.demo_data.root = demo_root
  for name in ("knn", "linear_probe", "attentive_probe"):
    c.evals[name].every_steps = -1
  c.log.image_every_steps = 0
  return set_fields(c, overrides)


def downstream_config(name: str, data_dir: str, arg: str = "tiny", **overrides):
  """A downstream demo config (`demo_linear_probe.py`, ...) reading the clips in `data_dir`."""
  config = load_config(name, arg)
  del config["demo_data"]
  for data in (config.data, config.eval_data):
    data.sources.digits.path = data_dir
    data.num_threads = 1
  config.checkpoint.async_save = False
  return set_fields(config, overrides)


def save_params(workdir, params, batch_stats=None, step: int = 3):
  """Saves a train-state-like tree with the project's checkpointer as step `step` of `workdir`."""
  import jax.numpy as jnp
  from vicmae_jax import checkpoint as ckpt_lib

  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(workdir)), async_save=False)
  state = {"params": params, "step": jnp.asarray(step, jnp.int32)}
  if batch_stats is not None:
    state["batch_stats"] = batch_stats
  ckpt.save(step, state)
  ckpt.close()
  return str(workdir)
