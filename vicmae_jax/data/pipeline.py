"""The grain input pipelines: pretraining pairs, evaluation images, video clips.

Pretraining (`make_pretrain_loader`): one global stream, the same on every process,

    for each source:  repeat its records, in a new random order every epoch (seeded)
                      -> (record index, epoch)
    sources mixed by weight (grain MapDataset.mix) -> global position g -> (source, record, epoch)
    cut into global batches of global_batch_size rows; process p of P reads only rows
    [p * b, (p + 1) * b) of each (b = global_batch_size / P):
                      -> example from the source (an unusable one is replaced by another record
                         of the same source, chosen from g alone)
                      -> video: gap (seconds) -> two frames -> two augmented views
                         image: decoded once -> two augmented views
    -> thread pool (ReadOptions.num_threads) -> batch of b
    -> optional worker processes (data/workers.py: whole batches into reused shared memory)
    -> batches assembled ahead in a thread

    yields {"views": uint8 [b, 2, S, S, 3], "label": int32 [b], "source": int32 [b]}

Every random choice for an example (frame pair, gap, crops, colours) comes from
(seed, source name, record index, epoch) only. So the processes' k-th batches, concatenated in
process order, are the k-th batch of a one-process run, pixel for pixel, whatever the process and
worker counts: runs compare across host counts, and after k global batches every process of any
count stands at row k * b of its own stream. The grain iterator state
(`get_state` / `set_state`, or orbax through grain.checkpoint.CheckpointSave / CheckpointRestore)
resumes the stream exactly, in this process or a fresh one with the same config and worker_count.

`make_eval_loader` and `make_clip_loader` read each example once in order, pad the last batch (and
every example that cannot be decoded) with `valid = False` rows so nothing is silently dropped and
every process yields the same number of batches. `to_global` is the one place host batches become
global jax.Arrays.

The data config is documented in data_config.py, the example makers in examples.py and the
global stream in stream.py; this module builds the loaders from them.
"""

from __future__ import annotations

import atexit
import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any

from absl import logging
import grain
import numpy as np

from vicmae_jax.data import augment
from vicmae_jax.data import data_config
from vicmae_jax.data import device_photometric
from vicmae_jax.data import examples
from vicmae_jax.data import sources as sources_lib
from vicmae_jax.data import stream
from vicmae_jax.data.data_config import (  # noqa: F401  (re-exported)
  default_data_config,
  default_source_config,
  validate_data_config,
)
from vicmae_jax.data.examples import ClipMaker, LazyAugmentation, PairMaker  # noqa: F401
from vicmae_jax.data.stream import (  # noqa: F401  (re-exported)
  MAX_REPLACEMENTS,
  EpochOrder,
  GlobalRows,
  to_global,
)


def build_sources(
  cfg: Mapping[str, Any], skip_log: sources_lib.SkipLog | None = None
) -> list[tuple[str, float, Any]]:
  """[(name, weight, source)] for every configured source, sharing one skip log."""
  skip_log = skip_log if skip_log is not None else sources_lib.SkipLog()
  built = []
  for name, source_cfg in data_config.source_items(cfg):
    source_dict = dict(source_cfg)
    source_dict["name"] = name
    if source_dict.get("kind") == "tfds":
      source_dict.setdefault("dataset", "")
      source_dict["dataset"] = source_dict["dataset"] or name
    built.append(
      (
        name,
        float(source_cfg.get("weight", 1.0)),
        sources_lib.build_source(source_dict, skip_log=skip_log),
      )
    )
  return built


def dataset_size(cfg: Mapping[str, Any]) -> int:
  """Examples (clips + images) over all sources: what one "epoch" of the mixture means."""
  return sum(len(source) for _, _, source in build_sources(cfg))


@dataclasses.dataclass
class Loader:
  """A configured pipeline: `iter(loader)` gives grain's checkpointable iterator over host batches.

  dataset: the grain IterDataset; skip_log: skipped examples (readable during and after a run);
  source_names: names of the sources, indexed by the batch's "source" field; host_batch_size: rows per batch.
  """

  dataset: grain.IterDataset
  skip_log: sources_lib.SkipLog
  source_names: tuple[str, ...]
  host_batch_size: int
  num_batches: int | None = None  # finite loaders (eval) only
  label_names: tuple[str, ...] = ()

  def __iter__(self) -> grain.DatasetIterator:
    iterator = iter(self.dataset)
    _LIVE_ITERATORS.add(iterator)
    return iterator

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("the pretraining loader is infinite")
    return self.num_batches


# grain's batch-prefetch iterator closes itself again from __del__ during interpreter teardown, when
# the modules it needs are gone, and prints a traceback. Iterators still alive at exit are closed here
# while everything exists, and their second close becomes a no-op.
_LIVE_ITERATORS: "weakref.WeakSet[grain.DatasetIterator]" = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
  for iterator in list(_LIVE_ITERATORS):
    iterator.close()
    iterator.close = lambda: None


