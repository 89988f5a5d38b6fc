"""Train-step time of our ViC-MAE against the official PyTorch model, side by side in one process.

Imports `models_vicmae.py` from a clone of the official repository (github.com/jeffhernandez1995/ViC-MAE,
given with --official_repo; nothing of it lives in this project), builds the same architecture in both
frameworks, feeds both the same normalized float32 batch, and times one full training step in each:

  official  optimizer.zero_grad(); loss = model([view1, view2])[0]; loss.backward(); optimizer.step();
            loss.item() -- what its engine_pretrain.py does, without the CUDA loss scaler (a no-op in
            float32 on CPU). torch.optim.AdamW(betas=(0.9, 0.95)) with its two parameter groups (weight
            decay 0.05 on >= 2-D weights, none on biases and norms). Its InfoNCE gathers over
            torch.distributed, which is the identity in one process, so it is the plain global loss here.
  ours      one jax.jit: masking, encoder over both views, decoder, projector, 0.97 * recon + 0.03 * NT-Xent,
            grads, AdamW (vicmae_jax.optim.make_adamw, same betas / decay / mask), donated state;
            each step waited for with jax.block_until_ready.

Both sides run in the same process and are timed interleaved (repetition r times ours then official when r
is even, official then ours when odd), so load from other work on the machine hits both alike. Reported:
the median step time of each side over all timed steps, the median of each repetition, and the ratio
ours / official (of the overall medians, and the median and range of the per-repetition ratios).

On a GPU (--device=gpu) each side runs its own recipe on the same batch: the official step under
torch.autocast(float16) with a GradScaler (scale, backward, step, update), as engine_pretrain.py
trains; ours with bfloat16 matmuls (float32 parameters, LayerNorm statistics and losses).

Threads (--device=cpu, --threads, default 2):
  torch  torch.set_num_threads(threads); torch.set_num_interop_threads(1).
  XLA    XLA:CPU has no thread-count option: its intra-op (Eigen) pool has one thread per CPU the
         process may run on. The script therefore pins the whole process with os.sched_setaffinity to
         `threads` CPUs before jax is imported (this also bounds torch), and passes
         --xla_cpu_multi_thread_eigen=true (the default, stated) in XLA_FLAGS.

Default configuration: 64 px images, patch 8 (L = 64), encoder 192 wide x 6 blocks x 3 heads, decoder 128 x 2
blocks x 4 heads, projector 192 -> 4096 -> 4096 -> 128 (the official default), mask ratio 0.5, 32 pairs,
float32.

  python benchmarks/compare_official.py --official_repo=/path/to/ViC-MAE
  python benchmarks/compare_official.py --official_repo=/path/to/ViC-MAE --repeats=7 --steps=5 \\
      --json_out=/tmp/compare_official.json
  python benchmarks/compare_official.py --skip_official --steps=2 --repeats=1    # ours only, no torch needed

Where the installed torchvision does not match torch (its compiled operators fail to register, which breaks
`import timm`), the script lets torchvision's operator registrations fail softly and says so in its output;
the official model uses only timm's PatchEmbed / Block, which never call torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--official_repo", default=None, help="clone of jeffhernandez1995/ViC-MAE")
  parser.add_argument(
    "--skip_official", action="store_true", help="time ours only (no torch needed)"
  )
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--patch_size", type=int, default=8)
  parser.add_argument("--embed_dim", type=int, default=192)
  parser.add_argument("--depth", type=int, default=6)
  parser.add_argument("--num_heads", type=int, default=3)
  parser.add_argument("--decoder_embed_dim", type=int, default=128)
  parser.add_argument("--decoder_depth", type=int, default=2)
  parser.add_argument("--decoder_num_heads", type=int, default=4)
  parser.add_argument("--projector_hidden_dim", type=int, default=4096)
  parser.add_argument("--projector_out_dim", type=int, default=128)
  parser.add_argument("--mask_ratio", type=float, default=0.5)
  parser.add_argument("--batch", type=int, default=32, help="image pairs per step")
  parser.add_argument(
    "--threads", type=int, default=2, help="CPU threads for each framework (see above)"
  )
  parser.add_argument(
    "--warmup", type=int, default=3, help="untimed steps per side (ours: after compiling)"
  )
  parser.add_argument("--steps", type=int, default=5, help="timed steps per side per repetition")
  parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
  parser.add_argument("--lr", type=float, default=1.5e-4)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--device",
    choices=("cpu", "gpu"),
    default="cpu",
    help="cpu: both sides in float32 on --threads CPUs; gpu: both on the GPU, each in its own "
    "recipe: the official fp16 autocast with a GradScaler, ours bfloat16 matmuls",
  )
  parser.add_argument("--json_out", default=None, help="also write the results as JSON here")
  args = parser.parse_args(argv)
  if not args.skip_official and not args.official_repo:
    parser.error("--official_repo is required (or pass --skip_official)")
  if args.official_repo and not os.path.isfile(
    os.path.join(args.official_repo, "models_vicmae.py")
  ):
    parser.error(f"--official_repo={args.official_repo}: no models_vicmae.py there")
  for field in ("batch", "threads", "steps", "repeats"):
    if getattr(args, field) < 1:
      parser.error(f"--{field} must be >= 1, got {getattr(args, field)}")
  if args.warmup < 0:
    parser.error(f"--warmup must be >= 0, got {args.warmup}")
  return args


def limit_threads(threads: int) -> list[int]:
  """Pins this process to `threads` CPUs and sets XLA's flags; must run before jax is imported."""
  available = sorted(os.sched_getaffinity(0))
  if threads > len(available):
    raise ValueError(f"--threads={threads} but this process may run on only {len(available)} CPUs")
  cpus = available[:threads]
  os.sched_setaffinity(0, cpus)
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=true").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # torch's OpenMP workers otherwise spin while waiting; on a CPU shared with other work a spinning
  # worker holds a core another thread needs, and a 2-thread step measured 4-10x slower than with
  # passive waiting. Passive is the official side's better setting here; override it in the environment.
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  return cpus


