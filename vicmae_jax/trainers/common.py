"""Pieces every trainer shares: mesh, sharded state init, restore order, the step loop driver.

A train state is a plain dict pytree:
  {"step": int32 [], "rng": uint32 [2] (raw key data), "params": nnx.State, "batch_stats": nnx.State,
   "opt_state": optax state}
Parameters live as nnx.State (their Variables carry the logical axis names used for sharding);
the step merges them with the static graphdef inside `jax.jit`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any, Callable

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vicmae_jax import checkpoint as ckpt_lib
from vicmae_jax import config_lib
from vicmae_jax import metrics as metrics_lib
from vicmae_jax import sharding as sharding_lib
from vicmae_jax import weights
from vicmae_jax.evaluators import common as evaluators_lib


def make_mesh(config) -> jax.sharding.Mesh:
  shape = config_lib.mesh_shape(config.mesh, jax.device_count())
  return sharding_lib.make_mesh(shape)


def split_model(model: nnx.Module):
  """-> (graphdef, params, batch_stats, rest). `rest` holds non-trainable, non-stat variables."""
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  return graphdef, params, batch_stats, rest


def merge_model(graphdef, params, batch_stats, rest):
  return nnx.merge(graphdef, params, batch_stats, rest)


def rng_data(seed: int) -> jax.Array:
  return jax.random.key_data(jax.random.key(seed))


def step_key(state: dict) -> jax.Array:
  """The step's key: the run's key folded with the step (pure, so a resumed run draws the same)."""
  return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def opt_state_shardings(
  tx: optax.GradientTransformation, abstract_opt_state, param_shardings, mesh
) -> Any:
  """Optimizer slots take their parameter's sharding; everything else is replicated."""
  replicated = sharding_lib.replicated(mesh)
  return optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract_opt_state,
    param_shardings,
    transform_non_params=lambda _: replicated,
  )


def _init_fn(model_fn, tx, seed):
  def init():
    model = model_fn()
    _, params, batch_stats, rest = split_model(model)
    opt_state = tx.init(params)
    state = {
      "step": jnp.zeros((), jnp.int32),
      "rng": rng_data(seed),
      "params": params,
      "batch_stats": batch_stats,
      "opt_state": opt_state,
    }
    return state, rest

  return init


def abstract_state(
  model_fn: Callable[[], nnx.Module],
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  seed: int,
):
  """Shapes and shardings of the train state, nothing allocated: (abstract, shardings, graphdef)."""
  graphdef = nnx.graphdef(nnx.eval_shape(model_fn))
  with jax.set_mesh(mesh):
    abstract, _ = jax.eval_shape(_init_fn(model_fn, tx, seed))
    shardings = state_shardings(abstract, tx, mesh)
  return abstract, shardings, graphdef


def create_state(
  model_fn: Callable[[], nnx.Module],
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  seed: int,
):
  """Shapes first, then shardings, then one jitted init that writes each shard where it lives.

  Returns (state, state_shardings, graphdef, rest) where `rest` is the model's non-trainable,
  non-stat state (captured as constants by the step).
  """
  init = _init_fn(model_fn, tx, seed)
  graphdef = nnx.graphdef(nnx.eval_shape(model_fn))
  with jax.set_mesh(mesh):
    abstract, abstract_rest = jax.eval_shape(init)
    shardings = state_shardings(abstract, tx, mesh)
    rest_shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), abstract_rest)
    state, rest = jax.jit(init, out_shardings=(shardings, rest_shardings))()
  return state, shardings, graphdef, rest


def apply_gradients(state: dict, model: nnx.Module, loss_fn: Callable, tx, lr_fn):
  """The update core of every trainer's step (inside jit): grads of `loss_fn(model) -> (loss,
  aux)` w.r.t. the Params, the optimizer update, BatchNorm statistics carried out of the model.

  Returns (new_state, loss, aux, norms), norms {"lr", "grad_norm", "param_norm", "update_norm"}.
  """
  (loss, aux), grads = nnx.value_and_grad(
    loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True
  )(model)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = {
    "step": state["step"] + 1,
    "rng": state["rng"],
    "params": params,
    "batch_stats": nnx.state(model, nnx.BatchStat),
    "opt_state": opt_state,
  }
  norms = {
    "lr": lr_fn(state["step"]),
    "grad_norm": optax.global_norm(grads),
    "param_norm": optax.global_norm(params),
    "update_norm": optax.global_norm(updates),
  }
  return new_state, loss, aux, norms


def state_shardings(abstract_state: dict, tx, mesh) -> dict:
  param_sh = sharding_lib.state_shardings(abstract_state["params"], mesh)
  repl = sharding_lib.replicated(mesh)
  return {
    "step": repl,
    "rng": repl,
    "params": param_sh,
    "batch_stats": jax.tree.map(lambda _: repl, abstract_state["batch_stats"]),
    "opt_state": opt_state_shardings(tx, abstract_state["opt_state"], param_sh, mesh),
  }


def abstract_with_shardings(state, shardings):
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


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


def host_metrics(device_metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(device_metrics).items()}


def make_checkpointer(config, workdir: str) -> ckpt_lib.Checkpointer:
  return ckpt_lib.Checkpointer(
    ckpt_lib.checkpoint_dir(workdir),
    keep=int(config.checkpoint.keep),
    keep_every=int(config.checkpoint.keep_every),
    async_save=bool(config.checkpoint.async_save),
  )


def restore_or_init(
  ckpt: ckpt_lib.Checkpointer,
  state: dict,
  shardings: dict,
  data_iter,
  init_from: str = "",
  **init_from_kwargs,
) -> tuple[dict, int]:
  """The resume order: the workdir's newest checkpoint that loads > init_from > fresh init.

  Damaged newer steps are moved aside (see checkpoint.Checkpointer.restore_newest).
  """
  restored = ckpt.restore_newest(abstract_with_shardings(state, shardings), data_iter)
  if restored is not None:
    state, _ = restored
    step = int(jax.device_get(state["step"]))
    logging.info("Resumed from %s at step %d", ckpt.directory, step)
    return state, step
  if init_from:
    state = weights.load_init_from(state, init_from, **init_from_kwargs)
  return state, 0


def run_loop(
  *,
  config,
  workdir: str,
  state: dict,
  train_step: Callable,
  data_iter,
  to_global: Callable,
  batch_keys: tuple[str, ...],
  ckpt: ckpt_lib.Checkpointer,
  logger: metrics_lib.TrainLogger,
  start_step: int,
  total_steps: int,
  evaluators: Sequence[evaluators_lib.Evaluator] = (),
  predict: Callable[[dict], Any] | None = None,
  on_step: Callable[[int, dict, dict], None] | None = None,
) -> dict:
  """Drives `train_step` from `start_step` to `total_steps` with checkpoints, metrics and evals.

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
  Returns {"final_step", "last_checkpoint", "stopped_early", "state", "skipped", "evals"}.
  """
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

  if start_step == 0:
    run_evals(0, state)
  with PreemptionWatcher() as preempt:
    try:
      logger.reset_clock()
      while step < total_steps:
        with maybe_profile(workdir, step, config):
          batch = next(data_iter)
          state, device_metrics = train_step(state, to_global({k: batch[k] for k in batch_keys}))
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
          ckpt.save(step, state, data_iter, plain_config)
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