def make_training_loader(
  data_cfg: Mapping[str, Any],
  *,
  global_batch_size: int,
  seed: int,
  make_example,
  frame_pairs: bool = False,
  process_index: int | None = None,
  process_count: int | None = None,
  description: str = "Training",
) -> Loader:
  """Infinite stream of this process's training batches over the mixed sources of `data_cfg`.

  The config is checked once, here (`validate_data_config(data_cfg, frame_pairs=frame_pairs)`).
  Row r of this process is the example at its position of the global stream (stream.GlobalRows),
  made by the map `make_example(source, source_index, run_seed)` returns (run_seed: data.shuffle_seed
  when set, else `seed`); b = global_batch_size / process_count rows per batch. label_names: the
  source's class names when there is one source. Raises ValueError naming the field of a bad config,
  and `batch_size` when the global batch does not split over processes.
  """
  validate_data_config(data_cfg, frame_pairs=frame_pairs)
  process_index, process_count = stream.resolve_processes(process_index, process_count)
  host_batch = stream.host_batch_size(int(global_batch_size), process_count)
  skip_log = sources_lib.SkipLog()
  built = build_sources(data_cfg, skip_log)
  run_seed = stream.run_seed(data_cfg, seed)
  mixed = stream.training_mixture(
    built,
    seed=run_seed,
    process_index=process_index,
    process_count=process_count,
    make_example=lambda source, source_index: make_example(source, source_index, run_seed),
    host_batch_size=host_batch,
  )
  dataset = stream.finish(mixed, data_cfg, host_batch, drop_remainder=True)
  logging.info(
    "%s data (process %d/%d): %s; host batch %d",
    description,
    process_index,
    process_count,
    ", ".join(
      f"{name} ({len(source)} examples, weight {weight:g})" for name, weight, source in built
    ),
    host_batch,
  )
  labels = tuple(built[0][2].label_names) if len(built) == 1 else ()
  return Loader(dataset, skip_log, tuple(name for name, _, _ in built), host_batch, None, labels)


