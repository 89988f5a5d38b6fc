"""Learning-rate schedules: MAE's linear scaling rule and warm-up followed by cosine / linear /
constant, per optimizer update."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

SCHEDULE_KINDS = ("cosine", "constant", "linear")


def scaled_lr(base_lr: float, global_batch: int, base: int = 256) -> float:
  """The linear scaling rule of MAE: lr = base_lr * global_batch / base."""
  if global_batch <= 0:
    raise ValueError(f"global_batch must be positive, got {global_batch}")
  if base <= 0:
    raise ValueError(f"base must be positive, got {base}")
  return float(base_lr) * global_batch / base


def make_lr_schedule(
  peak_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0, kind: str = "cosine"
) -> optax.Schedule:
  """Per-step learning rate, the MAE schedule written in steps instead of fractional epochs.

  step < warmup_steps: peak_lr * step / warmup_steps (0 at step 0, as in the official code).
  Afterwards, with t = (step - warmup_steps) / (total_steps - warmup_steps) clipped to [0, 1]:
    cosine:   min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * t))
    linear:   min_lr + (peak_lr - min_lr) * (1 - t)
    constant: peak_lr
  Steps past total_steps keep the final value. Jittable: `step` may be a traced int.
  """
  if kind not in SCHEDULE_KINDS:
    raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
  if peak_lr < 0 or min_lr < 0:
    raise ValueError(f"learning rates must be >= 0, got peak_lr={peak_lr}, min_lr={min_lr}")
  peak_lr, min_lr = float(peak_lr), float(min_lr)
  decay_steps = total_steps - warmup_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1)
    if kind == "constant" or decay_steps == 0:
      after = jnp.full_like(step, peak_lr)
    else:
      t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
      if kind == "cosine":
        after = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * t))
      else:
        after = min_lr + (peak_lr - min_lr) * (1.0 - t)
    return jnp.where(step < warmup_steps, warm, after)

  return schedule
