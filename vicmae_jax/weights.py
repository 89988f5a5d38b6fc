"""Another run's weights into a model: where they come from, how they are matched, the report.

Sources (`config.init_from`): a training workdir (its newest checkpoint), a `checkpoints/` folder,
a step folder or its `state` item, or a folder written by `python -m vicmae_jax.convert` (official
PyTorch weights). They are read without a target as nested numpy dicts (`load_pretrained_tree`).

Matching is by parameter path ("encoder/blocks/0/attn/qkv/kernel"); every load is reported by
name (loaded, kept from init, unexpected, mismatched) and a missing or mis-shaped parameter the
model needs is an error naming it. Each model layout has its loader here:
  load_init_from        pretraining (ViCMAE): params and BatchNorm statistics of another run
  load_image_classifier ImageClassifier: the encoder, a learned pos_embed resized bicubically
  load_encoder          a bare VisionTransformer (the linear probe's frozen encoder)
  load_video_model      VideoViT: the image encoder inflated to space-time (models/video.py)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import os
from typing import Any

from absl import logging
from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp

from vicmae_jax import config_lib
from vicmae_jax import optim
from vicmae_jax.models import classifier


# ----------------------------------------------------------------------------------------------
# Reading a checkpoint's tree


def _raw_restore_state(path: str) -> dict:
  """Restores a saved state pytree without a target, as host numpy arrays."""
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  tree = getattr(meta, "item_metadata", None) or meta
  tree = getattr(tree, "tree", tree)
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(
      m.shape,
      m.dtype,
      sharding=jax.sharding.SingleDeviceSharding(
        jax.local_devices(backend="cpu")[0] if _has_cpu() else jax.local_devices()[0]
      ),
    ),
    tree,
    is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
  )
  return ckptr.restore(path, abstract)


def _has_cpu() -> bool:
  try:
    return bool(jax.local_devices(backend="cpu"))
  except RuntimeError:
    return False


def find_params_checkpoint(path: str) -> str:
  """Resolves `init_from` to a directory holding a state/params pytree.

  Accepts: a training workdir (takes its newest checkpoint), a `checkpoints/` dir, a step dir,
  a step's `state` item dir, or a converted checkpoint dir (from `python -m vicmae_jax.convert`).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"init_from: no such path: {path}")
  candidates = [path, os.path.join(path, "checkpoints")]
  for cand in candidates:
    if os.path.isdir(cand):
      steps = sorted(
        int(d)
        for d in os.listdir(cand)
        if d.isdigit() and os.path.isdir(os.path.join(cand, d, "state"))
      )
      if steps:
        return os.path.join(cand, str(steps[-1]), "state")
  if os.path.isdir(os.path.join(path, "state")):
    return os.path.join(path, "state")
  if _looks_like_orbax_tree(path):
    return path
  raise FileNotFoundError(
    f"init_from: {path} holds no usable checkpoint (expected a training workdir, a step "
    "directory, or a directory written by `python -m vicmae_jax.convert`)"
  )


def _looks_like_orbax_tree(path: str) -> bool:
  return os.path.isdir(path) and any(
    name in os.listdir(path) for name in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
  )


def load_pretrained_tree(path: str) -> dict:
  """Loads {"params": nested dict, "batch_stats": nested dict (maybe empty)} from `path`.

  Works for training checkpoints (state item) and converted checkpoints.
  """
  tree_path = find_params_checkpoint(path)
  raw = _raw_restore_state(tree_path)
  if "params" not in raw:
    raise ValueError(
      f"init_from: {tree_path} has no 'params' entry (top-level keys: {sorted(raw)})"
    )
  return {"params": _unwrap(raw["params"]), "batch_stats": _unwrap(raw.get("batch_stats", {}))}


