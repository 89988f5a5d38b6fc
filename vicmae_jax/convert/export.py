"""Our parameter tree -> an official state dict (names, layouts and order of the official code)."""

from __future__ import annotations

import collections
from typing import Mapping

import numpy as np

from vicmae_jax.convert.mapping import (
  ConversionError,
  official_entries,
  official_order,
  to_official,
)
from vicmae_jax.models import param_tree


def tree_kind(tree: Mapping) -> str:
  """The richest official kind a {"params", ...} tree can fill."""
  params = tree["params"]
  if "projector" in params:
    return "vicmae"
  if "decoder" in params:
    return "mae"
  return "encoder"


def ours_to_official(
  tree: Mapping, *, image_size: int, kind: str | None = None, in_channels: int = 3
) -> "collections.OrderedDict[str, np.ndarray]":
  """Our {"params", "batch_stats"} tree (list or scan layout) -> an official state dict, in official order.

  Args:
    image_size: side of the square images the official model is built for; sets the length of the fixed
      `pos_embed` / `decoder_pos_embed` tables it expects in its state dict.
    kind: "vicmae" (everything), "mae" (no projector) or "encoder"; the richest the tree allows when None.
  BatchNorm `num_batches_tracked` is written as 0: the official projector uses a fixed momentum, which never
  reads it.
  """
  from vicmae_jax.models import vit

  kind = kind or tree_kind(tree)
  params = param_tree.list_layout(param_tree.tree_to_numpy(tree["params"]))
  batch_stats = param_tree.list_layout(param_tree.tree_to_numpy(tree.get("batch_stats", {})))
  collections_ = {"params": params, "batch_stats": batch_stats}
  depth = len(params["encoder"]["blocks"])
  decoder_depth = len(params["decoder"]["blocks"]) if kind != "encoder" else 0
  entries = official_entries(depth, decoder_depth, kind)
  by_name = {e.official: e for e in entries}
  width = params["encoder"]["cls_token"].shape[-1]
  patch = int(round((params["encoder"]["patch_embed"]["kernel"].shape[0] // in_channels) ** 0.5))
  if image_size % patch:
    raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
  grid = image_size // patch
  out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
  for name in official_order(entries, kind):
    if name == "pos_embed":
      out[name] = vit.sincos_2d(width, grid, grid, cls_token=True)[None]
    elif name == "decoder_pos_embed":
      dec_width = params["decoder"]["mask_token"].shape[-1]
      out[name] = vit.sincos_2d(dec_width, grid, grid, cls_token=True)[None]
    elif name.endswith("num_batches_tracked"):
      out[name] = np.array(0, dtype=np.int64)
    else:
      entry = by_name[name]
      try:
        value = param_tree.get_path(collections_[entry.collection], entry.path)
      except KeyError:
        raise ConversionError(
          f"the tree has no {entry.collection}/{'/'.join(entry.path)} (needed for {name})",
          missing=[name],
        ) from None
      out[name] = np.ascontiguousarray(
        to_official(entry, np.asarray(value, dtype=np.float32), in_channels)
      )
  return out