def make_pretrain_loader(
  data_cfg: Mapping[str, Any],
  *,
  global_batch_size: int,
  image_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Loader:
  """Infinite stream of this process's pretraining batches (see the module docstring).

  Each batch: {"views": uint8 [global_batch_size / process_count, 2, image_size, image_size, 3],
  "label": int32 [b] (-1 when unknown), "source": int32 [b] (index into loader.source_names)}.
  With data.photometric_on_device resolved on, the views are only decoded, cropped and flipped (the
  specs' head, device_photometric.split_spec); the step applies the rest.
  Raises ValueError naming `batch_size` when the global batch does not split over processes.
  """

  view_specs = tuple(data_cfg.get("view_augmentations", augment.DEFAULT_VIEW_SPECS))
  if device_photometric.device_plan(data_cfg) is not None:  # the step does the photometric tail
    view_specs = device_photometric.split_views(view_specs)[0]

  def make_example(source, source_index, run_seed):
    gap = data_config.frame_gap(data_cfg)
    return PairMaker(
      source,
      source_index,
      view_specs=view_specs,
      image_size=image_size,
      crop_scale=data_cfg.get("crop_scale", data_config.DEFAULT_CROP_SCALE),
      frame_gap_seconds=gap.seconds,
      frame_gap_range=gap.range,
      seed=run_seed,
    )

  return make_training_loader(
    data_cfg,
    global_batch_size=global_batch_size,
    seed=seed,
    make_example=make_example,
    frame_pairs=True,
    process_index=process_index,
    process_count=process_count,
    description="Pretraining",
  )


def _single_source(data_cfg_or_source, skip_log: sources_lib.SkipLog):
  """The source of an eval/clip loader: a built source, a data config with one source, or one source cfg."""
  if isinstance(data_cfg_or_source, sources_lib.Source):
    return data_cfg_or_source.name, data_cfg_or_source
  cfg = data_cfg_or_source
  if "sources" not in cfg:
    cfg = {"sources": {str(cfg.get("name") or cfg.get("kind")): cfg}}
  built = build_sources(cfg, skip_log)
  if len(built) != 1:
    raise ValueError(
      f"data.sources: evaluation reads one source, got {len(built)} ({[n for n, _, _ in built]})"
    )
  name, _, source = built[0]
  return name, source


def _finite_loader(
  data_cfg_or_source, *, batch_size, process_index, process_count, mode, make_example
) -> Loader:
  skip_log = sources_lib.SkipLog()
  name, source = _single_source(data_cfg_or_source, skip_log)
  process_index, process_count = stream.resolve_processes(process_index, process_count)
  host_batch = stream.host_batch_size(int(batch_size), process_count)
  cfg = (
    data_cfg_or_source
    if isinstance(data_cfg_or_source, Mapping) or hasattr(data_cfg_or_source, "get")
    else {}
  )
  shard = np.arange(len(source))[process_index::process_count]
  # Every process yields the same number of batches: the largest share, rounded up to whole batches.
  largest_share = -(-len(source) // process_count)
  num_batches = -(-largest_share // host_batch)
  example = make_example(source, shard)
  dataset = grain.MapDataset.range(num_batches * host_batch).map(example)
  loader_cfg = {
    k: cfg.get(k) for k in ("num_threads", "prefetch_elements") if cfg.get(k) is not None
  }
  loader_cfg["prefetch_batches"] = 0
  iter_dataset = stream.finish(dataset, loader_cfg, host_batch, drop_remainder=False)
  logging.info(
    "%s data %r: %d examples, process %d/%d reads %d in %d batches of %d",
    mode,
    name,
    len(source),
    process_index,
    process_count,
    len(shard),
    num_batches,
    host_batch,
  )
  return Loader(iter_dataset, skip_log, (name,), host_batch, num_batches, tuple(source.label_names))


def make_eval_loader(
  data_cfg_or_source,
  *,
  batch_size: int,
  image_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Loader:
  """One pass over one source, in order: {"image": uint8 [b, S, S, 3], "label": int32 [b], "valid": bool [b]}.

  batch_size is GLOBAL (b = batch_size / process_count). Images go through `eval_augmentation`
  (default: shorter side to S / 0.875, bicubic, centre crop S); videos give their middle frame.
  Rows past the end, and examples that cannot be decoded, have valid = False (label -1, zero pixels).
  `data_cfg_or_source`: a data config with exactly one source, one source config, or a built source.
  """
  spec = data_config.EVAL_AUGMENTATION
  if hasattr(data_cfg_or_source, "get") and data_cfg_or_source.get("eval_augmentation"):
    spec = data_cfg_or_source.get("eval_augmentation")
  return _finite_loader(
    data_cfg_or_source,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
    mode="image",
    make_example=lambda source, shard: examples.EvalExample(
      source, shard, mode="image", spec=spec, image_size=image_size
    ),
  )


def make_clip_loader(
  data_cfg_or_source,
  *,
  batch_size: int,
  image_size: int,
  train: bool = False,
  seed: int = 0,
  num_frames: int | None = None,
  stride: int | None = None,
  num_temporal_views: int | None = None,
  num_spatial_views: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Loader:
  """Video clips: {"video": uint8 [b, T, S, S, 3], "label": int32 [b], "valid": bool [b]}.

  T = num_frames frames `stride` apart (in stored frames for prepared clips, source frames for raw).
  train=True: an infinite, shuffled, sharded stream (like pretraining) of random windows through
  `clip_augmentation`; `data_cfg_or_source` must be a data config (sources may be mixed).
  train=False: one pass over one source, padded with valid = False rows. With
  V = num_temporal_views x num_spatial_views > 1 the video field is [b, V, T, S, S, 3]: windows
  spread uniformly in time, crops along the longer side after resizing the shorter side to S
  (average the model's outputs over V). Arguments left None come from the config
  (clip_num_frames, clip_stride, num_temporal_views, num_spatial_views).
  """
  cfg = data_cfg_or_source if hasattr(data_cfg_or_source, "get") else {}

  def pick(value, field, default):
    return int(value if value is not None else cfg.get(field, default))

  frames, frame_stride = pick(num_frames, "clip_num_frames", 16), pick(stride, "clip_stride", 4)
  if train:

    def make_example(source, source_index, run_seed):
      del source_index
      return ClipMaker(
        source,
        spec=cfg.get("clip_augmentation", data_config.CLIP_AUGMENTATION),
        image_size=image_size,
        crop_scale=cfg.get("crop_scale", data_config.DEFAULT_CROP_SCALE),
        num_frames=frames,
        stride=frame_stride,
        seed=run_seed,
      )

    return make_training_loader(
      cfg,
      global_batch_size=batch_size,
      seed=seed,
      make_example=make_example,
      process_index=process_index,
      process_count=process_count,
      description="Clip training",
    )
  options = dict(
    num_frames=frames,
    stride=frame_stride,
    num_temporal_views=pick(num_temporal_views, "num_temporal_views", 1),
    num_spatial_views=pick(num_spatial_views, "num_spatial_views", 1),
  )
  return _finite_loader(
    data_cfg_or_source,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
    mode="video",
    make_example=lambda source, shard: examples.EvalExample(
      source, shard, mode="video", spec="decode", image_size=image_size, **options
    ),
  )
