"""ViC-MAE pretraining: the sharded loop with exact resume, metrics, evaluators and checkpoints.

`train(config, workdir)` is what `python -m vicmae_jax.main` calls for `config.trainer ==
"pretrain"`; it is importable and returns a summary dict, so tests drive it directly too.

One step (`make_train_step`) is a single `jax.jit` over global arrays:
  uint8 views [B, 2, H, W, 3] -> (with data.photometric_on_device: colour jitter, grayscale, blur,
  solarize, data/device_photometric.py) -> normalize -> ViC-MAE forward (both views in one encoder call)
  -> 0.97 * recon + 0.03 * NT-Xent -> grads -> optax -> new state + metrics (losses, norms and
  the collapse / health monitors of monitors.py).
The state is donated; its shardings are declared (see trainers/common.py).
"""

from __future__ import annotations

import functools
import os
import time

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vicmae_jax import config_lib
from vicmae_jax import flops
from vicmae_jax import losses
from vicmae_jax import metrics as metrics_lib
from vicmae_jax import monitors
from vicmae_jax import optim
from vicmae_jax import sharding as sharding_lib
from vicmae_jax.data import device_photometric
from vicmae_jax.data import pipeline as data_pipeline
from vicmae_jax.evaluators import common as evaluators_lib
from vicmae_jax.evaluators import frozen as frozen_eval
from vicmae_jax.models import vicmae
from vicmae_jax.models import vit
from vicmae_jax.trainers import common


def validate(config: ml_collections.ConfigDict, check_data: bool = True) -> dict:
  """Every check that can fail before compiling. Returns the resolved model dims."""
  config_lib.validate_common(config, jax.device_count())
  for field in ("model", "optim", "data", "image_size"):
    config_lib.require(field in config, field, "missing")
  dims = config_lib.as_config_error("model", lambda: vicmae.resolve_model_config(config.model))
  image_size = int(config.image_size)
  patch = int(dims["patch_size"])
  config_lib.require(
    image_size > 0 and image_size % patch == 0,
    "image_size",
    f"{image_size} is not a positive multiple of the patch size {patch}",
  )
  num_patches = (image_size // patch) ** 2
  config_lib.as_config_error(
    "model.mask_ratio", lambda: flops.num_kept(num_patches, float(dims["mask_ratio"]))
  )
  config_lib.as_config_error("optim", lambda: optim.resolve_optim_config(config.optim))
  if check_data:
    config_lib.as_config_error("data", lambda: data_pipeline.validate_data_config(config.data))
  evaluators_lib.build(config.evals)  # an unknown kind or a missing field fails here
  return dims


def make_train_step(
  graphdef, rest, tx, lr_fn, config, state_shardings, batch_sharding, mesh, total_steps=None
):
  """The jitted step. The health monitors' ranks are computed on the steps the loop logs (every
  `config.log.every_steps` and the `total_steps`-th), NaN on the others."""
  dims = vicmae.resolve_model_config(config.model)
  mask_ratio = float(dims["mask_ratio"])
  patch_size = int(dims["patch_size"])
  repl = sharding_lib.replicated(mesh)
  # None: the host did it all (or no data config: the caller brings finished views).
  photometric = device_photometric.device_plan(config.data) if "data" in config else None
  log_every = max(int(config.log.every_steps), 1)
  last_step = int(total_steps) if total_steps else -1

  def step_fn(state, batch):
    key = common.step_key(state)
    views = device_photometric.augment_views(batch["views"], key, photometric)
    images = vit.normalize_images(views)  # [B, 2, H, W, 3] f32

    # Merge at the step's trace level; nnx.value_and_grad differentiates the Params only and
    # carries the BatchNorm running-stat updates out of the differentiated function.
    model = common.merge_model(graphdef, state["params"], state["batch_stats"], rest)

    def loss_fn(model):
      out = model(images, mask_ratio=mask_ratio, key=key, train=True)
      loss, parts = losses.pretrain_loss(
        images,
        out,
        patch_size=patch_size,
        temperature=float(dims["temperature"]),
        weight_recon=float(dims["weight_recon"]),
        weight_contrast=float(dims["weight_contrast"]),
        norm_pix=bool(dims["norm_pix_loss"]),
      )
      return loss, (parts, out)

    new_state, _, (parts, out), norms = common.apply_gradients(state, model, loss_fn, tx, lr_fn)
    done = new_state["step"]  # the 1-based step the loop logs these metrics under
    health = monitors.pretrain_health(
      images,
      out,
      patch_size=patch_size,
      norm_pix=bool(dims["norm_pix_loss"]),
      rank_now=(done % log_every == 0) | (done == last_step),
    )
    return new_state, {**parts, **health, **norms}

  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, {"views": batch_sharding}),
    out_shardings=(state_shardings, repl),
    donate_argnums=(0,),
  )


