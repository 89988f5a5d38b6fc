"""Shared core of the classification trainers (linear probe, fine-tuning).

(Over 400 lines on purpose: the config section, `Task`, the two jitted steps and the driver are
each short and are read together; targets and mixing live in losses.py, loading in weights.py.)

`run(...)` is the driver both trainers hand their pieces to: the same mesh, sharded state, resume
order, `common.run_loop`, clu metrics and checkpoints (with the data iterator) as pretraining.
What differs between them is a `Task` (how logits are computed and from which batch field) plus the
model, the optional frozen encoder and the loaders.

One train step is one `jax.jit` over global arrays:
  batch {pixels uint8 | features f32, "label" int32 [B], (mixing "mix_lam" [B], "mix_box" [B, 4])}
  -> (mixup / cutmix on device) -> normalize -> logits [B, K] -> soft-target cross entropy
  -> grads -> optax -> new state + metrics.
A frozen encoder (linear probe on pixels) travels as a separate, non-donated argument and is not
part of the checkpoint: it comes from `init_from` again on resume.

Evaluation: top-1 / top-5 over the padded eval loader (`valid` masks padding). A batch whose pixels
carry a view axis ([B, V, ...], multi-view testing) is scored by the mean over views of the softmax.

Loading (`init_from`, weights.py): the `encoder.*` subtree of a pretraining workdir, a converted official
checkpoint or a fine-tuned classifier; each load is reported by name (loaded, kept from init,
unused) and a missing or mis-shaped encoder parameter is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vicmae_jax import config_lib
from vicmae_jax import losses
from vicmae_jax import optim
from vicmae_jax import sharding as sharding_lib
from vicmae_jax.data import classification as data_lib
from vicmae_jax.data import pipeline as data_pipeline
from vicmae_jax.evaluators import classification as eval_lib
from vicmae_jax.evaluators import common as evaluators_lib
from vicmae_jax.models import vicmae
from vicmae_jax.models import vit
from vicmae_jax.trainers import common

PIXEL_KEYS = {"image": "image", "clip": "video"}


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def classification_config(trainer: str) -> ml_collections.ConfigDict:
  """Fields shared by the linear-probe and fine-tuning configs (configs/ build on these).

  image_size     crop size S fed to the model
  num_classes    0 = from the training data's class names
  input_kind     "image" (one image or one frame per record) | "clip" (frames of a video)
  model.*        the pretrained encoder's architecture (vicmae.resolve_model_config fields)
  data.*         training data (pipeline.default_data_config; clip_num_frames, clip_stride,
                 clip_augmentation and crop_scale for clips)
  eval_data.*    evaluation data, one source (eval_augmentation; num_temporal_views and
                 num_spatial_views: multi-view testing of clips)
  augment.*      per-image training augmentation (data/classification.py augment_config)
  mixup.*        mixup / cutmix / label smoothing (data/classification.py mixup_config)
  eval.*         every_steps (0 = only at the end), batch_size (global)
  """
  c = config_lib.base_config()
  c.trainer = trainer
  c.image_size = 224
  c.num_classes = 0
  c.input_kind = "image"
  c.model = config_lib.model_config()
  c.optim = config_lib.optim_config()
  c.data = data_pipeline.default_data_config()
  c.eval_data = data_pipeline.default_data_config()
  # Evaluation clips have as many frames as training clips unless set apart.
  c.eval_data.clip_num_frames = c.data.get_ref("clip_num_frames")
  c.eval_data.clip_stride = c.data.get_ref("clip_stride")
  c.augment = data_lib.augment_config()
  c.mixup = data_lib.mixup_config()
  c.eval = ml_collections.ConfigDict(dict(every_steps=0, batch_size=256))
  return c


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> dict:
  """Every check that can fail before reading data or compiling. Returns the resolved model dims."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  config_lib.validate_common(config, num_devices)
  for field in (
    "model",
    "optim",
    "data",
    "eval_data",
    "image_size",
    "num_classes",
    "input_kind",
    "augment",
    "mixup",
    "eval",
  ):
    config_lib.require(field in config, field, "missing")
  dims = config_lib.as_config_error("model", lambda: vicmae.resolve_model_config(config.model))
  config_lib.require(
    config.input_kind in data_lib.INPUT_KINDS,
    "input_kind",
    f"must be one of {data_lib.INPUT_KINDS}, got {config.input_kind!r}",
  )
  image_size, patch = int(config.image_size), int(dims["patch_size"])
  config_lib.require(
    image_size > 0 and image_size % patch == 0,
    "image_size",
    f"{image_size} is not a positive multiple of the patch size {patch}",
  )
  config_lib.require(
    int(config.num_classes) >= 0, "num_classes", "must be >= 0 (0 = from the data)"
  )
  config_lib.as_config_error("optim", lambda: optim.resolve_optim_config(config.optim))
  # Classification reads single images or clips, never frame pairs.
  validate_data = lambda cfg: data_pipeline.validate_data_config(cfg, frame_pairs=False)
  config_lib.as_config_error("data", lambda: validate_data(config.data))
  config_lib.as_config_error(
    "eval_data", lambda: _renamed_errors(validate_data, config.eval_data, "data.", "eval_data.")
  )
  config_lib.as_config_error("augment", lambda: data_lib.validate_augment_config(config.augment))
  config_lib.as_config_error("mixup", lambda: data_lib.validate_mixup_config(config.mixup))
  mesh = config_lib.mesh_shape(config.mesh, num_devices)
  data_parallel = mesh["data"] * mesh["fsdp"]
  eval_batch = int(config.eval.batch_size)
  config_lib.require(
    eval_batch > 0 and eval_batch % data_parallel == 0,
    "eval.batch_size",
    f"{eval_batch} is not a positive multiple of the data-parallel size {data_parallel}",
  )
  config_lib.require(int(config.eval.every_steps) >= 0, "eval.every_steps", "must be >= 0")
  return dims


