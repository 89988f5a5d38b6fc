"""Frame pairs per second per CPU core at 224 px: prepared shards vs raw videos vs the decoder itself.

Measures, on the same videos and with the same pair sampling (1.06 s gaps):

  frame_records_read  what a pair reads from prepared shards: its clip's index entry and its two
                      frame records (records.py: one record per frame, uncompressed)
  whole_clip_read     the same from shards of the earlier format: one whole-clip record (all its
                      frames, group size 1, ArrayRecord's default compression) per pair
  jpeg_decode         decoding the two stored JPEG frames of a pair and nothing else (upper bound),
                      with the pipeline's decoder (augment.decode_image: OpenCV / libjpeg-turbo)
  jpeg_decode_pillow  the same with Pillow (the decoder the pipeline used before; a baseline)
  prepared_crop_flip  prepared shards: index -> pair by time -> read two frames -> decode + random
                      resized crop + flip, two views of 224 x 224 (the fast path)
  whole_clip_crop_flip the same from whole-clip shards (what the fast path replaced)
  prepared_crop_flip_pil_resize   prepared_crop_flip resizing with Pillow's bilinear filter instead
                      of OpenCV's area resize (a baseline)
  in_memory_crop_flip the same from clips already read (what remains without any record read)
  in_memory_full, prepared_full   the full ViC-MAE recipe (colour jitter, grayscale, blur / solarize)
  raw_crop_flip       raw video files: pair by time -> seek + decode both frames -> crop + flip
  pyav_seek_decode    the decoder's own rate: PyAV seek to each of the two times + decode to it, RGB
                      out, no resizing or augmentation (the baseline for raw decoding)
  grain_loader        the real pipeline (make_pretrain_loader, prepared, full recipe) with one thread,
                      then one thread per core, batches of 64: pairs/s in total and per CPU-second
  prepared_full_photometric_on_device   what the host does of the full recipe with
                      data.photometric_on_device (device_photometric.split_spec: decode, crop, flip)
  --workers=1,2,...   the real loader alone with data.worker_count = N (--threads_per_worker threads
                      each, default 1), full recipe, batches of 64: pairs/s of wall time, cores busy
                      (this process and its workers) and pairs/s per busy core, per worker count;
                      --photometric=host,device adds the rows with data.photometric_on_device on;
                      --loader_only measures only these rows

Single-thread rates are pairs per CPU-second of this process (time.process_time over the loop), which
is the per-core rate even on a machine shared with other work; wall-clock rates are printed beside
them. Every row is measured --repeats times, the rows taking turns so that a busy spell of the machine
spreads over all of them; the median is reported. Targets: prepared_crop_flip >= 700 pairs/s per
core; raw within 2x of pyav_seek_decode.

By default it writes K400-like videos first (456x256, 30 fps, 10 s, H.264, 2 s keyframe interval;
slow pans over scikit-image photographs plus sensor noise) and prepares them at 8 fps, short side
256. Point --videos at a folder of real videos (<root>/<class>/*.mp4) to measure on those instead.

  python benchmarks/input_pipeline.py                       # ~4 minutes on 2 cores
  python benchmarks/input_pipeline.py --videos=/data/k400_subset --seconds=10 --repeats=5 --json_out=/tmp/ip.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from fractions import Fraction

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import av  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from vicmae_jax.data import augment, device_photometric, pipeline, prepare, records  # noqa: E402
from vicmae_jax.data import sampling, sources  # noqa: E402

_PHOTOS = (
  "astronaut",
  "coffee",
  "chelsea",
  "rocket",
  "retina",
  "immunohistochemistry",
  "hubble_deep_field",
  "colorwheel",
)


def write_videos(
  root: str,
  count: int,
  *,
  seconds: float = 10.0,
  fps: float = 30.0,
  size: tuple[int, int] = (456, 256),
) -> None:
  """K400-like H.264 clips (``size`` = width, height): a slow pan and zoom over a photograph with
  per-frame noise."""
  width, height = size
  import skimage.data

  rng = np.random.default_rng(0)
  for number in range(count):
    photo = getattr(skimage.data, _PHOTOS[number % len(_PHOTOS)])()
    if photo.ndim == 2:
      photo = np.stack([photo] * 3, axis=-1)
    photo = np.asarray(
      Image.fromarray(photo[..., :3]).resize((width * 2, height * 2), Image.Resampling.BICUBIC)
    )
    os.makedirs(os.path.join(root, f"class{number % 4}"), exist_ok=True)
    path = os.path.join(root, f"class{number % 4}", f"clip{number:03d}.mp4")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, mode="w") as container:
      stream = container.add_stream("libx264", rate=rate)
      stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
      stream.options = {"preset": "veryfast", "crf": "23"}
      stream.codec_context.gop_size = int(2 * fps)
      num_frames = int(seconds * fps)
      for index in range(num_frames):
        progress = index / max(num_frames - 1, 1)
        scale = 1.0 - 0.3 * progress
        crop_w, crop_h = int(width * 2 * scale), int(height * 2 * scale)
        left = int((width * 2 - crop_w) * progress)
        top = int((height * 2 - crop_h) * (0.5 + 0.5 * np.sin(3 * progress)) / 1.0)
        top = min(max(top, 0), height * 2 - crop_h)
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize(
          (width, height), Image.Resampling.BILINEAR
        )
        pixels = np.asarray(image).astype(np.int16) + rng.integers(
          -6, 7, (height, width, 1), dtype=np.int16
        )
        frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), format="rgb24")
        frame.pts, frame.time_base = index, 1 / rate
        container.mux(stream.encode(frame))
      container.mux(stream.encode())


def measure(work, seconds: float) -> tuple[float, float, int]:
  """Runs work() -> pairs done, repeatedly for `seconds`: (pairs per CPU-second, per wall-second, pairs)."""
  pairs, wall_start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - wall_start < seconds:
    pairs += work()
  wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
  return pairs / cpu, pairs / wall, pairs


def measure_rows(rows: list[tuple[str, object]], seconds: float, repeats: int) -> list[dict]:
  """Each (name, work) row `repeats` times, rows taking turns; the median and every repetition per row."""
  for _, work in rows:
    work()  # warm-up: imports, caches, first file opens
  runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _ in rows}
  for repeat in range(repeats):
    print(f"  repetition {repeat + 1}/{repeats}", flush=True)
    for name, work in rows:
      runs[name].append(measure(work, seconds))
  results = []
  for name, _ in rows:
    per_cpu = [run[0] for run in runs[name]]
    per_wall = [run[1] for run in runs[name]]
    result = {
      "name": name,
      "pairs_per_cpu_s": float(np.median(per_cpu)),
      "pairs_per_wall_s": float(np.median(per_wall)),
      "repetitions_per_cpu_s": per_cpu,
      "pairs": sum(run[2] for run in runs[name]),
    }
    print(
      f"  {name:<22} {result['pairs_per_cpu_s']:8.1f} pairs/s per core  (median of {repeats}: "
      f"{', '.join(f'{v:.0f}' for v in per_cpu)}; {result['pairs_per_wall_s']:8.1f} per wall s)",
      flush=True,
    )
    results.append(result)
  return results


def write_whole_clip_shards(prepared_dir: str, output: str) -> None:
  """The prepared clips again in the earlier format: one whole-clip record per clip, no index."""
  from array_record.python.array_record_module import ArrayRecordWriter

  os.makedirs(output, exist_ok=True)
  for shard in sources.prepared_shard_paths(prepared_dir, "train"):
    writer = ArrayRecordWriter(os.path.join(output, os.path.basename(shard)), "group_size:1")
    for clip in records.read_clips(shard):
      writer.write(records.encode_clip(clip))
    writer.close()


def pyav_seek_decode(path: str, times: tuple[float, float]) -> None:
  """The decoder alone: for each time, seek to the keyframe before it, decode up to it, convert to RGB."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    for target in sorted(times):
      container.seek(int(target / stream.time_base), stream=stream, backward=True)
      for frame in container.decode(stream):
        if frame.time is not None and frame.time >= target - 1e-6:
          frame.to_ndarray(format="rgb24")
          break


