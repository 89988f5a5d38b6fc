"""End-to-end fine-tuning of the pretrained encoder for classification: images or videos.

`train(config, workdir)` is what `python -m vicmae_jax.main` calls for `config.trainer ==
"finetune"`.

Images (`input_kind = "image"`): `classifier.ImageClassifier`, the encoder with learned position
embeddings initialized from its fixed sin-cos table (a learned table in the checkpoint is loaded and
resized bicubically to this resolution) and a Linear head on the final norm's cls token
(`classifier.pool = "cls"`, as the official fine-tuning; "mean" pools the patch tokens instead).

Videos (`input_kind = "clip"`): `video.VideoViT`, the same encoder inflated to space-time tubelets
of `video.tubelet_size` frames with a learned temporal embedding and joint space-time attention;
clips have `data.clip_num_frames` frames (any multiple of the tubelet size), evaluation averages
the softmax over `eval_data.num_temporal_views` x `num_spatial_views` views.

The recipe lives in the config: AdamW with layer-wise lr decay (`optim.layer_decay`), stochastic
depth (`model.drop_path_rate`), RandAugment + random erasing (`augment`), mixup / cutmix and label
smoothing (`mixup`, applied on device in the train step).
"""

from __future__ import annotations

from absl import logging
from flax import nnx
import ml_collections

from vicmae_jax import config_lib
from vicmae_jax import weights
from vicmae_jax.data import classification as data_lib
from vicmae_jax.data import pipeline as data_pipeline
from vicmae_jax.models import classifier
from vicmae_jax.trainers import classification as core
from vicmae_jax.trainers import common


def classifier_config(**overrides) -> ml_collections.ConfigDict:
  """`config.classifier`: pool ("cls" | "mean") and head_init_std (official 2e-5), image model only."""
  c = ml_collections.ConfigDict(dict(pool="cls", head_init_std=2e-5))
  c.update(overrides)
  return c


def video_config(**overrides) -> ml_collections.ConfigDict:
  """`config.video`: tubelet_size (frames per space-time patch, 2) and use_cls (see models/video.py)."""
  c = ml_collections.ConfigDict(dict(tubelet_size=2, use_cls=True))
  c.update(overrides)
  return c


def validate(config) -> dict:
  dims = core.validate(config)
  for field in ("classifier", "video"):
    config_lib.require(
      field in config, field, "missing (see finetune.classifier_config / video_config)"
    )
  config_lib.require(
    config.classifier.pool in classifier.POOLS,
    "classifier.pool",
    f"must be one of {classifier.POOLS}, got {config.classifier.pool!r}",
  )
  config_lib.require(
    float(config.classifier.head_init_std) > 0, "classifier.head_init_std", "must be > 0"
  )
  if config.input_kind == "clip":
    tubelet = int(config.video.tubelet_size)
    frames = int(config.data.clip_num_frames)
    config_lib.require(tubelet >= 1, "video.tubelet_size", f"must be >= 1, got {tubelet}")
    config_lib.require(
      frames >= tubelet and frames % tubelet == 0,
      "data.clip_num_frames",
      f"{frames} frames are not a positive multiple of video.tubelet_size={tubelet}",
    )
    eval_frames = int(config.eval_data.clip_num_frames)
    config_lib.require(
      eval_frames >= tubelet and eval_frames % tubelet == 0,
      "eval_data.clip_num_frames",
      f"{eval_frames} frames are not a positive multiple of video.tubelet_size={tubelet}",
    )
  return dims


def build_model_fn(config, num_classes: int):
  """() -> the fine-tuning model of `config` (a fresh, seeded init on every call)."""
  seed = int(config.seed)
  if config.input_kind == "image":
    return lambda: classifier.build_image_classifier(
      config.model,
      num_classes=num_classes,
      image_size=int(config.image_size),
      pool=str(config.classifier.pool),
      head_init_std=float(config.classifier.head_init_std),
      rngs=nnx.Rngs(seed),
    )
  from vicmae_jax.models import video

  return lambda: video.build_video_model(
    config.model,
    num_classes=num_classes,
    num_frames=int(config.data.clip_num_frames),
    tubelet_size=int(config.video.tubelet_size),
    use_cls=bool(config.video.use_cls),
    rngs=nnx.Rngs(seed),
  )


def build_task(config, num_classes: int) -> core.Task:
  pixel_key = core.PIXEL_KEYS[config.input_kind]
  return core.Task(
    pixel_key,
    4 if config.input_kind == "image" else 5,
    logits=lambda model, _, x, key, train: model(x, key=key, train=train),
    num_classes=num_classes,
    label_smoothing=float(config.mixup.label_smoothing),
    mixing=data_lib.mixing_enabled(config.mixup),
  )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes; resumes from `workdir` when it holds a checkpoint. Returns a summary dict."""
  dims = validate(config)
  mesh = common.make_mesh(config)
  num_classes = core.resolve_num_classes(config)
  image_size = int(config.image_size)
  model_fn = build_model_fn(config, num_classes)
  task = build_task(config, num_classes)

  load = None
  if config.init_from:
    if config.input_kind == "image":
      grid = image_size // int(dims["patch_size"])
      load_fn = lambda params: weights.load_image_classifier(
        params, config.init_from, scanned=bool(dims["scan_layers"]), grid_size=grid
      )
    else:
      load_fn = lambda params: weights.load_video_model(params, config.init_from, model_fn)

    def load(params):
      params, report = load_fn(params)
      weights.log_report(report, config.init_from)
      return params, report
  else:
    logging.warning(
      "config.init_from is empty: fine-tuning from a random initialization (a baseline)"
    )

  train_loader = data_lib.make_train_loader(
    config.data,
    input_kind=config.input_kind,
    global_batch_size=config.batch_size,
    image_size=image_size,
    seed=int(config.seed),
    augment_cfg=config.augment,
    mixup_cfg=config.mixup,
  )
  eval_batch = int(config.eval.batch_size)
  eval_batches = lambda: data_lib.make_eval_loader(
    config.eval_data, input_kind=config.input_kind, batch_size=eval_batch, image_size=image_size
  )
  return core.run(
    config,
    workdir,
    task=task,
    mesh=mesh,
    model_fn=model_fn,
    train_loader=train_loader,
    eval_batches=eval_batches,
    dataset_size=data_pipeline.dataset_size(config.data),
    load_pretrained=load,
    unit="clips" if config.input_kind == "clip" else "images",
  )
