"""Linear or attentive probe of a frozen pretrained encoder (the MAE protocol; V-JEPA's pooler).

`train(config, workdir)` is what `python -m vicmae_jax.main` calls for `config.trainer ==
"linear_probe"`. The encoder comes from `config.init_from` (the `encoder.*` subtree of a pretraining
workdir or a converted checkpoint) and is never updated; only `LinearProbeHead` (BatchNorm without
affine, eps 1e-6, + Linear, trunc-normal 0.01) is trained, with the optimizer of `config.optim`
(LARS, base lr 0.1 per 256, no weight decay in the paper's recipe).

`probe.head = "attentive"` trains `attentive.AttentiveProbeHead` instead: learned queries
cross-attend to the frozen patch tokens (for clips, those of every frame), then a Linear head.

Features: `probe.pool` = "mean" (patch tokens after the final norm, the ViC-MAE pooled feature) or
"cls". For clips (`input_kind = "clip"`) every frame goes through the image encoder and the frame
features are averaged.

Two ways to feed the head:
  probe.cache_features = False   every step reads augmented pixels (random resized crop + flip) and
                                 runs the frozen encoder inside the step (the paper's setting)
  probe.cache_features = True    features of the training and evaluation data are extracted once,
                                 with the evaluation transform (centre crop / centre window), kept in
                                 memory on every process and saved under WORKDIR/features/ (a resumed
                                 run reads them back); the head then trains on them, orders of
                                 magnitude faster, without crop augmentation.
"""

from __future__ import annotations

import hashlib
import json
import os

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vicmae_jax import config_lib
from vicmae_jax import sharding as sharding_lib
from vicmae_jax import weights
from vicmae_jax.data import classification as data_lib
from vicmae_jax.data import features as features_lib
from vicmae_jax.data import pipeline as data_pipeline
from vicmae_jax.evaluators import frozen as frozen_eval
from vicmae_jax.models import attentive, classifier
from vicmae_jax.models import vit
from vicmae_jax.trainers import classification as core
from vicmae_jax.trainers import common


HEADS = ("linear", "attentive")


def probe_config(**overrides) -> ml_collections.ConfigDict:
  """`config.probe`: head ("linear" | "attentive"), pool ("mean" | "cls"; the linear head's
  features), cache_features, head_init_std (0.01), attentive_heads (0: the encoder's head count)
  and attentive_queries (1) of the attentive head."""
  c = ml_collections.ConfigDict(
    dict(
      head="linear",
      pool="mean",
      cache_features=False,
      head_init_std=0.01,
      attentive_heads=0,
      attentive_queries=1,
    )
  )
  c.update(overrides)
  return c


def make_head(probe, dims, num_classes: int, seed: int):
  """The trained head of `config.probe`: LinearProbeHead on pooled features, or
  AttentiveProbeHead on the patch tokens."""
  embed_dim = int(dims["embed_dim"])
  init_std = float(probe.head_init_std)
  if probe.get("head", "linear") == "attentive":
    return attentive.AttentiveProbeHead(
      embed_dim,
      num_classes,
      num_heads=int(probe.get("attentive_heads", 0)) or int(dims["num_heads"]),
      num_queries=int(probe.get("attentive_queries", 1)),
      init_std=init_std,
      rngs=nnx.Rngs(seed),
    )
  return classifier.LinearProbeHead(embed_dim, num_classes, init_std=init_std, rngs=nnx.Rngs(seed))


