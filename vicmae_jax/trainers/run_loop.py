"""The training loop every trainer runs: `run_loop` drives a jitted step over the data with
checkpoints, one-step-late metrics, evaluations, SIGTERM handling and device prefetch.

  Feed               what the loop trains on: host batches, their global form, the device keys
  DevicePrefetch     global batches made `depth` steps ahead; the data state of the consumed batch
  PreemptionWatcher  SIGTERM -> save and stop, decided together on every process
  maybe_profile      a jax.profiler trace of a window of steps
  run_loop           the loop itself (see its docstring for what it guarantees)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from vicmae_jax import checkpoint as ckpt_lib
from vicmae_jax import config_lib
from vicmae_jax import metrics as metrics_lib
from vicmae_jax.evaluators import common as evaluators_lib


def host_metrics(device_metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(device_metrics).items()}


class PreemptionWatcher:
  """SIGTERM (a TPU preemption notice, `kill`, SLURM's time limit) asks the loop to save and stop.

  Across processes the decision is taken together (jax's preemption sync point when the
  distributed service runs), so every process saves the same step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint at the next step and stopping.")
    self._flag.set()

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def should_stop(self, step: int, sync_every: int = 50) -> bool:
    """True when the run should save and stop at `step` (the same answer on every process).

    Multi-process: jax's preemption sync point (the distributed runtime's own notice, cheap), and
    every `sync_every` steps an all-gather of this handler's flag, so a SIGTERM seen by any one
    process stops all at the same step without a collective on every step.
    """
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # the preemption service is optional
        pass
      if step % sync_every:
        return False
      flags = multihost_utils.process_allgather(np.array([self._flag.is_set()], np.int32))
      return bool(np.any(flags))
    return self._flag.is_set()


@contextlib.contextmanager
def maybe_profile(workdir: str, step: int, config):
  """Traces steps [start_step, start_step + num_steps) into WORKDIR/profile (TensorBoard)."""
  start = int(config.profile.start_step)
  if start >= 0 and step == start:
    jax.profiler.start_trace(os.path.join(workdir, "profile"))
    logging.info("Profiler started at step %d", step)
  yield
  if start >= 0 and step == start + int(config.profile.num_steps) - 1:
    jax.effects_barrier()
    jax.profiler.stop_trace()
    logging.info("Profiler trace written to %s", os.path.join(workdir, "profile"))


class DevicePrefetch:
  """Batches already on their way to the device: `depth` global batches ahead of the loop.

  `next()` -> (host batch, global batch of `keys`), read then if none is ahead; `fill()` reads
  and sends batches until `depth` are ahead. The loop calls `fill()` right after dispatching a
  step, so the next batches are read and their asynchronous host-to-device copies start while
  that step runs, and a step never waits for its input's reading or transfer. `get_state()` is the
  data iterator's state after the batch last returned, not after the ones read ahead, so a
  checkpoint resumes with the next unconsumed batch. `depth` 0 reads each batch when it is asked for.
  """

  def __init__(self, iterator, to_global: Callable, keys: Sequence[str], depth: int):
    self._iterator = iterator
    self._to_global = to_global
    self._keys = tuple(keys)
    self._depth = int(depth)
    self._queue: collections.deque = collections.deque()
    self._state = self._iterator_state()
    self._exhausted = False

  def _iterator_state(self):
    get_state = getattr(self._iterator, "get_state", None)
    return get_state() if get_state is not None else None

  def _read_one(self) -> bool:
    if self._exhausted:
      return False
    try:
      host = next(self._iterator)
    except StopIteration:
      self._exhausted = True
      return False
    device = self._to_global({k: host[k] for k in self._keys})
    self._queue.append((host, device, self._iterator_state()))
    return True

  def __iter__(self):
    return self

  def __next__(self):
    if not self._queue and not self._read_one():
      raise StopIteration
    host, device, self._state = self._queue.popleft()
    return host, device

  def fill(self) -> None:
    while len(self._queue) < self._depth and self._read_one():
      pass

  def get_state(self):
    return self._state


# Global batches on their way to the device ahead of the step (config.device_prefetch).
DEVICE_PREFETCH = 2


@dataclasses.dataclass(frozen=True)
class Feed:
  """What the loop trains on: `data_iter` yields host batches (a grain iterator: its state goes
  into every checkpoint), `to_global` makes one the step's global arrays, and only `batch_keys`
  travel to the device."""

  data_iter: Any
  to_global: Callable
  batch_keys: tuple[str, ...]


def run_loop(
  *,
  config,
  workdir: str,
  state: dict,
  train_step: Callable,
  feed: Feed,
  ckpt: ckpt_lib.Checkpointer,
  logger: metrics_lib.TrainLogger,
  steps: tuple[int, int],
  evaluators: Sequence[evaluators_lib.Evaluator] = (),
  predict: Callable[[dict], Any] | None = None,
  on_step: Callable[[int, dict, dict], None] | None = None,
) -> dict:
  """Drives `train_step` over `feed` through `steps` = (start_step, total_steps) with
  checkpoints, metrics and evaluations.

  - Metrics of step s are fetched while step s+1 runs (one step late), checked for NaN/Inf.
  - Before any save the pending metrics are checked, so a NaN state is never written.
  - A background save that failed stops the run at the next step (CheckpointError), and every
    exit, also by an exception, first waits for the save in flight.
  - SIGTERM: save at the current step and return (stopped_early=True).
  - Examples the data pipeline skipped (the batch's "skipped" counts) are logged as
    data/skipped (per logging window) and data/skipped_total (since this process started).
  - `evaluators` (evaluators/common.py) run when due: at step 0 of a fresh run, every N steps,
    and at the end (also when a finished run is started again); `predict(state)` makes what they
    run on. Their metrics go to the logger and to the returned "evals" {step: metrics}.
  - `on_step(step, state, host_batch)` runs after each step (e.g. reconstruction images).
  - The next `config.device_prefetch` batches are on their way to the device while a step runs
    (DevicePrefetch); nothing in a step's part of the loop (batch, dispatch, the metrics of the
    step before) moves data between host and device implicitly: `config.transfer_guard` (a
    `jax.transfer_guard` level, e.g. "disallow") makes that an error instead of a silent sync.
  Returns {"final_step", "last_checkpoint", "stopped_early", "state", "skipped", "evals"}.
  """
  start_step, total_steps = steps
  plain_config = config_lib.to_plain(config)
  every = int(config.checkpoint.every_steps)
  pending = None
  last_saved = start_step if ckpt.last_good is not None else None
  stopped_early = False
  step = start_step
  evals: dict[int, dict] = {}

  def run_evals(s, state):
    results = evaluators_lib.run_due(list(evaluators), s, total_steps, lambda: predict(state))
    if results:
      logger.write_scalars(s, results)
      evals[s] = results
      logger.reset_clock()

  def consume(p):
    s, device_metrics = p
    host = host_metrics(device_metrics)
    metrics_lib.check_finite(host, s)
    logger.add(host)
    if s % int(config.log.every_steps) == 0 or s == total_steps:
      logger.flush(s)

  depth = int(config.get("device_prefetch", DEVICE_PREFETCH))
  batches = DevicePrefetch(feed.data_iter, feed.to_global, feed.batch_keys, depth)
  guard = str(config.get("transfer_guard", "allow") or "allow")
  if start_step == 0:
    run_evals(0, state)
  with PreemptionWatcher() as preempt:
    try:
      logger.reset_clock()
      while step < total_steps:
        with maybe_profile(workdir, step, config), jax.transfer_guard(guard):
          batch, device_batch = next(batches)
          state, device_metrics = train_step(state, device_batch)
          batches.fill()  # the next batches, read and sent while this step runs
          if "skipped" in batch:
            logger.count("data/skipped", int(np.sum(batch["skipped"])))
          if pending is not None:
            consume(pending)
        pending = (step + 1, device_metrics)
        step += 1
        if step == start_step + 1:
          logger.reset_clock()  # the first step includes compilation
        ckpt.check_saves()  # a save that failed in the background stops the run now
        save_now = (every > 0 and step % every == 0) or step == total_steps
        stop_now = preempt.should_stop(step)
        if save_now or stop_now:
          consume(pending)  # never save a state whose step produced NaN
          pending = None
          ckpt.save(step, state, batches, plain_config)
          last_saved = step
        if on_step is not None and on_step(step, state, batch):
          logger.reset_clock()  # the hook did visible work (e.g. images); keep it out of step time
        if step != total_steps:
          run_evals(step, state)
        if stop_now:
          logging.warning("Stopped at step %d after a termination signal; checkpoint saved.", step)
          stopped_early = True
          break
      if pending is not None:
        consume(pending)
    except BaseException:
      _finish_saves_on_error(ckpt)
      raise
    ckpt.finish()
  if not stopped_early:
    run_evals(step, state)  # the end (a finished run started again repeats only this)
  skipped = logger.counted("data/skipped")
  if skipped:
    logging.warning(
      "%d training examples were skipped and replaced (bad records or undecodable frames; "
      "per-window counts in metrics.jsonl as data/skipped)",
      skipped,
    )
  return {
    "final_step": step,
    "last_checkpoint": last_saved,
    "stopped_early": stopped_early,
    "state": state,
    "skipped": skipped,
    "evals": evals,
  }


def _finish_saves_on_error(ckpt: ckpt_lib.Checkpointer) -> None:
  """On an error exit: wait for the save in flight so a good checkpoint is never abandoned."""
  step = ckpt.in_flight
  try:
    ckpt.finish()
  except ckpt_lib.CheckpointError as e:
    logging.error("%s", e)
    return
  if step is not None:
    logging.warning("the checkpoint of step %d in flight was completed before stopping", step)
