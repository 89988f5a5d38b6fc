"""Official ViC-MAE / MAE state-dict names <-> our parameter paths, and the layout change of each.

Official name -> our path, with the layout change:

  patch_embed.proj.weight [D, C, p, p]   -> kernel [p*p*C, D] in the (p, q, c) order of `patchify`
  Linear weight [out, in]                -> Dense kernel [in, out]
  attn.qkv.weight [3*D, D]               -> the fused qkv Dense kernel [D, 3*D] (same as any Linear)
  LayerNorm weight / bias                -> scale / bias
  BatchNorm1d running_mean / running_var -> BatchStat mean / var (num_batches_tracked: dropped /
                                            re-created)
  pos_embed / decoder_pos_embed          -> not parameters here (fixed sin-cos); checked against ours

`official_entries` lists every official tensor of a checkpoint kind with its path here;
`to_ours` / `to_official` / `official_shape` apply an entry's layout change.
"""

from __future__ import annotations

import numpy as np

KINDS = ("vicmae", "mae", "encoder")


class ConversionError(ValueError):
  """The checkpoint does not fit the model; `missing`, `unexpected` and `mismatched` name every offender."""

  def __init__(self, message: str, *, missing=(), unexpected=(), mismatched=()):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)


class Entry:
  """One official tensor and where it lives here.

  layout: "linear" (torch [out, in] <-> kernel [in, out]), "patch" (conv [D, C, p, p] <-> kernel [p*p*C, D]),
  or "copy" (same array).
  """

  __slots__ = ("official", "collection", "path", "layout")

  def __init__(self, official: str, collection: str, path: tuple[str, ...], layout: str):
    self.official, self.collection, self.path, self.layout = official, collection, path, layout


def _block_entries(official_prefix: str, our_prefix: tuple[str, ...]) -> list[Entry]:
  out = []
  for official, ours in (
    ("norm1", ("norm1",)),
    ("attn.qkv", ("attn", "qkv")),
    ("attn.proj", ("attn", "proj")),
    ("norm2", ("norm2",)),
    ("mlp.fc1", ("mlp", "fc1")),
    ("mlp.fc2", ("mlp", "fc2")),
  ):
    is_norm = official.startswith("norm")
    out.append(
      Entry(
        f"{official_prefix}.{official}.weight",
        "params",
        our_prefix + ours + (("scale",) if is_norm else ("kernel",)),
        "copy" if is_norm else "linear",
      )
    )
    out.append(
      Entry(f"{official_prefix}.{official}.bias", "params", our_prefix + ours + ("bias",), "copy")
    )
  return out


def _linear(official: str, path: tuple[str, ...]) -> list[Entry]:
  return [
    Entry(f"{official}.weight", "params", path + ("kernel",), "linear"),
    Entry(f"{official}.bias", "params", path + ("bias",), "copy"),
  ]


def _norm(official: str, path: tuple[str, ...]) -> list[Entry]:
  return [
    Entry(f"{official}.weight", "params", path + ("scale",), "copy"),
    Entry(f"{official}.bias", "params", path + ("bias",), "copy"),
  ]


def official_entries(depth: int, decoder_depth: int, kind: str) -> list[Entry]:
  """Every official tensor of a `kind` checkpoint with its path here, in the official state_dict order.

  The position tables and `num_batches_tracked` are not listed (they are not parameters here).
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  with_decoder = kind in ("vicmae", "mae")
  entries = [Entry("cls_token", "params", ("encoder", "cls_token"), "copy")]
  if with_decoder:
    entries.append(Entry("mask_token", "params", ("decoder", "mask_token"), "copy"))
  entries += [
    Entry("patch_embed.proj.weight", "params", ("encoder", "patch_embed", "kernel"), "patch"),
    Entry("patch_embed.proj.bias", "params", ("encoder", "patch_embed", "bias"), "copy"),
  ]
  for i in range(depth):
    entries += _block_entries(f"blocks.{i}", ("encoder", "blocks", str(i)))
  entries += _norm("norm", ("encoder", "norm"))
  if with_decoder:
    entries += _linear("decoder_embed", ("decoder", "embed"))
    for i in range(decoder_depth):
      entries += _block_entries(f"decoder_blocks.{i}", ("decoder", "blocks", str(i)))
    entries += _norm("decoder_norm", ("decoder", "norm"))
    entries += _linear("decoder_pred", ("decoder", "pred"))
  if kind == "vicmae":
    for index, name in ((0, "fc1"), (3, "fc2"), (6, "fc3")):
      entries += _linear(f"projector.{index}", ("projector", name))
      if index < 6:
        bn_index, bn = index + 1, f"bn{index // 3 + 1}"
        entries += _norm(f"projector.{bn_index}", ("projector", bn))
        entries += [
          Entry(
            f"projector.{bn_index}.running_mean", "batch_stats", ("projector", bn, "mean"), "copy"
          ),
          Entry(
            f"projector.{bn_index}.running_var", "batch_stats", ("projector", bn, "var"), "copy"
          ),
        ]
  return entries


def official_order(entries: list[Entry], kind: str) -> list[str]:
  """Official state_dict key order: module-level tensors first (incl. position tables), then submodules."""
  names = [e.official for e in entries]
  tokens = ["cls_token", "pos_embed"] + (
    ["mask_token", "decoder_pos_embed"] if kind != "encoder" else []
  )
  rest = [n for n in names if n not in tokens]
  out = []
  for name in rest:
    out.append(name)
    if name.endswith(".running_var"):
      out.append(name[: -len("running_var")] + "num_batches_tracked")
  return tokens + out


def to_ours(entry: Entry, value: np.ndarray) -> np.ndarray:
  if entry.layout == "linear":
    return value.T
  if entry.layout == "patch":
    # [D, C, p, q] -> [p, q, C, D] -> [p*q*C, D]: rows in the (p, q, c) order of `patchify`.
    return value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
  return value


def to_official(entry: Entry, value: np.ndarray, in_channels: int) -> np.ndarray:
  if entry.layout == "linear":
    return value.T
  if entry.layout == "patch":
    rows, width = value.shape
    p = int(round((rows // in_channels) ** 0.5))
    return value.reshape(p, p, in_channels, width).transpose(3, 2, 0, 1)
  return value


def official_shape(entry: Entry, our_shape: tuple[int, ...], in_channels: int) -> tuple[int, ...]:
  if entry.layout == "linear":
    return tuple(reversed(our_shape))
  if entry.layout == "patch":
    rows, width = our_shape
    p = int(round((rows // in_channels) ** 0.5))
    return (width, in_channels, p, p)
  return tuple(our_shape)
