"""Checking prepared shards: the sizes and sha256 sums recorded for a shard and its index when they
were written, the checks of completed shards (against those records, or a structural one for shards
written before sums were kept), and `--verify` (`verify_output`), which checks a prepared folder
without writing anything.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

from vicmae_jax import dirlock
from vicmae_jax.data import records
from vicmae_jax.data.shard_files import LOCK_NAME, OutputLockedError

_HASH_CHUNK = 1 << 20


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    while chunk := file.read(_HASH_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _file_record(shard_file: str, index_file: str) -> dict[str, Any]:
  """Sizes and sha256 of a shard and its index, as recorded in its state and the meta json."""
  return {
    "size": os.path.getsize(shard_file),
    "sha256": _sha256(shard_file),
    "index_size": os.path.getsize(index_file),
    "index_sha256": _sha256(index_file),
  }


def _file_problem(path: str, size: int, sha256: str) -> str | None:
  """One line naming `path` when it is not the file that was written, else None."""
  try:
    actual = os.path.getsize(path)
  except FileNotFoundError:
    return f"{path}: missing"
  if actual < size:
    return f"{path}: truncated ({actual} bytes, {size} when written)"
  if actual != size:
    return f"{path}: damaged ({actual} bytes, {size} when written)"
  if _sha256(path) != sha256:
    return f"{path}: damaged (its sha256 differs from the one recorded when it was written)"
  return None


def _files_problems(shard_path: str, files: dict[str, Any]) -> list[str]:
  """Checks a shard and its index against their recorded sizes and sha256 sums."""
  problems = [
    _file_problem(shard_path, files["size"], files["sha256"]),
    _file_problem(records.index_path(shard_path), files["index_size"], files["index_sha256"]),
  ]
  return [problem for problem in problems if problem is not None]


def _read_or_note(path: str, reader, problems: list[str]):
  """`reader(path)`, or None with the problem noted (missing, or cut short / damaged)."""
  try:
    return reader(path)
  except FileNotFoundError:
    problems.append(f"{path}: missing")
  except records.DamagedShardError as error:
    problems.append(f"{path}: truncated or damaged ({error.detail})")
  return None


def _structure_problems(shard_path: str, num_clips: int | None = None) -> list[str]:
  """For shards written before checksums were kept: the shard opens, its index decodes, they agree."""
  problems = []
  index_file = records.index_path(shard_path)
  num_records = _read_or_note(shard_path, records.count_records, problems)
  index = _read_or_note(index_file, records.read_index, problems)
  if index is not None and num_records is not None and index.num_records != num_records:
    problems.append(
      f"{shard_path}: damaged (holds {num_records} frame records, its index lists "
      f"{index.num_records})"
    )
  if index is not None and num_clips is not None and len(index) != num_clips:
    problems.append(f"{index_file}: damaged (lists {len(index)} clips, {num_clips} were written)")
  return problems


def _check_shard(job: dict[str, Any]) -> dict[str, Any]:
  """Verifies a completed shard against its state: {name, problems (lines), files (to record)}."""
  path = os.path.join(job["output"], job["name"])
  state = job["state"]
  if "files" in state:
    return {"name": job["name"], "problems": _files_problems(path, state["files"]), "files": None}
  problems = _structure_problems(path, state["num_clips"])
  files = None if problems else _file_record(path, records.index_path(path))
  return {"name": job["name"], "problems": problems, "files": files}


def verify_output(output: str | os.PathLike, split: str | None = None) -> dict[str, Any]:
  """Checks a prepared folder without writing anything: every shard and index file of `split`
  (default: every split with a `<split>_meta.json` there) against the size and sha256 recorded in
  the meta json when it was written. Meta files from before checksums were kept get a structural
  check (the shard opens, its index decodes, their counts agree).

  Returns {output, splits, num_shards, problems: one line per damaged or missing file, unchecked:
  the meta files without checksums}. Raises FileNotFoundError when there is nothing prepared to
  check, OutputLockedError while a prepare runs there.
  """
  output = os.fspath(output)
  if not os.path.isdir(output):
    raise FileNotFoundError(f"prepared folder not found: {output}")
  holder = dirlock.held_by(output, LOCK_NAME)
  if holder is not None:
    raise OutputLockedError(
      f"{output} is being prepared now ({dirlock.describe(holder)}): verify it once that "
      "prepare has ended"
    )
  if split:
    meta_paths = [os.path.join(output, f"{split}_meta.json")]
    if not os.path.isfile(meta_paths[0]):
      raise FileNotFoundError(
        f"{meta_paths[0]} not found: no finished prepare of split {split!r} in {output}"
      )
  else:
    meta_paths = sorted(glob.glob(os.path.join(glob.escape(output), "*_meta.json")))
    if not meta_paths:
      raise FileNotFoundError(
        f"no *_meta.json in {output}: not a prepared folder, or its prepare has not finished"
      )
  problems, splits, unchecked, num_shards = [], [], [], 0
  for meta_path in meta_paths:
    try:
      with open(meta_path) as file:
        meta = json.load(file)
    except ValueError as error:
      raise ValueError(f"{meta_path}: not a readable meta json ({error})") from None
    if not isinstance(meta, dict) or "shards" not in meta:
      raise ValueError(f"{meta_path}: not a prepare meta json (no list of shards)")
    splits.append(meta.get("split") or os.path.basename(meta_path).removesuffix("_meta.json"))
    files = meta.get("shard_files")
    if files is None:
      unchecked.append(meta_path)
    for number, name in enumerate(meta["shards"]):
      path = os.path.join(output, name)
      if files is not None:
        problems.extend(_files_problems(path, files[number]))
      else:
        problems.extend(_structure_problems(path, meta["shard_num_clips"][number]))
      num_shards += 1
  return {
    "output": output,
    "splits": splits,
    "num_shards": num_shards,
    "problems": problems,
    "unchecked": unchecked,
  }


def _print_verification(result: dict[str, Any]) -> None:
  for problem in result["problems"]:
    print(problem)
  for meta_path in result["unchecked"]:
    print(
      f"{meta_path} records no checksums (written by an earlier version): its shards were only "
      "checked to open and to match their index"
    )
  splits = ", ".join(result["splits"])
  if result["problems"]:
    print(
      f"{result['output']}: {len(result['problems'])} damaged or missing file(s) in "
      f"{result['num_shards']} shard(s) of split(s) {splits}: re-run the prepare command with the "
      "same options to prepare them again"
    )
  else:
    print(
      f"{result['output']}: {result['num_shards']} shard(s) of split(s) {splits} verified, every "
      "shard and index file intact"
    )