def arch_kwargs(args: argparse.Namespace) -> dict[str, Any]:
  """The command-line architecture, as keyword arguments of either model (the same names)."""
  from vicmae_jax.models import variants  # imports jax: only after limit_threads

  names = (*variants.ARCH_FIELDS, "projector_hidden_dim", "projector_out_dim", "mask_ratio")
  return {name: getattr(args, name) for name in names}


def model_config(args: argparse.Namespace) -> dict[str, Any]:
  """Our model config (vicmae_jax.models.vicmae) for the command-line architecture."""
  return dict(
    arch_kwargs(args),
    dtype="bfloat16" if args.device == "gpu" else "float32",
    param_dtype="float32",
  )


def make_batch(args: argparse.Namespace):
  """The shared input: normalized float32 views ``[B, 2, S, S, 3]`` (numpy) from random uint8 pixels."""
  import numpy as np

  from vicmae_jax.models import vit

  rng = np.random.default_rng(args.seed)
  pixels = rng.integers(
    0, 256, (args.batch, 2, args.image_size, args.image_size, 3), dtype=np.uint8
  )
  mean = np.asarray(vit.IMAGENET_MEAN, np.float32)
  std = np.asarray(vit.IMAGENET_STD, np.float32)
  return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------------


def build_ours(cfg: dict[str, Any], images, *, lr: float, seed: int):
  """Returns ``step() -> loss`` (one AdamW train step on `images`, waited for) and the compile time (s)."""
  import jax
  from flax import nnx

  from benchmarks import bench_lib
  from vicmae_jax import optim
  from vicmae_jax.models import vicmae

  dims = vicmae.resolve_model_config(cfg)
  model = vicmae.build_model(cfg, rngs=nnx.Rngs(seed))
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  tx = optim.make_adamw(lr, weight_decay=0.05, b1=0.9, b2=0.95)
  state = bench_lib.init_state(params, batch_stats, tx)
  pretrain_step = bench_lib.pretrain_step(graphdef, rest, tx, dims, uint8_views=False)

  def step_fn(state, images, key):
    new_state, (loss, _) = pretrain_step(state, images, key)
    return new_state, loss

  images = jax.device_put(images)
  key = jax.random.key(seed)
  start = time.perf_counter()
  compiled = jax.jit(step_fn, donate_argnums=(0,)).lower(state, images, key).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def step() -> float:
    holder["state"], loss = compiled(holder["state"], images, key)
    jax.block_until_ready((holder["state"], loss))
    return loss

  return step, compile_s


# ----------------------------------------------------------------------------------------------
# Official
# ----------------------------------------------------------------------------------------------


def import_timm() -> list[str]:
  """Imports timm (with torch); returns notes about the import.

  Where the installed torchvision does not match torch, its compiled operators fail to register and
  `import timm` raises; torchvision is then imported with those registrations skipped (a note says
  so), which timm's PatchEmbed / Block, all the official model uses, never miss."""
  import torch

  try:
    import timm  # noqa: F401

    return []
  except RuntimeError as e:
    if "torchvision" not in str(e):
      raise
  # torchvision's Python side registers fake kernels for operators its compiled library failed to
  # define (a torch / torchvision version mismatch); skipping those registrations lets it import.
  for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm")]:
    del sys.modules[name]
  register_fake = torch.library.register_fake

  def skip_torchvision_ops(op, *args, **kwargs):
    if isinstance(op, str) and op.startswith("torchvision::"):
      return lambda fn: fn
    return register_fake(op, *args, **kwargs)

  torch.library.register_fake = skip_torchvision_ops
  try:
    import torchvision
  finally:
    torch.library.register_fake = register_fake
  import timm  # noqa: F401,F811

  note = (
    f"torchvision {torchvision.__version__} does not match torch {torch.__version__}: imported "
    "with its compiled operators unregistered (the official model does not use them)"
  )
  return [note]


