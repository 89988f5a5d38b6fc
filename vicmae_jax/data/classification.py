"""Labeled loaders for the classification trainers (linear probe, fine-tuning), on the grain pipeline.

Training streams (infinite, sharded by process, shuffled every epoch, resumable exactly through the
grain iterator state; every random draw of an example comes from (seed, source, record, epoch)):

  input "image":  {"image": uint8 [b, S, S, 3], "label": int32 [b]}
      one image per record: the image of an image source, a random frame of a prepared clip, a
      frame at a random time of a raw video; then `train_augmentation` (crop + flip) and, when
      enabled, RandAugment and random erasing (finetune_augment.py).
  input "clip":   {"video": uint8 [b, T, S, S, 3], "label": int32 [b]}
      a random window of T frames `clip_stride` apart, one crop/flip for the whole clip
      (pipeline.make_clip_loader).

With mixup / cutmix on, every batch also carries the batch's mixing, drawn on the host from a
generator keyed by (seed, process, batch index):

  "mix_lam": float32 [b]     weight of the sample itself (the same value on every row)
  "mix_box": int32 [b, 4]    (top, bottom, left, right) of the cutmix box pasted from the partner,
                             all zero for mixup

The pixels stay uint8 on the way to the device; the trainer mixes there (trainers/classification.py,
`mix_batch`), so a batch of clips is not inflated to float32 on the host.

Evaluation loaders are the pipeline's padded, finite ones (`valid` marks real rows):
  image: {"image": uint8 [b, S, S, 3], ...}   (a video source gives its middle frame)
  clip:  {"video": uint8 [b, T, S, S, 3] or [b, V, T, S, S, 3], ...}   V = temporal x spatial views

Cached features (the linear probe's fast path) are streamed by features.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from vicmae_jax.data import augment
from vicmae_jax.data import data_config
from vicmae_jax.data import examples
from vicmae_jax.data import finetune_augment
from vicmae_jax.data import mixup
from vicmae_jax.data import pipeline
from vicmae_jax.data import sampling
from vicmae_jax.data import sources as sources_lib
from vicmae_jax.data import stream

INPUT_KINDS = ("image", "clip")
# The official fine-tuning and linear-probe crops: RandomResizedCrop (bicubic) + horizontal flip.
TRAIN_IMAGE_SPEC = "decode|random_resized_crop(interpolation='pil_bicubic')|flip"
# Stream of the per-batch mixing draws (the per-example streams are sampling.STREAM_*).
_MIX_STREAM = 7


def augment_config(**overrides) -> ml_collections.ConfigDict:
  """Per-image training augmentation (`config.augment`).

  train_augmentation   crop/flip spec (augment.py); `crop_scale` of the data config fills its scale
  rand_augment_ops     RandAugment ops per image (0 = off); official 2
  magnitude, magnitude_std   RandAugment magnitude ~ N(9, 0.5)
  erase_prob           random erasing probability (0 = off); official 0.25
  """
  c = ml_collections.ConfigDict(
    dict(
      train_augmentation=TRAIN_IMAGE_SPEC,
      rand_augment_ops=0,
      magnitude=9.0,
      magnitude_std=0.5,
      erase_prob=0.0,
    )
  )
  c.update(overrides)
  return c


def mixup_config(**overrides) -> ml_collections.ConfigDict:
  """Batch mixing and targets (`config.mixup`); alphas of 0 turn mixup / cutmix off.

  mixup_alpha, cutmix_alpha   Beta parameters (official fine-tuning 0.8, 1.0)
  prob                        probability that a batch is mixed at all
  switch_prob                 probability of cutmix when both are on
  label_smoothing             target smoothing (official 0.1)
  """
  c = ml_collections.ConfigDict(
    dict(mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5, label_smoothing=0.0)
  )
  c.update(overrides)
  return c


def mixing_enabled(mixup_cfg: Mapping[str, Any]) -> bool:
  return float(mixup_cfg.get("mixup_alpha", 0)) > 0 or float(mixup_cfg.get("cutmix_alpha", 0)) > 0


def validate_augment_config(cfg: Mapping[str, Any]) -> None:
  """Raises ValueError starting with `augment.<field>:`."""
  try:
    augment.build(cfg.get("train_augmentation", TRAIN_IMAGE_SPEC), image_size=224)
  except ValueError as error:
    raise ValueError(f"augment.train_augmentation: {error}") from None
  if int(cfg.get("rand_augment_ops", 0)) < 0:
    raise ValueError(f"augment.rand_augment_ops: must be >= 0, got {cfg.get('rand_augment_ops')}")
  if not 0.0 <= float(cfg.get("magnitude", 9.0)) <= finetune_augment.MAX_MAGNITUDE:
    raise ValueError(f"augment.magnitude: must be in [0, 10], got {cfg.get('magnitude')}")
  if not 0.0 <= float(cfg.get("erase_prob", 0.0)) <= 1.0:
    raise ValueError(f"augment.erase_prob: must be in [0, 1], got {cfg.get('erase_prob')}")


def validate_mixup_config(cfg: Mapping[str, Any]) -> None:
  """Raises ValueError starting with `mixup.<field>:`."""
  for field in ("mixup_alpha", "cutmix_alpha"):
    if float(cfg.get(field, 0.0)) < 0:
      raise ValueError(f"mixup.{field}: must be >= 0, got {cfg.get(field)}")
  for field in ("prob", "switch_prob", "label_smoothing"):
    value = float(cfg.get(field, 0.0))
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"mixup.{field}: must be in [0, 1], got {value}")


def label_names(data_cfg: Mapping[str, Any]) -> tuple[str, ...]:
  """Class names of the sources (the first source that states them; all that state them must agree)."""
  names: tuple[str, ...] = ()
  for source_name, _, source in pipeline.build_sources(data_cfg):
    current = tuple(source.label_names)
    if not current:
      continue
    if names and current != names:
      raise ValueError(
        f"data.sources.{source_name}: its {len(current)} class names differ from another "
        f"source's {len(names)}; mixed sources must share one label set"
      )
    names = current
  return names


def num_classes(data_cfg: Mapping[str, Any]) -> int:
  """Number of classes from the sources' label names, else 1 + the largest label of the data."""
  names = label_names(data_cfg)
  if names:
    return len(names)
  largest = -1
  for _, _, source in pipeline.build_sources(data_cfg):
    labels = getattr(source, "labels", None)
    if labels is None:
      raise ValueError("data.sources: the source states no class names; set config.num_classes")
    largest = max(largest, int(np.max(labels)))
  return largest + 1


