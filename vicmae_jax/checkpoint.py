"""Checkpoints: train state + data iterator + config in one orbax CheckpointManager.

Layout of a workdir:

  WORKDIR/checkpoints/<step>/state   the train state pytree (params, batch_stats, opt_state, step, rng)
  WORKDIR/checkpoints/<step>/data    the grain iterator state, one JSON file per process
  WORKDIR/checkpoints/<step>/config  the run's config as JSON

Resume order (what `restore_or_init` does): the newest COMPLETE step directory in the workdir wins
(orbax only finalizes a step after every process wrote it, so a kill mid-save leaves the previous
step as the newest); otherwise `config.init_from` provides parameters; otherwise a fresh init.
Every process calls save (each writes its shards and its iterator state); saves are async.

Faults (what `Checkpointer` guarantees):
- A newest step that fails to load (truncated or missing files, a step folder that was never
  completed) is moved aside to `<step>.corrupt-<time>` (never deleted) with a warning naming it
  and why, and the next older step is tried; the run resumes from the newest step that loads.
  When none loads, nothing is moved and `CheckpointError` names the folder.
- A save that fails in the background (e.g. a full disk) is noticed at the first step after it
  finished (`check_saves`, which never blocks) and raised as `CheckpointError` naming the path and
  the cause; the steps saved before it are untouched and the failed step's temporary folder is
  removed on the next start.
- `finish` (called on every exit of the training loop) waits for the save in flight, so a NaN
  stop or any other error never abandons a good checkpoint half written.
Multi-process runs take every decision together: each process restores, the outcomes are
gathered, and a step counts as loadable only when it loaded on all of them.
"""

from __future__ import annotations

import json
import os
import re
import time
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


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written or none can be read; the message is one line for the user."""


class Checkpointer:
  """An orbax CheckpointManager with a state, a data and a config item, and the fault handling
  described in the module docstring."""

  def __init__(
    self, directory: str, *, keep: int = 3, keep_every: int = 0, async_save: bool = True
  ):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      keep_period=keep_every or None,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,  # a save that failed or was killed leaves only a tmp folder
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
    self._in_flight: int | None = None  # the step whose save may still be running
    self.last_good: int | None = self.manager.latest_step()

  @property
  def in_flight(self) -> int | None:
    """The step whose save was started and not yet confirmed finished."""
    return self._in_flight

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator=None, config: dict | None = None) -> bool:
    self.finish()  # orbax waits for the previous save anyway; this reports its failure clearly
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain_ckpt.CheckpointSave(_FrozenIteratorState(data_iterator))
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # the synchronous part failed (e.g. no space for the tmp folder)
      raise CheckpointError(self._save_failure(step, e)) from e
    self._in_flight = step
    return saved

  def check_saves(self) -> None:
    """Raises CheckpointError if the save in flight has finished and failed; never blocks."""
    if self._in_flight is not None and not self.manager.is_saving_in_progress():
      self.finish()

  def finish(self) -> None:
    """Waits for the save in flight; raises CheckpointError (one line) when it failed."""
    step, self._in_flight = self._in_flight, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise CheckpointError(self._save_failure(step, e)) from e
    if step is not None:
      self.last_good = step

  def _save_failure(self, step: int | None, error: BaseException) -> str:
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    kept = (
      f"the last good checkpoint (step {self.last_good}) is untouched"
      if self.last_good is not None
      else "no earlier checkpoint exists"
    )
    return (
      f"saving the checkpoint of step {step} to {where} failed: {_cause(error)}; {kept}. "
      "Fix the cause (e.g. free space) and run the same command again to resume."
    )

  def restore(self, step: int, abstract_state: Any, data_iterator=None) -> Any:
    """Restores the state (placed like `abstract_state`'s shardings) and the iterator in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain_ckpt.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def restore_newest(self, abstract_state: Any, data_iterator=None) -> tuple[Any, int] | None:
    """Restores the newest step that loads -> (state, step); None when the folder has no step.

    Steps newer than the one that loads are moved aside as `<step>.corrupt-<time>`.
    """
    failures: list[tuple[int, str]] = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, error = self.restore(step, abstract_state, data_iterator), None
      except Exception as e:  # any damage: missing/truncated files, bad JSON, wrong metadata
        state, error = None, _cause(e)
      if _all_processes_ok(error is None):
        self._move_aside(failures)
        self.last_good = step
        return state, step
      failures.append((step, error or "failed on another process"))
      logging.warning("checkpoint %s/%d does not load: %s", self.directory, step, failures[-1][1])
    if failures:
      newest, why = failures[0]
      raise CheckpointError(
        f"no checkpoint in {self.directory} loads (steps {', '.join(str(s) for s, _ in failures)}"
        f"; the newest, {newest}: {why}); nothing was moved. Move the folder away to start "
        "afresh, or restore it from a backup."
      )
    return None

  def _move_aside(self, failures: list[tuple[int, str]]) -> None:
    if not failures:
      return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if jax.process_index() == 0:
      for step, why in failures:
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.corrupt-{stamp}"
        os.rename(src, dst)
        logging.warning("moved the damaged checkpoint %s aside to %s (%s)", src, dst, why)
    _sync_processes("checkpoint_moved_aside")
    self.manager.reload()

  def wait(self):
    self.finish()

  def close(self):
    self.finish()
    self.manager.close()


def _cause(error: BaseException) -> str:
  """The root cause of an orbax/tensorstore error as one short phrase."""
  texts, outer = [], error
  while error is not None:
    texts.append(str(error))
    if isinstance(error, OSError) and error.strerror:
      return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    error = error.__cause__ or error.__context__
  text = " ".join(texts)
  match = re.search(r"([A-Z][^:\[\]\"]*?) \[os_error_code='?\d+'?\]", text)
  if match:  # tensorstore: '...Failed to write N bytes to file 7: No space left on device [os...]'
    return match.group(1).strip()
  first = (texts[0] if texts else "").strip().splitlines()
  line = first[0] if first else type(outer).__name__
  return line if len(line) <= 240 else line[:237] + "..."


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.array([ok], np.int32))))


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")
