"""`vicmae-export`: a pretrained encoder as a folder PyTorch users load with timm (or push to the Hub).

  vicmae-export --input=WORKDIR --output=DIR [--image_size=224] [--full]

DIR holds
  model.safetensors   the encoder under timm's ViT names (`patch_embed.proj.weight`,
                      `blocks.N.attn.qkv.weight`, ..., `norm.weight`, `pos_embed` with the cls row),
                      float32, written with safetensors' numpy API (no torch)
  config.json         timm's Hub config (architecture, model_args, pretrained_cfg: input size,
                      normalization) plus a `vicmae` entry: pooling, source, step, data, eval numbers
  README.md           the model card: data, steps, the eval numbers of the run's metrics.jsonl, how
                      to load it in timm
  vicmae_full.safetensors   with --full: the whole model (decoder, projector, BatchNorm statistics)
                      under the official ViC-MAE names, as `vicmae-convert --export` writes to .pth

The ViC-MAE representation is the mean of the patch tokens after the final LayerNorm (cls
excluded); in timm that is `global_pool="avg", fc_norm=False` (timm's default for "avg" moves the
norm after the pooling). INPUT is a training workdir (its newest checkpoint and that step's config)
or a folder written by `vicmae-convert` (its conversion.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

WEIGHTS = "model.safetensors"
FULL_WEIGHTS = "vicmae_full.safetensors"
# timm's names for our published sizes (any other size loads by its model_args).
TIMM_NAMES = {
  (16, 384, 12, 6): "vit_small_patch16_224",
  (16, 768, 12, 12): "vit_base_patch16_224",
  (16, 1024, 24, 16): "vit_large_patch16_224",
  (14, 1280, 32, 16): "vit_huge_patch14_224",
}
POOLING = "mean of the patch tokens after the final LayerNorm (cls token excluded)"


class ExportError(ValueError):
  """The input cannot be exported; the message names the flag or file to fix."""


def read_source(input_path: str) -> dict[str, Any]:
  """The parameters, model config, image size, step and run config of a workdir or converted dir."""
  from vicmae_jax import weights
  from vicmae_jax.convert import SIDECAR

  try:
    state_path = weights.find_params_checkpoint(input_path)
  except FileNotFoundError as e:
    raise ExportError(f"--input: {str(e).removeprefix('init_from: ')}") from None
  tree = weights.load_pretrained_tree(state_path)
  step_dir = os.path.dirname(state_path)
  config_path = os.path.join(step_dir, "config", "metadata")
  sidecar_path = os.path.join(state_path, SIDECAR)
  source = {"tree": tree, "input": os.path.abspath(input_path), "step": None, "run_config": {}}
  if os.path.basename(state_path) == "state" and os.path.isfile(config_path):
    with open(config_path) as file:
      run_config = json.load(file)
    source.update(
      run_config=run_config,
      model=dict(run_config.get("model", {})),
      image_size=run_config.get("image_size"),
      step=int(os.path.basename(step_dir)) if os.path.basename(step_dir).isdigit() else None,
    )
    source["workdir"] = os.path.dirname(os.path.dirname(step_dir))
  elif os.path.isfile(sidecar_path):
    with open(sidecar_path) as file:
      sidecar = json.load(file)
    source.update(model=dict(sidecar.get("model", {})), image_size=sidecar.get("image_size"))
    source["converted_from"] = sidecar.get("source")
  else:
    raise ExportError(
      f"--input: {input_path} records no model config (neither a training step's config nor "
      "conversion.json); export a training workdir or a folder written by vicmae-convert"
    )
  return source


def eval_numbers(workdir: str | None) -> dict[str, dict[str, float]]:
  """The newest value (and its step) of every `eval/*` metric in WORKDIR/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl") if workdir else ""
  found: dict[str, dict[str, float]] = {}
  if not path or not os.path.isfile(path):
    return found
  with open(path) as file:
    for line in file:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a line cut short by a killed run
      for key, value in row.items():
        if key.startswith("eval/"):
          found[key] = {"value": float(value), "step": int(row.get("step", 0))}
  return found


