r"""What worker processes can reach on this machine: the loader's worker scaling next to the
machine's own, for the same per-pair work, in one run.

Rows, per process count K (--counts=1,2):

  independent   K processes that share nothing, each making full-recipe pairs from the prepared
                shards in a loop (the loader's own example maker: index -> pair by time -> read
                two frames -> decode, crop, colour jitter, grayscale, blur / solarize), no grain,
                no batches, nothing sent between processes. Their total pairs/s over K = 1 is the
                most any loader with K workers can scale on this machine: what two busy cores
                give together when they share caches, memory bandwidth and (on a VM) maybe a
                physical core.
  loader        the real loader alone (data/pipeline.make_pretrain_loader, data.worker_count = K,
                one thread per worker, batches of 64; input_pipeline.py's worker rows).

Printed per K: pairs/s of both, each over its K = 1 row, and the loader's scaling as a fraction
of the machine's (`loader / independent` of the two ratios: 1.0 means the loader loses nothing
to its batching and hand-over between processes). Rows take turns --repeats times (medians), so
a busy spell of a shared machine falls on both.

  python3 benchmarks/core_scaling.py --workdir=/tmp/ipb --counts=1,2 --seconds=4 --repeats=3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import types

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import bench_lib, input_pipeline, train_throughput  # noqa: E402
from vicmae_jax.data import pipeline, sources  # noqa: E402


def _make_pairs(prepared_dir: str, image_size: int, worker: int, start, seconds: float, out):
  """One process: full-recipe pairs for `seconds` after `start` (a barrier); puts (pairs, cpu s)."""
  cfg = pipeline.default_data_config()
  source = sources.PreparedClipSource(prepared_dir, "train", name="prepared")
  make = pipeline.PairMaker(
    source,
    0,
    view_specs=cfg.view_augmentations,
    image_size=image_size,
    crop_scale=cfg.crop_scale,
    frame_gap_seconds=cfg.frame_gap_seconds,
    frame_gap_range=cfg.frame_gap_range,
    seed=worker,
  )
  number = 0

  def one():
    nonlocal number
    number += 1
    example = make((number % len(source), number // len(source)))
    assert not isinstance(example, sources.Skipped), example

  for _ in range(8):  # warm: the augmentations are built on first use
    one()
  start.wait()
  begin_wall, begin_cpu, pairs = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - begin_wall < seconds:
    one()
    pairs += 1
  out.put((pairs, time.process_time() - begin_cpu, time.perf_counter() - begin_wall))


def independent(prepared_dir: str, image_size: int, count: int, seconds: float) -> dict:
  """`count` processes making pairs at once: total pairs/s and the cores they kept busy."""
  context = multiprocessing.get_context("spawn")
  start, out = context.Barrier(count), context.Queue()
  procs = [
    context.Process(target=_make_pairs, args=(prepared_dir, image_size, w, start, seconds, out))
    for w in range(count)
  ]
  for p in procs:
    p.start()
  results = [out.get() for _ in procs]
  for p in procs:
    p.join()
  return {
    "pairs_per_s": sum(pairs / wall for pairs, _, wall in results),
    "cores_busy": sum(cpu / wall for _, cpu, wall in results),
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--workdir", default="/tmp/vicmae_core_scaling", help="shards are kept here")
  parser.add_argument("--counts", default="1,2", help="comma-separated process / worker counts")
  parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per row")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--num_videos", type=int, default=8)
  parser.add_argument("--json_out", default="")
  args = parser.parse_args(argv)
  counts = [int(c) for c in args.counts.split(",") if c]
  prepared_dir = train_throughput.prepared_shards(args.workdir, args.num_videos)

  machine: dict[int, list[dict]] = {k: [] for k in counts}
  loader: dict[int, list[dict]] = {k: [] for k in counts}
  for repeat in range(args.repeats):
    print(f"repetition {repeat + 1}/{args.repeats}", flush=True)
    for k in counts:
      machine[k].append(independent(prepared_dir, args.image_size, k, args.seconds))
      worker_args = types.SimpleNamespace(
        workers=str(k),
        threads_per_worker=1,
        photometric="host",
        repeats=1,
        seconds=args.seconds,
      )
      row = input_pipeline.measure_workers(prepared_dir, args.image_size, worker_args)[0]
      loader[k].append({"pairs_per_s": row["pairs_per_wall_s"], "cores_busy": row["cores_busy"]})

  def median(rows, key):
    return float(np.median([r[key] for r in rows]))

  base_machine = median(machine[counts[0]], "pairs_per_s")
  base_loader = median(loader[counts[0]], "pairs_per_s")
  rows = []
  print(f"full recipe, {args.image_size} px, median of {args.repeats}, {os.cpu_count()} cores:")
  for k in counts:
    row = {
      "count": k,
      "independent_pairs_per_s": median(machine[k], "pairs_per_s"),
      "independent_cores_busy": median(machine[k], "cores_busy"),
      "loader_pairs_per_s": median(loader[k], "pairs_per_s"),
      "loader_cores_busy": median(loader[k], "cores_busy"),
      "independent_repetitions": [r["pairs_per_s"] for r in machine[k]],
      "loader_repetitions": [r["pairs_per_s"] for r in loader[k]],
    }
    row["independent_scaling"] = row["independent_pairs_per_s"] / base_machine
    row["loader_scaling"] = row["loader_pairs_per_s"] / base_loader
    row["loader_of_machine"] = row["loader_scaling"] / row["independent_scaling"]
    rows.append(row)
    print(
      f"  K={k:>2}: independent {row['independent_pairs_per_s']:7.1f} pairs/s "
      f"({row['independent_cores_busy']:.2f} cores, {row['independent_scaling']:.2f}x), "
      f"loader {row['loader_pairs_per_s']:7.1f} pairs/s ({row['loader_cores_busy']:.2f} cores, "
      f"{row['loader_scaling']:.2f}x): the loader scales {row['loader_of_machine']:.2f} of the "
      "machine",
      flush=True,
    )
  result = {"rows": rows, "cores": os.cpu_count(), "image_size": args.image_size}
  bench_lib.write_json(args.json_out, result)
  return result


if __name__ == "__main__":
  main()
