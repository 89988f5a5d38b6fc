"""Official state dict -> our parameter tree: finding the tensors in a checkpoint, reading the
architecture off them, mapping them onto the model's parameters; and a tree into a live model.

Trees here are {"params": nested dict, "batch_stats": nested dict} with string keys, blocks in the
list layout unless the model config asks for `scan_layers` (see `param_tree`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vicmae_jax.convert.mapping import ConversionError, official_entries, official_shape, to_ours
from vicmae_jax.convert.pth import PthFormatError
from vicmae_jax.models import param_tree

# Official buffers that are not parameters here: the fixed position tables (checked against ours, see
# `_check_pos_embed`) and BatchNorm's batch counter (unused with a fixed momentum).
_POS_EMBEDS = ("pos_embed", "decoder_pos_embed")
# Keys of a fine-tuned classifier (official models_vit.VisionTransformer) that have no place in ViC-MAE.
_CLASSIFIER_PREFIXES = ("head.", "fc_norm.")


def extract_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
  """The tensors of an official checkpoint: under 'model' (official training), 'state_dict', 'module', or top level.

  A DistributedDataParallel 'module.' prefix is removed. Raises PthFormatError naming what was found instead.
  """
  obj = checkpoint
  if isinstance(obj, Mapping):
    for key in (
      "model",
      "state_dict",
      "model_state",
      "module",
    ):  # "module": DeepSpeed's model states file
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise PthFormatError(
      f"no state dict found in the checkpoint (top-level: {type(checkpoint).__name__})"
    )
  non_arrays = sorted(k for k, v in obj.items() if not isinstance(v, np.ndarray))
  if non_arrays:
    keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else []
    raise PthFormatError(
      f"entries that are not tensors in the state dict: {non_arrays[:10]} "
      f"(checkpoint top-level keys: {keys})"
    )
  state = {str(k): v for k, v in obj.items()}
  if all(k.startswith("module.") for k in state):
    state = {k[len("module.") :]: v for k, v in state.items()}
  return state


def detect_kind(state_dict: Mapping[str, np.ndarray]) -> str:
  """ "vicmae" (has the projector), "mae" (decoder, no projector) or "encoder" (encoder only)."""
  if any(k.startswith("projector.") for k in state_dict):
    return "vicmae"
  if "decoder_embed.weight" in state_dict:
    return "mae"
  return "encoder"


def _count_blocks(state_dict: Mapping[str, np.ndarray], prefix: str) -> int:
  indices = {
    int(k.split(".")[1])
    for k in state_dict
    if k.startswith(prefix + ".") and k.split(".")[1].isdigit()
  }
  return max(indices) + 1 if indices else 0


def infer_model_config(
  state_dict: Mapping[str, np.ndarray], *, kind: str | None = None
) -> dict[str, Any]:
  """Architecture fields read off an official state dict (input for `resolve_model_config`).

  Head counts are not stored in a checkpoint: they come from the published variant with the same encoder
  (patch size, width, depth); a ValueError asks for them when none matches. Parts absent from the checkpoint
  (decoder, projector) take that variant's sizes.
  When the checkpoint has a `pos_embed`, the image size it was trained at (from the table's length) is returned
  too, under "_image_size" (not a model field: pop it before `resolve_model_config`).
  """
  from vicmae_jax.models import variants

  kind = kind or detect_kind(state_dict)
  if "patch_embed.proj.weight" not in state_dict:
    raise ConversionError(
      "cannot read the architecture: 'patch_embed.proj.weight' is missing",
      missing=["patch_embed.proj.weight"],
    )
  width, in_channels, patch, _ = state_dict["patch_embed.proj.weight"].shape
  cfg: dict[str, Any] = {
    "patch_size": int(patch),
    "embed_dim": int(width),
    "in_channels": int(in_channels),
    "depth": _count_blocks(state_dict, "blocks"),
  }
  if "blocks.0.mlp.fc1.weight" in state_dict:
    cfg["mlp_ratio"] = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width
  if kind in ("vicmae", "mae") and "decoder_embed.weight" in state_dict:
    cfg["decoder_embed_dim"] = int(state_dict["decoder_embed.weight"].shape[0])
    cfg["decoder_depth"] = _count_blocks(state_dict, "decoder_blocks")
  if kind == "vicmae" and "projector.0.weight" in state_dict and "projector.6.weight" in state_dict:
    cfg["projector_hidden_dim"] = int(state_dict["projector.0.weight"].shape[0])
    cfg["projector_out_dim"] = int(state_dict["projector.6.weight"].shape[0])
  matches = [
    name
    for name, v in variants.VARIANTS.items()
    if (v["patch_size"], v["embed_dim"], v["depth"]) == (cfg["patch_size"], width, cfg["depth"])
  ]
  if not matches:
    raise ValueError(
      f"no known variant has patch {cfg['patch_size']}, width {width}, depth {cfg['depth']}: the head counts "
      "cannot be read from a checkpoint; give them (e.g. --set num_heads=12 --set decoder_num_heads=16)"
    )
  variant = dict(variants.VARIANTS[matches[0]])
  cfg["num_heads"] = variant["num_heads"]
  for field in ("decoder_embed_dim", "decoder_depth", "projector_hidden_dim", "projector_out_dim"):
    if field not in cfg and field in variant:
      cfg[field] = variant[field]
  if cfg.get("decoder_embed_dim") == variant["decoder_embed_dim"]:
    cfg["decoder_num_heads"] = variant["decoder_num_heads"]
  if "pos_embed" in state_dict:
    grid = int(round((state_dict["pos_embed"].shape[1] - 1) ** 0.5))
    cfg["_image_size"] = grid * cfg["patch_size"]
  return cfg


def _check_pos_embed(state_dict, name: str, width: int) -> str | None:
  """None when `name` holds the official fixed sin-cos table; else what is wrong with it."""
  from vicmae_jax.models import vit

  value = state_dict[name]
  if value.ndim != 3 or value.shape[0] != 1 or value.shape[2] != width:
    return f"{name}: shape {value.shape}, expected [1, 1 + L, {width}]"
  grid = int(round((value.shape[1] - 1) ** 0.5))
  if grid * grid != value.shape[1] - 1:
    return f"{name}: {value.shape[1] - 1} patch positions is not a square grid"
  table = vit.sincos_2d(width, grid, grid, cls_token=True)
  diff = float(np.max(np.abs(value[0].astype(np.float32) - table)))
  # The official table is computed in float32; ours in float64 then rounded. They agree to ~1e-6.
  if diff > 1e-4:
    return (
      f"{name}: not the fixed 2-D sin-cos table (max |difference| {diff:.3g}); it was learned or "
      "interpolated, and the model here always uses the fixed table"
    )
  return None


def abstract_tree(model_cfg: Mapping[str, Any]) -> dict:
  """{"params", "batch_stats"} of the model as ShapeDtypeStructs, string keys, list layout for blocks."""
  from flax import nnx

  from vicmae_jax.models import vicmae as vicmae_model

  model = nnx.eval_shape(lambda: vicmae_model.build_model(model_cfg, rngs=nnx.Rngs(0)))
  return {
    "params": param_tree.list_layout(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
    "batch_stats": param_tree.list_layout(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))),
  }


def initial_tree(model_cfg: Mapping[str, Any], seed: int = 0) -> dict:
  """Like `abstract_tree` with the values of a fresh initialization (numpy arrays)."""
  from flax import nnx

  from vicmae_jax.models import vicmae as vicmae_model

  model = vicmae_model.build_model(model_cfg, rngs=nnx.Rngs(seed))
  to_numpy = lambda tree: param_tree.list_layout(param_tree.tree_to_numpy(nnx.to_pure_dict(tree)))
  return {
    "params": to_numpy(nnx.state(model, nnx.Param)),
    "batch_stats": to_numpy(nnx.state(model, nnx.BatchStat)),
  }


def official_to_ours(
  state_dict: Mapping[str, np.ndarray],
  model_cfg: Mapping[str, Any],
  *,
  kind: str | None = None,
  strict: bool = True,
  seed: int = 0,
) -> tuple[dict, dict]:
  """Maps an official state dict onto our parameters.

  Args:
    state_dict: official names -> arrays (see `extract_state_dict`).
    model_cfg: our model config (`resolve_model_config` input); its shapes are what the checkpoint must fit.
    kind: "vicmae", "mae" or "encoder"; detected from the keys when None. Parts a kind lacks (mae: projector;
      encoder: decoder and projector) keep a fresh initialization from `seed`.
    strict: raise ConversionError naming every missing / unexpected / mis-shaped tensor. With False the
      same problems are warnings, and the tensors concerned keep their fresh initialization.

  Returns:
    (tree, report): tree = {"params": nested dict, "batch_stats": nested dict} of numpy arrays with string keys,
    in the layout the config asks for (stacked blocks when `scan_layers`); report = {"kind", "loaded",
    "initialized", "ignored", "missing", "unexpected", "mismatched", "warnings"}.
  """
  import warnings

  from vicmae_jax.models import variants

  cfg = variants.resolve_model_config(model_cfg)
  state_dict = dict(state_dict)
  kind = kind or detect_kind(state_dict)
  entries = official_entries(cfg["depth"], cfg["decoder_depth"], kind)
  target = abstract_tree(cfg)
  values: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
  missing, mismatched, loaded = [], [], []
  for entry in entries:
    leaf = param_tree.get_path(target[entry.collection], entry.path)
    want = official_shape(entry, tuple(leaf.shape), cfg["in_channels"])
    if entry.official not in state_dict:
      missing.append(entry.official)
      continue
    got = tuple(state_dict[entry.official].shape)
    if got != want:
      mismatched.append(
        f"{entry.official}: checkpoint {list(got)} vs model {list(want)} "
        f"({entry.collection}/{'/'.join(entry.path)})"
      )
      continue
    values[(entry.collection, entry.path)] = np.asarray(
      to_ours(entry, state_dict[entry.official]), dtype=leaf.dtype
    )
    loaded.append(entry.official)

  known = {e.official for e in entries}
  ignored = [
    k
    for k in state_dict
    if k.endswith("num_batches_tracked")
    and k[: -len("num_batches_tracked")] + "running_var" in known
  ]
  positions = [
    name
    for name in _POS_EMBEDS
    if name in state_dict and (name == "pos_embed" or kind != "encoder")
  ]
  ignored += positions
  warnings_list = []
  for name in positions:
    width = cfg["embed_dim"] if name == "pos_embed" else cfg["decoder_embed_dim"]
    problem = _check_pos_embed(state_dict, name, width)
    if problem:
      mismatched.append(problem)
  unexpected = [k for k in state_dict if k not in known and k not in ignored]
  hints = []
  if any(k.startswith(_CLASSIFIER_PREFIXES) for k in state_dict):
    hints.append(
      "this looks like a fine-tuned classifier (official models_vit: 'head.*' / 'fc_norm.*'); only "
      "pretraining checkpoints map onto ViC-MAE. strict=False (CLI: --no-strict) takes its encoder "
      "blocks and leaves the rest initialized"
    )
  if kind != "vicmae" and any(k.startswith("projector.") for k in state_dict):
    hints.append(f"kind={kind!r} but the checkpoint has a projector: use kind='vicmae'")
  if kind == "encoder" and "decoder_embed.weight" in state_dict:
    hints.append("kind='encoder' but the checkpoint has a decoder: use kind='mae' or 'vicmae'")

  if missing or unexpected or mismatched:
    lines = [
      f"official {kind} checkpoint does not fit the model "
      f"(variant={cfg.get('variant')!r}, embed_dim={cfg['embed_dim']}, depth={cfg['depth']}):"
    ]
    if missing:
      lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
      lines.append(f"  mismatched ({len(mismatched)}): " + "; ".join(mismatched))
    lines += [f"  hint: {h}" for h in hints]
    message = "\n".join(lines)
    if strict:
      raise ConversionError(message, missing=missing, unexpected=unexpected, mismatched=mismatched)
    warnings.warn(
      message + "\n  (strict=False: those tensors keep their fresh initialization)", stacklevel=2
    )
    warnings_list.append(message)

  target_flat = {
    (collection, path): leaf
    for collection in ("params", "batch_stats")
    for path, leaf in param_tree.flatten(target[collection]).items()
  }
  initialized = [f"{c}/{'/'.join(p)}" for (c, p) in target_flat if (c, p) not in values]
  fresh = initial_tree(cfg, seed) if initialized else None
  tree: dict = {"params": {}, "batch_stats": {}}
  for collection, path in target_flat:
    value = values.get((collection, path))
    if value is None:
      value = param_tree.get_path(fresh[collection], path)
    param_tree.set_path(tree[collection], path, value)
  if cfg["scan_layers"]:
    tree = {name: param_tree.stack_blocks(sub) for name, sub in tree.items()}
  report = {
    "kind": kind,
    "loaded": loaded,
    "initialized": initialized,
    "ignored": ignored,
    "missing": missing,
    "unexpected": unexpected,
    "mismatched": mismatched,
    "warnings": warnings_list,
  }
  return tree, report


def load_into_model(model, tree: Mapping) -> None:
  """Writes a {"params", "batch_stats"} tree (string keys, either block layout) into an nnx model in place.

  Raises ValueError naming any path whose shape differs or that the tree lacks.
  """
  import jax
  from flax import nnx

  for collection, variable_type in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
    state = nnx.state(model, variable_type)
    current = nnx.to_pure_dict(state)
    stacked = param_tree.flatten(param_tree.stringify_keys(current))
    source = param_tree.stringify_keys(tree.get(collection, {}))
    # Bring the source to the model's block layout.
    source_flat = param_tree.flatten(
      param_tree.match_block_layout(source, param_tree.has_scanned_blocks(current))
    )
    problems = []
    for path, leaf in stacked.items():
      if path not in source_flat:
        problems.append(f"{collection}/{'/'.join(path)}: missing")
      elif tuple(np.shape(source_flat[path])) != tuple(leaf.shape):
        problems.append(
          f"{collection}/{'/'.join(path)}: tree {list(np.shape(source_flat[path]))} vs model "
          f"{list(leaf.shape)}"
        )
    if problems:
      raise ValueError("cannot load the tree into the model: " + "; ".join(problems))

    def replace(path, leaf):
      key = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
      return jax.numpy.asarray(source_flat[key], dtype=leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(replace, current))
    nnx.update(model, state)
