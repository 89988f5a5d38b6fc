"""Nested parameter dicts: flat tuple-path views of them, and their two block layouts.

A parameter tree is a nested mapping of arrays, e.g. ``{"encoder": {"blocks": ..., "norm": ...}}``.
Each ``blocks`` entry in it has one of two layouts::

  list     {"0": block, "1": block, ...}   a subtree per layer (digit keys, str or int)
  scanned  block                            one subtree whose arrays carry a leading [depth] axis

``stack_blocks`` / ``unstack_blocks`` convert every ``blocks`` entry of a tree from one to the
other; ``match_block_layout`` brings a tree to either. Leaves may be numpy or jax arrays, or
``jax.ShapeDtypeStruct`` (abstract trees unstack to abstract layers). Only numpy is needed to
import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Path = tuple[str, ...]


def flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, Any]:
  """``{"a": {"b": x}}`` -> ``{("a", "b"): x}`` (keys as strings, mappings walked in order)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def get_path(tree: Mapping, path: Path) -> Any:
  """The entry at ``path``; KeyError when it is absent."""
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path: Path, value: Any) -> None:
  """Sets the entry at ``path``, creating the dicts above it."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def stringify_keys(tree: Any) -> Any:
  """The same tree with every mapping a dict with string keys (e.g. an ``nnx.List``'s ints)."""
  if isinstance(tree, Mapping):
    return {str(k): stringify_keys(v) for k, v in tree.items()}
  return tree


def tree_to_numpy(tree: Any) -> Any:
  """Every leaf as a numpy array."""
  import jax

  return jax.tree.map(np.asarray, tree)


def is_scanned(blocks: Mapping) -> bool:
  """Whether a ``blocks`` entry has the scanned layout (keys other than layer numbers)."""
  return not all(str(k).isdigit() for k in blocks)


def has_scanned_blocks(tree: Mapping) -> bool:
  """Whether the first ``blocks`` entry found in the tree (depth first) has the scanned layout."""
  for key, value in tree.items():
    if key == "blocks" and isinstance(value, Mapping):
      return is_scanned(value)
    if isinstance(value, Mapping) and has_scanned_blocks(value):
      return True
  return False


def _numpy_stack(leaves: Sequence[Any]) -> np.ndarray:
  return np.stack([np.asarray(leaf) for leaf in leaves])


def _map_blocks(tree: Mapping, *, scanned: bool, convert: Callable[[Mapping], dict]) -> dict:
  """The tree with ``convert`` applied to every non-empty ``blocks`` mapping in the scanned
  (``scanned``) or list layout; everything else copied as it is."""
  out = {}
  for key, value in tree.items():
    if key == "blocks" and isinstance(value, Mapping) and value and is_scanned(value) == scanned:
      out[key] = convert(value)
    elif isinstance(value, Mapping):
      out[key] = _map_blocks(value, scanned=scanned, convert=convert)
    else:
      out[key] = value
  return out


def stack_blocks(tree: Mapping, *, stack: Callable[[list], Any] = _numpy_stack) -> dict:
  """List layout -> scanned layout in every ``blocks`` of the tree (layers in numeric order).

  ``stack`` joins one leaf of all layers (numpy arrays by default; ``jnp.stack`` keeps jax).
  """

  def stack_layers(blocks: Mapping) -> dict:
    layers = [flatten(blocks[k]) for k in sorted(blocks, key=int)]
    stacked: dict = {}
    for path in layers[0]:
      set_path(stacked, path, stack([layer[path] for layer in layers]))
    return stacked

  return _map_blocks(tree, scanned=False, convert=stack_layers)


def unstack_blocks(tree: Mapping, *, index: Callable[[int], Any] = str) -> dict:
  """Scanned layout -> list layout in every ``blocks`` of the tree; ``index`` makes the layer keys
  (``str``: "0", "1", ... as in loaded checkpoints; ``int``: as in ``nnx.to_pure_dict``)."""

  def unstack_layers(blocks: Mapping) -> dict:
    flat = flatten(blocks)
    depth = np.shape(next(iter(flat.values())))[0]
    layers: dict = {}
    for i in range(depth):
      for path, array in flat.items():
        set_path(layers, (index(i),) + path, _layer(array, i))
    return layers

  return _map_blocks(tree, scanned=True, convert=unstack_layers)


def list_layout(tree: Mapping) -> dict:
  """A pure dict of any key types and either block layout -> string keys, list-layout blocks."""
  return unstack_blocks(stringify_keys(tree))


def _layer(array: Any, index: int) -> Any:
  if isinstance(array, np.ndarray) or not hasattr(array, "dtype") or hasattr(array, "__getitem__"):
    return array[index]
  import jax  # an abstract leaf (jax.ShapeDtypeStruct) of a scan-layout model

  return jax.ShapeDtypeStruct(tuple(array.shape[1:]), array.dtype)


def match_block_layout(tree: Any, scanned: bool) -> Any:
  """Every ``blocks`` of a nested dict in the scanned layout (``scanned``) or the list layout
  (``{"0": ..}``); anything that is not a mapping is returned as it is."""
  if not isinstance(tree, Mapping):
    return tree
  return stack_blocks(tree) if scanned else unstack_blocks(tree)
