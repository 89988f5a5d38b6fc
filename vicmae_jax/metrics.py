"""Metric writing (clu: TensorBoard event files + console, optionally W&B), progress, ETA, throughput
and MFU.

Process 0 writes event files; every process logs its console lines through absl, other processes
only at warning level. Metrics arrive here already fetched to host (the loop fetches step s while
step s+1 runs on the device, so logging never stalls it).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

from absl import logging
import jax
import numpy as np

from vicmae_jax import monitors


def _fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# Metrics a step measures only on some steps (the ones it logs) and reports as NaN on the others:
# averaged over the steps that measured them, and their NaN is no fault.
SAMPLED_KEYS = monitors.SAMPLED_KEYS


def drop_lines_after(path: str, step: int) -> int:
  """Removes the records of `path` (metrics.jsonl) with a step past `step`; returns how many.

  The file is rewritten beside itself and renamed over, so a kill leaves the old or the new one.
  A line that does not parse (the torn last line of a killed writer) is dropped as well.
  """
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if int(rec.get("step", 0)) <= step:
      kept.append(line)
  dropped = len(lines) - len(kept)
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    logging.info("metrics.jsonl: dropped %d line(s) past step %d (a killed run's)", dropped, step)
  return dropped


class TrainLogger:
  """Accumulates per-step host metrics and writes averages every `every_steps` steps."""

  def __init__(
    self,
    workdir: str,
    *,
    total_steps: int,
    global_batch: int,
    unit: str = "pairs",
    flops_per_step: float | None = None,
    peak_flops_total: float | None = None,
    prefix: str = "train",
    wandb: Mapping | None = None,
    start_step: int = 0,
  ):
    """wandb: `config.log.wandb`; with a project, process 0 writes to W&B as well (wandb_writer.py).

    start_step: the step the run resumes at. Lines of metrics.jsonl past it were written by a
    killed run after its last checkpoint; they are dropped so the file tells one history.
    """
    from clu import metric_writers  # imports TensorFlow: only when a run starts writing

    self.writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )
    from vicmae_jax import wandb_writer

    if jax.process_index() == 0 and wandb_writer.enabled(wandb):
      self.writer = metric_writers.MultiWriter(
        [self.writer, wandb_writer.make_writer(workdir, wandb)]
      )
    self.total_steps = total_steps
    self.global_batch = global_batch
    self.unit = unit
    self.flops_per_step = flops_per_step
    self.peak_flops_total = peak_flops_total
    self.prefix = prefix
    self._sums: dict[str, float] = {}
    self._seen: dict[str, int] = {}  # steps of the window that measured each metric
    self._count = 0
    self._counts: dict[str, int] = {}  # events counted per window (e.g. skipped examples)
    self._totals: dict[str, int] = {}
    self._window_start = time.perf_counter()
    self._window_steps = 0
    self.history: list[dict] = []
    # A JSON-lines copy of every written scalar: easy to read back for scripts and tests.
    self._jsonl = None
    if jax.process_index() == 0:
      path = os.path.join(workdir, "metrics.jsonl")
      drop_lines_after(path, start_step)
      self._jsonl = open(path, "a")

  def write_hparams(self, hparams: Mapping):
    flat = {}

    def rec(prefix, d):
      for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping):
          rec(key, v)
        elif isinstance(v, (int, float, str, bool)):
          flat[key] = v
        else:
          flat[key] = str(v)

    rec("", hparams)
    self.writer.write_hparams(flat)

  def add(self, metrics: Mapping[str, float]):
    for k, v in metrics.items():
      if k in SAMPLED_KEYS and math.isnan(float(v)):
        continue  # not measured on this step
      self._sums[k] = self._sums.get(k, 0.0) + float(v)
      self._seen[k] = self._seen.get(k, 0) + 1
    self._count += 1
    self._window_steps += 1

  def count(self, name: str, n: int):
    """Counts `n` events of `name` (written as a per-window sum and a running total)."""
    self._counts[name] = self._counts.get(name, 0) + int(n)
    self._totals[name] = self._totals.get(name, 0) + int(n)

  def counted(self, name: str) -> int:
    """Events of `name` counted since this logger was made."""
    return self._totals.get(name, 0)

  def reset_clock(self):
    """Call after compilation/eval so throughput covers training steps only."""
    self._window_start = time.perf_counter()
    self._window_steps = 0

  def flush(self, step: int) -> dict[str, float] | None:
    """Writes window averages for `step` (1-based count of completed steps)."""
    if not self._count:
      return None
    avg = {f"{self.prefix}/{k}": v / self._seen[k] for k, v in self._sums.items()}
    elapsed = time.perf_counter() - self._window_start
    step_time = elapsed / max(self._window_steps, 1)
    avg[f"{self.prefix}/step_time_s"] = step_time
    avg[f"{self.prefix}/{self.unit}_per_s"] = (
      self.global_batch / step_time if step_time > 0 else 0.0
    )
    for name, total in self._totals.items():
      avg[name] = float(self._counts.get(name, 0))
      avg[f"{name}_total"] = float(total)
    if self.flops_per_step and self.peak_flops_total:
      avg[f"{self.prefix}/mfu"] = self.flops_per_step / step_time / self.peak_flops_total
    self.writer.write_scalars(step, avg)
    self._append(step, avg)
    eta = (self.total_steps - step) * step_time
    parts = [f"step {step}/{self.total_steps}"]
    for key in (
      "loss",
      "loss_recon",
      "loss_contrast",
      "accuracy",
      "lr",
      "grad_norm",
      "param_norm",
      "update_norm",
    ):
      full = f"{self.prefix}/{key}"
      if full in avg:
        parts.append(f"{key} {avg[full]:.4g}")
    parts.append(f"{avg[f'{self.prefix}/{self.unit}_per_s']:.1f} {self.unit}/s")
    parts.append(f"{step_time:.3f} s/step")
    if f"{self.prefix}/mfu" in avg:
      parts.append(f"mfu {100 * avg[f'{self.prefix}/mfu']:.1f}%")
    if self._totals.get("data/skipped"):
      parts.append(f"skipped {self._totals['data/skipped']}")
    parts.append(f"ETA {_fmt_duration(eta)}")
    logging.info(" | ".join(parts))
    self.history.append({"step": step, **avg})
    self._sums, self._seen, self._count, self._counts = {}, {}, 0, {}
    self._window_start = time.perf_counter()
    self._window_steps = 0
    return avg

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    scalars = {k: float(v) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    self._append(step, scalars)

  def _append(self, step: int, scalars: Mapping[str, float]):
    if self._jsonl is not None:
      self._jsonl.write(
        json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n"
      )
      self._jsonl.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    self.writer.write_images(step, images)

  def close(self):
    self.writer.flush()
    self.writer.close()
    if self._jsonl is not None:
      self._jsonl.close()


def check_finite(metrics: Mapping[str, float], step: int) -> None:
  """Raises FloatingPointError naming the bad metrics when any is NaN or Inf."""
  bad = {
    k: v
    for k, v in metrics.items()
    if not math.isfinite(float(v)) and not (k in SAMPLED_KEYS and math.isnan(float(v)))
  }
  if bad:
    raise FloatingPointError(
      f"non-finite training metrics at step {step}: "
      + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
      + ". Stopping without saving this state; the last good checkpoint is kept. "
      "Lower the learning rate, enable optim.clip_grad_norm, or check the input data."
    )