def _data_summary(run_config: Mapping[str, Any]) -> list[str]:
  sources = (run_config.get("data") or {}).get("sources") or {}
  out = []
  for name, spec in sorted(sources.items()):
    where = spec.get("path") or spec.get("name") or spec.get("root") or ""
    weight = spec.get("weight")
    out.append(
      f"{name}: {spec.get('kind', '?')} {where}".rstrip()
      + (f" (weight {weight})" if weight is not None else "")
    )
  return out


def timm_config(model: Mapping[str, Any], image_size: int, *, extra: Mapping[str, Any]) -> dict:
  """timm's Hub config.json for our encoder (architecture + model_args + pretrained_cfg)."""
  from vicmae_jax.models import vit

  dims = (model["patch_size"], model["embed_dim"], model["depth"], model["num_heads"])
  channels = int(model.get("in_channels", 3))
  model_args = {
    "img_size": int(image_size),
    "patch_size": int(model["patch_size"]),
    "embed_dim": int(model["embed_dim"]),
    "depth": int(model["depth"]),
    "num_heads": int(model["num_heads"]),
    "mlp_ratio": float(model.get("mlp_ratio", 4.0)),
    "in_chans": channels,
    "class_token": True,
    "global_pool": "avg",
    "fc_norm": False,
  }
  return {
    "architecture": TIMM_NAMES.get(dims, "vit_base_patch16_224"),
    "num_classes": 0,
    "num_features": int(model["embed_dim"]),
    "global_pool": "avg",
    "model_args": model_args,
    "pretrained_cfg": {
      "input_size": [channels, int(image_size), int(image_size)],
      "fixed_input_size": True,
      "mean": list(vit.IMAGENET_MEAN),
      "std": list(vit.IMAGENET_STD),
      "interpolation": "bicubic",
      "crop_pct": 0.875,
      "num_classes": 0,
      "first_conv": "patch_embed.proj",
      "classifier": "head",
    },
    "vicmae": {"pooling": POOLING, **extra},
  }


def _model_card(config: Mapping[str, Any], source: Mapping[str, Any], evals: Mapping) -> str:
  args = config["model_args"]
  size = args["img_size"]
  lines = [
    "---",
    "library_name: timm",
    "tags: [image-feature-extraction, timm, vicmae]",
    "---",
    "",
    f"# ViC-MAE ViT encoder (patch {args['patch_size']}, width {args['embed_dim']}, "
    f"depth {args['depth']}, {args['num_heads']} heads, {size} px)",
    "",
    "A ViT encoder pretrained with ViC-MAE (contrastive masked autoencoders on video frames and "
    "images, arXiv 2303.12001) by vicmae_jax, exported with `vicmae-export`. Its representation "
    f"is the {POOLING}.",
    "",
    "## Training",
    "",
    f"- source: `{source['input']}`",
  ]
  if source.get("step") is not None:
    lines.append(f"- steps: {source['step']}")
  run = source.get("run_config") or {}
  if run.get("batch_size"):
    lines.append(f"- global batch: {run['batch_size']}")
  data = _data_summary(run)
  if data:
    lines.append("- data: " + "; ".join(data))
  if source.get("converted_from"):
    lines.append(f"- converted from the official checkpoint `{source['converted_from']}`")
  lines += ["", "## Evaluation (from the run's metrics.jsonl)", ""]
  if evals:
    lines += ["| metric | value | step |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['value']:.4f} | {v['step']} |" for k, v in sorted(evals.items())]
  else:
    lines.append("No evaluation was recorded for this run.")
  cfg = config["pretrained_cfg"]
  kwargs = {k: v for k, v in args.items() if k not in ("global_pool", "fc_norm", "class_token")}
  arch = config["architecture"]
  lines += [
    "",
    "## Loading with timm",
    "",
    "```python",
    "import timm, torch",
    "",
    "# this folder on disk (or `hf-hub:USER/REPO` once pushed to the Hub)",
    'model = timm.create_model("local-dir:/path/to/this/folder", pretrained=True)',
    "# or with the weights file alone:",
    "model = timm.create_model(",
    f'  "{arch}", pretrained=True, num_classes=0, global_pool="avg", fc_norm=False,',
    f'  pretrained_cfg_overlay=dict(file="/path/to/this/folder/{WEIGHTS}"),',
    "  " + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ",",
    ")",
    "model.eval()",
    f"x = torch.randn(1, {cfg['input_size'][0]}, {size}, {size})  # normalized with mean "
    f"{tuple(round(m, 3) for m in cfg['mean'])}, std {tuple(round(s, 3) for s in cfg['std'])}",
    f"features = model(x)  # [1, {args['embed_dim']}]",
    "```",
    "",
  ]
  return "\n".join(lines)


