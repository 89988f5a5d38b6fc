"""Parameter paths: names from `jax.tree_util` key paths and where a leaf sits in the blocks.

Two block layouts are understood:

- a list of blocks: `.../blocks/<i>/...`, one array per block;
- scanned blocks: `.../blocks/<name>/...` with no integer index, every array stacked along a
  leading layer axis `[num_layers, ...]`. Then per-layer quantities are taken per slice of
  that leading axis (`slice_ndim`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

# Name of the module that holds the transformer blocks (a list or a scanned stack).
BLOCKS_NAME = "blocks"


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


def slice_ndim(names: tuple[str, ...], leaf) -> int:
  """Rank of one layer's slice: a scanned stack loses its leading layer axis."""
  position = block_position(names)
  ndim = np.ndim(leaf)
  return ndim - 1 if (position is not None and position.stacked) else ndim


def leaf_name(names: tuple[str, ...]) -> str:
  return names[-1] if names else ""
