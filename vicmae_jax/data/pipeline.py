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
    -> optional worker processes -> batches assembled ahead in a thread

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

The data config (`default_data_config()`), field by field:

  sources                   name -> source; at least one. Each source:
    kind                    "prepared" (ArrayRecord clip shards from prepare.py), "raw" (video files
                            decoded on the fly), "tfds" (a TFDS image dataset in array_record format),
                            "image_folder" (<path>/<class>/*.jpg|png), "npz" (images uint8
                            [N, H, W, 3] + labels [N] in one .npz, e.g. the demo's held-out images)
    path                    prepared: output dir of prepare.py (or a shard glob); raw: video root;
                            image_folder: root; npz: the file; tfds: the TFDS data_dir ("" = default)
    split                   prepared: shard prefix ("train", "val"); tfds: split ("train",
                            "validation", "train[:10%]"); raw: annotation split
    weight                  relative mixing weight (> 0); sources are drawn in these proportions
    format                  raw: "kinetics" | "mit" | "ssv2" | "folder"
    annotations             raw: Kinetics/MiT csv or SSv2 split json
    labels                  raw: SSv2 labels.json / MiT categories file ("" = beside annotations)
    dataset                 tfds: dataset name, e.g. "imagenet2012" ("" = the source's name)
    short_side              raw: resize decoded frames so the shorter side is this (0 = native)
  frame_gap_seconds         time between the two frames of a pair (1.06 s; 0 = same frame twice);
                            a clip shorter than the gap gives its first and last frames, but a gap
                            longer than every video source's longest clip is refused (prepared: from
                            the meta json; raw: the longest of up to 32 files, evenly spread over the
                            listing, probed from their headers)
  frame_gap_range           () or (lo, hi): draw the gap uniformly in [lo, hi] seconds instead
  view_augmentations        two augmentation specs (see augment.py), view 1 and view 2
  crop_scale                (lo, hi) area range of random_resized_crop when a spec leaves it out
  eval_augmentation         spec for evaluation images (resize shorter side to S/0.875, centre crop)
  clip_augmentation         spec applied identically to every frame of a training clip
  clip_num_frames           frames per clip for video models (16)
  clip_stride               frames between clip frames, at the stored rate (prepared) or the
                            source rate (raw) (4)
  num_temporal_views        evaluation clips per video, spread uniformly in time (1)
  num_spatial_views         evaluation crops per clip along the longer side (1)
  shuffle_seed              -1: derive from the run seed; else its own seed for order and augmentation
  num_threads               threads decoding/augmenting in each process (-1: one per CPU core)
  worker_count              worker processes (0: all in the training process, with threads)
  prefetch_elements         examples in flight in the thread pool
  prefetch_batches          finished batches kept ready by a background thread (0: none)
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from vicmae_jax.data import augment
from vicmae_jax.data import sampling
from vicmae_jax.data import sources as sources_lib

_SOURCE_FIELDS = (
  "kind",
  "path",
  "split",
  "weight",
  "format",
  "annotations",
  "labels",
  "dataset",
  "short_side",
)
_DECODE_ERRORS = (
  OSError,
  ValueError,
  SyntaxError,
  EOFError,
)  # damaged images: decode_image (ValueError), Pillow


def default_source_config(**overrides: Any) -> ml_collections.ConfigDict:
  """One `data.sources.<name>` entry with every field present (see the module docstring)."""
  cfg = ml_collections.ConfigDict(
    dict(
      kind="prepared",
      path="",
      split="train",
      weight=1.0,
      format="",
      annotations="",
      labels="",
      dataset="",
      short_side=256,
    )
  )
  unknown = set(overrides) - set(_SOURCE_FIELDS)
  if unknown:
    raise ValueError(f"unknown source field(s) {sorted(unknown)}; fields are {_SOURCE_FIELDS}")
  cfg.update(overrides)
  return cfg


def default_data_config() -> ml_collections.ConfigDict:
  """The data config schema with defaults (fields documented in the module docstring)."""
  cfg = ml_collections.ConfigDict()
  cfg.sources = ml_collections.ConfigDict()
  cfg.frame_gap_seconds = sampling.DEFAULT_FRAME_GAP_SECONDS
  cfg.frame_gap_range = ()
  cfg.view_augmentations = tuple(augment.DEFAULT_VIEW_SPECS)
  cfg.crop_scale = (0.08, 1.0)
  cfg.eval_augmentation = "decode|resize_short|center_crop"
  cfg.clip_augmentation = "decode|random_resized_crop|flip"
  cfg.clip_num_frames = 16
  cfg.clip_stride = 4
  cfg.num_temporal_views = 1
  cfg.num_spatial_views = 1
  cfg.shuffle_seed = -1
  cfg.num_threads = -1
  cfg.worker_count = 0
  cfg.prefetch_elements = 256
  cfg.prefetch_batches = 0
  return cfg


# --------------------------------------------------------------------------------------------------
# Validation and sizes.


def _source_items(cfg: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
  """(name, source cfg) pairs, sorted by name; accepts a mapping or a list of dicts with `name`."""
  sources = cfg.get("sources") if isinstance(cfg, Mapping) or hasattr(cfg, "get") else None
  if not sources:
    raise ValueError(
      "data.sources: no sources configured (add data.sources.<name> with kind and path)"
    )
  if isinstance(sources, (list, tuple)):
    items = []
    for position, source in enumerate(sources):
      name = source.get("name") or f"source{position}"
      items.append((str(name), source))
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
      raise ValueError(f"data.sources: names must be unique, got {names}")
    return sorted(items, key=lambda item: item[0])
  return [(str(name), sources[name]) for name in sorted(sources.keys())]


def validate_data_config(cfg: Mapping[str, Any], *, frame_pairs: bool = True) -> None:
  """Checks every field; raises ValueError starting with `data.<field>:`.

  Decodes nothing: with frame_pairs (the data feeds frame pairs, as in pretraining), a frame gap
  longer than the longest clip of every video source fails here, naming data.frame_gap_seconds (or
  data.frame_gap_range). The longest clip of a prepared source is in its meta json; a raw source's
  is the longest of up to sources.RAW_PROBE_FILES of its files, read from their container headers.
  """
  items = _source_items(cfg)
  for name, source in items:
    where = f"data.sources.{name}"
    unknown = set(source.keys()) - set(_SOURCE_FIELDS) - {"name", "data_dir"}
    if unknown:
      raise ValueError(
        f"{where}: unknown field(s) {sorted(unknown)}; fields are {', '.join(_SOURCE_FIELDS)}"
      )
    kind = source.get("kind")
    if kind not in sources_lib.KINDS:
      raise ValueError(f"{where}.kind: must be one of {sources_lib.KINDS}, got {kind!r}")
    weight = float(source.get("weight", 1.0))
    if not weight > 0:
      raise ValueError(f"{where}.weight: must be > 0, got {weight}")
    path = source.get("path") or ""
    if kind in ("prepared", "raw", "image_folder", "npz"):
      if not path:
        raise ValueError(f"{where}.path: required for kind {kind!r}")
      expanded = os.path.expanduser(str(path))
      if not (
        os.path.exists(expanded) or (kind == "prepared" and any(c in expanded for c in "*?["))
      ):
        raise ValueError(f"{where}.path: not found: {path}")
    if kind == "raw":
      from vicmae_jax.data import formats

      if (source.get("format") or "folder") not in formats.FORMATS:
        raise ValueError(
          f"{where}.format: must be one of {formats.FORMATS}, got {source.get('format')!r}"
        )
      if (source.get("format") or "folder") != "folder" and not source.get("annotations"):
        raise ValueError(f"{where}.annotations: required for format {source.get('format')!r}")
      if source.get("annotations") and not os.path.exists(
        os.path.expanduser(str(source.get("annotations")))
      ):
        raise ValueError(f"{where}.annotations: not found: {source.get('annotations')}")
    if kind == "tfds" and path and not os.path.isdir(os.path.expanduser(str(path))):
      raise ValueError(f"{where}.path: TFDS data_dir not found: {path}")
  gap_range = tuple(cfg.get("frame_gap_range") or ()) or None
  gap_seconds = cfg.get("frame_gap_seconds", sampling.DEFAULT_FRAME_GAP_SECONDS)
  try:
    sampling.validate_gap(gap_seconds, gap_range)
  except ValueError as error:
    field = "frame_gap_range" if gap_range is not None else "frame_gap_seconds"
    raise ValueError(f"data.{field}: {error}") from None
  if frame_pairs:
    _check_gap_fits_clips(items, gap_seconds, gap_range)
  specs = tuple(cfg.get("view_augmentations", augment.DEFAULT_VIEW_SPECS))
  if len(specs) != 2:
    raise ValueError(
      f"data.view_augmentations: need exactly two specs (one per view), got {len(specs)}"
    )
  crop_scale = tuple(cfg.get("crop_scale", (0.08, 1.0)))
  for field, spec in [("view_augmentations", s) for s in specs] + [
    ("eval_augmentation", cfg.get("eval_augmentation", "decode|resize_short|center_crop")),
    ("clip_augmentation", cfg.get("clip_augmentation", "decode|random_resized_crop|flip")),
  ]:
    try:
      augment.build(spec, image_size=224, crop_scale=crop_scale)
    except ValueError as error:
      raise ValueError(f"data.{field}: {error}") from None
  for field in ("clip_num_frames", "clip_stride", "num_temporal_views", "num_spatial_views"):
    if int(cfg.get(field, 1)) < 1:
      raise ValueError(f"data.{field}: must be >= 1, got {cfg.get(field)}")
  for field in ("worker_count", "prefetch_elements", "prefetch_batches"):
    if int(cfg.get(field, 0)) < 0:
      raise ValueError(f"data.{field}: must be >= 0, got {cfg.get(field)}")
  if int(cfg.get("num_threads", -1)) < -1:
    raise ValueError(
      f"data.num_threads: must be >= 0 or -1 (one per core), got {cfg.get('num_threads')}"
    )


def _check_gap_fits_clips(items, gap_seconds: float, gap_range: tuple[float, float] | None) -> None:
  """Raises naming the gap field when the smallest gap asked for is longer than every video source's
  longest clip; warns for a single such source, and for a raw source most of whose probed clips are
  shorter than the gap.

  Prepared sources state their longest clip in the meta json; raw sources are probed
  (sources.raw_clip_seconds: the container headers of up to RAW_PROBE_FILES files, a deterministic
  sample; the longest probed clip stands for the source). Unknown lengths (a meta json without
  durations, a raw source none of whose sampled files open) never fail: a clip shorter than the gap
  gives its largest gap, so only a gap that no clip at all can hold is a mistake.
  """
  longest: dict[str, float] = {}
  described: dict[str, str] = {}
  probed: dict[str, sources_lib.ProbedClipSeconds] = {}
  for name, source in items:
    kind = source.get("kind")
    if kind == "raw":
      try:
        lengths = sources_lib.raw_clip_seconds(
          source.get("format") or "folder",
          str(source.get("path")),
          annotations=source.get("annotations") or None,
          split=source.get("split") or None,
          labels=source.get("labels") or None,
        )
      except (OSError, ValueError):
        return  # an unreadable listing: building the source names the file
      if lengths.longest is None:
        return
      longest[name], probed[name] = lengths.longest, lengths
      described[name] = f"{name}: {lengths.longest:.3g} s{lengths.describe()}"
    elif kind == "prepared":
      seconds = sources_lib.prepared_max_clip_seconds(
        str(source.get("path")), source.get("split") or "train"
      )
      if seconds is None:
        return
      longest[name] = seconds
      described[name] = f"{name}: {seconds:.3g} s"
  if not longest:
    return
  if gap_range is not None:
    field, smallest, largest = "frame_gap_range", float(gap_range[0]), float(gap_range[1])
  else:
    field, smallest, largest = "frame_gap_seconds", float(gap_seconds), float(gap_seconds)
  if smallest > max(longest.values()) + 1e-6:
    raise ValueError(
      f"data.{field}: a gap of {smallest:g} s is longer than the longest clip of every video source "
      f"({', '.join(described.values())}), so no frame pair can be that far apart: ask for a shorter "
      "gap or use longer clips"
    )
  for name, seconds in longest.items():
    if largest > seconds + 1e-6:
      logging.warning(
        "data.sources.%s: its longest clip lasts %.3g s, less than the frame gap of up to %g s "
        "(data.%s); such clips give their largest gap instead",
        name,
        seconds,
        largest,
        field,
      )
    elif name in probed:
      lengths = probed[name]
      shorter = sum(1 for s in lengths.seconds if largest > s + 1e-6)
      if 2 * shorter > len(lengths.seconds):
        logging.warning(
          "data.sources.%s: %d of its %d probed clips last less than the frame gap of up to %g s "
          "(data.%s); such clips give their largest gap (first and last frame) instead",
          name,
          shorter,
          len(lengths.seconds),
          largest,
          field,
        )


def build_sources(
  cfg: Mapping[str, Any], skip_log: sources_lib.SkipLog | None = None
) -> list[tuple[str, float, Any]]:
  """[(name, weight, source)] for every configured source, sharing one skip log."""
  skip_log = skip_log if skip_log is not None else sources_lib.SkipLog()
  built = []
  for name, source_cfg in _source_items(cfg):
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


# --------------------------------------------------------------------------------------------------
# Pretraining.


def _seed32(*values: int) -> int:
  return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  return process_index, process_count


def _host_batch(batch_size: int, process_count: int, field: str = "batch_size") -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
      f"{field}: global batch {batch_size} is not a positive multiple of the process count {process_count}"
    )
  return batch_size // process_count


def _num_threads(cfg: Mapping[str, Any]) -> int:
  threads = int(cfg.get("num_threads", -1))
  return max(1, os.cpu_count() or 1) if threads < 0 else threads


class LazyAugmentation:
  """Builds `augment.build(self.spec, image_size=self.image_size, crop_scale=self.crop_scale)` on
  first use, in whichever process runs the map (grain workers receive it pickled, without it)."""

  _augmentation: augment.Augmentation | None = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_augmentation", None)
    return state

  def augmentation(self) -> augment.Augmentation:
    if self._augmentation is None:
      self._augmentation = augment.build(
        self.spec, image_size=self.image_size, crop_scale=getattr(self, "crop_scale", None)
      )
    return self._augmentation


class PairMaker:
  """(record index, epoch) -> {"views": uint8 [2, S, S, 3], "label", "source"} or a Skipped marker.

  Augmentations are built on first use so the object pickles into worker processes.
  """

  def __init__(
    self,
    source,
    source_index: int,
    *,
    view_specs,
    image_size,
    crop_scale,
    frame_gap_seconds,
    frame_gap_range,
    seed,
  ):
    self.source = source
    self.source_index = source_index
    self.source_key = sampling.source_key(source.name)
    self.view_specs = tuple(view_specs)
    self.image_size = int(image_size)
    self.crop_scale = tuple(crop_scale)
    self.frame_gap_seconds = float(frame_gap_seconds)
    self.frame_gap_range = tuple(frame_gap_range) if frame_gap_range else None
    self.seed = int(seed)
    self._views = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_views"] = None
    return state

  def views(self) -> tuple[augment.Augmentation, ...]:
    if self._views is None:
      self._views = augment.build_views(
        self.view_specs, image_size=self.image_size, crop_scale=self.crop_scale
      )
    return self._views

  def rng(self, record_index: int, epoch: int, stream: int) -> np.random.Generator:
    return sampling.example_rng(self.seed, self.source_key, record_index, epoch, stream)

  def frames(
    self, example: Mapping[str, Any], rng: np.random.Generator
  ) -> list[Any] | sources_lib.Skipped:
    """The two images to augment: JPEG bytes (video frames) or one decoded uint8 array used twice."""
    kind = example["kind"]
    if kind == "image":
      try:
        image = sources_lib.decode_image(example["image"])
      except ValueError as error:
        return self.source.skip(
          f"record {example['record_index']}", "undecodable image", str(error)
        )
      return [image, image]
    gap = sampling.draw_gap_seconds(rng, self.frame_gap_seconds, self.frame_gap_range)
    if kind == "clip":
      first, second = sampling.pair_indices(example["timestamps"], gap, rng)
      return [example["frames"][first], example["frames"][second]]
    times = sampling.pair_times(example["duration_s"], gap, rng)
    decoded = self.source.decode(example, times)
    if isinstance(decoded, sources_lib.Skipped):
      return decoded
    return [decoded[0], decoded[1]]

  def __call__(self, item: tuple[int, int]) -> dict[str, np.ndarray] | sources_lib.Skipped:
    record_index, epoch = item
    example = self.source[record_index]
    if isinstance(example, sources_lib.Skipped):
      return example
    try:
      images = self.frames(example, self.rng(record_index, epoch, sampling.STREAM_SAMPLING))
    except sources_lib.RecordReadError as error:
      return self.source.skip(example["clip_id"], "unreadable record", str(error))
    if isinstance(images, sources_lib.Skipped):
      return images
    views = []
    for view_index, (view, image) in enumerate(zip(self.views(), images)):
      try:
        views.append(view(image, self.rng(record_index, epoch, sampling.STREAM_VIEW + view_index)))
      except _DECODE_ERRORS as error:
        return self.source.skip(
          example.get("clip_id") or f"record {record_index}", "undecodable frame", str(error)
        )
    return {
      "views": np.stack(views),
      "label": np.int32(example["label"]),
      "source": np.int32(self.source_index),
    }


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


def _finish(
  dataset: grain.MapDataset, cfg: Mapping[str, Any], host_batch: int, *, drop_remainder: bool
) -> grain.IterDataset:
  """Threads -> batch -> optional worker processes -> batches ready ahead in a thread.

  The batches are the same whatever the worker count (see `WorkerOrder`).
  """
  worker_count = int(cfg.get("worker_count", 0))
  if worker_count > 1:
    dataset = grain.MapDataset.range(
      WorkerOrder.length(len(dataset), host_batch, worker_count)
    ).map(WorkerOrder(dataset, host_batch, worker_count))
  read_options = grain.ReadOptions(
    num_threads=_num_threads(cfg), prefetch_buffer_size=int(cfg.get("prefetch_elements", 256))
  )
  iter_dataset = dataset.to_iter_dataset(read_options).batch(
    host_batch, drop_remainder=drop_remainder
  )
  if worker_count > 0:
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  prefetch_batches = int(cfg.get("prefetch_batches", 0))
  if prefetch_batches > 0:
    iter_dataset = grain.experimental.ThreadPrefetchIterDataset(
      iter_dataset, prefetch_buffer_size=prefetch_batches
    )
  return iter_dataset


class WorkerOrder:
  """Element m of the dataset handed to grain's worker processes -> element of the in-process order.

  grain gives worker w the elements w, w + W, w + 2W, ... (W workers), each worker batches its own
  elements, and batches are taken from the workers in turn. Element m is therefore row t % b of the
  (t // b)-th batch of worker m % W (t = m // W), which is batch (t // b) * W + m % W of the stream:
  reading that element there makes the batches identical for every worker count.
  """

  def __init__(self, dataset: grain.MapDataset, host_batch: int, workers: int):
    self.dataset, self.host_batch, self.workers = dataset, int(host_batch), int(workers)

  @staticmethod
  def length(length: int, host_batch: int, workers: int) -> int:
    return length // (host_batch * workers) * (host_batch * workers)

  def position(self, element: int) -> int:
    worker, t = element % self.workers, element // self.workers
    batch, row = divmod(t, self.host_batch)
    return (batch * self.workers + worker) * self.host_batch + row

  def __call__(self, element: int) -> Any:
    return self.dataset[self.position(int(element))]


class EpochOrder:
  """Position in one source's endless stream -> (record index, epoch): a fresh permutation every epoch.

  The permutation of epoch e is a function of (seed, e) only. (grain's index_shuffle takes
  milliseconds per element on small datasets, a numpy permutation per epoch costs microseconds per
  element at any size.)
  """

  def __init__(self, num_records: int, seed: int):
    self.num_records = int(num_records)
    self.seed = int(seed)
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"num_records": self.num_records, "seed": self.seed}

  def __setstate__(self, state):
    self.__init__(state["num_records"], state["seed"])

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      order = self._cache.get(epoch)
      if order is None:
        order = np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(
          self.num_records
        )
        # Threads may straddle an epoch boundary: keep the newest two epochs.
        self._cache = {e: o for e, o in self._cache.items() if e >= epoch - 1}
        self._cache[epoch] = order
      return order

  def __call__(self, position: int) -> tuple[int, int]:
    epoch, offset = divmod(int(position), self.num_records)
    return int(self.permutation(epoch)[offset]), epoch


class _SourceStream:
  """Position in one source's stream -> (source index, record index, epoch)."""

  def __init__(self, source_index: int, order: EpochOrder):
    self.source_index, self.order = source_index, order

  def __call__(self, position: int, _: Any = None) -> tuple[int, int, int]:
    return (self.source_index, *self.order(position))


# A position whose example cannot be used (a corrupt record, an undecodable video) takes another
# record of the same source; this many failures in a row mean the source itself is broken.
MAX_REPLACEMENTS = 64


class GlobalRows:
  """Row of this process's stream -> the example at the matching position of the global stream.

  The global stream is the same on every process: position g -> (source, record, epoch) through
  the weighted mixture (grain MapDataset.mix) of the sources' streams, each a new permutation of the
  source's records every epoch. It is cut into global batches of host_batch * process_count rows and
  process p reads rows [p * host_batch, (p + 1) * host_batch) of each, so the global batches (and,
  since every draw is keyed by record and epoch, their pixels) do not depend on the process count.
  An example that cannot be used is replaced by a record of the same source drawn from
  (seed, source, g, attempt) alone, which keeps that property (the replacement repeats its record's
  draws of that epoch); it raises after MAX_REPLACEMENTS failures in a row.
  """

  def __init__(
    self,
    selection: grain.MapDataset,
    makers: Sequence[Any],
    sources: Sequence[Any],
    *,
    seed: int,
    host_batch: int,
    process_index: int,
    process_count: int,
  ):
    self.selection, self.makers, self.sources = selection, list(makers), list(sources)
    self.seed, self.host_batch = int(seed), int(host_batch)
    self.process_index, self.process_count = int(process_index), int(process_count)

  def __len__(self) -> int:
    global_batch = self.host_batch * self.process_count
    return len(self.selection) // global_batch * self.host_batch

  def global_position(self, row: int) -> int:
    batch, offset = divmod(int(row), self.host_batch)
    return (batch * self.process_count + self.process_index) * self.host_batch + offset

  def __call__(self, row: int) -> Any:
    position = self.global_position(row)
    source_index, record_index, epoch = self.selection[position]
    make = self.makers[source_index]
    example = make((record_index, epoch))
    attempt = 0
    while isinstance(example, sources_lib.Skipped):
      attempt += 1
      source = self.sources[source_index]
      if attempt > MAX_REPLACEMENTS:
        raise RuntimeError(
          f"data.sources.{source.name}: {MAX_REPLACEMENTS + 1} records in a row could not be used (last: "
          f"{example.key}: {example.reason} {example.detail}); {source.skip_log.count} bad records so far"
        )
      replacement = np.random.default_rng(
        np.random.SeedSequence([self.seed, sampling.source_key(source.name), position, attempt])
      )
      example = make((int(replacement.integers(len(source))), epoch))
    if isinstance(example, dict):  # how many records this row replaced (counted by the loop)
      example["skipped"] = np.int32(attempt)
    return example


def _training_mixture(
  data_cfg,
  built,
  *,
  seed: int,
  process_index: int,
  process_count: int,
  make_example,
  host_batch_size: int = 1,
) -> grain.MapDataset:
  """This process's rows of the global stream (see GlobalRows), made by make_example(source, source index).

  host_batch_size: rows per process and global batch. With the default of 1 the processes take
  alternate positions: every global batch then holds the same examples for any process count,
  in another row order.
  """
  del data_cfg
  streams, weights, makers = [], [], []
  for source_index, (name, weight, source) in enumerate(built):
    order = EpochOrder(len(source), _seed32(seed, sampling.source_key(name)))
    streams.append(
      grain.MapDataset.range(len(source))
      .repeat()
      .map_with_index(_SourceStream(source_index, order))
    )
    weights.append(weight)
    makers.append(make_example(source, source_index))
  selection = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
  rows = GlobalRows(
    selection,
    makers,
    [source for _, _, source in built],
    seed=seed,
    host_batch=host_batch_size,
    process_index=process_index,
    process_count=process_count,
  )
  return grain.MapDataset.range(len(rows)).map(rows)


def _run_seed(data_cfg, seed: int) -> int:
  shuffle_seed = int(data_cfg.get("shuffle_seed", -1))
  return int(seed) if shuffle_seed < 0 else shuffle_seed


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
  Raises ValueError naming `batch_size` when the global batch does not split over processes.
  """
  validate_data_config(data_cfg)
  process_index, process_count = _processes(process_index, process_count)
  host_batch = _host_batch(int(global_batch_size), process_count)
  skip_log = sources_lib.SkipLog()
  built = build_sources(data_cfg, skip_log)
  seed = _run_seed(data_cfg, seed)
  gap_range = tuple(data_cfg.get("frame_gap_range") or ())

  def make_example(source, source_index):
    return PairMaker(
      source,
      source_index,
      view_specs=data_cfg.get("view_augmentations", augment.DEFAULT_VIEW_SPECS),
      image_size=image_size,
      crop_scale=data_cfg.get("crop_scale", (0.08, 1.0)),
      frame_gap_seconds=data_cfg.get("frame_gap_seconds", sampling.DEFAULT_FRAME_GAP_SECONDS),
      frame_gap_range=gap_range,
      seed=seed,
    )

  mixed = _training_mixture(
    data_cfg,
    built,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    make_example=make_example,
    host_batch_size=host_batch,
  )
  dataset = _finish(mixed, data_cfg, host_batch, drop_remainder=True)
  logging.info(
    "Pretraining data (process %d/%d): %s; host batch %d",
    process_index,
    process_count,
    ", ".join(
      f"{name} ({len(source)} examples, weight {weight:g})" for name, weight, source in built
    ),
    host_batch,
  )
  return Loader(dataset, skip_log, tuple(name for name, _, _ in built), host_batch)


class ClipMaker(LazyAugmentation):
  """(record index, epoch) -> {"video": uint8 [T, S, S, 3], "label", "valid"} for training video models.

  A random window of T frames `stride` apart; the clip augmentation is drawn once per clip and
  applied identically to every frame (same crop, flip and colours across time).
  """

  def __init__(self, source, *, spec, image_size, crop_scale, num_frames, stride, seed):
    self.source, self.spec, self.image_size, self.crop_scale = (
      source,
      spec,
      int(image_size),
      tuple(crop_scale),
    )
    self.num_frames, self.stride, self.seed = int(num_frames), int(stride), int(seed)
    self.source_key = sampling.source_key(source.name)

  def __call__(self, item: tuple[int, int]) -> dict[str, np.ndarray] | sources_lib.Skipped:
    record_index, epoch = item
    example = self.source[record_index]
    if isinstance(example, sources_lib.Skipped):
      return example
    rng = sampling.example_rng(
      self.seed, self.source_key, record_index, epoch, sampling.STREAM_SAMPLING
    )
    if example["kind"] == "clip":
      indices = sampling.clip_indices(len(example["frames"]), self.num_frames, self.stride, rng)
      try:
        frames = [example["frames"][i] for i in indices]
      except sources_lib.RecordReadError as error:
        return self.source.skip(example["clip_id"], "unreadable record", str(error))
    elif example["kind"] == "video":
      fps = _source_fps(self.source, example)
      times = sampling.clip_times(example["duration_s"], self.num_frames, self.stride / fps, rng)
      decoded = self.source.decode(example, times)
      if isinstance(decoded, sources_lib.Skipped):
        return decoded
      frames = list(decoded)
    else:
      raise ValueError(f"source {self.source.name!r} holds images; clip loaders need video sources")
    view_seed = sampling.example_rng(
      self.seed, self.source_key, record_index, epoch, sampling.STREAM_VIEW
    ).integers(2**63)
    try:
      video = np.stack(
        [self.augmentation()(frame, np.random.default_rng(view_seed)) for frame in frames]
      )
    except _DECODE_ERRORS as error:
      return self.source.skip(example["clip_id"], "undecodable frame", str(error))
    return {"video": video, "label": np.int32(example["label"]), "valid": np.bool_(True)}


# --------------------------------------------------------------------------------------------------
# Evaluation: deterministic, padded, finite.


def _spatial_crops(image: np.ndarray, size: int, num_views: int) -> list[np.ndarray]:
  """Shorter side to `size` (Pillow bilinear), then `num_views` size x size crops evenly spaced along
  the longer side."""
  height, width = image.shape[:2]
  scale = size / min(width, height)
  new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
  array = (
    augment.resize_array(image, *new_size, "pil_bilinear") if new_size != (width, height) else image
  )
  long_axis_extra = max(new_size) - size
  offsets = (
    [long_axis_extra // 2]
    if num_views == 1
    else np.round(np.linspace(0, long_axis_extra, num_views)).astype(int)
  )
  if new_size[0] >= new_size[1]:  # landscape: slide along the width
    top = (new_size[1] - size) // 2
    return [array[top : top + size, o : o + size] for o in offsets]
  left = (new_size[0] - size) // 2
  return [array[o : o + size, left : left + size] for o in offsets]


class _EvalExample(LazyAugmentation):
  """Position in this process's padded share -> one eval row (image or clip) with `valid`."""

  def __init__(
    self,
    source,
    shard: np.ndarray,
    *,
    mode: str,
    spec: str,
    image_size: int,
    num_frames=1,
    stride=1,
    num_temporal_views=1,
    num_spatial_views=1,
  ):
    self.source, self.shard, self.mode, self.spec = source, shard, mode, spec
    self.image_size, self.num_frames, self.stride = int(image_size), int(num_frames), int(stride)
    self.num_temporal_views, self.num_spatial_views = (
      int(num_temporal_views),
      int(num_spatial_views),
    )

  def padding(self) -> dict[str, np.ndarray]:
    s = self.image_size
    if self.mode == "image":
      pixels = np.zeros((s, s, 3), np.uint8)
    else:
      views = self.num_temporal_views * self.num_spatial_views
      shape = (self.num_frames, s, s, 3) if views == 1 else (views, self.num_frames, s, s, 3)
      pixels = np.zeros(shape, np.uint8)
    return {self.mode: pixels, "label": np.int32(-1), "valid": np.bool_(False)}

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    if position >= len(self.shard):
      return self.padding()
    record_index = int(self.shard[position])
    example = self.source[record_index]
    if isinstance(example, sources_lib.Skipped):
      return self.padding()
    try:
      pixels = self.image(example) if self.mode == "image" else self.clip(example)
    except _DECODE_ERRORS as error:
      self.source.skip(
        example.get("clip_id") or f"record {record_index}", "undecodable frame", str(error)
      )
      return self.padding()
    if isinstance(pixels, sources_lib.Skipped):
      return self.padding()
    return {self.mode: pixels, "label": np.int32(example["label"]), "valid": np.bool_(True)}

  def image(self, example) -> np.ndarray | sources_lib.Skipped:
    """The image, or a video's middle frame, through the eval spec: uint8 [S, S, 3]."""
    kind = example["kind"]
    if kind == "image":
      frame = example["image"]
    elif kind == "clip":
      frame = example["frames"][len(example["frames"]) // 2]
    else:
      decoded = self.source.decode(example, [example["duration_s"] / 2])
      if isinstance(decoded, sources_lib.Skipped):
        return decoded
      frame = decoded[0]
    return self.augmentation()(frame, np.random.default_rng(0))

  def clip(self, example) -> np.ndarray | sources_lib.Skipped:
    """Clip views: uint8 [T, S, S, 3], or [V, T, S, S, 3] with V = temporal x spatial views > 1."""
    frames = self.clip_frames(example)
    if isinstance(frames, sources_lib.Skipped):
      return frames
    views = []
    for temporal in frames:  # [T] images of one temporal window
      per_frame = [
        _spatial_crops(sources_lib.decode_image(f), self.image_size, self.num_spatial_views)
        for f in temporal
      ]
      for spatial in range(self.num_spatial_views):
        views.append(np.stack([crops[spatial] for crops in per_frame]))
    out = np.stack(views)
    return out[0] if len(views) == 1 else out

  def clip_frames(self, example) -> list[list[Any]] | sources_lib.Skipped:
    if example["kind"] == "clip":
      windows = sampling.multi_view_clip_indices(
        len(example["frames"]), self.num_frames, self.stride, self.num_temporal_views
      )
      return [[example["frames"][i] for i in window] for window in windows]
    if example["kind"] == "video":
      fps = _source_fps(self.source, example)
      duration = example["duration_s"]
      available = int(math.floor(duration * fps)) + 1
      windows = sampling.multi_view_clip_indices(
        available, self.num_frames, self.stride, self.num_temporal_views
      )
      decoded = self.source.decode(example, (windows.reshape(-1) / fps).tolist())
      if isinstance(decoded, sources_lib.Skipped):
        return decoded
      return [
        list(decoded[i * self.num_frames : (i + 1) * self.num_frames]) for i in range(len(windows))
      ]
    raise ValueError(f"source {self.source.name!r} holds images; clip loaders need video sources")


def _source_fps(source, example) -> float:
  """Frame rate of a raw video (container's, else 30) for stride-in-frames clip sampling."""
  from vicmae_jax.data import video_io

  try:
    fps = video_io.probe(example["path"]).fps
  except video_io.VideoDecodeError:
    fps = None
  return float(fps) if fps else 30.0


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
  process_index, process_count = _processes(process_index, process_count)
  host_batch = _host_batch(int(batch_size), process_count)
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
  iter_dataset = _finish(dataset, loader_cfg, host_batch, drop_remainder=False)
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
  spec = "decode|resize_short|center_crop"
  if hasattr(data_cfg_or_source, "get") and data_cfg_or_source.get("eval_augmentation"):
    spec = data_cfg_or_source.get("eval_augmentation")
  return _finite_loader(
    data_cfg_or_source,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
    mode="image",
    make_example=lambda source, shard: _EvalExample(
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
    validate_data_config(cfg, frame_pairs=False)
    process_index, process_count = _processes(process_index, process_count)
    host_batch = _host_batch(int(batch_size), process_count)
    skip_log = sources_lib.SkipLog()
    built = build_sources(cfg, skip_log)
    run_seed = _run_seed(cfg, seed)

    def make_example(source, source_index):
      del source_index
      return ClipMaker(
        source,
        spec=cfg.get("clip_augmentation", "decode|random_resized_crop|flip"),
        image_size=image_size,
        crop_scale=cfg.get("crop_scale", (0.08, 1.0)),
        num_frames=frames,
        stride=frame_stride,
        seed=run_seed,
      )

    mixed = _training_mixture(
      cfg,
      built,
      seed=run_seed,
      process_index=process_index,
      process_count=process_count,
      make_example=make_example,
      host_batch_size=host_batch,
    )
    labels = tuple(built[0][2].label_names) if len(built) == 1 else ()
    return Loader(
      _finish(mixed, cfg, host_batch, drop_remainder=True),
      skip_log,
      tuple(n for n, _, _ in built),
      host_batch,
      None,
      labels,
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
    make_example=lambda source, shard: _EvalExample(
      source, shard, mode="video", spec="decode", image_size=image_size, **options
    ),
  )


# --------------------------------------------------------------------------------------------------
# Host batches -> global arrays.


def to_global(
  batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
  """Host batches (this process's rows) -> global jax.Arrays laid out by `sharding` along axis 0.

  Every process calls this with its own rows; the global leading dimension is the sum over processes.
  """
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for key, value in batch.items()
  }