def export(
  input_path: str, output_dir: str, *, image_size: int | None = None, full: bool = False
) -> dict[str, Any]:
  """Writes the folder (see the module docstring); returns what was written."""
  from safetensors.numpy import save_file

  from vicmae_jax.convert import ours_to_official
  from vicmae_jax.models import variants

  source = read_source(input_path)
  try:
    model = variants.resolve_model_config(source["model"])
  except ValueError as e:
    raise ExportError(f"the recorded model config does not resolve: {e}") from None
  image_size = int(image_size or source.get("image_size") or 224)
  if image_size % model["patch_size"]:
    raise ExportError(
      f"--image_size: {image_size} is not a multiple of the patch size {model['patch_size']}"
    )
  if os.path.exists(os.path.join(output_dir, WEIGHTS)):
    raise ExportError(f"--output: {output_dir} already holds {WEIGHTS}; choose a new directory")
  os.makedirs(output_dir, exist_ok=True)
  tree, channels = source["tree"], int(model["in_channels"])
  encoder = ours_to_official(tree, image_size=image_size, kind="encoder", in_channels=channels)
  save_file(_contiguous(encoder), _path(output_dir, WEIGHTS))
  written = [WEIGHTS]
  if full:
    whole = ours_to_official(tree, image_size=image_size, in_channels=channels)
    save_file(_contiguous(whole), _path(output_dir, FULL_WEIGHTS))
    written.append(FULL_WEIGHTS)
  evals = eval_numbers(source.get("workdir"))
  extra = {
    "source": source["input"],
    "step": source.get("step"),
    "variant": model.get("variant"),
    "data": _data_summary(source.get("run_config") or {}),
    "eval": evals,
  }
  config = timm_config(model, image_size, extra=extra)
  with open(_path(output_dir, "config.json"), "w") as file:
    json.dump(config, file, indent=2)
  with open(_path(output_dir, "README.md"), "w") as file:
    file.write(_model_card(config, source, evals))
  written += ["config.json", "README.md"]
  return {"output": os.path.abspath(output_dir), "files": written, "num_tensors": len(encoder)}


def _contiguous(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  # np.ascontiguousarray would turn the 0-d `num_batches_tracked` into shape [1].
  return {name: np.asarray(value, order="C") for name, value in state_dict.items()}


def _path(folder: str, name: str) -> str:
  return os.path.join(folder, name)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
    prog="vicmae-export", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
  )
  parser.add_argument("--input", required=True, help="a training workdir or a vicmae-convert dir")
  parser.add_argument("--output", required=True, help="the folder to write (new, or empty)")
  parser.add_argument(
    "--image_size", type=int, default=None, help="default: the run's config.image_size"
  )
  parser.add_argument(
    "--full",
    action="store_true",
    help=f"also write the whole model in the official layout ({FULL_WEIGHTS})",
  )
  args = parser.parse_args(argv)
  summary = export(args.input, args.output, image_size=args.image_size, full=args.full)
  print(json.dumps(summary, indent=2))
  return summary


def cli() -> None:
  """The command `vicmae-export`: errors as one line."""
  try:
    main()
  except (ExportError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  cli()
