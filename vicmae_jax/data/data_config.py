"""The data config: its schema and defaults (`default_data_config`, `default_source_config`) and
its validation (`validate_data_config`, including whether the frame gap fits the video sources'
clips). Everything here reads the config only; nothing is decoded.

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
  photometric_on_device     "auto" | "on" | "off": run the specs' photometric tail (color_jitter,
                            grayscale, blur, solarize) in the pretraining step on the device, the
                            host making only decode + crop + flip ("auto": on for gpu/tpu, off for
                            cpu; why in device_photometric.py)
  crop_scale                (lo, hi) area range of random_resized_crop when a spec leaves it out
  eval_augmentation         spec for evaluation images (resize shorter side to S/0.875, centre crop)
  clip_augmentation         spec applied identically to every frame of a training clip
  clip_num_frames           frames per clip for video models (16)
  clip_stride               frames between clip frames, at the stored rate (prepared) or the
                            source rate (raw) (4)
  num_temporal_views        evaluation clips per video, spread uniformly in time (1)
  num_spatial_views         evaluation crops per clip along the longer side (1)
  shuffle_seed              -1: derive from the run seed; else its own seed for order and augmentation
  num_threads               threads decoding/augmenting in each process (-1: one per CPU core,
                            shared out over the worker processes when there are any)
  worker_count              worker processes (0: all in the training process, with threads)
  prefetch_elements         examples in flight in the thread pool
  prefetch_batches          finished batches kept ready by a background thread (0: none)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import ml_collections

from vicmae_jax.data import augment
from vicmae_jax.data import device_photometric
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


# Defaults of the fields that the loaders also read from configs that leave them out.
DEFAULT_CROP_SCALE = (0.08, 1.0)
EVAL_AUGMENTATION = "decode|resize_short|center_crop"
CLIP_AUGMENTATION = augment.CROP_FLIP_SPEC


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
  cfg.photometric_on_device = "auto"
  cfg.crop_scale = DEFAULT_CROP_SCALE
  cfg.eval_augmentation = EVAL_AUGMENTATION
  cfg.clip_augmentation = CLIP_AUGMENTATION
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


def source_items(cfg: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
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
  items = source_items(cfg)
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
  gap = frame_gap(cfg)
  if frame_pairs:
    _check_gap_fits_clips(items, gap)
  specs = tuple(cfg.get("view_augmentations", augment.DEFAULT_VIEW_SPECS))
  if len(specs) != 2:
    raise ValueError(
      f"data.view_augmentations: need exactly two specs (one per view), got {len(specs)}"
    )
  # Checked for "auto" too, so a config valid on one platform is valid on all (and the backend is
  # not started here); a photometric op before a geometric one fails naming both fields.
  if device_photometric.check_mode(cfg.get("photometric_on_device", "auto")) != "off":
    device_photometric.split_views(specs)
  crop_scale = tuple(cfg.get("crop_scale", DEFAULT_CROP_SCALE))
  for field, spec in [("view_augmentations", s) for s in specs] + [
    ("eval_augmentation", cfg.get("eval_augmentation", EVAL_AUGMENTATION)),
    ("clip_augmentation", cfg.get("clip_augmentation", CLIP_AUGMENTATION)),
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


def frame_gap(cfg: Mapping[str, Any]) -> sampling.FrameGap:
  """The config's frame gap (frame_gap_range when set, else frame_gap_seconds), checked: raises
  ValueError naming data.frame_gap_range or data.frame_gap_seconds."""
  gap_range = tuple(cfg.get("frame_gap_range") or ()) or None
  gap_seconds = cfg.get("frame_gap_seconds", sampling.DEFAULT_FRAME_GAP_SECONDS)
  try:
    return sampling.FrameGap(gap_seconds, gap_range)
  except ValueError as error:
    field = "frame_gap_range" if gap_range is not None else "frame_gap_seconds"
    raise ValueError(f"data.{field}: {error}") from None


def _check_gap_fits_clips(items, gap: sampling.FrameGap) -> None:
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
  field = "frame_gap_range" if gap.range is not None else "frame_gap_seconds"
  smallest, largest = gap.bounds()
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