def validate(config) -> dict:
  dims = core.validate(config)
  config_lib.require("probe" in config, "probe", "missing (see linear_probe.probe_config)")
  config_lib.require(
    config.probe.pool in classifier.POOLS,
    "probe.pool",
    f"must be one of {classifier.POOLS}, got {config.probe.pool!r}",
  )
  config_lib.require(float(config.probe.head_init_std) > 0, "probe.head_init_std", "must be > 0")
  head = config.probe.get("head", "linear")
  config_lib.require(head in HEADS, "probe.head", f"must be one of {HEADS}, got {head!r}")
  if head == "attentive":
    heads = int(config.probe.get("attentive_heads", 0)) or int(dims["num_heads"])
    config_lib.require(
      heads > 0 and int(dims["embed_dim"]) % heads == 0,
      "probe.attentive_heads",
      f"{heads} does not divide the encoder width {dims['embed_dim']}",
    )
    config_lib.require(
      int(config.probe.get("attentive_queries", 1)) >= 1, "probe.attentive_queries", "must be >= 1"
    )
  config_lib.require(
    not data_lib.mixing_enabled(config.mixup),
    "mixup",
    "the linear probe trains without mixup / cutmix; set mixup_alpha = cutmix_alpha = 0",
  )
  return dims


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains a linear head on frozen features; resumes from `workdir`. Returns a summary dict."""
  dims = validate(config)
  mesh = common.make_mesh(config)
  num_classes = core.resolve_num_classes(config)
  image_size = int(config.image_size)
  attentive_head = config.probe.get("head", "linear") == "attentive"
  pool = "tokens" if attentive_head else str(config.probe.pool)
  seed = int(config.seed)

  frozen = core.create_frozen(
    lambda: classifier.build_encoder(config.model, rngs=nnx.Rngs(seed)), mesh
  )
  report = None
  if config.init_from:
    params, report = weights.load_encoder(
      frozen.state["params"], config.init_from, scanned=bool(dims["scan_layers"])
    )
    frozen.state["params"] = params
    weights.log_report(report, config.init_from)
  else:
    logging.warning(
      "config.init_from is empty: probing a randomly initialized encoder (a baseline)"
    )

  head_fn = lambda: make_head(config.probe, dims, num_classes, seed)
  embed_dim = int(dims["embed_dim"])
  input_kind = str(config.input_kind)
  pixel_key = core.PIXEL_KEYS[input_kind]
  pixel_ndim = 4 if input_kind == "image" else 5
  eval_batch = int(config.eval.batch_size)

  def run(task, train_loader, eval_batches, **options):
    return core.run(
      config,
      workdir,
      task=task,
      mesh=mesh,
      model_fn=head_fn,
      train_loader=train_loader,
      eval_batches=eval_batches,
      init_report=report,
      **options,
    )

  if config.probe.cache_features:
    (train_x, train_y), (eval_x, eval_y) = cached_features(
      config, workdir, frozen, mesh, pool, pixel_key, pixel_ndim
    )
    # Cached patch tokens are stored flat, [N, L*D]; the attentive head gets them back as tokens.
    unflatten = (lambda x: x.reshape(x.shape[0], -1, embed_dim)) if attentive_head else None
    task = core.Task(
      "features",
      2,
      logits=lambda model, _, x, key, train: model(unflatten(x) if unflatten else x, train=train),
      num_classes=num_classes,
    )
    train_loader = features_lib.make_feature_loader(
      train_x, train_y, global_batch_size=config.batch_size, seed=seed
    )
    eval_batches = lambda: features_lib.feature_eval_batches(eval_x, eval_y, batch_size=eval_batch)
    return run(task, train_loader, eval_batches, dataset_size=len(train_y), unit="examples")

  def logits(model, encoder, x, key, train):
    del key
    features = jax.lax.stop_gradient(classifier.encoder_features(encoder, x, pool))
    return model(features, train=train)

  task = core.Task(pixel_key, pixel_ndim, logits=logits, num_classes=num_classes)
  train_loader = data_lib.make_train_loader(
    config.data,
    input_kind=input_kind,
    global_batch_size=config.batch_size,
    image_size=image_size,
    seed=seed,
    augment_cfg=config.augment,
  )
  eval_batches = lambda: data_lib.make_eval_loader(
    config.eval_data, input_kind=input_kind, batch_size=eval_batch, image_size=image_size
  )
  return run(
    task,
    train_loader,
    eval_batches,
    dataset_size=data_pipeline.dataset_size(config.data),
    frozen=frozen,
    unit="clips" if input_kind == "clip" else "images",
  )


# ----------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------


def make_feature_fn(frozen: core.Frozen, pool: str, pixel_ndim: int):
  """Jitted uint8 pixels [B, ...] (or [B, V, ...] views, averaged) -> features [B, D] float32
  (pool "tokens": the patch tokens flattened, [B, L*D])."""

  @jax.jit
  def features(frozen_state, pixels):
    encoder = frozen.merge(frozen_state)
    x = vit.normalize_images(pixels)
    if x.ndim == pixel_ndim:
      return classifier.encoder_features(encoder, x, pool).reshape(x.shape[0], -1)
    batch, views = x.shape[:2]
    per_view = classifier.encoder_features(encoder, x.reshape(batch * views, *x.shape[2:]), pool)
    return jnp.mean(per_view.reshape(batch, views, -1), axis=1)

  return features


def _fingerprint(config, pool: str, data_cfg) -> str:
  """What the cached features depend on; a mismatch means they are extracted again."""
  parts = {
    "init_from": os.path.abspath(config.init_from) if config.init_from else "",
    "seed": int(config.seed),
    "model": config_lib.to_plain(config.model),
    "pool": pool,
    "image_size": int(config.image_size),
    "input_kind": config.input_kind,
    "data": config_lib.to_plain(data_cfg),
  }
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _all_processes_have(path: str) -> bool:
  have = os.path.isfile(path)
  if jax.process_count() == 1:
    return have
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.array([have], np.int32))
  return bool(np.all(flags))


def cached_features(
  config, workdir: str, frozen: core.Frozen, mesh, pool: str, pixel_key: str, pixel_ndim: int
):
  """((train features [N, D], labels [N]), (eval features [M, D], labels [M])), every process holding all.

  Training features use the evaluation transform of `config.data` (one source); both sets are
  saved to WORKDIR/features/{train,eval}.npz with a fingerprint of what they depend on.
  """
  feature_fn = make_feature_fn(frozen, pool, pixel_ndim)
  batch_sh = sharding_lib.batch_sharding(mesh)
  to_global = lambda batch: data_pipeline.to_global(batch, batch_sh)
  out = []
  for split, data_cfg in (("train", config.data), ("eval", config.eval_data)):
    path = os.path.join(workdir, "features", f"{split}.npz")
    fingerprint = _fingerprint(config, pool, data_cfg)
    if _all_processes_have(path):
      with np.load(path) as cached:
        if str(cached["fingerprint"]) == fingerprint:
          logging.info("Features (%s): read %d from %s", split, len(cached["labels"]), path)
          out.append((cached["features"], cached["labels"]))
          continue
    loader = data_lib.make_eval_loader(
      data_cfg,
      input_kind=config.input_kind,
      batch_size=int(config.eval.batch_size),
      image_size=int(config.image_size),
    )
    as_images = ({"image": b[pixel_key], "label": b["label"], "valid": b["valid"]} for b in loader)
    features, labels = frozen_eval.extract_features(
      lambda pixels: feature_fn(frozen.state, pixels), as_images, to_global
    )
    logging.info("Features (%s): extracted %d x %d", split, *features.shape)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.savez(
        path + ".tmp.npz", features=features, labels=labels, fingerprint=np.array(fingerprint)
      )
      os.replace(path + ".tmp.npz", path)
    out.append((features, labels.astype(np.int32)))
  return out[0], out[1]
