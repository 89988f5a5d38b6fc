"""Readers of the common video dataset layouts into one list of `VideoEntry`.

Each `list_*` function returns a `VideoListing`, a 2-tuple `(entries, label_names)` that also carries
`.missing`: the entries the annotations name but whose video file was not found (datasets downloaded
from YouTube always miss some). `label_names[i]` is the name of label index i; unlabelled entries
(test splits, plain folders without class folders) have label -1.

Layouts:
  Kinetics-400/600/700  csv `label,youtube_id,time_start,time_end,split` (test csvs have no label);
                        video files `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere under root
                        (people keep them flat, under split/ or under label/ folders).
  Moments in Time       csv rows `label/file.mp4,label,...` (no header), videos under
                        `<root>/training/` or `<root>/validation/`; class order from
                        `moments_categories.txt` (`name,index` lines) when present.
  Something-Something   `labels.json` {name: "index"}, split json [{id, label, template, placeholders}];
  v2                    the class is the template without brackets; videos `<id>.webm` under root.
  folder                `<root>/<class>/**/<video>`; classes are the sorted sub-folder names; videos
                        directly in root get label -1. Other files are listed in `.not_videos`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

VIDEO_EXTENSIONS = (
  ".mp4",
  ".webm",
  ".mkv",
  ".avi",
  ".mov",
  ".m4v",
  ".mpg",
  ".mpeg",
  ".ogv",
  ".3gp",
  ".flv",
)
FORMATS = ("kinetics", "mit", "ssv2", "folder")


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  """One video of a dataset: its file, class index (-1 if unknown), class name and a stable id."""

  path: str
  label: int
  label_name: str
  clip_id: str


class VideoListing(tuple):
  """`(entries, label_names)`; `.missing` lists the annotated entries whose file was not found,
  `.not_videos` the paths of files found that are not videos (folder layout)."""

  def __new__(
    cls,
    entries: list[VideoEntry],
    label_names: list[str],
    missing: list[VideoEntry],
    not_videos: Sequence[str] = (),
  ):
    listing = super().__new__(cls, (entries, label_names))
    listing.missing = missing
    listing.not_videos = list(not_videos)
    return listing

  @property
  def entries(self) -> list[VideoEntry]:
    return self[0]

  @property
  def label_names(self) -> list[str]:
    return self[1]


def _require_dir(root: str | os.PathLike) -> Path:
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"video root directory not found: {root}")
  return root


def _require_file(path: str | os.PathLike, what: str) -> Path:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} not found: {path}")
  return path


def _is_video(name: str) -> bool:
  return name.lower().endswith(VIDEO_EXTENSIONS)


def _index_videos_by_stem(root: Path) -> dict[str, str]:
  """{file stem: path} for every video under root; the first in sorted walk order wins on duplicates."""
  found: dict[str, str] = {}
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    for name in sorted(files):
      if _is_video(name):
        found.setdefault(os.path.splitext(name)[0], os.path.join(directory, name))
  return found


def _label_index(names: Sequence[str], where: str) -> dict[str, int]:
  index = {name: i for i, name in enumerate(names)}
  if len(index) != len(names):
    raise ValueError(f"duplicate class names in {where}")
  return index


def _finish(entries, label_names, missing, where: Path) -> VideoListing:
  if not entries and not missing:
    raise ValueError(f"no videos listed in {where}")
  return VideoListing(entries, list(label_names), missing)


def list_kinetics(
  root: str | os.PathLike,
  annotations_csv: str | os.PathLike,
  split: str | None = None,
  *,
  label_names: Sequence[str] | None = None,
) -> VideoListing:
  """Kinetics-400/600/700 from its annotation csv.

  split: keep only rows whose `split` column equals it (None keeps all rows).
  label_names: the class list to index labels by (pass the training split's list when reading
    another split); default: the sorted class names of this csv.
  """
  root = _require_dir(root)
  annotations_csv = _require_file(annotations_csv, "Kinetics annotation csv")
  with open(annotations_csv, newline="", encoding="utf-8") as file:
    reader = csv.DictReader(file)
    fields = set(reader.fieldnames or ())
    needed = {"youtube_id", "time_start", "time_end"}
    if not needed <= fields:
      raise ValueError(
        f"{annotations_csv}: header must contain {sorted(needed)} (and 'label', 'split'); "
        f"got {reader.fieldnames}"
      )
    rows = list(reader)
  if split is not None and "split" in fields:
    available = sorted({row["split"] for row in rows})
    rows = [row for row in rows if row["split"] == split]
    if not rows and available:
      raise ValueError(
        f"{annotations_csv}: no rows with split={split!r}; the csv has splits {available}"
      )
  has_labels = "label" in fields
  if label_names is None:
    label_names = sorted({row["label"] for row in rows}) if has_labels else []
  label_of = _label_index(label_names, str(annotations_csv))

  videos = _index_videos_by_stem(root)
  entries, missing = [], []
  for line, row in enumerate(rows, start=2):
    try:
      start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError as error:
      raise ValueError(f"{annotations_csv}:{line}: bad time_start/time_end {row}") from error
    clip_id = f"{row['youtube_id']}_{start:06d}_{end:06d}"
    name = row["label"] if has_labels else ""
    if has_labels and name not in label_of:
      raise ValueError(f"{annotations_csv}:{line}: class {name!r} is not in the given label_names")
    label = label_of[name] if has_labels else -1
    # Some downloaders name files by the YouTube id alone.
    path = videos.get(clip_id) or videos.get(row["youtube_id"])
    if path is None:
      missing.append(VideoEntry(str(root / f"{clip_id}.mp4"), label, name, clip_id))
    else:
      entries.append(VideoEntry(path, label, name, clip_id))
  return _finish(entries, label_names, missing, annotations_csv)


_MIT_SPLIT_DIRS = {
  "train": "training",
  "training": "training",
  "val": "validation",
  "validation": "validation",
}


def _read_mit_categories(path: Path) -> list[str]:
  """`moments_categories.txt`: one `name,index` line per class."""
  pairs = []
  with open(path, encoding="utf-8") as file:
    for number, line in enumerate(file, start=1):
      line = line.strip()
      if not line:
        continue
      name, _, index = line.rpartition(",")
      try:
        pairs.append((int(index), name))
      except ValueError as error:
        raise ValueError(f"{path}:{number}: expected 'name,index', got {line!r}") from error
  pairs.sort()
  if [index for index, _ in pairs] != list(range(len(pairs))):
    raise ValueError(f"{path}: class indices must be 0..{len(pairs) - 1} without gaps")
  return [name for _, name in pairs]


def list_mit(
  root: str | os.PathLike,
  annotations_csv: str | os.PathLike,
  split: str = "training",
  *,
  categories_txt: str | os.PathLike | None = None,
) -> VideoListing:
  """Moments in Time from `trainingSet.csv` / `validationSet.csv`.

  split: 'training'/'train' or 'validation'/'val'; names the video folder under root.
  categories_txt: class list; default `moments_categories.txt` in root or beside the csv, else the
    sorted class names of this csv.
  """
  root = _require_dir(root)
  annotations_csv = _require_file(annotations_csv, "Moments in Time annotation csv")
  if split not in _MIT_SPLIT_DIRS:
    raise ValueError(
      f"Moments in Time split must be one of {sorted(_MIT_SPLIT_DIRS)}, got {split!r}"
    )
  split_dir = root / _MIT_SPLIT_DIRS[split]
  with open(annotations_csv, newline="", encoding="utf-8") as file:
    rows = [row for row in csv.reader(file) if row]
  if rows and not _is_video(rows[0][0]):
    rows = rows[1:]  # a header line
  if categories_txt is None:
    for candidate in (
      root / "moments_categories.txt",
      annotations_csv.parent / "moments_categories.txt",
    ):
      if candidate.is_file():
        categories_txt = candidate
        break
  if categories_txt is not None:
    label_names = _read_mit_categories(
      _require_file(categories_txt, "Moments in Time category list")
    )
  else:
    label_names = sorted({row[1] if len(row) > 1 else row[0].split("/")[0] for row in rows})
  label_of = _label_index(label_names, str(categories_txt or annotations_csv))

  entries, missing = [], []
  for number, row in enumerate(rows, start=1):
    relative = row[0]
    name = row[1] if len(row) > 1 else relative.split("/")[0]
    if name not in label_of:
      raise ValueError(f"{annotations_csv}:{number}: class {name!r} is not in the category list")
    clip_id = os.path.splitext(relative)[0]
    path = next((p for p in (split_dir / relative, root / relative) if p.is_file()), None)
    entry = VideoEntry(str(path or split_dir / relative), label_of[name], name, clip_id)
    (entries if path is not None else missing).append(entry)
  return _finish(entries, label_names, missing, annotations_csv)


def ssv2_class_name(template: str) -> str:
  """'Putting [something] onto [something]' -> 'Putting something onto something'."""
  return template.replace("[", "").replace("]", "")


def list_ssv2(
  root: str | os.PathLike,
  labels_json: str | os.PathLike,
  split_json: str | os.PathLike,
) -> VideoListing:
  """Something-Something v2 from `labels.json` and `train.json` / `validation.json` / `test.json`."""
  root = _require_dir(root)
  labels_json = _require_file(labels_json, "Something-Something labels.json")
  split_json = _require_file(split_json, "Something-Something split json")
  with open(labels_json, encoding="utf-8") as file:
    name_to_index = {name: int(index) for name, index in json.load(file).items()}
  if sorted(name_to_index.values()) != list(range(len(name_to_index))):
    raise ValueError(
      f"{labels_json}: class indices must be 0..{len(name_to_index) - 1} without gaps"
    )
  label_names = [name for name, _ in sorted(name_to_index.items(), key=lambda item: item[1])]
  with open(split_json, encoding="utf-8") as file:
    items = json.load(file)
  if not isinstance(items, list):
    raise ValueError(f"{split_json}: expected a list of {{id, label, template, placeholders}}")

  videos = _index_videos_by_stem(root)
  entries, missing = [], []
  for item in items:
    clip_id = str(item["id"])
    if "template" in item:
      name = ssv2_class_name(item["template"])
      if name not in name_to_index:
        raise ValueError(f"{split_json}: id {clip_id}: class {name!r} is not in {labels_json}")
      label = name_to_index[name]
    else:  # the test split has no labels
      name, label = "", -1
    path = videos.get(clip_id)
    entry = VideoEntry(path or str(root / f"{clip_id}.webm"), label, name, clip_id)
    (entries if path is not None else missing).append(entry)
  return _finish(entries, label_names, missing, split_json)


def list_folder(root: str | os.PathLike) -> VideoListing:
  """Videos in `<root>/<class>/**`; classes are the sorted sub-folders holding videos."""
  root = _require_dir(root)
  videos, not_videos = [], []
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    for name in sorted(files):
      (videos if _is_video(name) else not_videos).append(os.path.join(directory, name))
  if not videos:
    others = f": its {len(not_videos)} file(s) are not videos" if not_videos else ""
    raise ValueError(
      f"no videos listed in {root}{others} (video files end in {', '.join(VIDEO_EXTENSIONS)})"
    )
  classes = sorted(
    {Path(p).relative_to(root).parts[0] for p in videos if len(Path(p).relative_to(root).parts) > 1}
  )
  label_of = _label_index(classes, str(root))
  entries = []
  for path in videos:
    relative = Path(path).relative_to(root)
    name = relative.parts[0] if len(relative.parts) > 1 else ""
    entries.append(VideoEntry(path, label_of.get(name, -1), name, str(relative.with_suffix(""))))
  return VideoListing(entries, classes, [], not_videos)


def list_dataset(
  format: str,
  root: str | os.PathLike,
  *,
  annotations: str | os.PathLike | None = None,
  split: str | None = None,
  labels: str | os.PathLike | None = None,
  label_names: Sequence[str] | None = None,
) -> VideoListing:
  """Dispatches on `format` (one of FORMATS).

  annotations: the Kinetics / MiT csv or the SSv2 split json (required for those formats).
  labels: SSv2 `labels.json` (default: beside `annotations`) or MiT `moments_categories.txt`.
  label_names: Kinetics class list to index by (default: sorted names of the csv).
  """
  if format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
  if format == "folder":
    return list_folder(root)
  if annotations is None:
    raise ValueError(f"format {format!r} needs an annotation file (annotations=...)")
  if format == "kinetics":
    return list_kinetics(root, annotations, split, label_names=label_names)
  if format == "mit":
    return list_mit(root, annotations, split or "training", categories_txt=labels)
  return list_ssv2(root, labels or Path(annotations).parent / "labels.json", annotations)