def _renamed_errors(fn, arg, old_prefix: str, new_prefix: str):
  """Runs fn(arg); a ValueError's leading field name `old_prefix...` is reported as `new_prefix...`."""
  try:
    return fn(arg)
  except ValueError as e:
    msg = str(e)
    raise ValueError(
      new_prefix + msg[len(old_prefix) :] if msg.startswith(old_prefix) else msg
    ) from None


def resolve_num_classes(config) -> int:
  if int(config.num_classes) > 0:
    return int(config.num_classes)
  return config_lib.as_config_error("data", lambda: data_lib.num_classes(config.data))


def make_optimizer(config, abstract_params, durations: config_lib.Durations):
  """(tx, lr_fn) from `config.optim` for the trainable params (layer decay counts their blocks)."""
  tx = optim.make_optimizer(
    config.optim,
    durations.total_steps,
    abstract_params,
    warmup_steps=durations.warmup_steps,
    global_batch_size=config.batch_size,
  )
  lr_fn = optim.make_lr_fn(
    config.optim,
    durations.total_steps,
    warmup_steps=durations.warmup_steps,
    global_batch_size=config.batch_size,
  )
  return tx, lr_fn


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
  """What a trainer computes.

  input_key: batch field of the model input ("image" [B,S,S,3], "video" [B,T,S,S,3], "features" [B,D]).
  example_ndim: rank of that field for a batch without a view axis (4, 5 or 2).
  logits: (model, frozen_model or None, inputs, key or None, train) -> logits [B, K] float32; pixel
    inputs arrive normalized.
  num_classes, label_smoothing: the targets. mixing: the batches carry mix_lam / mix_box.
  """

  input_key: str
  example_ndim: int
  logits: Callable[..., jax.Array]
  num_classes: int
  label_smoothing: float = 0.0
  mixing: bool = False

  @property
  def pixels(self) -> bool:
    return self.input_key in ("image", "video")

  def batch_keys(self) -> tuple[str, ...]:
    return (self.input_key, "label") + (("mix_lam", "mix_box") if self.mixing else ())


@dataclasses.dataclass
class Frozen:
  """A frozen model: graphdef + sharded {"params", "batch_stats", "rest"} (not trained, not saved)."""

  graphdef: Any
  state: dict
  shardings: dict

  def merge(self, state: dict) -> nnx.Module:
    return nnx.merge(self.graphdef, state["params"], state["batch_stats"], state["rest"])


def create_frozen(model_fn: Callable[[], nnx.Module], mesh) -> Frozen:
  """Builds a model's state directly in its shardings (like common.create_state, without an optimizer)."""

  def init():
    _, params, batch_stats, rest = common.split_model(model_fn())
    return {"params": params, "batch_stats": batch_stats, "rest": rest}

  graphdef = nnx.graphdef(nnx.eval_shape(model_fn))
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(init)
    repl = sharding_lib.replicated(mesh)
    shardings = {
      "params": sharding_lib.state_shardings(abstract["params"], mesh),
      "batch_stats": jax.tree.map(lambda _: repl, abstract["batch_stats"]),
      "rest": jax.tree.map(lambda _: repl, abstract["rest"]),
    }
    state = jax.jit(init, out_shardings=shardings)()
  return Frozen(graphdef, state, shardings)


