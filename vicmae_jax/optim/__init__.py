"""Optimizers, learning-rate schedules, weight-decay masks, layer-wise lr decay and LARS.

Everything here works on any parameter pytree: an `nnx.State` (leaves wrapped in `nnx.Variable`),
the pure dict from `nnx.to_pure_dict`, or plain nested dicts. Decisions per parameter are made
from its path (`blocks/3/attn/qkv/kernel`) and its shape. Two block layouts are understood:

- a list of blocks: `.../blocks/<i>/...`, one array per block;
- scanned blocks: `.../blocks/<name>/...` with no integer index, every array stacked along a
  leading layer axis `[num_layers, ...]`. Then per-layer quantities (lr scales, LARS trust
  ratios, the "is it a matrix" test) are taken per slice of that leading axis.

Step counts: `total_steps` and `warmup_steps` count calls to `tx.update` (train steps). With
gradient accumulation over k micro-batches the schedule advances once every k calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULE_KINDS = ("cosine", "constant", "linear")
OPTIMIZER_NAMES = ("adamw", "lars")

# Name of the module that holds the transformer blocks (a list or a scanned stack).
BLOCKS_NAME = "blocks"
# Parameters that belong with the input embedding for layer-wise lr decay (layer 0).
EMBEDDING_NAMES = ("cls_token", "pos_embed", "temporal_pos_embed", "mask_token", "dist_token")
EMBEDDING_PREFIXES = ("patch_embed",)
# Never decayed, whatever their shape: tokens and learned position embeddings are
# [1, 1, D] / [1, L, D] arrays that the "at least 2-D" rule would otherwise catch.
NO_DECAY_NAMES = (
  "bias",
  "scale",
  "cls_token",
  "mask_token",
  "dist_token",
  "pos_embed",
  "temporal_pos_embed",
)


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_names(path: tuple) -> tuple[str, ...]:
  """Key path from `jax.tree_util` -> names, e.g. ('blocks', '3', 'attn', 'qkv', 'kernel').

  The trailing `.value` attribute of an `nnx.Variable` leaf is dropped.
  """
  names = [_key_name(k) for k in path]
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    names = names[:-1]
  return tuple(names)


def path_string(path: tuple) -> str:
  return "/".join(path_names(path))


class BlockPosition(NamedTuple):
  """Where a parameter sits relative to the transformer blocks.

  index: the block index for a list layout, None otherwise.
  stacked: True when the parameter is a scanned stack with a leading layer axis.
  """

  index: int | None
  stacked: bool


def block_position(names: tuple[str, ...]) -> BlockPosition | None:
  """None when the parameter is outside `blocks`; else its block index or `stacked=True`."""
  if BLOCKS_NAME not in names:
    return None
  pos = names.index(BLOCKS_NAME)
  following = names[pos + 1] if pos + 1 < len(names) else None
  if following is not None and following.isdigit():
    return BlockPosition(int(following), False)
  return BlockPosition(None, True)


def _slice_ndim(names: tuple[str, ...], leaf) -> int:
  """Rank of one layer's slice: a scanned stack loses its leading layer axis."""
  position = block_position(names)
  ndim = np.ndim(leaf)
  return ndim - 1 if (position is not None and position.stacked) else ndim


def _leaf_name(names: tuple[str, ...]) -> str:
  return names[-1] if names else ""


# ----------------------------------------------------------------------------------------------
# Learning rate
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Weight decay mask
# ----------------------------------------------------------------------------------------------


def decays(names: tuple[str, ...], leaf) -> bool:
  """True for matrices (>= 2-D per layer slice) that are not tokens or position embeddings.

  Equivalent to the official grouping (every 1-D parameter and every bias undecayed, plus
  the no-weight-decay list cls_token / pos_embed) on our trees, including scanned stacks
  where a bias is [num_layers, D].
  """
  if _slice_ndim(names, leaf) < 2:
    return False
  if _leaf_name(names) in NO_DECAY_NAMES:
    return False
  return not any(name in NO_DECAY_NAMES for name in names)


