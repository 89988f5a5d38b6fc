"""Offline preparation: raw videos -> ArrayRecord shards of JPEG frames at a fixed rate.

(Over 400 lines on purpose: the command, its flags and the resumable run over shards are one
sequence read top to bottom; the workers, shard writing and checks are in prepare_workers.py,
shard_writer.py and shard_check.py, the Beam runner in prepare_beam.py.)

    python -m vicmae_jax.data.prepare --format=kinetics --root=/data/k400/videos \
        --annotations=/data/k400/annotations/train.csv --split=train --output=/data/k400/prepared \
        --fps=8 --short_side=256 --workers=16
    python -m vicmae_jax.data.prepare --verify --output=/data/k400/prepared   # checks, writes nothing

writes, per shard, `OUTPUT/<split>-SSSSS-of-NNNNN.array_record` (one record per frame, the frames of a
clip consecutive) with its clip index `<shard>.index` (records.py describes both), and
`OUTPUT/<split>_meta.json`: {num_clips, label_names, fps, short_side, skipped: [{path, reason, detail}],
skipped_by_reason, shard_max_clip_seconds, max_clip_seconds, shard_files: [{name, size, sha256,
index_size, index_sha256}], ...}. A clip's duration is the time its kept frames cover (last - first
timestamp plus one frame interval); the longest one per shard lets the data config refuse a frame gap
no clip can hold.

Each shard is one task for a worker process. A shard is written under temporary names unique to its
writer (`<name>.<pid>-<random>.incomplete`) and renamed when complete, next to a small hidden
`.<shard>.json` with its counts and the size and sha256 of the shard and of its index, so an
interrupted run resumes where it stopped: a rerun checks every completed shard against those sizes and
sums, skips the intact ones, prepares damaged ones again with a warning naming the file, and refuses to
mix shards made with other settings. Shards of the earlier whole-clip format (no index file) are
prepared again, with a warning; shards written before sums were kept get a structural check (the shard
opens, its index decodes, their counts agree) and their sums are recorded.

One prepare at a time per output folder: a run holds an exclusive flock on `OUTPUT/.prepare.lock`
(holding its host, pid and start time); a second one exits at once with one line naming the folder
and that holder. The kernel drops the lock when its process dies, so after a `kill -9` the next run
takes it over (with a warning) and removes the dead run's temporary files; the worker processes end
with the prepare that started them (Linux: prctl PR_SET_PDEATHSIG; elsewhere a thread watching the
parent pid), so none is left writing. The lock file is removed when a run ends.

`--verify` checks a prepared folder without writing anything: every shard and index file of each split
(or of --split) against the sizes and sums in its meta json; it prints one line per damaged or missing
file and a summary, and exits 1 if any file is damaged, 0 if all are intact.

Bad videos (corrupt, truncated, empty, audio-only, too short) are skipped and counted, never fatal, as
are annotated videos not found and, in a folder layout, files that are not videos ("not a video file
(.gif)"; files inside OUTPUT do not count). The summary gives every skip reason with its count and the
meta json that lists each skipped file; a run in which every input was skipped writes that list and
ends with one line saying so (exit 1).

This module is the driver, its summary and the CLI; one shard is written by shard_writer.py, a
prepared folder's names, temporaries and lock are in shard_files.py, the recorded sums and --verify
in shard_check.py, the worker processes in prepare_workers.py.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from vicmae_jax import dirlock
from vicmae_jax.data import formats, prepare_beam, records, video_io
from vicmae_jax.data.prepare_workers import WorkerPool
from vicmae_jax.data.shard_check import _check_shard, _print_verification, verify_output
from vicmae_jax.data.shard_files import (
  OutputLockedError,
  _output_lock,
  _remove_stale_temporaries,
  _state_path,
  _write_json,
  shard_name,
)
from vicmae_jax.data.shard_writer import (
  _OLD_FORMAT,
  _completed_state,
  _entries_digest,
  _write_shard,
)

logger = logging.getLogger(__name__)

DEFAULT_CLIPS_PER_SHARD = 256
_SHOWN_SKIPS = 5


class NothingPreparedError(ValueError):
  """Every input was skipped: the shards hold no clip."""


def not_a_video_reason(path: str) -> str:
  """The skip reason of a file that is not a video container: 'not a video file (.gif)'."""
  extension = os.path.splitext(path)[1].lower()
  return f"not a video file ({extension or 'no extension'})"


def prepare_entries(
  entries: Sequence[formats.VideoEntry],
  label_names: Sequence[str],
  output: str | os.PathLike,
  *,
  split: str = "train",
  missing: Sequence[formats.VideoEntry] = (),
  not_videos: Sequence[str] = (),
  fps: float = 8.0,
  short_side: int | None = 256,
  jpeg_quality: int = 90,
  min_duration: float = 0.0,
  max_frames: int | None = None,
  num_shards: int | None = None,
  workers: int = 1,
  progress: bool = True,
  extra_meta: dict[str, Any] | None = None,
  write_shards=None,
) -> dict[str, Any]:
  """Writes `entries` into `num_shards` shards under `output`; returns the summary (also the meta json).

  missing: annotated videos whose file was not found; not_videos: paths of files found that are not
    videos. Both are counted as skipped.
  num_shards: default ceil(len(entries) / 256); capped at len(entries).
  workers: processes (1 runs in this process). Frames are decoded at `fps` with the shorter side
    resized to `short_side` (None keeps the size).
  write_shards: writes a list of shard tasks elsewhere and returns their states (e.g.
    prepare_beam.BeamShardWriter); default: this process or `workers` processes.
  min_duration: seconds; a clip whose kept frames cover less time (last - first timestamp plus one
    frame interval; with `max_frames`, only the kept frames count) is skipped as too short. Clips
    always need at least 2 frames.

  Raises OutputLockedError while another prepare runs on `output`, and NothingPreparedError (after
  writing the meta json with every skipped file) when no clip could be prepared.
  """
  if not entries:
    raise ValueError(
      f"no video files to prepare for split {split!r} ({len(missing)} annotated but missing)"
    )
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  if not 1 <= jpeg_quality <= 100:
    raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
  if workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}")
  output = os.fspath(output)
  os.makedirs(output, exist_ok=True)
  num_shards = num_shards or math.ceil(len(entries) / DEFAULT_CLIPS_PER_SHARD)
  num_shards = max(1, min(num_shards, len(entries)))
  settings = {
    "fps": float(fps),
    "short_side": short_side,
    "jpeg_quality": int(jpeg_quality),
    "min_duration": float(min_duration),
    "max_frames": max_frames,
    "label_names": list(label_names),
  }
  started = time.time()
  names = [shard_name(split, index, num_shards) for index in range(num_shards)]
  meta_path = os.path.join(output, f"{split}_meta.json")

  lock = _output_lock(output)
  try:
    lock.acquire()
  except dirlock.LockedError as e:
    raise OutputLockedError(
      f"{output} is in use by another prepare ({dirlock.describe(e.holder)}): wait for it to "
      "end, or use another --output"
    ) from None
  with lock, contextlib.ExitStack() as stack:
    if lock.previous:
      logger.warning(
        "%s: an earlier prepare there did not finish (%s); taking over its lock and resuming",
        output,
        dirlock.describe(lock.previous),
      )
    ours = {os.path.basename(meta_path)}
    for name in names:
      ours.update((name, records.index_path(name), os.path.basename(_state_path(output, name))))
    stale = _remove_stale_temporaries(output, ours)
    if stale:
      logger.warning("%s: removed %d unfinished file(s) of an earlier run", output, stale)

    run_each = WorkerPool(workers, num_shards, stack).run_each

    task_of, tasks, states, old_format = {}, {}, {}, []
    for index, shard_entries in enumerate(np.array_split(np.arange(len(entries)), num_shards)):
      name = names[index]
      shard_entries = [entries[i] for i in shard_entries]
      digest = _entries_digest(shard_entries)
      state = _completed_state(output, name, settings, digest)
      task_of[name] = {
        "output": output,
        "name": name,
        "entries": shard_entries,
        "settings": settings,
        "entries_digest": digest,
      }
      if isinstance(state, dict):
        states[name] = state
      else:
        if state == _OLD_FORMAT:
          old_format.append(name)
        tasks[name] = task_of[name]

    # Completed shards are verified (sizes and sha256 recorded when they were written), not trusted.
    damaged = []
    checks = [{"output": output, "name": name, "state": state} for name, state in states.items()]
    for _, result in run_each(_check_shard, checks):
      name = result["name"]
      if result["problems"]:
        for problem in result["problems"]:
          logger.warning("%s; preparing the shard again", problem)
        damaged.append(name)
        del states[name]
        tasks[name] = task_of[name]
      elif result["files"] is not None:  # written before checksums were kept: record them now
        states[name]["files"] = result["files"]
        _write_json(_state_path(output, name), states[name])
    tasks = [tasks[name] for name in names if name in tasks]
    if states:
      logger.warning(
        "%s: %d of %d shards already complete (sizes and sha256 verified), skipping them",
        output,
        len(states),
        num_shards,
      )
    if old_format:
      logger.warning(
        "%s: %d shard(s) hold whole-clip records (format %d, one record per clip); preparing them "
        "again as frame records with a clip index (format %d): %s",
        output,
        len(old_format),
        records.CLIP_RECORD_VERSION,
        records.FORMAT_VERSION,
        ", ".join(old_format),
      )

    total_clips = sum(len(task["entries"]) for task in tasks)
    with tqdm(total=total_clips, unit="clip", desc=f"prepare {split}", disable=not progress) as bar:
      if write_shards is not None:
        for state in write_shards(tasks):
          states[state["name"]] = state
          bar.update(state["num_clips"] + len(state["skipped"]))
      elif workers == 1 or len(tasks) <= 1:
        for task in tasks:
          states[task["name"]] = _write_shard(task, on_clip=lambda: bar.update(1))
      else:
        for task, state in run_each(_write_shard, tasks):
          states[state["name"]] = state
          bar.update(len(task["entries"]))

    skipped = [
      {
        "path": entry.path,
        "reason": video_io.REASON_NOT_FOUND,
        "detail": "listed in the annotations",
      }
      for entry in missing
    ]
    skipped.extend(
      {"path": path, "reason": not_a_video_reason(path), "detail": ""} for path in not_videos
    )
    for name in names:
      skipped.extend(states[name]["skipped"])
    skipped_by_reason = dict(collections.Counter(item["reason"] for item in skipped))
    meta = {
      "split": split,
      "num_clips": sum(states[name]["num_clips"] for name in names),
      "label_names": list(label_names),
      "fps": float(fps),
      "short_side": short_side,
      "jpeg_quality": int(jpeg_quality),
      "min_duration": float(min_duration),
      "num_shards": num_shards,
      "shards": names,
      "shard_num_clips": [states[name]["num_clips"] for name in names],
      "num_frames": sum(states[name]["num_frames"] for name in names),
      "shard_max_clip_seconds": [states[name]["max_clip_seconds"] for name in names],
      "max_clip_seconds": max(states[name]["max_clip_seconds"] for name in names),
      "shard_files": [{"name": name, **states[name]["files"]} for name in names],
      "skipped_by_reason": skipped_by_reason,
      "skipped": skipped,
      "record_version": records.FORMAT_VERSION,
      **(extra_meta or {}),
    }
    _write_json(meta_path, meta, indent=1)

  seconds = time.time() - started
  lines = [
    f"{split}: {meta['num_clips']} clips in {num_shards} shard(s) under {output} ({seconds:.1f} s); "
    f"{len(skipped)} skipped" + (f", every one with its reason in {meta_path}" if skipped else "")
  ]
  for reason, count in sorted(skipped_by_reason.items(), key=lambda item: -item[1]):
    lines.append(f"  {count} x {reason}")
  for item in skipped[:_SHOWN_SKIPS]:
    lines.append(
      f"    {item['path']}: {item['reason']}" + (f" ({item['detail']})" if item["detail"] else "")
    )
  if len(skipped) > _SHOWN_SKIPS:
    lines.append(f"    ... all in {meta_path}")
  logger.info("\n".join(lines))
  if meta["num_clips"] == 0:
    reasons = ", ".join(
      f"{count} x {reason}"
      for reason, count in sorted(skipped_by_reason.items(), key=lambda item: -item[1])
    )
    raise NothingPreparedError(
      f"no clip could be prepared for split {split!r}: all {len(skipped)} input(s) were skipped "
      f"({reasons}); every file with its reason is in {meta_path}"
    )
  return {
    **meta,
    "meta_path": meta_path,
    "shard_paths": [os.path.join(output, name) for name in names],
    "resumed_shards": num_shards - len(tasks),
    "rewritten_old_format": old_format,
    "rewritten_damaged": damaged,
    "seconds": seconds,
  }


def prepare_dataset(
  format: str,
  root: str | os.PathLike,
  output: str | os.PathLike,
  *,
  annotations: str | os.PathLike | None = None,
  split: str = "train",
  labels: str | os.PathLike | None = None,
  label_names: Sequence[str] | None = None,
  **options,
) -> dict[str, Any]:
  """Lists a dataset in one of `formats.FORMATS` and prepares it; options as in `prepare_entries`.

  Files of the listing that are not videos (in a folder layout) are counted as skipped, except
  those inside `output` (a prepared folder may sit under the videos' root).
  """
  listing = formats.list_dataset(
    format, root, annotations=annotations, split=split, labels=labels, label_names=label_names
  )
  inside_output = os.path.realpath(output) + os.sep
  not_videos = [
    path for path in listing.not_videos if not os.path.realpath(path).startswith(inside_output)
  ]
  return prepare_entries(
    listing.entries,
    listing.label_names,
    output,
    split=split,
    missing=listing.missing,
    not_videos=not_videos,
    extra_meta={"format": format, "root": os.fspath(root)},
    **options,
  )


def _label_names_from(path: str) -> list[str]:
  """A `_meta.json` (its label_names) or a text file with one class name per line."""
  if path.endswith(".json"):
    with open(path) as file:
      return list(json.load(file)["label_names"])
  with open(path) as file:
    return [line.rstrip("\n") for line in file if line.strip()]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m vicmae_jax.data.prepare", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--format", choices=formats.FORMATS, help="required unless --verify")
  parser.add_argument("--root", help="directory holding the videos (required unless --verify)")
  parser.add_argument("--annotations", help="Kinetics / MiT csv, or the SSv2 split json")
  parser.add_argument(
    "--labels", help="SSv2 labels.json (default: beside --annotations) or MiT categories txt"
  )
  parser.add_argument(
    "--label_names_from", help="class list to index by: a *_meta.json or one name per line"
  )
  parser.add_argument(
    "--split",
    default=None,
    help="split name: filters Kinetics rows, names the output (default train; with --verify "
    "every split in --output)",
  )
  parser.add_argument("--output", required=True)
  parser.add_argument(
    "--verify",
    action="store_true",
    help="check the prepared --output against its recorded sizes and sha256 sums, write "
    "nothing; prints one line per damaged file and exits 1 if there is any",
  )
  parser.add_argument("--fps", type=float, default=8.0)
  parser.add_argument("--short_side", type=int, default=256, help="0 keeps the source size")
  parser.add_argument("--jpeg_quality", type=int, default=90)
  parser.add_argument(
    "--min_duration", type=float, default=0.0, help="seconds; shorter videos are skipped"
  )
  parser.add_argument(
    "--max_frames", type=int, default=None, help="keep at most this many frames per clip"
  )
  parser.add_argument(
    "--num_shards", type=int, default=None, help=f"default: one per {DEFAULT_CLIPS_PER_SHARD} clips"
  )
  parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
  parser.add_argument("--no_progress", action="store_true")
  prepare_beam.add_arguments(parser)
  return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Prepares (returns the summary) or, with --verify, checks (returns verify_output's result)."""
  parser = build_parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  split_at = argv.index("--") if "--" in argv else len(argv)  # Beam pipeline options follow `--`
  args, beam_args = parser.parse_args(argv[:split_at]), argv[split_at + 1 :]
  if beam_args and args.runner != "beam":
    parser.error(f"pipeline options after `--` need --runner=beam: {' '.join(beam_args)}")
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  write_shards = None
  if args.runner == "beam" and not args.verify:
    write_shards = prepare_beam.BeamShardWriter(beam_args, args.workers)
    if args.dry_run:
      return prepare_beam.print_options(write_shards.options)
  if args.verify:
    result = verify_output(args.output, args.split)
    _print_verification(result)
    return result
  absent = [flag for flag in ("format", "root") if getattr(args, flag) is None]
  if absent:
    parser.error(f"the following arguments are required: {', '.join('--' + f for f in absent)}")
  return prepare_dataset(
    args.format,
    args.root,
    args.output,
    annotations=args.annotations,
    split=args.split or "train",
    labels=args.labels,
    label_names=_label_names_from(args.label_names_from) if args.label_names_from else None,
    fps=args.fps,
    short_side=args.short_side or None,
    jpeg_quality=args.jpeg_quality,
    min_duration=args.min_duration,
    max_frames=args.max_frames,
    num_shards=args.num_shards,
    workers=args.workers,
    progress=not args.no_progress,
    write_shards=write_shards,
  )


def cli() -> None:
  """The command (`vicmae-prepare`, `python -m vicmae_jax.data.prepare`): errors as one line."""
  try:
    outcome = main()
  except (ValueError, FileNotFoundError, OutputLockedError) as error:
    sys.exit(f"error: {error}")
  if outcome.get("problems"):  # --verify found damaged files
    sys.exit(1)


if __name__ == "__main__":
  cli()