def make_train_step(
  task: Task, graphdef, rest, tx, lr_fn, state_shardings, frozen: Frozen | None, mesh
):
  """The jitted `(state, frozen_state, batch) -> (state, metrics)` (state donated)."""
  batch_sh = sharding_lib.batch_sharding(mesh)
  repl = sharding_lib.replicated(mesh)
  num_blocks = jax.process_count()

  def step_fn(state, frozen_state, batch):
    key = common.step_key(state)
    inputs = batch[task.input_key]
    labels = batch["label"]
    if task.mixing:
      inputs, targets = losses.mix_batch(
        inputs,
        labels,
        batch["mix_lam"],
        batch["mix_box"],
        num_classes=task.num_classes,
        smoothing=task.label_smoothing,
        num_blocks=num_blocks,
      )
    else:
      targets = losses.smooth_targets(labels, task.num_classes, task.label_smoothing)
    if task.pixels:
      inputs = vit.normalize_images(inputs)
    frozen_model = frozen.merge(frozen_state) if frozen is not None else None
    # Merged at the step's trace level: nnx.value_and_grad differentiates the Params only and
    # carries the BatchNorm running-stat updates out of the differentiated function.
    model = common.merge_model(graphdef, state["params"], state["batch_stats"], rest)

    def loss_fn(model):
      logits = task.logits(model, frozen_model, inputs, key, True)
      return losses.softmax_cross_entropy(logits, targets), logits

    new_state, loss, logits, norms = common.apply_gradients(state, model, loss_fn, tx, lr_fn)
    metrics = {
      "loss": loss,
      "accuracy": jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)),
      **{k: norms[k] for k in ("lr", "grad_norm", "param_norm")},
    }
    return new_state, metrics

  batch_shardings = {k: batch_sh for k in task.batch_keys()}
  frozen_sh = frozen.shardings if frozen is not None else {}
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, frozen_sh, batch_shardings),
    out_shardings=(state_shardings, repl),
    donate_argnums=(0,),
  )


def make_eval_step(task: Task, graphdef, rest, frozen: Frozen | None, mesh):
  """Jitted `(params, batch_stats, frozen_state, inputs, labels, valid) -> (sum top-1, sum top-5, count)`.

  inputs [B, ...] or [B, V, ...] (V views: the softmax is averaged over them before ranking).
  """
  repl = sharding_lib.replicated(mesh)
  top_k = min(5, task.num_classes)

  def eval_fn(params, batch_stats, frozen_state, inputs, labels, valid):
    model = common.merge_model(graphdef, params, batch_stats, rest)
    frozen_model = frozen.merge(frozen_state) if frozen is not None else None
    probs = view_averaged_probs(
      lambda x: task.logits(model, frozen_model, x, None, False),
      inputs,
      task.example_ndim,
      normalize=task.pixels,
    )
    weight = valid.astype(jnp.float32)
    top1 = jnp.sum(losses.topk_correct(probs, labels, 1) * weight)
    top5 = jnp.sum(losses.topk_correct(probs, labels, top_k) * weight)
    return top1, top5, jnp.sum(weight)

  return jax.jit(eval_fn, out_shardings=(repl, repl, repl))


def view_averaged_probs(
  logits_fn: Callable[[jax.Array], jax.Array],
  inputs: jax.Array,
  example_ndim: int,
  *,
  normalize: bool,
) -> jax.Array:
  """Class probabilities [B, K]: softmax(logits_fn(x)), averaged over a view axis when present.

  inputs [B, ...] (rank example_ndim) or [B, V, ...] (rank example_ndim + 1); all views of all
  examples go through `logits_fn` as one batch of B*V.
  """
  if normalize:
    inputs = vit.normalize_images(inputs)
  if inputs.ndim == example_ndim:
    return jax.nn.softmax(logits_fn(inputs).astype(jnp.float32), axis=-1)
  if inputs.ndim != example_ndim + 1:
    raise ValueError(
      f"eval inputs must have rank {example_ndim} or {example_ndim + 1} (views), "
      f"got shape {inputs.shape}"
    )
  batch, views = inputs.shape[:2]
  flat = inputs.reshape(batch * views, *inputs.shape[2:])
  probs = jax.nn.softmax(logits_fn(flat).astype(jnp.float32), axis=-1)
  return jnp.mean(probs.reshape(batch, views, -1), axis=1)


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------


