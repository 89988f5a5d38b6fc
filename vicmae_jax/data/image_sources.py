"""The image sources: a TFDS image dataset (array_record), an image folder (<root>/<class>/*), and
an in-memory npz of images and labels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vicmae_jax.data.source_base import Skipped, SkipLog, Source, existing_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# --------------------------------------------------------------------------------------------------
# Images.


class TfdsImageSource(Source):
  """An image dataset prepared by tensorflow-datasets in array_record format (e.g. imagenet2012).

  Images come back still encoded (TFDS SkipDecoding) so the augmentation can decode them once,
  at reduced scale when the crop allows.
  """

  kind = "tfds"

  def __init__(
    self,
    dataset: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
    name: str = "tfds",
    skip_log: SkipLog | None = None,
  ):
    super().__init__(name, skip_log)
    import tensorflow_datasets as tfds  # heavy (imports TensorFlow): only when a TFDS source is used

    if data_dir is not None:
      data_dir = existing_path(data_dir, "TFDS data_dir", folder=True)
    try:
      self._data = tfds.data_source(
        dataset,
        split=split,
        data_dir=data_dir or None,
        download=False,
        decoders={image_key: tfds.decode.SkipDecoding()},
      )
    except Exception as error:  # TFDS raises several types for missing/unprepared datasets
      where = data_dir or "the default TFDS data_dir"
      raise FileNotFoundError(
        f"TFDS dataset {dataset!r} split {split!r} is not available in {where} as array_record "
        f"(prepare it with tfds build --file_format=array_record): {error}"
      ) from error
    if len(self._data) == 0:
      raise ValueError(f"TFDS dataset {dataset!r} split {split!r} in {data_dir} is empty")
    self.image_key, self.label_key = image_key, label_key
    features = getattr(self._data, "dataset_info", None)
    label_feature = (
      features.features[label_key]
      if features is not None and label_key in features.features
      else None
    )
    self.label_names = list(getattr(label_feature, "names", []) or [])

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
    index = self._check_index(index)
    try:
      example = self._data[index]
    except Exception as error:  # a damaged record in one shard must not stop the run
      return self.skip(f"record {index}", "corrupt record", str(error))
    label = example.get(self.label_key, -1)
    return {
      "kind": "image",
      "record_index": index,
      "label": int(np.asarray(label)),
      "image": example[self.image_key],
    }


class ImageFolderSource(Source):
  """Images in `<root>/<class>/*.jpg|png|...`; classes are the sorted sub-folder names."""

  kind = "image_folder"

  def __init__(self, path: str, *, name: str = "image_folder", skip_log: SkipLog | None = None):
    super().__init__(name, skip_log)
    root = existing_path(path, "image folder", folder=True)
    files: list[tuple[str, str]] = []
    for directory, subdirs, names in os.walk(root):
      subdirs.sort()
      relative = os.path.relpath(directory, root)
      if relative == ".":
        continue  # images must sit in a class folder
      class_name = relative.split(os.sep)[0]
      files.extend(
        (os.path.join(directory, n), class_name)
        for n in sorted(names)
        if n.lower().endswith(IMAGE_EXTENSIONS)
      )
    if not files:
      raise ValueError(
        f"image folder {path} has no images in class sub-folders ({'/'.join(IMAGE_EXTENSIONS)})"
      )
    self.label_names = sorted({class_name for _, class_name in files})
    label_of = {class_name: i for i, class_name in enumerate(self.label_names)}
    self.files = [(file, label_of[class_name]) for file, class_name in files]

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
    index = self._check_index(index)
    path, label = self.files[index]
    try:
      with open(path, "rb") as file:
        data = file.read()
    except OSError as error:
      return self.skip(path, "unreadable", str(error))
    if not data:
      return self.skip(path, "empty file")
    return {"kind": "image", "record_index": index, "label": label, "image": data}


class NpzImageSource(Source):
  """Images held in an .npz file: `images` uint8 [N, H, W, 3] and `labels` int [N] (e.g. the demo's)."""

  kind = "npz"

  def __init__(self, path: str, *, name: str = "npz", skip_log: SkipLog | None = None):
    super().__init__(name, skip_log)
    path = existing_path(path, "npz image file", folder=False)
    with np.load(path) as arrays:
      if "images" not in arrays:
        raise ValueError(f"{path}: no 'images' array (has {sorted(arrays.files)})")
      self.images = np.asarray(arrays["images"])
      self.labels = (
        np.asarray(arrays["labels"]) if "labels" in arrays else np.full(len(self.images), -1)
      )
    if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
      raise ValueError(
        f"{path}: 'images' must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}"
      )
    if len(self.images) == 0:
      raise ValueError(f"{path}: 'images' is empty")
    if self.labels.shape != (len(self.images),):
      raise ValueError(
        f"{path}: 'labels' has shape {self.labels.shape}, expected [{len(self.images)}]"
      )

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = self._check_index(index)
    return {
      "kind": "image",
      "record_index": index,
      "label": int(self.labels[index]),
      "image": self.images[index],
    }
