"""Train-step throughput, memory and MFU of ViC-MAE pretraining on one device.

Builds the model and an optax AdamW step locally (one `jax.jit`, donated state; the same computation as a
pretraining step: normalize uint8 views, mask, encode both views, decode, project, 0.97 * recon + 0.03 * NT-Xent,
grads, AdamW), then reports

  compile_s      lowering + XLA compilation of the step
  step_ms        median wall time of a step after warm-up (each step waited for with block_until_ready)
  pairs_per_s    batch / median step time
  peak_mem_gib   the device's peak_bytes_in_use when it reports memory stats, else the process's peak RSS
                 (marked "rss"; on CPU the two are the same memory)
  tflop_step     analytic FLOPs of the step (vicmae_jax.flops: matmuls, 2 per MAC, forward + backward = 3x)
  tflops         achieved: tflop_step / step time
  mfu            achieved / the chip's peak for the compute dtype (vicmae_jax.flops.peak_flops), when known

XLA's cost analysis of the compiled step sits next to the analytic count: `xla_flops_per_step` (close to the
analytic count on CPU, far too low on GPUs, where the matmuls run as library calls it does not count) and
`xla_bytes_per_step` (bytes the step's ops read and write), so `flops / byte` (arithmetic intensity, analytic
FLOPs over XLA's bytes) is visible on any backend. XLA's memory analysis of the compiled step gives
`compiled_peak_gib` (arguments + outputs - aliased + temporaries per device): the memory a configuration needs,
also on a CPU that never runs it (`--compile_only` skips the timing, e.g. to size B/16 at batch 256 for an
80 GiB GPU).

Comma-separated values for --batch, --dtype, --activation_dtype, --token_gather, --remat, --scan_layers, --mask_ratio and
--attention_impl run every combination (e.g. --attention_impl=xla,cudnn measures the opt-in cuDNN attention against the default on a GPU).

Measured on one NVIDIA H200 (jax 0.11.2, flax 0.12.10), 224 px, mask 0.5, bfloat16, no remat, median of 10
steps after 2 warm-up (MFU against 989 TFLOP/s dense bf16):
  B/16 batch 256            232.6 ms/step  1101 pairs/s  62.9 GiB  186 TFLOP/s  MFU 18.8%  (compile 52 s)
  B/16 batch 256, scan      295.1 ms/step   867 pairs/s  100.5 GiB 147 TFLOP/s  MFU 14.9%  (compile 17 s)
  L/16 batch 128            214.6 ms/step   596 pairs/s  56.8 GiB  257 TFLOP/s  MFU 26.0%  (compile 67 s)

Examples:
  python benchmarks/step.py --variant=mu/8 --image_size=32 --batch=8 --steps=5          # CPU, seconds
  python benchmarks/step.py --variant=B/16 --batch=128,256 --dtype=bfloat16 --remat=none,dots \\
      --json_out=/tmp/step_b16.json                                                     # one GPU / TPU chip
  python benchmarks/step.py --variant=B/16 --batch=256 --activation_dtype=float32,bfloat16 --compile_only
                                                                  # bytes and memory, any backend
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import bench_lib  # noqa: E402
from vicmae_jax import flops as flops_lib  # noqa: E402
from vicmae_jax.models import vicmae  # noqa: E402


def build_step(
  model_cfg: dict[str, Any],
  *,
  image_size: int,
  batch: int,
  learning_rate: float = 1.5e-4,
  weight_decay: float = 0.05,
  seed: int = 0,
):
  """Returns (jitted step, initial state, views, key, resolved dims) for one benchmark configuration.

  step(state, views uint8 [B, 2, S, S, 3], key) -> (state, metrics); the state argument is donated.
  """
  dims = vicmae.resolve_model_config(model_cfg)
  device = jax.devices()[0]
  with jax.default_device(device):
    model = vicmae.build_model(model_cfg, rngs=nnx.Rngs(seed))
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  # Decay matrices only (no biases, norm scales, tokens' leading singleton axes aside), as in pretraining.
  decay_mask = jax.tree.map(lambda x: x.ndim >= 2 and x.shape[0] > 1, params)
  tx = optax.adamw(learning_rate, b1=0.9, b2=0.95, weight_decay=weight_decay, mask=decay_mask)
  state = bench_lib.init_state(params, batch_stats, tx)
  pretrain_step = bench_lib.pretrain_step(graphdef, rest, tx, dims, uint8_views=True)

  def step_fn(state, views, key):
    new_state, (_, parts) = pretrain_step(state, views, key)
    return new_state, parts

  step = jax.jit(step_fn, donate_argnums=(0,))
  rng = np.random.default_rng(seed)
  views = jax.device_put(
    rng.integers(0, 256, (batch, 2, image_size, image_size, 3), dtype=np.uint8), device
  )
  state = jax.device_put(state, device)
  return step, state, views, jax.random.key(seed), dims


def _peak_memory(device) -> tuple[float | None, str]:
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # some backends raise instead of returning None
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"]), "device"
  # ru_maxrss is in KiB on Linux.
  return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0, "rss"


def run_one(
  model_cfg: dict[str, Any],
  *,
  image_size: int,
  batch: int,
  steps: int,
  warmup: int,
  peak_dtype: str | None = None,
  seed: int = 0,
  compile_only: bool = False,
) -> dict[str, Any]:
  """Compiles and times one configuration; returns one result row (see the module docstring).

  With `compile_only` the row stops after compilation (FLOPs, bytes and memory, no timing)."""
  step, state, views, key, dims = build_step(
    model_cfg, image_size=image_size, batch=batch, seed=seed
  )
  device = jax.devices()[0]

  start = time.perf_counter()
  compiled = step.lower(state, views, key).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled_analysis(compiled)
  train_flops = flops_lib.vicmae_train_flops(dims, image_size, float(dims["mask_ratio"]), batch)
  if analysis["xla_bytes_per_step"]:
    analysis["flops_per_byte"] = train_flops / analysis["xla_bytes_per_step"]
  common_row = {
    "variant": dims.get("variant"),
    "image_size": image_size,
    "mask_ratio": float(dims["mask_ratio"]),
    "batch": batch,
    "dtype": dims["dtype"],
    "activation_dtype": dims["activation_dtype"],
    "token_gather": dims["token_gather"],
    "remat": dims["remat"],
    "scan_layers": dims["scan_layers"],
    "attention_impl": dims.get("attention_impl") or "xla",
    "compile_s": compile_s,
    "flops_per_step": train_flops,
    **analysis,
    "device": device.device_kind,
    "platform": device.platform,
    "jax_version": jax.__version__,
  }
  if compile_only:
    return common_row

  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, views, key)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, views, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"loss is {loss} after {warmup + steps} steps")

  step_s = statistics.median(times)
  peak_dtype = peak_dtype or dims["dtype"]
  peak = flops_lib.peak_flops(device, peak_dtype)
  memory, memory_source = _peak_memory(device)
  achieved = train_flops / step_s
  return {
    **common_row,
    "step_ms": 1e3 * step_s,
    "step_ms_min": 1e3 * min(times),
    "step_ms_mean": 1e3 * statistics.fmean(times),
    "steps": steps,
    "warmup": warmup,
    "pairs_per_s": batch / step_s,
    "peak_mem_gib": memory / 2**30,
    "memory_source": memory_source,
    "achieved_flops": achieved,
    "peak_flops": peak,
    "peak_dtype": peak_dtype,
    "mfu": achieved / peak if peak else None,
    "final_loss": loss,
  }


def compiled_analysis(compiled) -> dict[str, Any]:
  """XLA's cost analysis (FLOPs, bytes accessed) and memory analysis of a compiled step."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  cost = cost or {}
  out: dict[str, Any] = {
    "xla_flops_per_step": float(cost["flops"]) if "flops" in cost else None,
    "xla_bytes_per_step": float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
    "flops_per_byte": None,
  }
  try:
    mem = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    mem = None
  if mem is not None:
    peak = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
      + mem.temp_size_in_bytes
    )
    out.update(
      {
        "compiled_argument_gib": mem.argument_size_in_bytes / 2**30,
        "compiled_temp_gib": mem.temp_size_in_bytes / 2**30,
        "compiled_peak_gib": peak / 2**30,
      }
    )
  return out