class ImageMaker(examples.LazyAugmentation, examples.RecordMaker):
  """(record index, epoch) -> {"image": uint8 [S, S, 3], "label": int32} or a Skipped marker."""

  def __init__(
    self,
    source,
    *,
    spec: str,
    image_size: int,
    crop_scale,
    augment_cfg: Mapping[str, Any],
    seed: int,
  ):
    examples.RecordMaker.__init__(self, source, seed)
    self.spec, self.image_size = spec, int(image_size)
    self.crop_scale = tuple(crop_scale)
    self.rand_augment_ops = int(augment_cfg.get("rand_augment_ops", 0))
    self.magnitude = float(augment_cfg.get("magnitude", 9.0))
    self.magnitude_std = float(augment_cfg.get("magnitude_std", 0.5))
    self.erase_prob = float(augment_cfg.get("erase_prob", 0.0))

  def frame(self, example: Mapping[str, Any], rng: np.random.Generator) -> Any:
    """The record's image: the image itself, a random stored frame, or a raw video frame at a random time."""
    kind = example["kind"]
    if kind == "image":
      return example["image"]
    if kind == "clip":
      return example["frames"][int(rng.integers(len(example["frames"])))]
    decoded = self.source.decode(example, [float(rng.uniform(0.0, example["duration_s"]))])
    return decoded if isinstance(decoded, sources_lib.Skipped) else decoded[0]

  def make(
    self, example: Mapping[str, Any], record_index: int, epoch: int
  ) -> dict[str, np.ndarray] | sources_lib.Skipped:
    frame = self.frame(example, self.rng(record_index, epoch, sampling.STREAM_SAMPLING))
    if isinstance(frame, sources_lib.Skipped):
      return frame
    rng = self.rng(record_index, epoch, sampling.STREAM_VIEW)
    try:
      image = self.augmentation()(frame, rng)
    except examples.DECODE_ERRORS as error:
      return self.source.skip(
        example.get("clip_id") or f"record {record_index}", "undecodable image", str(error)
      )
    if self.rand_augment_ops > 0:
      image = finetune_augment.rand_augment(
        image,
        rng,
        num_ops=self.rand_augment_ops,
        magnitude=self.magnitude,
        magnitude_std=self.magnitude_std,
      )
    if self.erase_prob > 0:
      image = finetune_augment.random_erasing(image, rng, prob=self.erase_prob)
    return {"image": np.ascontiguousarray(image, np.uint8), "label": np.int32(example["label"])}


