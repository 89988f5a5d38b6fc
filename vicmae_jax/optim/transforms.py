"""Optimizer transforms on any parameter pytree: the weight-decay mask, layer-wise lr decay,
LARS with its trust ratio, and AdamW with masked decoupled weight decay and clipping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vicmae_jax.optim.paths import BLOCKS_NAME, block_position, leaf_name, path_names, slice_ndim

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
# Weight decay mask
# ----------------------------------------------------------------------------------------------


def decays(names: tuple[str, ...], leaf) -> bool:
  """True for matrices (>= 2-D per layer slice) that are not tokens or position embeddings.

  Equivalent to the official grouping (every 1-D parameter and every bias undecayed, plus
  the no-weight-decay list cls_token / pos_embed) on our trees, including scanned stacks
  where a bias is [num_layers, D].
  """
  if slice_ndim(names, leaf) < 2:
    return False
  if leaf_name(names) in NO_DECAY_NAMES:
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
      if slice_ndim(names, p) < 2:
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
