r"""The paper's ablations at demo scale: configs/demo.py under each variant, several seeds.

  python3 benchmarks/ablations.py --out=/tmp/vicmae_ablations                  # every variant, seeds 0,1
  python3 benchmarks/ablations.py --out=DIR --variants=vicmae,gap_0 --seeds=0,1,2
  python3 benchmarks/ablations.py --out=DIR --tiny --variants=vicmae --seeds=0   # seconds, a smoke test

Each run is `python3 -m vicmae_jax.main --config=configs/demo.py --config.seed=S <overrides>` in its
own workdir DIR/runs/<variant>_s<seed>, one after another. A finished run writes
DIR/<variant>_s<seed>.json (the held-out kNN, linear-probe and attentive-probe top-1 at the end and
at step 0) and is not run again; an interrupted one resumes from its checkpoint. The encoder at
initialization is the `random_init` row: the step-0 evaluation of the `vicmae` runs (the same seeds).
Finished runs of this repository's machine are kept in benchmarks/ablation_runs/: copy them into
DIR to resume the table without rerunning them. At the end: DIR/ablations.md (mean and spread over seeds), DIR/ablations.png (accuracy per variant,
one dot per seed) and DIR/curves.png (loss parts, health monitors and eval accuracies over the
steps of the first `vicmae` run, read from its TensorBoard event file).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_AUG = "decode|{crop}|{colour}blur(p=0.5, sigma=(0.1, 1.0))", "decode|{crop}|{colour}solarize"
_COLOUR = "color_jitter|grayscale|"


def _views(crop: str = "random_resized_crop", colour: str = _COLOUR, solarize: bool = True) -> str:
  first, second = (a.format(crop=crop, colour=colour) for a in _AUG)
  if not solarize:
    second = second.removesuffix("|solarize")
  return repr((first, second))


# name -> (what it changes, overrides of configs/demo.py)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
  "vicmae": ("as in the demo (contrastive weight 0.3, gap 1.06 s, mean pooling, mask 0.5)", {}),
  "mae_only": ("MAE only: contrastive weight 0", {"model.weight_contrast": "0.0"}),
  "contrastive_only": ("contrastive only: reconstruction weight 0", {"model.weight_recon": "0.0"}),
  "gap_0": ("frame gap 0 (same frame, augmentations only)", {"data.frame_gap_seconds": "0.0"}),
  "gap_uniform": ("frame gap uniform in [0.5, 2] s", {"data.frame_gap_range": "(0.5, 2.0)"}),
  "cls_pool": (
    "contrastive representation: the cls token (evaluated on cls)",
    {"model.contrast_pool": "cls", "evals.knn.pool": "cls", "evals.linear_probe.pool": "cls"},
  ),
  "no_colour": (
    "without colour augmentations (jitter, grayscale, solarize)",
    {"data.view_augmentations": _views(colour="", solarize=False)},
  ),
  "no_spatial": (
    "without spatial augmentations (whole frame resized, no crop)",
    {"data.view_augmentations": _views(crop="resize")},
  ),
  "weight_0.03": ("the paper's contrastive weight 0.03", {"model.weight_contrast": "0.03"}),
  "mask_0.75": ("mask ratio 0.75", {"model.mask_ratio": "0.75"}),
}
METRICS = ("knn", "linear_probe", "attentive_probe")


def run_name(variant: str, seed: int) -> str:
  return f"{variant}_s{seed}"


def command(variant: str, seed: int, out: str, *, tiny: bool, demo_root: str, extra=()) -> list:
  overrides = VARIANTS[variant][1]
  cmd = [
    sys.executable,
    "-m",
    "vicmae_jax.main",
    f"--config={REPO}/configs/demo.py" + (":tiny" if tiny else ""),
    f"--workdir={os.path.join(out, 'runs', run_name(variant, seed))}",
    f"--config.seed={seed}",
    *(f"--config.{k}={v}" for k, v in overrides.items()),
  ]
  if demo_root:
    cmd.append(f"--config.demo_data.root={demo_root}")
  return cmd + list(extra)


def read_evals(workdir: str) -> dict[int, dict[str, float]]:
  """step -> {metric: top-1} from the run's metrics.jsonl (the last line of a step wins)."""
  evals: dict[int, dict[str, float]] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      for m in METRICS:
        if f"eval/{m}_top1" in rec:
          evals.setdefault(int(rec["step"]), {})[m] = float(rec[f"eval/{m}_top1"])
  return evals


