"""Checkpoints: train state + data iterator + config in one orbax CheckpointManager.

Layout of a workdir:

  WORKDIR/checkpoints/<step>/state   the train state pytree (params, batch_stats, opt_state, step, rng)
  WORKDIR/checkpoints/<step>/data    the grain iterator state, one JSON file per process
  WORKDIR/checkpoints/<step>/config  the run's config as JSON

Resume order (what `restore_or_init` does): the newest COMPLETE step directory in the workdir wins
(orbax only finalizes a step after every process wrote it, so a kill mid-save leaves the previous
step as the newest); otherwise `config.init_from` provides parameters; otherwise a fresh init.
Every process calls save (each writes its shards and its iterator state); saves are async and
awaited at exit.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

import grain.checkpoint as grain_ckpt


class _FrozenIteratorState:
  """Gives grain's handler the iterator state captured at save time.

  Saves are async: by the time a handler runs, the loop may have pulled more batches, so the
  state is read right when `save` is called, not later.
  """

  def __init__(self, iterator):
    state = iterator.get_state()
    self._bytes = state if isinstance(state, bytes) else json.dumps(state, indent=1).encode()

  def get_state(self) -> bytes:
    return self._bytes


class Checkpointer:
  """Thin wrapper over an orbax CheckpointManager with a state item and a data item."""

  def __init__(
    self, directory: str, *, keep: int = 3, keep_every: int = 0, async_save: bool = True
  ):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      keep_period=keep_every or None,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_names=("state", "data", "config"),
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": grain_ckpt.CheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator=None, config: dict | None = None) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain_ckpt.CheckpointSave(_FrozenIteratorState(data_iterator))
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator=None) -> Any:
    """Restores the state (placed like `abstract_state`'s shardings) and the iterator in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain_ckpt.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


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