def make_encode_fn(graphdef, rest):
  """(params, batch_stats, uint8 images [B,S,S,3] global, pool) -> features [B, D] f32, without
  masking; pool "mean" (of the patch tokens, the method's representation) or "cls", or "tokens"
  (the patch tokens [B, L, D], for the attentive probe)."""

  @functools.partial(jax.jit, static_argnames="pool")
  def encode(params, batch_stats, images, pool="mean"):
    model = common.merge_model(graphdef, params, batch_stats, rest)
    tokens, pooled = model.encode(vit.normalize_images(images))
    if pool == "tokens":
      return tokens[:, 1:].astype(jnp.float32)
    return pooled if pool == "mean" else tokens[:, 0].astype(jnp.float32)

  return encode


def make_recon_fn(graphdef, rest, config):
  mask_ratio = float(config.model.mask_ratio) or 0.5

  @jax.jit
  def recon(params, batch_stats, views, key):
    model = common.merge_model(graphdef, params, batch_stats, rest)
    out = model(vit.normalize_images(views), mask_ratio=mask_ratio, key=key, train=False)
    return out["pred"], out["mask"]

  return recon


def reconstruction_panel(
  views: np.ndarray, pred: np.ndarray, mask: np.ndarray, patch_size: int
) -> np.ndarray:
  """Images for TensorBoard: per example, original | masked | reconstruction (view 1).

  views uint8 [n, 2, H, W, 3]; pred [n, 2, L, p*p*3] in normalized-pixel space per patch (with
  norm_pix the prediction is per-patch normalized, so it is mapped back with the original
  patch's mean/std, as the MAE visualizations do). Returns float [n, H, 3W, 3] in [0, 1].
  """
  n, _, h, w, _ = views.shape
  img = views[:, 0].astype(np.float32) / 255.0
  target = np.asarray(vit.patchify(jnp.asarray(img), patch_size))  # [n, L, ppc]
  mean = target.mean(-1, keepdims=True)
  std = target.std(-1, keepdims=True, ddof=1) + 1e-6
  p = pred[:, 0]
  recon_patches = p * std + mean
  m = mask[:, 0][..., None]
  masked = target * (1 - m) + 0.5 * m
  pasted = target * (1 - m) + recon_patches * m
  un = lambda x: np.asarray(
    vit.unpatchify(jnp.asarray(x), patch_size, h // patch_size, w // patch_size)
  )
  panel = np.concatenate([img, un(masked), un(pasted)], axis=2)
  return np.clip(panel, 0.0, 1.0)


def make_model_and_optimizer(config, total_steps: int, warmup_steps: int):
  """-> (model_fn, tx, lr_fn): the model builder (rngs made inside, so it can run under jit)."""
  model_fn = lambda: vicmae.build_model(config.model, rngs=nnx.Rngs(config.seed))
  abstract_params = nnx.state(nnx.eval_shape(model_fn), nnx.Param)
  tx = optim.make_optimizer(
    config.optim,
    total_steps,
    abstract_params,
    warmup_steps=warmup_steps,
    global_batch_size=config.batch_size,
  )
  lr_fn = optim.make_lr_fn(
    config.optim, total_steps, warmup_steps=warmup_steps, global_batch_size=config.batch_size
  )
  return model_fn, tx, lr_fn


def compile_report(config: ml_collections.ConfigDict) -> dict:
  """Compiles the train step ahead of time, without reading data; reports memory and FLOPs.

  Per-device numbers from XLA's memory analysis of the compiled step: arguments (params,
  optimizer state, batch), outputs, temporaries, and the resulting peak estimate.
  """
  dims = validate(config, check_data=False)
  mesh = common.make_mesh(config)
  total_steps = max(int(config.get("num_steps", 0) or 0), 1000)
  model_fn, tx, lr_fn = make_model_and_optimizer(config, total_steps, 0)
  abstract, state_sh, graphdef = common.abstract_state(model_fn, tx, mesh, config.seed)
  batch_sh = sharding_lib.batch_sharding(mesh)
  step = make_train_step(graphdef, nnx.State({}), tx, lr_fn, config, state_sh, batch_sh, mesh)
  size = int(config.image_size)
  batch = {
    "views": jax.ShapeDtypeStruct(
      (config.batch_size, 2, size, size, 3), jnp.uint8, sharding=batch_sh
    )
  }
  t0 = time.perf_counter()
  compiled = step.lower(common.abstract_with_shardings(abstract, state_sh), batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  nbytes = lambda tree: sum(
    int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
  )
  report = {
    "devices": jax.device_count(),
    "mesh": dict(mesh.shape),
    "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"])),
    "params_bytes_total": nbytes(abstract["params"]),
    "opt_state_bytes_total": nbytes(abstract["opt_state"]),
    "compile_s": compile_s,
    "analytic_flops_per_step": _flops(dims, config),
  }
  if mem is not None:
    report.update(
      {
        "argument_bytes_per_device": int(mem.argument_size_in_bytes),
        "output_bytes_per_device": int(mem.output_size_in_bytes),
        "alias_bytes_per_device": int(mem.alias_size_in_bytes),
        "temp_bytes_per_device": int(mem.temp_size_in_bytes),
        "peak_bytes_per_device": int(
          mem.argument_size_in_bytes
          + mem.output_size_in_bytes
          - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes
        ),
      }
    )
  return report


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains ViC-MAE; resumes from `workdir` when it holds a checkpoint. Returns a summary."""
  dims = validate(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = common.make_mesh(config)
  logging.info(
    "Mesh: %s over %d devices (%d processes)",
    dict(mesh.shape),
    jax.device_count(),
    jax.process_count(),
  )

  # Data first: its size resolves epochs into steps.
  dataset_size = data_pipeline.dataset_size(config.data)
  durations = config_lib.resolve_durations(config, dataset_size)
  total_steps = durations.total_steps
  image_size = int(config.image_size)
  loader = data_pipeline.make_pretrain_loader(
    config.data,
    global_batch_size=config.batch_size,
    image_size=image_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  data_iter = iter(loader)
  logging.info(
    "Data: %d examples, %d steps/epoch, %d steps (%d warm-up)",
    dataset_size,
    durations.steps_per_epoch,
    total_steps,
    durations.warmup_steps,
  )

  # Optimizer and model.
  model_fn, tx, lr_fn = make_model_and_optimizer(config, total_steps, durations.warmup_steps)
  state, state_sh, graphdef, rest = common.create_state(model_fn, tx, mesh, config.seed)
  batch_sh = sharding_lib.batch_sharding(mesh)
  train_step = make_train_step(
    graphdef, rest, tx, lr_fn, config, state_sh, batch_sh, mesh, total_steps=total_steps
  )
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  logging.info(
    "Model: %s, %.2fM parameters", config.model.get("variant", "custom"), num_params / 1e6
  )

  # Resume order: the workdir's newest complete checkpoint, else init_from, else fresh.
  ckpt = common.make_checkpointer(config, workdir)
  state, start_step = common.restore_or_init(ckpt, state, state_sh, data_iter, config.init_from)

  to_global = functools.partial(data_pipeline.to_global, sharding=batch_sh)
  logger = metrics_lib.TrainLogger(
    workdir,
    total_steps=total_steps,
    global_batch=config.batch_size,
    unit="pairs",
    flops_per_step=_flops(dims, config),
    peak_flops_total=_peak_flops_total(dims),
    wandb=config.log.get("wandb"),
    start_step=start_step,
  )
  if start_step == 0 and jax.process_index() == 0:
    logger.write_hparams(config_lib.to_plain(config))

  evaluators = evaluators_lib.build(config.evals, batch_size=config.batch_size, seed=config.seed)
  encode = make_encode_fn(graphdef, rest)

  def predict(state):
    return frozen_eval.FrozenFeatures(
      lambda images, pool: encode(state["params"], state["batch_stats"], images, pool),
      to_global,
      image_size=image_size,
    )

  on_step = None
  if int(config.log.image_every_steps) > 0:
    recon = make_recon_fn(graphdef, rest, config)
    fixed = {}

    def on_step(step, state, batch):
      if "views" not in fixed:
        fixed["views"] = _same_on_all_processes(
          np.asarray(batch["views"][: int(config.log.num_images)])
        )
      if step % int(config.log.image_every_steps) == 0 or step == total_steps:
        _write_recon(logger, recon, state, fixed["views"], step, config, dims)
        return True
      return False

  out = common.run_loop(
    config=config,
    workdir=workdir,
    state=state,
    train_step=train_step,
    feed=common.Feed(data_iter, to_global, ("views",)),
    ckpt=ckpt,
    logger=logger,
    steps=(start_step, total_steps),
    evaluators=evaluators,
    predict=predict,
    on_step=on_step,
  )
  ckpt.close()
  logger.close()
  return {
    "final_step": out["final_step"],
    "last_checkpoint": out["last_checkpoint"],
    "history": logger.history,
    "evals": out["evals"],
    "stopped_early": out["stopped_early"],
    "total_steps": total_steps,
  }


def _write_recon(logger, recon, state, image_batch, step, config, dims):
  if image_batch is None:
    return
  n = len(image_batch)
  key = jax.random.key(config.seed + 12345)
  pred, mask = recon(state["params"], state["batch_stats"], jnp.asarray(image_batch), key)
  panel = reconstruction_panel(
    image_batch, np.asarray(pred)[:n], np.asarray(mask)[:n], int(dims["patch_size"])
  )
  logger.write_images(step, {"reconstruction": panel})


def _same_on_all_processes(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def _flops(dims, config):
  try:
    return flops.vicmae_train_flops(
      dims, int(config.image_size), float(config.model.mask_ratio), int(config.batch_size)
    )
  except Exception:  # FLOPs are informational; a missing formula must not stop training
    return None


def _peak_flops_total(dims):
  try:
    peak = flops.peak_flops(jax.devices()[0], dims["dtype"])
    return peak * jax.device_count() if peak else None
  except Exception:
    return None