class BatchMixing:
  """Adds the batch's mixup / cutmix draw ("mix_lam", "mix_box") to a host batch (grain random_map)."""

  def __init__(self, mixup_cfg: Mapping[str, Any], pixel_key: str):
    self.settings = mixup.MixSettings.from_config(mixup_cfg)
    self.pixel_key = pixel_key

  def __call__(
    self, batch: dict[str, np.ndarray], rng: np.random.Generator
  ) -> dict[str, np.ndarray]:
    pixels = batch[self.pixel_key]
    rows = pixels.shape[0]
    params = mixup.sample_mix(rng, pixels.shape[-3], pixels.shape[-2], self.settings)
    box = params.box if params.use_cutmix else (0, 0, 0, 0)
    out = {k: v for k, v in batch.items() if k != "valid"}
    out["mix_lam"] = np.full((rows,), params.lam, np.float32)
    out["mix_box"] = np.tile(np.asarray(box, np.int32), (rows, 1))
    return out


def _drop_valid(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: v for k, v in batch.items() if k != "valid"}


def make_train_loader(
  data_cfg: Mapping[str, Any],
  *,
  input_kind: str,
  global_batch_size: int,
  image_size: int,
  seed: int,
  augment_cfg: Mapping[str, Any] | None = None,
  mixup_cfg: Mapping[str, Any] | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> pipeline.Loader:
  """The training stream of one process (see the module docstring for what a batch holds).

  Clips take `clip_num_frames`, `clip_stride`, `clip_augmentation` and `crop_scale` from the data
  config; images take `augment_cfg` (RandAugment and erasing apply to images only).
  Raises ValueError naming the field for a bad input kind or batch size.
  """
  if input_kind not in INPUT_KINDS:
    raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
  augment_cfg = augment_cfg if augment_cfg is not None else augment_config()
  process_index, process_count = stream.resolve_processes(process_index, process_count)
  processes = dict(process_index=process_index, process_count=process_count)
  if input_kind == "clip":
    loader = pipeline.make_clip_loader(
      data_cfg,
      batch_size=global_batch_size,
      image_size=image_size,
      train=True,
      seed=seed,
      **processes,
    )
    dataset = loader.dataset.map(_drop_valid)
    pixel_key = "video"
  else:
    spec = augment_cfg.get("train_augmentation", TRAIN_IMAGE_SPEC)

    def make_example(source, source_index, run_seed):
      del source_index
      return ImageMaker(
        source,
        spec=spec,
        image_size=image_size,
        crop_scale=data_cfg.get("crop_scale", data_config.DEFAULT_CROP_SCALE),
        augment_cfg=augment_cfg,
        seed=run_seed,
      )

    loader = pipeline.make_training_loader(
      data_cfg,
      global_batch_size=global_batch_size,
      seed=seed,
      make_example=make_example,
      description="Image training",
      **processes,
    )
    dataset = loader.dataset
    pixel_key = "image"
  if mixup_cfg is not None and mixing_enabled(mixup_cfg):
    mix_seed = stream.seed32(stream.run_seed(data_cfg, seed), _MIX_STREAM, process_index)
    dataset = dataset.random_map(BatchMixing(mixup_cfg, pixel_key), seed=mix_seed)
  return pipeline.Loader(
    dataset, loader.skip_log, loader.source_names, loader.host_batch_size, None, loader.label_names
  )


def make_eval_loader(
  data_cfg: Mapping[str, Any],
  *,
  input_kind: str,
  batch_size: int,
  image_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> pipeline.Loader:
  """One padded pass over the evaluation source (images, or clips with the config's views)."""
  if input_kind not in INPUT_KINDS:
    raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
  options = dict(batch_size=batch_size, image_size=image_size)
  options.update(process_index=process_index, process_count=process_count)
  if input_kind == "image":
    return pipeline.make_eval_loader(data_cfg, **options)
  return pipeline.make_clip_loader(data_cfg, train=False, **options)