def run_one(variant: str, seed: int, out: str, *, tiny: bool, demo_root: str, extra=()) -> dict:
  """Runs (or resumes) one variant and seed unless its JSON exists; returns the JSON's content."""
  path = os.path.join(out, run_name(variant, seed) + ".json")
  if os.path.isfile(path):
    with open(path) as f:
      result = json.load(f)
    print(f"{run_name(variant, seed)}: done before, not run again", flush=True)
    return result
  cmd = command(variant, seed, out, tiny=tiny, demo_root=demo_root, extra=extra)
  print(f"{run_name(variant, seed)}: {' '.join(cmd[1:])}", flush=True)
  start = time.time()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(
      f"{run_name(variant, seed)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    )
  workdir = cmd[4].split("=", 1)[1]
  evals = read_evals(workdir)
  final = max(evals)
  result = {
    "variant": variant,
    "seed": seed,
    "description": VARIANTS[variant][0],
    "overrides": VARIANTS[variant][1],
    "tiny": tiny,
    "final_step": final,
    "final": evals[final],
    "init": evals.get(0, {}),
    "evals": {str(k): v for k, v in sorted(evals.items())},
    "wall_s": round(time.time() - start, 1),
    "command": " ".join(cmd[1:]),
  }
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)
  print(f"  -> {result['final']} in {result['wall_s']} s", flush=True)
  return result


def summarize(results: list[dict]) -> list[dict]:
  """Rows {variant, description, seeds, <metric>_mean, <metric>_std} (std over seeds, ddof 0),
  random_init first (the vicmae runs' step-0 evaluation)."""
  groups: dict[str, list[dict]] = {}
  for r in results:
    if r["variant"] == "vicmae" and r["init"]:
      groups.setdefault("random_init", []).append(r["init"])
    groups.setdefault(r["variant"], []).append(r["final"])
  rows = []
  for name in ["random_init"] + list(VARIANTS):
    if name not in groups:
      continue
    row = {
      "variant": name,
      "description": "encoder at initialization" if name == "random_init" else VARIANTS[name][0],
      "seeds": len(groups[name]),
    }
    for m in METRICS:
      values = [100.0 * g[m] for g in groups[name] if m in g]
      row[f"{m}_values"] = values
      row[f"{m}_mean"] = float(np.mean(values)) if values else float("nan")
      row[f"{m}_std"] = float(np.std(values)) if values else float("nan")
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  lines = [
    "| variant | what | seeds | kNN top-1 | linear probe top-1 | attentive probe top-1 |",
    "|---|---|---:|---:|---:|---:|",
  ]
  for r in rows:
    cells = [f"{r[f'{m}_mean']:.1f} ± {r[f'{m}_std']:.1f}" for m in METRICS]
    lines.append(
      f"| {r['variant']} | {r['description']} | {r['seeds']} | " + " | ".join(cells) + " |"
    )
  return "\n".join(lines) + "\n\n(mean ± std over seeds, held-out digits, %)\n"