def _unwrap(tree):
  """Nested containers of arrays -> nested dicts of numpy arrays (drops Variable 'value' wrappers)."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    items = dict(tree.items())
    if set(items) == {"value"} and not isinstance(items["value"], dict):
      return np.asarray(items["value"])
    return {str(k): _unwrap(v) for k, v in items.items()}
  if isinstance(tree, (list, tuple)):
    return {str(i): _unwrap(v) for i, v in enumerate(tree)}
  return np.asarray(tree)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(flatten(v, key))
    else:
      out[key] = v
  return out


def merge_pretrained(
  target_pure: dict,
  loaded_pure: dict,
  *,
  what: str = "params",
  allow_missing: tuple[str, ...] = (),
  ignore_unexpected: tuple[str, ...] = (),
) -> tuple[dict, dict]:
  """Copies loaded arrays into a target pure dict by path; reports by name.

  Returns (merged nested dict, report) where report has `loaded`, `missing`, `unexpected`,
  `mismatched`. Raises ValueError when any mismatched shape, or a missing path that is not
  allowed (prefix match against `allow_missing`), is found.
  """
  tgt = flatten(target_pure)
  src = flatten(loaded_pure)
  missing = [k for k in tgt if k not in src]
  unexpected = [
    k for k in src if k not in tgt and not any(k.startswith(p) for p in ignore_unexpected)
  ]
  mismatched = [
    f"{k}: checkpoint {tuple(np.shape(src[k]))} vs model {tuple(np.shape(tgt[k]))}"
    for k in tgt
    if k in src and tuple(np.shape(src[k])) != tuple(np.shape(tgt[k]))
  ]
  bad_missing = [k for k in missing if not any(k.startswith(p) for p in allow_missing)]
  if mismatched or bad_missing:
    msg = [f"cannot load {what}:"]
    if bad_missing:
      msg.append(f"  missing in checkpoint ({len(bad_missing)}): {', '.join(bad_missing[:20])}")
    if mismatched:
      msg.append(f"  shape mismatch ({len(mismatched)}): {'; '.join(mismatched[:20])}")
    if unexpected:
      msg.append(f"  unexpected in checkpoint ({len(unexpected)}): {', '.join(unexpected[:20])}")
    raise ValueError("\n".join(msg))
  merged_flat = {k: (src[k] if k in src else v) for k, v in tgt.items()}
  report = dict(
    loaded=[k for k in tgt if k in src],
    missing=missing,
    unexpected=unexpected,
    mismatched=mismatched,
  )
  if missing:
    logging.info("init_from: %d %s kept from init: %s", len(missing), what, ", ".join(missing[:10]))
  if unexpected:
    logging.info(
      "init_from: %d unexpected %s ignored: %s", len(unexpected), what, ", ".join(unexpected[:10])
    )
  return unflatten(merged_flat), report


def unflatten(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for key, v in flat.items():
    node = out
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


# ----------------------------------------------------------------------------------------------
# Pretraining: another run's params and batch stats


def load_init_from(state: dict, init_from: str, *, allow_missing=(), ignore_unexpected=()) -> dict:
  """Replaces params (and batch stats when present) with those of another run or a converted checkpoint."""
  loaded = load_pretrained_tree(init_from)
  new_state = dict(state)
  for key in ("params", "batch_stats"):
    target = nnx.to_pure_dict(state[key])
    if key == "batch_stats" and not loaded[key]:
      continue
    merged, report = merge_pretrained(
      _stringify(target),
      loaded[key],
      what=key,
      allow_missing=allow_missing,
      ignore_unexpected=ignore_unexpected,
    )
    flat_target = flatten(_stringify(target))
    flat_merged = flatten(merged)
    new_leaves = {}
    for path, value in flat_merged.items():
      old = flat_target[path]
      new_leaves[path] = jax.device_put(np.asarray(value, dtype=old.dtype), old.sharding)
    new_state[key] = _replace_state(state[key], new_leaves)
    logging.info(
      "init_from %s: loaded %d %s entries (%d kept from init, %d unexpected ignored)",
      init_from,
      len(report["loaded"]),
      key,
      len(report["missing"]),
      len(report["unexpected"]),
    )
  return new_state


def _stringify(tree):
  if isinstance(tree, dict):
    return {str(k): _stringify(v) for k, v in tree.items()}
  return tree


def _replace_state(state: nnx.State, flat_values: dict[str, jax.Array]) -> nnx.State:
  pure = nnx.to_pure_dict(state)

  def rebuild(node, prefix):
    if isinstance(node, dict):
      return {k: rebuild(v, f"{prefix}/{k}" if prefix else str(k)) for k, v in node.items()}
    return flat_values[prefix]

  new_pure = rebuild(pure, "")
  new_state = jax.tree.map(lambda x: x, state)
  nnx.replace_by_pure_dict(new_state, new_pure)
  return new_state


# ----------------------------------------------------------------------------------------------
# The classifiers' layouts


def flat_params(params) -> dict[str, Any]:
  """nnx.State (or pytree) -> {"encoder/blocks/0/attn/qkv/kernel": leaf}."""
  return {
    optim.path_string(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }


def replace_params(params, values: Mapping[str, Any]):
  """Copies host arrays into the (sharded) params by path; the other entries are kept."""

  def one(path, leaf):
    name = optim.path_string(path)
    if name not in values:
      return leaf
    return jax.device_put(np.asarray(values[name], dtype=leaf.dtype), leaf.sharding)

  return jax.tree_util.tree_map_with_path(one, params)


def read_checkpoint_params(init_from: str) -> dict:
  """The params tree of a training workdir / step dir / converted checkpoint, as nested numpy dicts.

  Raises ConfigError on `init_from` when the path holds nothing usable.
  """
  try:
    return load_pretrained_tree(init_from)["params"]
  except (FileNotFoundError, ValueError) as e:
    raise config_lib.ConfigError("init_from", str(e).removeprefix("init_from: ")) from None


def _encoder_source(loaded: Mapping[str, Any], init_from: str) -> dict:
  try:
    return classifier.encoder_subtree(loaded)
  except ValueError as e:
    raise config_lib.ConfigError("init_from", f"{init_from}: {e}") from None


def _unused_top_level(loaded: Mapping[str, Any], used: Iterable[str]) -> list[str]:
  return sorted(k for k in loaded if k not in set(used))


def _merge_report(
  target_flat: Mapping[str, Any],
  source: Mapping[str, Any],
  *,
  init_from: str,
  allow_missing: tuple[str, ...],
) -> tuple[dict[str, Any], dict]:
  """merge_pretrained by path, with unexpected encoder entries made an error too."""
  try:
    merged, report = merge_pretrained(
      unflatten(dict(target_flat)), source, allow_missing=allow_missing
    )
  except ValueError as e:
    raise config_lib.ConfigError("init_from", f"{init_from}: {e}") from None
  if report["unexpected"]:
    raise config_lib.ConfigError(
      "init_from",
      f"{init_from}: the checkpoint's encoder has parameters this model lacks (another "
      f"architecture? check config.model): {', '.join(report['unexpected'][:20])}",
    )
  flat = flatten(merged)
  return {k: flat[k] for k in report["loaded"]}, report


def load_image_classifier(params, init_from: str, *, scanned: bool, grid_size: int):
  """Loads `encoder.*` (and a learned `pos_embed`, resized bicubically to the model's grid) into
  ImageClassifier params. The head always starts fresh. Returns (params, report)."""
  loaded = read_checkpoint_params(init_from)
  source: dict[str, Any] = {
    "encoder": classifier.match_block_layout(_encoder_source(loaded, init_from), scanned)
  }
  used = (
    ["encoder"] if "encoder" in loaded else [k for k in loaded if k not in ("pos_embed", "head")]
  )
  if "pos_embed" in loaded:
    table = np.asarray(loaded["pos_embed"])
    source["pos_embed"] = classifier.interpolate_pos_embed(table, (grid_size, grid_size))
    used.append("pos_embed")
    if source["pos_embed"].shape != table.shape:
      logging.info(
        "init_from: pos_embed resized from %s to %s (bicubic)",
        table.shape,
        source["pos_embed"].shape,
      )
  values, report = _merge_report(
    flat_params(params), source, init_from=init_from, allow_missing=("pos_embed", "head")
  )
  report["unused"] = _unused_top_level(loaded, used)
  return replace_params(params, values), report


def load_encoder(params, init_from: str, *, scanned: bool):
  """Loads the `encoder.*` subtree into a bare VisionTransformer's params. Returns (params, report)."""
  loaded = read_checkpoint_params(init_from)
  source = classifier.match_block_layout(_encoder_source(loaded, init_from), scanned)
  values, report = _merge_report(flat_params(params), source, init_from=init_from, allow_missing=())
  report["unused"] = _unused_top_level(loaded, ["encoder"] if "encoder" in loaded else list(source))
  return replace_params(params, values), report


def load_video_model(params, init_from: str, model_fn: Callable[[], nnx.Module]):
  """Inflates the `encoder.*` subtree into VideoViT params (models/video.py from_image_encoder)."""
  from vicmae_jax.models import video

  loaded = read_checkpoint_params(init_from)
  source = _encoder_source(loaded, init_from)
  abstract = nnx.eval_shape(model_fn)
  try:
    mappings = video.from_image_encoder(abstract, source)
  except ValueError as e:
    raise config_lib.ConfigError("init_from", f"{init_from}: {e}") from None
  filled = flat_params(nnx.state(abstract, nnx.Param))
  values = {
    m.target: np.asarray(filled[m.target])
    for m in mappings
    if m.target is not None and m.action != "new"
  }
  report = {
    "loaded": sorted(values),
    "missing": [m.target for m in mappings if m.action == "new"],
    "unexpected": [m.source for m in mappings if m.action == "unused"],
    "mismatched": [],
    "inflated": [m.target for m in mappings if m.action == "inflated"],
    "unused": _unused_top_level(loaded, ["encoder"] if "encoder" in loaded else list(source)),
  }
  return replace_params(params, values), report


def log_report(report: Mapping[str, Any], init_from: str) -> None:
  logging.info(
    "init_from %s: %d parameters loaded; kept from init: %s; unused in the checkpoint: %s",
    init_from,
    len(report["loaded"]),
    ", ".join(report["missing"]) or "none",
    ", ".join(report["unused"] + list(report.get("unexpected", []))) or "none",
  )
