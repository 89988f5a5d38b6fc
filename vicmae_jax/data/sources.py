"""Random-access sources of examples for grain: prepared clips, raw videos, TFDS images, image folders
and in-memory image arrays (npz).

Every source implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__(int)`) and
returns one of these example dicts (no pixels decoded yet, so index lookups stay cheap):

    kind "clip"   prepared clip:  label int, clip_id str, timestamps f32 [T], frames: a sequence of T
                                  JPEG bytes (read from the shard only when indexed)
    kind "video"  raw video file: label int, clip_id str, path str, duration_s float (time of the
                                  last frame), short_side int | None (resize when decoding)
    kind "image"  one image:      label int, image bytes (encoded) | uint8 [H, W, 3]

plus `record_index` (the index asked for). An example that cannot be used (a corrupt record, a video
that does not open, a clip with fewer than two frames) comes back as a `Skipped` marker instead, and is
recorded once in the source's `SkipLog`; the pipeline drops markers, so bad data never stops a run.

`build_source(cfg)` makes a source from one entry of the data config's `sources` list; a missing path
or an empty index raises at construction, naming the path.

The source kinds live in video_sources.py and image_sources.py, what they share in
source_base.py; every name is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vicmae_jax.data.image_sources import (  # noqa: F401  (re-exported)
  IMAGE_EXTENSIONS,
  ImageFolderSource,
  NpzImageSource,
  TfdsImageSource,
)
from vicmae_jax.data.source_base import (  # noqa: F401  (re-exported)
  MIN_CLIP_FRAMES,
  RecordReadError,
  Skipped,
  SkipLog,
  Source,
  decode_image,
)
from vicmae_jax.data.video_sources import (  # noqa: F401  (re-exported)
  RAW_PROBE_FILES,
  FrameRecords,
  PreparedClipSource,
  ProbedClipSeconds,
  RawVideoSource,
  prepared_max_clip_seconds,
  prepared_meta_path,
  prepared_shard_paths,
  probe_sample,
  raw_clip_seconds,
)

KINDS = ("prepared", "raw", "tfds", "image_folder", "npz")

# --------------------------------------------------------------------------------------------------
# From config.


def build_source(cfg: Mapping[str, Any], *, skip_log: SkipLog | None = None) -> Source:
  """A source from one `data.sources` entry (see data_config.default_data_config for the fields)."""
  kind = cfg.get("kind")
  name = str(cfg.get("name") or kind)
  if kind not in KINDS:
    raise ValueError(f"data.sources[{name}].kind must be one of {KINDS}, got {kind!r}")
  path = cfg.get("path") or None
  split = cfg.get("split") or "train"
  if kind in ("prepared", "raw", "image_folder", "npz") and not path:
    raise ValueError(f"data.sources[{name}].path is required for kind {kind!r}")
  if kind == "prepared":
    return PreparedClipSource(path, split, name=name, skip_log=skip_log)
  if kind == "raw":
    short_side = cfg.get("short_side", 256)
    return RawVideoSource(
      cfg.get("format") or "folder",
      path,
      annotations=cfg.get("annotations") or None,
      split=cfg.get("split") or None,
      labels=cfg.get("labels") or None,
      short_side=int(short_side) if short_side else None,
      name=name,
      skip_log=skip_log,
    )
  if kind == "tfds":
    dataset = cfg.get("dataset") or cfg.get("name")
    return TfdsImageSource(
      dataset,
      split,
      data_dir=cfg.get("data_dir") or path,
      image_key=cfg.get("image_key") or "image",
      label_key=cfg.get("label_key") or "label",
      name=name,
      skip_log=skip_log,
    )
  if kind == "npz":
    return NpzImageSource(path, name=name, skip_log=skip_log)
  return ImageFolderSource(path, name=name, skip_log=skip_log)