def import_official(official_repo: str) -> tuple[Any, list[str]]:
  """Imports the official `models_vicmae` module; returns it and notes about the import."""
  try:
    import torch  # noqa: F401
  except ImportError as e:
    raise SystemExit(
      f"the official model needs torch and timm ({e}); install them or pass --skip_official"
    ) from e

  notes = import_timm()
  sys.path.insert(0, os.path.abspath(official_repo))
  try:
    import models_vicmae
  finally:
    sys.path.pop(0)
  return models_vicmae, notes


# The official ViCMAE's arguments that our model config names alike and the command line does not
# set: both models take them from our defaults, in this comparison and in the parity fixtures
# (tests/fixtures/make_official_golden.py).
SHARED_DEFAULTS = ("mlp_ratio", "temperature", "weight_contrast", "weight_recon", "norm_pix_loss")


def official_model(models_vicmae, **config):
  """The official ``ViCMAE(**config)``, the rest as ours: SHARED_DEFAULTS and the input channels
  from vicmae_jax.models.variants.DEFAULTS, and LayerNorm(eps=1e-6) like ours."""
  import torch

  from vicmae_jax.models import variants

  kwargs = {name: variants.DEFAULTS[name] for name in SHARED_DEFAULTS}
  kwargs.update(
    in_chans=variants.DEFAULTS["in_channels"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)
  )
  kwargs.update(config)
  return models_vicmae.ViCMAE(**kwargs)


def build_official(models_vicmae, args: argparse.Namespace, images, *, threads: int):
  """Returns ``step() -> loss`` for the official model on `images` ``[B, 2, S, S, 3]`` (numpy)."""
  import torch

  torch.set_num_threads(threads)
  try:
    torch.set_num_interop_threads(1)
  except (
    RuntimeError
  ):  # only allowed before the first parallel work; the intra-op count is what matters
    pass
  torch.manual_seed(args.seed)
  model = official_model(models_vicmae, img_size=args.image_size, **arch_kwargs(args))
  model.train(True)
  # The official parameter groups: no weight decay on 1-D tensors and biases; frozen tensors skipped.
  decay, no_decay = [], []
  for name, param in model.named_parameters():
    if not param.requires_grad:
      continue
    (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
  optimizer = torch.optim.AdamW(
    [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}],
    lr=args.lr,
    betas=(0.9, 0.95),
  )
  views = torch.from_numpy(images).permute(1, 0, 4, 2, 3).contiguous()  # [2, B, 3, S, S]
  if args.device == "gpu":
    model, views = model.cuda(), views.cuda()
  view1, view2 = views[0], views[1]

  def step() -> float:
    optimizer.zero_grad(set_to_none=True)
    loss, _, _ = model([view1, view2])
    loss.backward()
    optimizer.step()
    return loss.item()

  if args.device == "gpu":  # engine_pretrain.py's recipe: fp16 autocast, the loss scaled
    scaler = torch.amp.GradScaler("cuda")

    def step() -> float:  # noqa: F811
      optimizer.zero_grad(set_to_none=True)
      with torch.autocast("cuda", dtype=torch.float16):
        loss, _, _ = model([view1, view2])
      scaler.scale(loss).backward()
      scaler.step(optimizer)
      scaler.update()
      return loss.item()  # waits for the GPU

  return step, torch.__version__


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def time_steps(step, count: int) -> tuple[list[float], list[float], float]:
  """Runs `step` `count` times; returns the wall and the process CPU time of each (seconds), last loss."""
  times, cpu_times, loss = [], [], float("nan")
  for _ in range(count):
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = step()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - start_cpu)
  return times, cpu_times, float(loss)


def summarize(per_repeat: list[list[float]], cpu_per_repeat: list[list[float]]) -> dict[str, Any]:
  """Median over every timed step plus per-repetition medians and their spread (milliseconds)."""
  every = [t for rep in per_repeat for t in rep]
  medians = [statistics.median(rep) for rep in per_repeat]
  return {
    "median_ms": 1e3 * statistics.median(every),
    "min_ms": 1e3 * min(every),
    "max_ms": 1e3 * max(every),
    "repeat_medians_ms": [1e3 * m for m in medians],
    "repeat_median_spread_ms": [1e3 * min(medians), 1e3 * max(medians)],
    "cpu_median_ms": 1e3 * statistics.median([t for rep in cpu_per_repeat for t in rep]),
    "steps_ms": [[1e3 * t for t in rep] for rep in per_repeat],
    "cpu_steps_ms": [[1e3 * t for t in rep] for rep in cpu_per_repeat],
  }


