"""Preparation on Apache Beam: the shards of prepare.py, each one written by a Beam worker.

  vicmae-prepare --runner=beam --format=kinetics --root=... --output=... --workers=8
  vicmae-prepare --runner=beam ... -- --runner=DataflowRunner --project=P --region=R \
      --temp_location=gs://BUCKET/tmp --extra_package=dist/vicmae_jax-0.1.0-py3-none-any.whl
  vicmae-prepare --runner=beam ... --dry_run     # prints the pipeline options, runs nothing

Arguments after `--` are Beam pipeline options; without a `--runner` among them the pipeline runs on
the DirectRunner in `--workers` processes (`direct_running_mode=multi_processing`). The driver is
prepare.prepare_entries: it lists the videos, holds the output lock, checks the shards already
written and writes the meta json, exactly as the local path; only the writing of the missing
shards is handed to Beam (Create(shard tasks) | Reshuffle | Map(write one shard)). A worker runs
shard_writer._write_shard, the function the local workers run, so the shards, their indexes and
their state files are byte for byte those of the local path; the driver then reads each shard's
state (its counts and skipped files) back from the output folder and merges the skipped files of
every worker into the meta json.

The videos and OUTPUT must be paths every worker opens: a local disk with the DirectRunner; on a
cluster, a shared filesystem mounted at the same path on every worker (NFS, Filestore).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from vicmae_jax.data import shard_writer
from vicmae_jax.data.shard_files import _state_path

_EXTRA = "pip install 'vicmae_jax[beam]' (or: pip install apache-beam)"


def _beam():
  try:
    import apache_beam
  except ImportError:
    raise ValueError(f"--runner=beam needs Apache Beam: {_EXTRA}") from None
  return apache_beam


def pipeline_options(beam_args: Sequence[str], workers: int):
  """Beam PipelineOptions from the arguments after `--`; the DirectRunner in `workers` processes
  unless they name another runner."""
  _beam()
  from apache_beam.options.pipeline_options import PipelineOptions

  args = list(beam_args)
  if not any(a == "--runner" or a.startswith("--runner=") for a in args):
    args = [
      "--runner=DirectRunner",
      "--direct_running_mode=multi_processing",
      f"--direct_num_workers={max(1, int(workers))}",
      *args,
    ]
  return PipelineOptions(args)


def describe_options(options) -> dict[str, Any]:
  """The options a pipeline would run with (those given or changed from Beam's defaults)."""
  return {k: v for k, v in sorted(options.get_all_options(drop_default=True).items())}


def print_options(options) -> dict[str, Any]:
  """--dry_run: prints {"pipeline_options": ...} as json, returns it."""
  described = {"pipeline_options": describe_options(options)}
  print(json.dumps(described, indent=1))
  return described


def add_arguments(parser) -> None:
  """prepare's flags for this path: --runner, --dry_run."""
  parser.add_argument(
    "--runner",
    choices=("local", "beam"),
    default="local",
    help="local: --workers processes here; beam: an Apache Beam pipeline (prepare_beam.py), "
    "with Beam pipeline options after `--`",
  )
  parser.add_argument(
    "--dry_run",
    action="store_true",
    help="with --runner=beam: print the pipeline options, run nothing",
  )


def _write_one(task: dict[str, Any]) -> str:
  """A worker's step: writes the shard (shard_writer's own function); returns its name."""
  return shard_writer._write_shard(task)["name"]


class BeamShardWriter:
  """Writes shard tasks with a Beam pipeline; prepare_entries' `write_shards` hook."""

  def __init__(self, beam_args: Sequence[str] = (), workers: int = 1):
    self.options = pipeline_options(beam_args, workers)

  def __call__(self, tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not tasks:
      return []
    beam = _beam()
    # Workers import the package by name: a DirectRunner worker process started from a checkout
    # (not an installed package) finds it through PYTHONPATH.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    before = os.environ.get("PYTHONPATH")
    paths = (before or "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [root, *paths] if p)
    try:
      with beam.Pipeline(options=self.options) as pipeline:
        _ = (
          pipeline
          | "shards" >> beam.Create(list(tasks))
          | "spread" >> beam.Reshuffle()
          | "write" >> beam.Map(_write_one)
        )
    finally:
      if before is None:
        os.environ.pop("PYTHONPATH", None)
      else:
        os.environ["PYTHONPATH"] = before
    states = []
    for task in tasks:
      path = _state_path(task["output"], task["name"])
      shard = os.path.join(task["output"], task["name"])
      if not (os.path.isfile(path) and os.path.isfile(shard)):
        raise RuntimeError(
          f"the Beam pipeline ended without writing {shard}: do the workers see "
          f"{task['output']} at the same path?"
        )
      with open(path) as file:
        states.append(json.load(file))
    return states