def weight_decay_mask(params) -> Any:
  """Pytree of bools with the structure of `params`: True where weight decay applies."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: decays(path_names(path), leaf), params)


# ----------------------------------------------------------------------------------------------
# Layer-wise lr decay
# ----------------------------------------------------------------------------------------------


def count_blocks(params) -> int:
  """Number of transformer blocks in `params` (list layout or scanned stack); 0 if none.

  Raises ValueError when blocks sit under more than one parent (e.g. `encoder/blocks` and
  `decoder/blocks`): layer-wise lr decay is defined for one stack, a classifier's tree.
  """
  count = 0
  parents = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = path_names(path)
    position = block_position(names)
    if position is None:
      continue
    parents.add(names[: names.index(BLOCKS_NAME) + 1])
    if len(parents) > 1:
      raise ValueError(
        "params hold more than one stack of blocks "
        f"({', '.join(sorted('/'.join(p) for p in parents))}); "
        "layer-wise lr decay needs a single encoder"
      )
    count = max(count, position.index + 1 if not position.stacked else np.shape(leaf)[0])
  return count


def layer_id(names: tuple[str, ...], num_layers: int, leaf=None):
  """BEiT / MAE layer id: embeddings -> 0, block i -> i + 1, everything else -> num_layers + 1.

  For a scanned stack returns an int array [num_layers] (1 .. num_layers), one id per slice.
  """
  # Embeddings nested under an encoder module (`encoder/patch_embed/...`) count as well.
  for name in names:
    if name in EMBEDDING_NAMES or name.startswith(EMBEDDING_PREFIXES):
      return 0
    if name == BLOCKS_NAME:
      break
  position = block_position(names)
  if position is None:
    return num_layers + 1
  if position.stacked:
    depth = np.shape(leaf)[0] if leaf is not None else num_layers
    if depth != num_layers:
      raise ValueError(
        f"{'/'.join(names)}: scanned stack has {depth} layers, but num_layers={num_layers}"
      )
    return np.arange(1, num_layers + 1)
  if position.index >= num_layers:
    raise ValueError(f"{'/'.join(names)}: block index {position.index} >= num_layers={num_layers}")
  return position.index + 1


def layerwise_lr_decay_scales(params, num_layers: int, decay: float) -> Any:
  """Per-parameter lr multipliers `decay ** (num_layers + 1 - layer_id)`.

  Returns a pytree with the structure of `params`. Leaves are float32 scalars, except for
  scanned stacks: float32 [num_layers, 1, ..., 1] (broadcasts against the stacked array).
  """
  if num_layers < 0:
    raise ValueError(f"num_layers must be >= 0, got {num_layers}")
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"layer decay must be in (0, 1], got {decay}")

  def scale(path, leaf):
    ids = layer_id(path_names(path), num_layers, leaf)
    values = np.power(decay, num_layers + 1 - np.asarray(ids, np.float64)).astype(np.float32)
    if values.ndim == 1:  # one scale per slice of a scanned stack
      values = values.reshape((-1,) + (1,) * (np.ndim(leaf) - 1))
    return values

  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layerwise_lr(num_layers: int, decay: float) -> optax.GradientTransformation:
  """Multiplies every update by its layer's lr scale (see `layerwise_lr_decay_scales`).

  The scales depend only on paths and shapes, so they are recomputed from the update tree
  (constants under jit) and no state is kept.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scales = layerwise_lr_decay_scales(updates, num_layers, decay)
    updates = jax.tree_util.tree_map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# LARS
# ----------------------------------------------------------------------------------------------


def _slice_norm(x, stacked: bool):
  x = x.astype(jnp.float32)
  if stacked:
    axes = tuple(range(1, x.ndim))
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
  return jnp.sqrt(jnp.sum(jnp.square(x)))


def scale_by_lars_trust_ratio(
  weight_decay: float = 0.0, trust_coefficient: float = 0.001
) -> optax.GradientTransformation:
  """The update direction of MAE's LARS, before momentum.

  For matrices (>= 2-D per layer slice): d = g + weight_decay * p, then
  d *= trust_coefficient * |p| / |d| when both norms are > 0 (else 1). Everything else
  (biases, norm parameters) passes through unchanged, without weight decay.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("LARS needs params: call tx.update(grads, state, params)")

    def one(path, g, p):
      names = path_names(path)
      if _slice_ndim(names, p) < 2:
        return g
      position = block_position(names)
      stacked = position is not None and position.stacked
      d = g + weight_decay * p
      p_norm = _slice_norm(p, stacked)
      d_norm = _slice_norm(d, stacked)
      ratio = jnp.where(
        p_norm > 0, jnp.where(d_norm > 0, trust_coefficient * p_norm / d_norm, 1.0), 1.0
      )
      return (d * ratio).astype(g.dtype)

    return jax.tree_util.tree_map_with_path(one, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def lars(
  learning_rate: float | optax.Schedule,
  *,
  weight_decay: float = 0.0,
  momentum: float = 0.9,
  trust_coefficient: float = 0.001,
) -> optax.GradientTransformation:
  """LARS as in the MAE linear probe.

  mu = momentum * mu + direction;  p -= lr * mu   (the lr multiplies the whole momentum
  buffer, so a changing lr rescales past steps too, exactly like the PyTorch version).
  """
  return optax.chain(
    scale_by_lars_trust_ratio(weight_decay, trust_coefficient),
    optax.trace(decay=momentum, nesterov=False),
    optax.scale_by_learning_rate(learning_rate),
  )


# ----------------------------------------------------------------------------------------------
# AdamW
# ----------------------------------------------------------------------------------------------


def make_adamw(
  learning_rate: float | optax.Schedule,
  *,
  weight_decay: float = 0.05,
  b1: float = 0.9,
  b2: float = 0.95,
  eps: float = 1e-8,
  mask: Any | Callable[[Any], Any] | None = weight_decay_mask,
  layer_decay: float | None = None,
  num_layers: int | None = None,
  grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
  """AdamW with decoupled, masked weight decay, optional layer-wise lr decay and clipping.

  p -= lr * scale_layer * (adam(g) + weight_decay * p)   (PyTorch AdamW per param group).
  `mask=None` decays every parameter. `layer_decay` needs `num_layers`.
  """
  parts = []
  if grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
  if layer_decay is not None:
    if num_layers is None:
      raise ValueError("layer_decay needs num_layers")
    parts.append(scale_by_layerwise_lr(num_layers, layer_decay))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


# ----------------------------------------------------------------------------------------------
# From a config
# ----------------------------------------------------------------------------------------------

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
