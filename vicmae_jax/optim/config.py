"""The `optim` config section: the one table of defaults (`OPTIM_FIELDS`), its validation
(`resolve_optim_config`), and what is built from it: the peak lr, the lr per train step and the
optimizer (gradient accumulation included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from vicmae_jax.optim.paths import BLOCKS_NAME
from vicmae_jax.optim.schedules import SCHEDULE_KINDS, make_lr_schedule, scaled_lr
from vicmae_jax.optim.transforms import (
  count_blocks,
  lars,
  layerwise_lr_decay_scales,
  make_adamw,
)

OPTIMIZER_NAMES = ("adamw", "lars")

# Field -> default; the names match `config_lib.optim_config`. `lr` > 0 is an absolute peak
# lr; otherwise `base_lr` is scaled by global_batch_size / lr_batch_base (MAE's rule).
# `clip_grad_norm` 0 and `layer_decay` 0 / None mean off. Warm-up and total steps come from the
# trainer's duration resolution, not from this section.
OPTIM_FIELDS: dict[str, Any] = {
  # The one table of optimizer defaults (config_lib.optim_config builds config.optim from it):
  # AdamW of the official pretraining. Every value is concrete, so command-line overrides keep
  # their type; 0 means "unset" for lr and "off" for clip_grad_norm and layer_decay.
  "name": "adamw",
  "lr": 0.0,
  "base_lr": 1.5e-4,
  "lr_batch_base": 256,
  "min_lr": 0.0,
  "schedule": "cosine",
  "weight_decay": 0.05,  # when the field is not given at all: 0.05 for adamw, 0.0 for lars
  "b1": 0.9,
  "b2": 0.95,
  "eps": 1e-8,
  "momentum": 0.9,
  "trust_coefficient": 0.001,
  "clip_grad_norm": 0.0,
  "grad_accum_steps": 1,
  "layer_decay": 0.0,
}
_DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "lars": 0.0}


def _as_dict(cfg: Mapping) -> dict:
  if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ValueError(f"optim config must be a mapping, got {type(cfg).__name__}")
  return dict(cfg)


def _number(
  cfg: dict,
  field: str,
  *,
  low: float | None = None,
  high: float | None = None,
  low_open: bool = False,
  integer: bool = False,
  optional: bool = False,
):
  value = cfg[field]
  if value is None:
    if optional:
      return
    raise ValueError(f"optim.{field} must be set")
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind):
    raise ValueError(f"optim.{field} must be {'an int' if integer else 'a number'}, got {value!r}")
  if low is not None and (value <= low if low_open else value < low):
    raise ValueError(f"optim.{field} must be {'>' if low_open else '>='} {low}, got {value!r}")
  if high is not None and value > high:
    raise ValueError(f"optim.{field} must be <= {high}, got {value!r}")


def resolve_optim_config(cfg: Mapping) -> dict:
  """Fills defaults and validates; errors name the field (`optim.<field>`).

  Normalizes the "off" spellings: `lr` -> None unless > 0, `clip_grad_norm` -> None unless > 0,
  `layer_decay` -> None unless set and != 0.
  """
  given = _as_dict(cfg)
  unknown = sorted(set(given) - set(OPTIM_FIELDS))
  if unknown:
    raise ValueError(
      f"unknown optim field(s) {', '.join('optim.' + u for u in unknown)}; "
      f"known: {', '.join(sorted(OPTIM_FIELDS))}"
    )
  # A mapping that leaves out base_lr must give lr; one that leaves out weight_decay gets the
  # optimizer's own default (adamw 0.05, lars 0.0). Every other absent field takes the table's.
  out = {**OPTIM_FIELDS, "base_lr": None, "weight_decay": None, **given}
  if out["name"] not in OPTIMIZER_NAMES:
    raise ValueError(f"optim.name must be one of {OPTIMIZER_NAMES}, got {out['name']!r}")
  if out["schedule"] not in SCHEDULE_KINDS:
    raise ValueError(f"optim.schedule must be one of {SCHEDULE_KINDS}, got {out['schedule']!r}")
  if out["weight_decay"] is None:
    out["weight_decay"] = _DEFAULT_WEIGHT_DECAY[out["name"]]
  _number(out, "lr", low=0.0, optional=True)
  _number(out, "base_lr", low=0.0, optional=True)
  _number(out, "lr_batch_base", low=0, low_open=True, integer=True)
  _number(out, "min_lr", low=0.0)
  _number(out, "weight_decay", low=0.0)
  _number(out, "b1", low=0.0, high=1.0)
  _number(out, "b2", low=0.0, high=1.0)
  _number(out, "eps", low=0.0)
  _number(out, "momentum", low=0.0, high=1.0)
  _number(out, "trust_coefficient", low=0.0, low_open=True)
  _number(out, "clip_grad_norm", low=0.0, optional=True)
  _number(out, "grad_accum_steps", low=1, integer=True)
  _number(out, "layer_decay", low=0.0, high=1.0, optional=True)
  out["lr"] = out["lr"] if out["lr"] else None
  out["clip_grad_norm"] = out["clip_grad_norm"] if out["clip_grad_norm"] else None
  out["layer_decay"] = out["layer_decay"] if out["layer_decay"] else None
  if out["lr"] is None and out["base_lr"] is None:
    raise ValueError(
      "optim.lr (absolute, > 0) or optim.base_lr (per lr_batch_base examples) must be set"
    )
  if out["layer_decay"] is not None and out["name"] != "adamw":
    raise ValueError("optim.layer_decay is only supported with optim.name='adamw'")
  return out


def peak_learning_rate(cfg: Mapping, *, global_batch_size: int | None = None) -> float:
  """optim.lr if > 0, else optim.base_lr * global_batch_size / optim.lr_batch_base."""
  resolved = resolve_optim_config(cfg)
  if resolved["lr"] is not None:
    return float(resolved["lr"])
  if global_batch_size is None:
    raise ValueError("optim.base_lr is used (optim.lr is not > 0), so global_batch_size is needed")
  return scaled_lr(resolved["base_lr"], global_batch_size, resolved["lr_batch_base"])


def _update_schedule(
  resolved: dict, total_steps: int, warmup_steps: int, global_batch_size: int | None
) -> optax.Schedule:
  """Schedule indexed by optimizer updates (train steps // grad_accum_steps)."""
  accum = resolved["grad_accum_steps"]
  if total_steps < accum:
    raise ValueError(f"total_steps={total_steps} is smaller than optim.grad_accum_steps={accum}")
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
  return make_lr_schedule(
    peak_learning_rate(resolved, global_batch_size=global_batch_size),
    total_steps // accum,
    warmup_steps // accum,
    min_lr=resolved["min_lr"],
    kind=resolved["schedule"],
  )


def make_lr_fn(
  cfg: Mapping, total_steps: int, *, warmup_steps: int = 0, global_batch_size: int | None = None
) -> optax.Schedule:
  """The learning rate applied at a train step (a call of `tx.update`), for logging.

  With gradient accumulation over k calls this is the rate of the update that completes the
  current group: schedule(step // k).
  """
  resolved = resolve_optim_config(cfg)
  schedule = _update_schedule(resolved, total_steps, warmup_steps, global_batch_size)
  accum = resolved["grad_accum_steps"]
  if accum == 1:
    return schedule
  return lambda step: schedule(jnp.asarray(step) // accum)


def make_optimizer(
  cfg: Mapping,
  total_steps: int,
  params=None,
  *,
  warmup_steps: int = 0,
  global_batch_size: int | None = None,
) -> optax.GradientTransformation:
  """The optimizer described by an `optim` config section (fields: `OPTIM_FIELDS`).

  total_steps, warmup_steps: train steps (calls of `tx.update`), accumulation micro-steps
    included (what `config_lib.resolve_durations` returns).
  params: the parameter tree the optimizer will update; needed for `layer_decay` (the number
    of blocks is read from it).
  global_batch_size: needed when the lr comes from `base_lr`.
  With optim.grad_accum_steps = k > 1 the result is an `optax.MultiSteps`: gradients are
  averaged over k calls, then one update (clipping included) is applied.
  """
  resolved = resolve_optim_config(cfg)
  schedule = _update_schedule(resolved, total_steps, warmup_steps, global_batch_size)
  if resolved["name"] == "adamw":
    num_layers = None
    if resolved["layer_decay"] is not None:
      if params is None:
        raise ValueError("optim.layer_decay needs the params tree to count blocks")
      num_layers = count_blocks(params)
      if num_layers == 0:
        raise ValueError(f"optim.layer_decay is set but params have no '{BLOCKS_NAME}'")
      layerwise_lr_decay_scales(params, num_layers, resolved["layer_decay"])  # checks paths early
    tx = make_adamw(
      schedule,
      weight_decay=resolved["weight_decay"],
      b1=resolved["b1"],
      b2=resolved["b2"],
      eps=resolved["eps"],
      layer_decay=resolved["layer_decay"],
      num_layers=num_layers,
      grad_clip_norm=resolved["clip_grad_norm"],
    )
  else:
    tx = lars(
      schedule,
      weight_decay=resolved["weight_decay"],
      momentum=resolved["momentum"],
      trust_coefficient=resolved["trust_coefficient"],
    )
    if resolved["clip_grad_norm"] is not None:
      tx = optax.chain(optax.clip_by_global_norm(resolved["clip_grad_norm"]), tx)
  if resolved["grad_accum_steps"] > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=resolved["grad_accum_steps"])
  return tx