def _finite(x: float) -> bool:
  return x == x and abs(x) != float("inf")


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  cpus = limit_threads(args.threads) if args.device == "cpu" else []

  import jax

  if args.device == "gpu" and jax.default_backend() != "gpu":
    raise SystemExit(f"--device=gpu: jax runs on {jax.default_backend()!r}, not a GPU")

  images = make_batch(args)
  cfg = model_config(args)
  result: dict[str, Any] = {
    "device": args.device,
    "config": dict(cfg, image_size=args.image_size, batch_pairs=args.batch, lr=args.lr),
    "threads": args.threads,
    "cpus": cpus,
    "thread_setup": {
      "torch": f"torch.set_num_threads({args.threads}), set_num_interop_threads(1), "
      f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
      "xla": f"os.sched_setaffinity to CPUs {cpus} (XLA:CPU intra-op pool = schedulable "
      f"CPUs); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    },
    "warmup": args.warmup,
    "steps": args.steps,
    "repeats": args.repeats,
    "jax_version": jax.__version__,
    "python": platform.python_version(),
    "notes": [],
  }

  sides: dict[str, Any] = {}
  official_step = None
  if not args.skip_official:  # first, so that a missing torch fails before our compilation
    models_vicmae, notes = import_official(args.official_repo)
    result["notes"].extend(notes)
    official_step, result["torch_version"] = build_official(
      models_vicmae, args, images, threads=args.threads
    )
  ours_step, compile_s = build_ours(cfg, images, lr=args.lr, seed=args.seed)
  sides["ours"] = ours_step
  result["ours_compile_s"] = compile_s
  if official_step is not None:
    sides["official"] = official_step

  for note in result["notes"]:
    print(f"note: {note}")
  print(f"threads: torch: {result['thread_setup']['torch']}; XLA: {result['thread_setup']['xla']}")
  print(f"ours: compiled in {compile_s:.1f} s")

  first_loss = {}
  for name, step in sides.items():
    _, _, first_loss[name] = time_steps(step, max(args.warmup, 1))
  times: dict[str, list[list[float]]] = {name: [] for name in sides}
  cpu_times: dict[str, list[list[float]]] = {name: [] for name in sides}
  last_loss = {}
  for rep in range(args.repeats):
    # Alternate which side goes first so that a drift in the machine's load does not favour one.
    order = list(sides) if rep % 2 == 0 else list(reversed(list(sides)))
    for name in order:
      rep_times, rep_cpu, last_loss[name] = time_steps(sides[name], args.steps)
      times[name].append(rep_times)
      cpu_times[name].append(rep_cpu)

  for name in sides:
    if not (_finite(first_loss[name]) and _finite(last_loss[name])):
      raise FloatingPointError(f"{name}: non-finite loss {first_loss[name]} / {last_loss[name]}")
    result[name] = dict(
      summarize(times[name], cpu_times[name]),
      loss_after_warmup=first_loss[name],
      loss_last=last_loss[name],
    )

  print(f"config: {json.dumps(result['config'])}")
  print(
    f"{args.repeats} interleaved repetitions x {args.steps} steps per side after {args.warmup} warm-up steps"
  )
  for name in sides:
    r = result[name]
    low, high = r["repeat_median_spread_ms"]
    print(
      f"{name:>8}: median {r['median_ms']:8.1f} ms/step (repetition medians {low:.1f} .. {high:.1f}), "
      f"CPU {r['cpu_median_ms']:.1f} ms/step; loss {r['loss_after_warmup']:.4f} -> {r['loss_last']:.4f}"
    )
  if "official" in sides:
    paired = [
      statistics.median(o) / statistics.median(f) for o, f in zip(times["ours"], times["official"])
    ]
    result["ratio"] = result["ours"]["median_ms"] / result["official"]["median_ms"]
    result["ratio_per_repeat"] = paired
    result["ratio_per_repeat_median"] = statistics.median(paired)
    result["cpu_ratio"] = result["ours"]["cpu_median_ms"] / result["official"]["cpu_median_ms"]
    print(
      f"ratio ours / official: {result['ratio']:.3f} (per repetition: median "
      f"{result['ratio_per_repeat_median']:.3f}, range {min(paired):.3f} .. {max(paired):.3f}); "
      f"CPU-time ratio {result['cpu_ratio']:.3f}"
    )
  from benchmarks import bench_lib

  bench_lib.write_json(args.json_out, result)
  return result


if __name__ == "__main__":
  main()