def run(
  config,
  workdir: str,
  *,
  task: Task,
  mesh,
  model_fn: Callable[[], nnx.Module],
  train_loader,
  eval_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]],
  dataset_size: int,
  frozen: Frozen | None = None,
  load_pretrained: Callable[[Any], tuple[Any, dict]] | None = None,
  init_report: dict | None = None,
  unit: str = "images",
) -> dict:
  """Trains `model_fn()`'s parameters on `task` and evaluates; resumes from `workdir` when it can.

  load_pretrained(params) -> (params, report) runs on a fresh start only (resume order: the
  workdir's newest checkpoint > init_from > fresh init). eval_batches() gives one padded pass
  over the evaluation data. `init_report` is the load report of a frozen encoder (loaded by the
  caller on every start). Returns a summary with the final top-1 / top-5 under "eval".
  """
  os.makedirs(workdir, exist_ok=True)
  durations = config_lib.resolve_durations(config, dataset_size)
  total_steps = durations.total_steps
  logging.info(
    "Data: %d training examples, %d steps/epoch, %d steps (%d warm-up)",
    dataset_size,
    durations.steps_per_epoch,
    total_steps,
    durations.warmup_steps,
  )
  abstract_params = nnx.state(nnx.eval_shape(model_fn), nnx.Param)
  tx, lr_fn = make_optimizer(config, abstract_params, durations)
  state, state_sh, graphdef, rest = common.create_state(model_fn, tx, mesh, config.seed)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  logging.info("Trainable parameters: %.3fM", num_params / 1e6)

  data_iter = iter(train_loader)
  ckpt = common.make_checkpointer(config, workdir)
  report = init_report
  if ckpt.latest_step() is None and load_pretrained is not None:
    params, report = load_pretrained(state["params"])
    state = dict(state, params=params)
  state, start_step = common.restore_or_init(ckpt, state, state_sh, data_iter)

  train_step = make_train_step(task, graphdef, rest, tx, lr_fn, state_sh, frozen, mesh)
  eval_step = make_eval_step(task, graphdef, rest, frozen, mesh)
  frozen_state = frozen.state if frozen is not None else {}
  batch_sh = sharding_lib.batch_sharding(mesh)
  to_global = lambda batch: data_pipeline.to_global(batch, batch_sh)
  from vicmae_jax import metrics as metrics_lib  # clu pulls in TensorFlow: only when training

  logger = metrics_lib.TrainLogger(
    workdir,
    total_steps=total_steps,
    global_batch=config.batch_size,
    unit=unit,
    wandb=config.log.get("wandb"),
    start_step=start_step,
  )
  if start_step == 0 and jax.process_index() == 0:
    logger.write_hparams(config_lib.to_plain(config))

  evaluators = evaluators_lib.build(
    ml_collections.ConfigDict(
      {"eval": {"kind": "classification", "every_steps": int(config.eval.every_steps)}}
    ),
    eval_batches=eval_batches,
  )
  predict = lambda state: eval_lib.ClassifierScores(
    eval_step, state, frozen_state, to_global, task.input_key
  )
  out = common.run_loop(
    config=config,
    workdir=workdir,
    state=state,
    train_step=lambda s, batch: train_step(s, frozen_state, batch),
    feed=common.Feed(data_iter, to_global, task.batch_keys()),
    ckpt=ckpt,
    logger=logger,
    steps=(start_step, total_steps),
    evaluators=evaluators,
    predict=predict,
  )
  eval_results = {
    step: {"top1": r["eval/top1"], "top5": r["eval/top5"], "count": int(r["eval/count"])}
    for step, r in out["evals"].items()
  }
  final = None if out["stopped_early"] else eval_results[out["final_step"]]
  if final is not None and jax.process_index() == 0:
    print(
      f"{config.trainer}: top-1 {100 * final['top1']:.2f}%  top-5 {100 * final['top5']:.2f}%  "
      f"({final['count']} examples, step {out['final_step']})",
      flush=True,
    )
  ckpt.close()
  logger.close()
  if report is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, "init_report.json"), "w") as f:
      json.dump(report, f, indent=1)
  return {
    "final_step": out["final_step"],
    "total_steps": total_steps,
    "last_checkpoint": out["last_checkpoint"],
    "stopped_early": out["stopped_early"],
    "eval": final,
    "evals": eval_results,
    "history": logger.history,
    "init_report": _brief(report),
    "num_classes": task.num_classes,
  }


def _brief(report: dict | None) -> dict | None:
  """The load report without the (long) list of loaded names; WORKDIR/init_report.json has it all."""
  if report is None:
    return None
  return {"num_loaded": len(report["loaded"]), **{k: v for k, v in report.items() if k != "loaded"}}