def _cpu_seconds(process) -> dict[int, float]:
  """pid -> CPU seconds (user + system) of `process` and of each of its live children."""
  seconds = {}
  for proc in [process, *process.children(recursive=True)]:
    try:
      times = proc.cpu_times()
      seconds[proc.pid] = times.user + times.system
    except psutil.NoSuchProcess:
      pass
  return seconds


def measure_workers(prepared_dir: str, size: int, args) -> list[dict]:
  """The real loader alone (make_pretrain_loader, prepared, batches of 64) per worker count and
  photometric placement: pairs/s of wall time and cores busy (this process and its workers).

  The rows take turns every repetition, each with a loader of its own that is closed before the
  next row starts (a loader left open would keep its workers filling their buffers, on the cores
  the measured row needs); each runs unmeasured for half a measuring window after its first batch.
  """

  def make_iterator(workers, placement):
    cfg = pipeline.default_data_config()
    cfg.sources.prepared = pipeline.default_source_config(kind="prepared", path=prepared_dir)
    cfg.worker_count = workers
    cfg.num_threads = args.threads_per_worker
    cfg.photometric_on_device = "on" if placement == "device" else "off"
    loader = pipeline.make_pretrain_loader(
      cfg, global_batch_size=64, image_size=size, seed=0, process_index=0, process_count=1
    )
    return iter(loader)

  rows = [
    {"workers": workers, "photometric": placement, "runs": []}
    for placement in args.photometric.split(",")
    for workers in (int(w) for w in args.workers.split(","))
  ]
  me = psutil.Process()
  for repeat in range(args.repeats):
    print(f"  workers, repetition {repeat + 1}/{args.repeats}", flush=True)
    for row in rows:
      iterator = make_iterator(row["workers"], row["photometric"])
      next(iterator)
      settle = time.perf_counter()
      while time.perf_counter() - settle < args.seconds / 2:
        next(iterator)
      start_wall, start_cpu, batches = time.perf_counter(), _cpu_seconds(me), 0
      while time.perf_counter() - start_wall < args.seconds:
        next(iterator)
        batches += 1
      wall, end_cpu = time.perf_counter() - start_wall, _cpu_seconds(me)
      iterator.close()
      # Processes alive over the whole window (a previous row's workers may still be ending).
      cpu = sum(end_cpu[pid] - start_cpu[pid] for pid in end_cpu if pid in start_cpu)
      own = end_cpu[me.pid] - start_cpu[me.pid]
      row["runs"].append((64 * batches / wall, cpu / wall, own / wall))
  results = []
  for row in rows:
    runs = row.pop("runs")
    row["pairs_per_wall_s"] = float(np.median([r[0] for r in runs]))
    row["cores_busy"] = float(np.median([r[1] for r in runs]))
    row["main_process_cores_busy"] = float(np.median([r[2] for r in runs]))
    row["pairs_per_core_s"] = row["pairs_per_wall_s"] / row["cores_busy"]
    row["repetitions_pairs_per_wall_s"] = [r[0] for r in runs]
    results.append(row)
  print(
    f"loader alone, prepared, full recipe, {args.threads_per_worker} thread(s) per worker "
    f"(median of {args.repeats}):",
    flush=True,
  )
  base = {}
  for row in results:
    first = base.setdefault(row["photometric"], row)
    print(
      f"  photometric on {row['photometric']:<6} workers {row['workers']:>2}: "
      f"{row['pairs_per_wall_s']:7.1f} pairs/s, {row['cores_busy']:5.2f} cores busy "
      f"({row['main_process_cores_busy']:.2f} in this process), "
      f"{row['pairs_per_core_s']:6.1f} pairs/s per core busy, "
      f"{row['pairs_per_wall_s'] / first['pairs_per_wall_s']:4.2f}x of {first['workers']} worker(s) "
      f"(repetitions: {', '.join(f'{v:.0f}' for v in row['repetitions_pairs_per_wall_s'])})",
      flush=True,
    )
  return results


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--videos", default="", help="folder-format video root (default: write K400-like clips)"
  )
  parser.add_argument("--num_videos", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument(
    "--seconds", type=float, default=4.0, help="measuring time per row and repetition"
  )
  parser.add_argument(
    "--repeats", type=int, default=3, help="repetitions per row (the median is reported)"
  )
  parser.add_argument(
    "--fps", type=float, default=8.0, help="stored frame rate of the prepared shards"
  )
  parser.add_argument(
    "--workdir", default="", help="where videos and shards go (default: a temporary dir)"
  )
  parser.add_argument("--json_out", default="")
  parser.add_argument(
    "--workers",
    default="",
    help="comma-separated worker counts: the loader alone with data.worker_count=N (e.g. 1,2)",
  )
  parser.add_argument(
    "--threads_per_worker", type=int, default=1, help="data.num_threads in each worker process"
  )
  parser.add_argument(
    "--photometric",
    default="host",
    help="host, device or host,device: where the worker rows' photometric ops run",
  )
  parser.add_argument(
    "--loader_only", action="store_true", help="only the --workers rows (skip the per-core rows)"
  )
  args = parser.parse_args(argv)

  workdir = args.workdir or tempfile.mkdtemp(prefix="vicmae_input_bench_")
  videos = args.videos or os.path.join(workdir, "videos")
  if not args.videos and not os.path.isdir(videos):
    print(f"writing {args.num_videos} K400-like videos to {videos}", flush=True)
    write_videos(videos, args.num_videos)
  prepared_dir = os.path.join(workdir, "prepared")
  meta_path = os.path.join(prepared_dir, "train_meta.json")
  meta = {}
  if os.path.isfile(meta_path):
    with open(meta_path) as file:
      meta = json.load(file)
  if meta.get("record_version") != records.FORMAT_VERSION:
    print(f"preparing shards at {args.fps} fps, short side 256 in {prepared_dir}", flush=True)
    prepare.prepare_dataset(
      "folder",
      videos,
      prepared_dir,
      fps=args.fps,
      short_side=256,
      workers=os.cpu_count() or 1,
      progress=False,
    )

  whole_clip_dir = os.path.join(workdir, "whole_clip")
  if not os.path.isdir(whole_clip_dir):
    write_whole_clip_shards(prepared_dir, whole_clip_dir)

  size = args.image_size
  worker_rows = []
  if args.workers:
    worker_rows = measure_workers(prepared_dir, size, args)
    if args.loader_only:
      if args.json_out:
        with open(args.json_out, "w") as file:
          json.dump({"workers": worker_rows, "cores": os.cpu_count()}, file, indent=1)
      return {"workers": worker_rows}
  prepared = sources.PreparedClipSource(prepared_dir, "train", name="prepared")
  whole_clip = sources.PreparedClipSource(whole_clip_dir, "train", name="prepared")
  raw = sources.RawVideoSource("folder", videos, short_side=256, name="raw")
  first = prepared[0]
  height, width = np.asarray(Image.open(io.BytesIO(first["frames"][0]))).shape[:2]
  cores = os.cpu_count() or 1
  print(
    f"{len(prepared)} clips; stored frames {width}x{height}; output {size}x{size}; {cores} cores visible",
    flush=True,
  )

  def maker(source, specs):
    return pipeline.PairMaker(
      source,
      0,
      view_specs=specs,
      image_size=size,
      crop_scale=(0.08, 1.0),
      frame_gap_seconds=sampling.DEFAULT_FRAME_GAP_SECONDS,
      frame_gap_range=None,
      seed=0,
    )

  counter = {"i": 0}

  def pairs_of(make, batch=16):
    def work():
      for _ in range(batch):
        counter["i"] += 1
        out = make((counter["i"] % len(make.source), counter["i"] // len(make.source)))
        assert not isinstance(out, sources.Skipped), out
      return batch

    return work

  clips = [dict(prepared[i], frames=list(prepared[i]["frames"])) for i in range(len(prepared))]

  class InMemory(sources.Source):
    """The prepared clips, read once: isolates decode + crop + flip from the record reads."""

    def __len__(self):
      return len(clips)

    def __getitem__(self, index):
      return clips[index]

  in_memory = InMemory("prepared", None)

  def pair_of(example, number):
    rng = sampling.example_rng(0, 1, number, 0)
    return sampling.pair_indices(example["timestamps"], sampling.DEFAULT_FRAME_GAP_SECONDS, rng)

  def frames_of(source, use=None):
    """16 pairs' two frames from `source`: read, and passed to `use` where given."""

    def work():
      for _ in range(16):
        counter["i"] += 1
        example = source[counter["i"] % len(source)]
        for index in pair_of(example, counter["i"]):
          frame = example["frames"][index]
          if use is not None:
            use(frame)
      return 16

    return work

  def pillow_decode(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

  def decoder_only():
    for _ in range(4):
      counter["i"] += 1
      example = raw[counter["i"] % len(raw)]
      rng = sampling.example_rng(0, 2, counter["i"], 0)
      pyav_seek_decode(
        example["path"],
        sampling.pair_times(example["duration_s"], sampling.DEFAULT_FRAME_GAP_SECONDS, rng),
      )
    return 4

  frame_bytes = np.mean([len(frame) for clip in clips for frame in clip["frames"]])
  clip_bytes = np.mean([len(whole_clip._records[i]) for i in range(len(whole_clip))])
  print(
    f"  (a clip holds {len(first['frames'])} frames; a frame record {frame_bytes / 2**10:.0f} KiB, "
    f"a whole-clip record {clip_bytes / 2**20:.2f} MiB)",
    flush=True,
  )
  print(f"single thread (per core), {args.seconds:g} s per row and repetition:", flush=True)
  crop_flip = (augment.CROP_FLIP_SPEC,) * 2
  device_heads = device_photometric.split_views(augment.DEFAULT_VIEW_SPECS)[0]
  crop_flip_pil_resize = ("decode|random_resized_crop(interpolation='pil_bilinear')|flip",) * 2
  results = measure_rows(
    [
      ("frame_records_read", frames_of(prepared)),
      ("whole_clip_read", frames_of(whole_clip)),
      ("jpeg_decode", frames_of(clips, augment.decode_image)),
      ("jpeg_decode_pillow", frames_of(clips, pillow_decode)),
      ("prepared_crop_flip", pairs_of(maker(prepared, crop_flip))),
      ("prepared_crop_flip_pil_resize", pairs_of(maker(prepared, crop_flip_pil_resize))),
      ("whole_clip_crop_flip", pairs_of(maker(whole_clip, crop_flip))),
      ("in_memory_crop_flip", pairs_of(maker(in_memory, crop_flip))),
      ("in_memory_full", pairs_of(maker(in_memory, augment.DEFAULT_VIEW_SPECS))),
      ("prepared_full", pairs_of(maker(prepared, augment.DEFAULT_VIEW_SPECS))),
      ("prepared_full_photometric_on_device", pairs_of(maker(prepared, device_heads))),
      ("raw_crop_flip", pairs_of(maker(raw, crop_flip), batch=4)),
      ("pyav_seek_decode", decoder_only),
    ],
    args.seconds,
    args.repeats,
  )
  by_name = {r["name"]: r for r in results}

  def measure_loader(threads: int) -> dict:
    cfg = pipeline.default_data_config()
    cfg.sources.prepared = pipeline.default_source_config(kind="prepared", path=prepared_dir)
    cfg.num_threads = threads
    loader = pipeline.make_pretrain_loader(
      cfg, global_batch_size=64, image_size=size, seed=0, process_index=0, process_count=1
    )
    iterator = iter(loader)
    next(iterator)
    runs = []
    for _ in range(args.repeats):
      start_wall, start_cpu, batches = time.perf_counter(), time.process_time(), 0
      while time.perf_counter() - start_wall < args.seconds:
        next(iterator)
        batches += 1
      wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
      runs.append((64 * batches / wall, 64 * batches / cpu, cpu / wall))
    iterator.close()
    result = {
      "name": "grain_loader",
      "threads": threads,
      "pairs_per_wall_s": float(np.median([run[0] for run in runs])),
      "pairs_per_cpu_s": float(np.median([run[1] for run in runs])),
      "cpu_utilisation": float(np.median([run[2] for run in runs])),
      "repetitions_per_cpu_s": [run[1] for run in runs],
    }
    print(
      f"grain loader, prepared, full recipe, {threads} thread(s) (median of {args.repeats}): "
      f"{result['pairs_per_wall_s']:.1f} pairs/s in total, {result['pairs_per_cpu_s']:.1f} per "
      f"CPU-second ({result['cpu_utilisation']:.2f} cores busy)",
      flush=True,
    )
    return result

  # One thread, then one per core: how far threads scale (the GIL is released in the pixel work).
  loader_one = measure_loader(1)
  loader_result = measure_loader(cores) if cores > 1 else loader_one

  ratios = {
    "prepared_crop_flip / whole_clip_crop_flip": by_name["prepared_crop_flip"]["pairs_per_cpu_s"]
    / by_name["whole_clip_crop_flip"]["pairs_per_cpu_s"],
    "prepared_crop_flip / raw_crop_flip": by_name["prepared_crop_flip"]["pairs_per_cpu_s"]
    / by_name["raw_crop_flip"]["pairs_per_cpu_s"],
    "pyav_seek_decode / raw_crop_flip": by_name["pyav_seek_decode"]["pairs_per_cpu_s"]
    / by_name["raw_crop_flip"]["pairs_per_cpu_s"],
    "jpeg_decode / prepared_crop_flip": by_name["jpeg_decode"]["pairs_per_cpu_s"]
    / by_name["prepared_crop_flip"]["pairs_per_cpu_s"],
    "jpeg_decode / jpeg_decode_pillow": by_name["jpeg_decode"]["pairs_per_cpu_s"]
    / by_name["jpeg_decode_pillow"]["pairs_per_cpu_s"],
    "prepared_crop_flip / prepared_crop_flip_pil_resize": by_name["prepared_crop_flip"][
      "pairs_per_cpu_s"
    ]
    / by_name["prepared_crop_flip_pil_resize"]["pairs_per_cpu_s"],
    "in_memory_crop_flip / prepared_crop_flip": by_name["in_memory_crop_flip"]["pairs_per_cpu_s"]
    / by_name["prepared_crop_flip"]["pairs_per_cpu_s"],
    "prepared_crop_flip / prepared_full": by_name["prepared_crop_flip"]["pairs_per_cpu_s"]
    / by_name["prepared_full"]["pairs_per_cpu_s"],
    "prepared_full: photometric on device / on host": by_name[
      "prepared_full_photometric_on_device"
    ]["pairs_per_cpu_s"]
    / by_name["prepared_full"]["pairs_per_cpu_s"],
    f"grain_loader {cores} threads / 1 thread (wall)": loader_result["pairs_per_wall_s"]
    / loader_one["pairs_per_wall_s"],
  }
  print("ratios (per core):")
  for name, value in ratios.items():
    print(f"  {name:<52} {value:6.2f}x")
  targets = {
    "prepared_crop_flip >= 700 pairs/s per core": by_name["prepared_crop_flip"]["pairs_per_cpu_s"]
    >= 700,
    "in_memory_crop_flip >= 700 pairs/s per core": by_name["in_memory_crop_flip"]["pairs_per_cpu_s"]
    >= 700,
    "raw within 2x of pyav_seek_decode": ratios["pyav_seek_decode / raw_crop_flip"] <= 2.0,
  }
  for name, met in targets.items():
    print(f"  target {name}: {'met' if met else 'NOT met'}")
  summary = {
    "frame_record_kib": frame_bytes / 2**10,
    "whole_clip_record_mib": clip_bytes / 2**20,
    "results": results,
    "grain_loader": loader_result,
    "grain_loader_1_thread": loader_one,
    "ratios": ratios,
    "targets": targets,
    "frames": f"{width}x{height}",
    "image_size": size,
    "cores": cores,
    "videos": videos,
    "seconds": args.seconds,
    "repeats": args.repeats,
    "workers": worker_rows,
  }
  if args.json_out:
    with open(args.json_out, "w") as file:
      json.dump(summary, file, indent=1)
  return summary


if __name__ == "__main__":
  main()
