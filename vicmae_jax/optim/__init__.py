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

Modules: `paths` (parameter paths and block positions), `schedules` (lr schedules),
`transforms` (weight-decay mask, layer-wise lr decay, LARS, AdamW) and `config` (the `optim`
config section and the optimizer built from it). Every public name is re-exported here.
"""

from vicmae_jax.optim.config import (
  OPTIM_FIELDS,
  OPTIMIZER_NAMES,
  make_lr_fn,
  make_optimizer,
  peak_learning_rate,
  resolve_optim_config,
)
from vicmae_jax.optim.paths import (
  BLOCKS_NAME,
  BlockPosition,
  block_position,
  path_names,
  path_string,
)
from vicmae_jax.optim.schedules import SCHEDULE_KINDS, make_lr_schedule, scaled_lr
from vicmae_jax.optim.transforms import (
  EMBEDDING_NAMES,
  EMBEDDING_PREFIXES,
  NO_DECAY_NAMES,
  count_blocks,
  decays,
  lars,
  layer_id,
  layerwise_lr_decay_scales,
  make_adamw,
  scale_by_lars_trust_ratio,
  scale_by_layerwise_lr,
  weight_decay_mask,
)

__all__ = [
  "BLOCKS_NAME",
  "EMBEDDING_NAMES",
  "EMBEDDING_PREFIXES",
  "NO_DECAY_NAMES",
  "OPTIMIZER_NAMES",
  "OPTIM_FIELDS",
  "SCHEDULE_KINDS",
  "BlockPosition",
  "block_position",
  "count_blocks",
  "decays",
  "lars",
  "layer_id",
  "layerwise_lr_decay_scales",
  "make_adamw",
  "make_lr_fn",
  "make_lr_schedule",
  "make_optimizer",
  "path_names",
  "path_string",
  "peak_learning_rate",
  "resolve_optim_config",
  "scale_by_lars_trust_ratio",
  "scale_by_layerwise_lr",
  "scaled_lr",
  "weight_decay_mask",
]