def plot_ablations(rows: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 0.45 * len(rows) + 1.5))
  names = [r["variant"] for r in rows]
  y = np.arange(len(rows))[::-1]
  for ax, m in zip(axes, METRICS):
    means = [r[f"{m}_mean"] for r in rows]
    stds = [r[f"{m}_std"] for r in rows]
    ax.barh(y, means, xerr=stds, color="#8fb3d9", capsize=3)
    for yi, r in zip(y, rows):
      ax.plot(r[f"{m}_values"], [yi] * len(r[f"{m}_values"]), "k.", ms=4)
    ax.set_yticks(y, names if ax is axes[0] else [""] * len(names))
    ax.set_xlim(0, 100)
    ax.set_title(f"{m.replace('_', ' ')} top-1 (%)")
    ax.grid(axis="x", alpha=0.3)
  fig.suptitle(
    "ViC-MAE ablations at demo scale (held-out digits; bar: mean, line: std, dots: seeds)"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] from the run's TensorBoard event files (scalars or scalar tensors)."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  out: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    for tag in acc.Tags().get("scalars", []):
      for e in acc.Scalars(tag):
        out.setdefault(tag, {})[int(e.step)] = float(e.value)
    for tag in acc.Tags().get("tensors", []):
      for e in acc.Tensors(tag):
        value = tensor_util.make_ndarray(e.tensor_proto)
        if value.shape == () and np.issubdtype(value.dtype, np.floating):
          out.setdefault(tag, {})[int(e.step)] = float(value)
  return {tag: sorted(points.items()) for tag, points in out.items()}


CURVES = (
  ("losses", ("train/loss", "train/loss_recon", "train/loss_contrast")),
  ("reconstruction", ("train/health/recon_masked", "train/health/recon_visible")),
  ("contrast", ("train/health/pos_cos", "train/health/neg_cos", "train/health/contrast_top1")),
  ("effective rank", ("train/health/z_rank", "train/health/pooled_rank")),
  ("held-out top-1", tuple(f"eval/{m}_top1" for m in METRICS)),
)


def plot_curves(workdir: str, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  scalars = read_scalars(workdir)
  if not any(tag in scalars for _, tags in CURVES for tag in tags):
    raise ValueError(f"no training scalars in the event files of {workdir}")
  fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
  for ax, (title, tags) in zip(axes, CURVES):
    for tag in tags:
      if tag in scalars:
        steps, values = zip(*scalars[tag])
        ax.plot(
          steps, values, "o-" if title.startswith("held") else "-", ms=3, label=tag.split("/")[-1]
        )
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"configs/demo.py: expected curves ({os.path.basename(workdir)})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--out", required=True, help="results folder (JSONs, table, plots, runs/)")
  parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
  parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
  parser.add_argument("--tiny", action="store_true", help="configs/demo.py:tiny (smoke test)")
  parser.add_argument("--demo_root", default="", help="demo dataset folder (default: the config's)")
  parser.add_argument("--extra", action="append", default=[], help="more --config.* flags")
  args = parser.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  os.makedirs(args.out, exist_ok=True)
  results, failed = [], []
  for v in variants:
    for s in seeds:
      try:
        results.append(
          run_one(v, s, args.out, tiny=args.tiny, demo_root=args.demo_root, extra=args.extra)
        )
      except RuntimeError as e:  # one failed run does not stop the others
        print(f"FAILED {e}", flush=True)
        failed.append(run_name(v, s))
  if not results:
    print(f"no run finished; failed: {', '.join(failed)}")
    return 1
  rows = summarize(results)
  text = table(rows)
  with open(os.path.join(args.out, "ablations.md"), "w") as f:
    f.write(text)
  print(text)
  plot_ablations(rows, os.path.join(args.out, "ablations.png"))
  first = next((r for r in results if r["variant"] == "vicmae"), results[0])
  workdir = os.path.join(args.out, "runs", run_name(first["variant"], first["seed"]))
  if glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    plot_curves(workdir, os.path.join(args.out, "curves.png"))
  else:  # a finished run's JSON copied in (e.g. from benchmarks/ablation_runs) without its workdir
    print(f"no TensorBoard events in {workdir}: curves.png not drawn")
  print(f"wrote {args.out}/ablations.md, ablations.png (and curves.png where drawn)")
  if failed:
    print(f"failed (no JSON written, run again to retry): {', '.join(failed)}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
