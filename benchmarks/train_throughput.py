"""End to end: prepared shards -> grain loader -> pretraining step, and each part alone, in one run.

Rows (pairs/s of the same model, batch and compiled step, all in this process):

  step_alone       the jitted pretraining step (trainers/pretrain.make_train_step) on one batch
                   already on the device, `--steps` steps dispatched back to back, one wait at the end
  loader_alone     the real loader (data/pipeline.make_pretrain_loader: prepared ArrayRecord shards,
                   frame pairs by time, the full view recipe) with nothing else running; also the
                   cores it kept busy (process CPU time / wall time)
  loop_in_memory   the real training loop (trainers/run_loop.run_loop: device prefetch, one-step-late
                   metrics, logger, the final checkpoint) on batches already in host memory: what the
                   loop itself costs over the step (`loop_overhead`, as a fraction of step time)
  loop_real        the same loop fed by the real loader: the figure a run gets
  step_ranked      step_alone's step as it runs on a logged step: with the health monitors' two
                   effective ranks (eigendecompositions, computed on logged steps only);
                   `rank_cost` is its extra time as a fraction of step time, paid once per
                   `log.every_steps` steps

Loop rows are timed between the dispatch of step `--warmup` and of the last step (the compilation,
the first steps and the closing save are outside the window). step_alone and loop_in_memory take
turns `--repeats` times on random uint8 views (medians); the loader is made after them, so its
threads do not compete with them for the host. Ratios: each row over step_alone.

By default it writes K400-like videos (benchmarks/input_pipeline.py's, 456x256, 30 fps) and
prepares them at 8 fps, short side 256, under --workdir (kept for the next run).

  python benchmarks/train_throughput.py --variant=mu/8 --image_size=32 --batch=16 --steps=10   # CPU
  python benchmarks/train_throughput.py --variant=B/16 --batch=256 --dtype=bfloat16 \\
      --activation_dtype=bfloat16 --worker_count=16 --json_out=/tmp/tt.json             # one GPU
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_lib  # noqa: E402
from vicmae_jax import config_lib  # noqa: E402
from vicmae_jax import metrics as metrics_lib  # noqa: E402
from vicmae_jax import sharding as sharding_lib  # noqa: E402
from vicmae_jax.data import pipeline, prepare, records  # noqa: E402
from vicmae_jax.trainers import common, pretrain  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))


class InMemoryBatches:
  """An endless source of a few host batches, cycled, with a grain-like get_state / set_state."""

  def __init__(self, batches: list[dict[str, np.ndarray]]):
    self.batches = batches
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batches[self.position % len(self.batches)]
    self.position += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"position": self.position}

  def set_state(self, state: dict[str, int]) -> None:
    self.position = int(state["position"])


def prepared_shards(workdir: str, num_videos: int) -> str:
  """K400-like videos prepared into ArrayRecord shards under `workdir` (made once, then reused)."""
  prepared_dir = os.path.join(workdir, "prepared")
  meta_path = os.path.join(prepared_dir, "train_meta.json")
  if os.path.isfile(meta_path):
    with open(meta_path) as file:
      if json.load(file).get("record_version") == records.FORMAT_VERSION:
        return prepared_dir
  spec = importlib.util.spec_from_file_location(
    "input_pipeline", os.path.join(_HERE, "input_pipeline.py")
  )
  input_pipeline = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(input_pipeline)
  videos = os.path.join(workdir, "videos")
  if not os.path.isdir(videos):
    print(f"writing {num_videos} K400-like videos to {videos}", flush=True)
    input_pipeline.write_videos(videos, num_videos)
  print(f"preparing shards in {prepared_dir}", flush=True)
  prepare.prepare_dataset(
    "folder",
    videos,
    prepared_dir,
    fps=8.0,
    short_side=256,
    workers=os.cpu_count() or 1,
    progress=False,
  )
  return prepared_dir


def make_config(args, prepared_dir: str, total_steps: int):
  c = config_lib.pretrain_config()
  c.batch_size = args.batch
  c.image_size = args.image_size
  c.num_epochs = 0.0
  c.num_steps = total_steps
  c.warmup_epochs = 0.0
  c.warmup_steps = 1
  model = dict(
    variant=args.variant,
    dtype=args.dtype,
    activation_dtype=args.activation_dtype,
    attention_impl=None if args.attention_impl == "xla" else args.attention_impl,
  )
  for item in args.set:
    field, _, value = item.partition("=")
    try:
      model[field.strip()] = json.loads(value)
    except ValueError:
      model[field.strip()] = value
  c.model = config_lib.model_config(**model)
  c.data = pipeline.default_data_config()
  c.data.sources.prepared = pipeline.default_source_config(kind="prepared", path=prepared_dir)
  c.data.worker_count = args.worker_count
  if args.num_threads >= 0:
    c.data.num_threads = args.num_threads
  c.checkpoint.every_steps = 0  # the loop saves once, at its last step (outside the timed window)
  c.log.every_steps = 10**6
  c.device_prefetch = args.device_prefetch
  return c


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--variant", default="B/16")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=256, help="global batch (pairs per step)")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--activation_dtype", default="bfloat16")
  parser.add_argument("--attention_impl", default="xla", help="xla / cudnn (GPU only)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each window")
  parser.add_argument("--worker_count", type=int, default=0, help="data.worker_count")
  parser.add_argument("--num_threads", type=int, default=-1, help="data.num_threads (-1: per core)")
  parser.add_argument("--device_prefetch", type=int, default=2)
  parser.add_argument(
    "--repeats", type=int, default=3, help="turns of step_alone and loop_in_memory (median)"
  )
  parser.add_argument("--loader_seconds", type=float, default=5.0, help="loader_alone's window")
  parser.add_argument("--num_videos", type=int, default=8)
  parser.add_argument("--workdir", default="", help="videos and shards are kept here")
  parser.add_argument("--json_out", default="")
  args = parser.parse_args(argv)

  workdir = args.workdir or os.path.join(tempfile.gettempdir(), "vicmae_train_throughput")
  os.makedirs(workdir, exist_ok=True)
  prepared_dir = prepared_shards(workdir, args.num_videos)
  total = args.warmup + args.steps
  config = make_config(args, prepared_dir, total)
  try:
    pretrain.validate(config)
  except config_lib.ConfigError as e:
    parser.error(str(e))
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s)")

  mesh = common.make_mesh(config)
  model_fn, tx, lr_fn = pretrain.make_model_and_optimizer(config, total, 1)
  batch_sh = sharding_lib.batch_sharding(mesh)
  to_global = functools.partial(pipeline.to_global, sharding=batch_sh)

  def fresh():
    state, state_sh, graphdef, rest = common.create_state(model_fn, tx, mesh, config.seed)
    return state, state_sh, graphdef, rest

  state, state_sh, graphdef, rest = fresh()
  step = pretrain.make_train_step(graphdef, rest, tx, lr_fn, config, state_sh, batch_sh, mesh)
  ranked_config = config.copy_and_resolve_references()
  ranked_config.log.every_steps = 1
  step_ranked = pretrain.make_train_step(
    graphdef, rest, tx, lr_fn, ranked_config, state_sh, batch_sh, mesh
  )

  rows: dict[str, dict[str, Any]] = {}
  rng = np.random.default_rng(0)
  shape = (args.batch, 2, args.image_size, args.image_size, 3)
  host_batches = [{"views": rng.integers(0, 256, shape, dtype=np.uint8)} for _ in range(2)]
  device_batch = to_global(host_batches[0])
  start = time.perf_counter()
  state, metrics = step(state, device_batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  state, metrics = step_ranked(state, device_batch)
  jax.block_until_ready(metrics)

  def step_alone(state, step=step):
    """Steps back to back on one device batch: seconds per step."""
    for _ in range(args.warmup):
      state, metrics = step(state, device_batch)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, device_batch)
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - start) / args.steps

  def loop(source) -> float:
    """The real loop over `source`: seconds per step between the timed dispatches."""
    state, _, _, _ = fresh()
    times: list[float] = []

    def timed_step(state, batch):
      times.append(time.perf_counter())
      return step(state, batch)

    run_dir = tempfile.mkdtemp(prefix="loop_", dir=workdir)
    ckpt = common.make_checkpointer(config, run_dir)
    logger = metrics_lib.TrainLogger(run_dir, total_steps=total, global_batch=args.batch)
    try:
      common.run_loop(
        config=config,
        workdir=run_dir,
        state=state,
        train_step=timed_step,
        feed=common.Feed(source, to_global, ("views",)),
        ckpt=ckpt,
        logger=logger,
        steps=(0, total),
      )
    finally:
      ckpt.close()
      logger.close()
      shutil.rmtree(run_dir, ignore_errors=True)
    return (times[-1] - times[args.warmup]) / (len(times) - 1 - args.warmup)

  # The step alone and the loop on in-memory batches take turns (the machine's busy spells fall
  # on both); no loader exists yet, so no loader thread competes with them for the host.
  alone, in_memory, ranked = [], [], []
  for _ in range(args.repeats):
    state, seconds = step_alone(state)
    alone.append(seconds)
    state, seconds = step_alone(state, step_ranked)
    ranked.append(seconds)
    in_memory.append(loop(InMemoryBatches(host_batches)))
  del state
  for name, times in (
    ("step_alone", alone),
    ("step_ranked", ranked),
    ("loop_in_memory", in_memory),
  ):
    median = float(np.median(times))
    rows[name] = {"step_ms": 1e3 * median, "pairs_per_s": args.batch / median}
    rows[name]["step_ms_each"] = [1e3 * t for t in times]

  # Loader alone: its read-ahead buffers drained first, then timed for --loader_seconds.
  loader = pipeline.make_pretrain_loader(
    config.data,
    global_batch_size=config.batch_size,
    image_size=config.image_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  data_iter = iter(loader)
  buffered = int(config.data.get("prefetch_elements", 256)) // args.batch + 1
  for _ in range(args.warmup + buffered + int(config.data.get("prefetch_batches", 0))):
    next(data_iter)
  start, cpu, batches = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - start < args.loader_seconds or batches < 2:
    next(data_iter)
    batches += 1
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu
  rows["loader_alone"] = {
    "step_ms": 1e3 * wall / batches,
    "pairs_per_s": args.batch * batches / wall,
    "cores_busy": cpu / wall,
  }
  seconds = loop(data_iter)
  rows["loop_real"] = {"step_ms": 1e3 * seconds, "pairs_per_s": args.batch / seconds}
  if hasattr(data_iter, "close"):
    data_iter.close()

  base = rows["step_alone"]["pairs_per_s"]
  ratios = {f"{name} / step_alone": row["pairs_per_s"] / base for name, row in rows.items()}
  overhead = rows["loop_in_memory"]["step_ms"] / rows["step_alone"]["step_ms"] - 1.0
  rank_cost = rows["step_ranked"]["step_ms"] / rows["step_alone"]["step_ms"] - 1.0
  result = {
    "variant": args.variant,
    "image_size": args.image_size,
    "batch": args.batch,
    "dtype": args.dtype,
    "activation_dtype": args.activation_dtype,
    "attention_impl": args.attention_impl,
    "worker_count": args.worker_count,
    "device_prefetch": args.device_prefetch,
    "steps": args.steps,
    "warmup": args.warmup,
    "repeats": args.repeats,
    "compile_s": compile_s,
    "rows": rows,
    "ratios": ratios,
    "loop_overhead": overhead,
    "rank_cost": rank_cost,
    "device": device.device_kind,
    "platform": device.platform,
    "jax_version": jax.__version__,
  }
  for name, row in rows.items():
    extra = f"  ({row['cores_busy']:.2f} cores busy)" if "cores_busy" in row else ""
    print(f"{name:16s} {row['step_ms']:9.1f} ms/step {row['pairs_per_s']:9.1f} pairs/s{extra}")
  for name, value in ratios.items():
    print(f"{name:30s} {value:.3f}")
  print(f"loop overhead over the step: {overhead:+.1%} of step time")
  print(f"health ranks on a logged step: {rank_cost:+.1%} of step time")
  bench_lib.write_json(args.json_out, result)
  return result


if __name__ == "__main__":
  main()
