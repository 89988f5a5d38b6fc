"""The example makers: one grain map from a position of a source's stream to a finished example.

  PairMaker         pretraining: (record, epoch) -> two augmented views of two frames a gap apart
  ClipMaker         video training: (record, epoch) -> one augmented window of frames
  EvalExample       evaluation: position in a process's padded share -> an image or clip views
  RecordMaker       the base of the training makers: reads the record, hands a usable one on
  LazyAugmentation  the mixin that builds a maker's augmentation on first use (so makers pickle)

Every random draw comes from sampling.example_rng(seed, source, record, epoch, stream); an example
that cannot be used comes back as a sources.Skipped marker (training) or a `valid = False` row
(evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vicmae_jax.data import augment
from vicmae_jax.data import sampling
from vicmae_jax.data import sources as sources_lib

DECODE_ERRORS = (
  OSError,
  ValueError,
  SyntaxError,
  EOFError,
)  # damaged images: decode_image (ValueError), Pillow


class LazyAugmentation:
  """Builds `augment.build(self.spec, image_size=self.image_size, crop_scale=self.crop_scale)` on
  first use, in whichever process runs the map (worker processes receive it pickled, without it)."""

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


class RecordMaker:
  """Base of the training makers: (record index, epoch) -> `self.make(example, record_index, epoch)`
  for a usable record of `self.source`, else the source's Skipped marker.

  `rng(record_index, epoch, stream)` is the example's generator of one stream (sampling.STREAM_*).
  """

  def __init__(self, source, seed: int):
    self.source, self.seed = source, int(seed)
    self.source_key = sampling.source_key(source.name)

  def rng(self, record_index: int, epoch: int, stream: int) -> np.random.Generator:
    return sampling.example_rng(self.seed, self.source_key, record_index, epoch, stream)

  def make(self, example: Mapping[str, Any], record_index: int, epoch: int) -> Any:
    raise NotImplementedError

  def __call__(self, item: tuple[int, int]) -> Any:
    record_index, epoch = item
    example = self.source[record_index]
    if isinstance(example, sources_lib.Skipped):
      return example
    return self.make(example, record_index, epoch)


class PairMaker(RecordMaker):
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
    RecordMaker.__init__(self, source, seed)
    self.source_index = source_index
    self.view_specs = tuple(view_specs)
    self.image_size = int(image_size)
    self.crop_scale = tuple(crop_scale)
    self.frame_gap = sampling.FrameGap(
      frame_gap_seconds, tuple(frame_gap_range) if frame_gap_range else None
    )
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
    gap = self.frame_gap.draw(rng)
    if kind == "clip":
      first, second = sampling.pair_indices(example["timestamps"], gap, rng)
      return [example["frames"][first], example["frames"][second]]
    times = sampling.pair_times(example["duration_s"], gap, rng)
    decoded = self.source.decode(example, times)
    if isinstance(decoded, sources_lib.Skipped):
      return decoded
    return [decoded[0], decoded[1]]

  def make(
    self, example: Mapping[str, Any], record_index: int, epoch: int
  ) -> dict[str, np.ndarray] | sources_lib.Skipped:
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
      except DECODE_ERRORS as error:
        return self.source.skip(
          example.get("clip_id") or f"record {record_index}", "undecodable frame", str(error)
        )
    return {
      "views": np.stack(views),
      "label": np.int32(example["label"]),
      "source": np.int32(self.source_index),
    }


class ClipMaker(LazyAugmentation, RecordMaker):
  """(record index, epoch) -> {"video": uint8 [T, S, S, 3], "label", "valid"} for training video models.

  A random window of T frames `stride` apart; the clip augmentation is drawn once per clip and
  applied identically to every frame (same crop, flip and colours across time).
  """

  def __init__(self, source, *, spec, image_size, crop_scale, num_frames, stride, seed):
    RecordMaker.__init__(self, source, seed)
    self.spec, self.image_size, self.crop_scale = spec, int(image_size), tuple(crop_scale)
    self.num_frames, self.stride = int(num_frames), int(stride)

  def make(
    self, example: Mapping[str, Any], record_index: int, epoch: int
  ) -> dict[str, np.ndarray] | sources_lib.Skipped:
    rng = self.rng(record_index, epoch, sampling.STREAM_SAMPLING)
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
    view_seed = self.rng(record_index, epoch, sampling.STREAM_VIEW).integers(2**63)
    try:
      video = np.stack(
        [self.augmentation()(frame, np.random.default_rng(view_seed)) for frame in frames]
      )
    except DECODE_ERRORS as error:
      return self.source.skip(example["clip_id"], "undecodable frame", str(error))
    return {"video": video, "label": np.int32(example["label"]), "valid": np.bool_(True)}


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


class EvalExample(LazyAugmentation):
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
    except DECODE_ERRORS as error:
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