_COLUMNS = (
  ("variant", "variant", "{}"),
  ("image_size", "img", "{}"),
  ("mask_ratio", "mask", "{:.2f}"),
  ("batch", "batch", "{}"),
  ("dtype", "dtype", "{}"),
  ("activation_dtype", "act", "{}"),
  ("token_gather", "gather", "{}"),
  ("remat", "remat", "{}"),
  ("scan_layers", "scan", "{}"),
  ("attention_impl", "attn", "{}"),
  ("compile_s", "compile_s", "{:.1f}"),
  ("step_ms", "step_ms", "{:.1f}"),
  ("pairs_per_s", "pairs/s", "{:.1f}"),
  ("peak_mem_gib", "mem_GiB", "{:.2f}"),
  ("compiled_peak_gib", "compiled_GiB", "{:.2f}"),
  ("flops_per_step", "TFLOP/step", "{:.4g}"),
  ("xla_flops_per_step", "XLA_TFLOP", "{:.4g}"),
  ("xla_bytes_per_step", "XLA_GB", "{:.4g}"),
  ("flops_per_byte", "FLOP/B", "{:.1f}"),
  ("achieved_flops", "TFLOP/s", "{:.4g}"),
  ("mfu", "MFU", "{:.1%}"),
)


def format_table(rows: list[dict[str, Any]]) -> str:
  """Fixed-width text table of result rows."""
  cells = [[title for _, title, _ in _COLUMNS]]
  for row in rows:
    line = []
    for key, _, fmt in _COLUMNS:
      value = row.get(key)
      if key in ("flops_per_step", "achieved_flops", "xla_flops_per_step") and value is not None:
        value = value / 1e12
      if key == "xla_bytes_per_step" and value is not None:
        value = value / 1e9
      if key == "peak_mem_gib" and row.get("memory_source") == "rss":
        line.append(fmt.format(value) + " rss")
      else:
        line.append("-" if value is None else fmt.format(value))
    cells.append(line)
  widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def _split(text: str, convert=str) -> list:
  return [convert(part.strip()) for part in str(text).split(",") if part.strip()]


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes"):
    return True
  if text.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--variant", default="B/16", help="model variant (vicmae_jax.models.variants.VARIANTS)"
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="model config override, repeatable (e.g. --set decoder_depth=4)",
  )
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--mask_ratio", default="0.5", help="comma list")
  parser.add_argument("--batch", default="64", help="image pairs per step; comma list")
  parser.add_argument(
    "--dtype", default="bfloat16", help="compute dtype: float32 / bfloat16; comma list"
  )
  parser.add_argument(
    "--activation_dtype",
    default="float32",
    help="residual stream and saved activations: float32 / bfloat16; comma list",
  )
  parser.add_argument(
    "--token_gather", default="take", help="masked-token gather: take / one_hot; comma list"
  )
  parser.add_argument("--remat", default="none", help="none / full / dots; comma list")
  parser.add_argument("--scan_layers", default="false", help="true / false; comma list")
  parser.add_argument("--attention_impl", default="xla", help="xla / cudnn (GPU only); comma list")
  parser.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  parser.add_argument(
    "--peak_dtype",
    default=None,
    help="dtype whose peak the MFU divides by (default: the compute dtype; e.g. tfloat32)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--compile_only",
    action="store_true",
    help="compile and report FLOPs, bytes and memory without timing steps",
  )
  parser.add_argument("--json_out", default=None, help="also write the rows as JSON here")
  args = parser.parse_args(argv)

  base: dict[str, Any] = {"variant": args.variant}
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set expects FIELD=VALUE, got {item!r}")
    field, value = item.split("=", 1)
    try:
      base[field.strip()] = json.loads(value)
    except ValueError:
      base[field.strip()] = value
  swept = {  # the model fields swept over (comma lists), each row one combination with a batch
    "dtype": _split(args.dtype),
    "activation_dtype": _split(args.activation_dtype),
    "token_gather": _split(args.token_gather),
    "remat": _split(args.remat),
    "scan_layers": _split(args.scan_layers, _bool),
    "mask_ratio": _split(args.mask_ratio, float),
    "attention_impl": _split(args.attention_impl),
  }
  rows = []
  print(
    f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), jax {jax.__version__}"
  )
  for batch, *values in itertools.product(_split(args.batch, int), *swept.values()):
    cfg = dict(base, **dict(zip(swept, values)))
    try:
      vicmae.resolve_model_config(cfg)
    except ValueError as e:
      parser.error(str(e))
    try:
      rows.append(
        run_one(
          cfg,
          image_size=args.image_size,
          batch=batch,
          steps=args.steps,
          warmup=args.warmup,
          peak_dtype=args.peak_dtype,
          seed=args.seed,
          compile_only=args.compile_only,
        )
      )
    except (
      Exception
    ) as e:  # e.g. out of memory at a large batch: report it and go on with the sweep
      if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
        raise
      rows.append(dict(cfg, image_size=args.image_size, batch=batch, error=str(e).splitlines()[0]))
      print(
        f"batch {batch} {cfg['dtype']} remat={cfg['remat']} scan={cfg['scan_layers']}: "
        f"{rows[-1]['error']}"
      )
  print(format_table([r for r in rows if "error" not in r]))
  bench_lib.write_json(args.json_out, rows)
  return rows


if __name__ == "__main__":
  main()
