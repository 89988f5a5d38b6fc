"""Pieces every trainer shares: mesh, sharded state init, the update core, restore order.

A train state is a plain dict pytree:
  {"step": int32 [], "rng": uint32 [2] (raw key data), "params": nnx.State, "batch_stats": nnx.State,
   "opt_state": optax state}
Parameters live as nnx.State (their Variables carry the logical axis names used for sharding);
the step merges them with the static graphdef inside `jax.jit`. The loop that drives a step
(checkpoints, metrics, evaluations, device prefetch) is `run_loop.py`'s, re-exported here.
"""

from __future__ import annotations

from typing import Any, Callable

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import optax

from vicmae_jax import checkpoint as ckpt_lib
from vicmae_jax import config_lib
from vicmae_jax import sharding as sharding_lib
from vicmae_jax import weights


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


# The training loop lives in run_loop.py; its names are reached through this module too.
from vicmae_jax.trainers.run_loop import (  # noqa: E402, F401
  DEVICE_PREFETCH,
  DevicePrefetch,
  Feed,
  PreemptionWatcher,
  host_metrics,
  maybe_profile,
  run_loop,
)
