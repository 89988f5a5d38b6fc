"""The command `python -m vicmae_jax.convert`: official `.pth` <-> our checkpoint directories.

Output of a conversion: DIR is an orbax StandardCheckpointer directory holding
{"params": ..., "batch_stats": ...} (nested dicts, string keys, the pure-dict layout of
`nnx.state(model, nnx.Param / nnx.BatchStat)`), usable as a training `init_from`, plus
DIR/conversion.json (source, kind, model config, image size, what was loaded).

  python -m vicmae_jax.convert --input=ckpt.pth --output=DIR [--kind=vicmae|mae|encoder]
      [--variant=B/16] [--set decoder_depth=2 ...] [--scan_layers] [--no-strict]
  python -m vicmae_jax.convert --export --input=DIR --output=ckpt.pth [--kind=...] [--image_size=224]

Without --variant the architecture is read off the checkpoint (head counts from the published
variant with the same encoder); with it, the checkpoint must fit that variant (and the --set
overrides) exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

from vicmae_jax.convert.export import ours_to_official, tree_kind
from vicmae_jax.convert.load import (
  detect_kind,
  extract_state_dict,
  infer_model_config,
  official_to_ours,
)
from vicmae_jax.convert.mapping import KINDS
from vicmae_jax.convert.pth import load_pth, save_pth


SIDECAR = "conversion.json"
# Model fields the sidecar records besides the variant's sizes (variants.ARCH_FIELDS): the others
# that shape the parameter tree.
_SIDECAR_FIELDS = (
  "mlp_ratio",
  "in_channels",
  "projector_hidden_dim",
  "projector_out_dim",
  "scan_layers",
)


def convert_checkpoint(
  input_path: str,
  output_dir: str,
  *,
  model_cfg: Mapping[str, Any] | None = None,
  kind: str | None = None,
  strict: bool = True,
  seed: int = 0,
) -> dict:
  """Official `.pth` -> orbax directory `output_dir` (+ conversion.json). Returns the sidecar's contents.

  Args:
    model_cfg: our model config (variant and/or fields). None, or one without "variant" and without
      architecture fields, reads the architecture off the checkpoint; its other fields (e.g. scan_layers) apply.
  """
  import json
  import os

  import orbax.checkpoint as ocp

  from vicmae_jax.models import variants

  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir):
    raise FileExistsError(f"--output {output_dir} already exists; choose a new directory")
  state_dict = extract_state_dict(load_pth(input_path))
  kind = kind or detect_kind(state_dict)
  cfg = dict(model_cfg or {})
  inferred = infer_model_config(state_dict, kind=kind)
  image_size = inferred.pop("_image_size", None)
  if cfg.get("variant") is None and not any(field in cfg for field in variants.ARCH_FIELDS):
    cfg = {**inferred, **cfg}
  tree, report = official_to_ours(state_dict, cfg, kind=kind, strict=strict, seed=seed)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(output_dir, tree)
  checkpointer.wait_until_finished()
  resolved = variants.resolve_model_config(cfg)
  sidecar = {
    "source": os.path.abspath(input_path),
    "kind": kind,
    "model": {field: resolved[field] for field in variants.ARCH_FIELDS + _SIDECAR_FIELDS},
    "variant": resolved.get("variant"),
    "image_size": image_size,
    "loaded": len(report["loaded"]),
    "initialized": report["initialized"],
    "ignored": report["ignored"],
    "warnings": report["warnings"],
  }
  with open(os.path.join(output_dir, SIDECAR), "w") as f:
    json.dump(sidecar, f, indent=2)
  return sidecar


def export_checkpoint(
  input_path: str, output_path: str, *, kind: str | None = None, image_size: int | None = None
) -> dict:
  """Our parameters (a converted directory, a training workdir or step) -> an official `.pth`.

  The file holds {"model": state_dict}, which the official fine-tuning and pretraining code read with
  `torch.load(path)["model"]`. Returns {"kind", "image_size", "num_tensors", "source"}.
  """
  import json
  import os

  from vicmae_jax import weights

  tree = weights.load_pretrained_tree(input_path)
  sidecar_path = os.path.join(input_path, SIDECAR)
  sidecar = {}
  if os.path.exists(sidecar_path):
    with open(sidecar_path) as f:
      sidecar = json.load(f)
  image_size = int(image_size or sidecar.get("image_size") or 224)
  in_channels = int(sidecar.get("model", {}).get("in_channels", 3))
  state_dict = ours_to_official(tree, image_size=image_size, kind=kind, in_channels=in_channels)
  save_pth({"model": state_dict}, output_path)
  return {
    "kind": kind or tree_kind(tree),
    "image_size": image_size,
    "num_tensors": len(state_dict),
    "source": os.path.abspath(input_path),
  }


def _parse_value(text: str):
  import json

  try:
    return json.loads(text)
  except ValueError:
    return text


def main(argv: list[str] | None = None) -> int:
  import argparse
  import json

  parser = argparse.ArgumentParser(
    prog="python -m vicmae_jax.convert",
    description="Official PyTorch ViC-MAE / MAE checkpoints <-> vicmae_jax parameters.",
  )
  parser.add_argument(
    "--input", required=True, help=".pth to convert, or (with --export) our checkpoint dir"
  )
  parser.add_argument(
    "--output", required=True, help="new directory, or (with --export) the .pth to write"
  )
  parser.add_argument(
    "--export", action="store_true", help="write an official .pth from our parameters"
  )
  parser.add_argument(
    "--kind", choices=KINDS, default=None, help="default: detected from the keys / the tree"
  )
  parser.add_argument(
    "--variant", default=None, help="our model variant, e.g. B/16 (default: read off the file)"
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="model config override, repeatable, e.g. --set decoder_depth=2",
  )
  parser.add_argument(
    "--scan_layers", action="store_true", help="write blocks stacked (for scan_layers=True)"
  )
  parser.add_argument(
    "--strict",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="fail on missing/unexpected/mis-shaped tensors (default); --no-strict warns instead",
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="init seed for parts the checkpoint lacks"
  )
  parser.add_argument(
    "--image_size", type=int, default=None, help="export: size of the position tables"
  )
  args = parser.parse_args(argv)

  if args.export:
    summary = export_checkpoint(args.input, args.output, kind=args.kind, image_size=args.image_size)
    print(json.dumps(summary, indent=2))
    return 0
  cfg: dict[str, Any] = {}
  if args.variant:
    cfg["variant"] = args.variant
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set expects FIELD=VALUE, got {item!r}")
    field, value = item.split("=", 1)
    cfg[field.strip()] = _parse_value(value.strip())
  if args.scan_layers:
    cfg["scan_layers"] = True
  try:
    summary = convert_checkpoint(
      args.input, args.output, model_cfg=cfg, kind=args.kind, strict=args.strict, seed=args.seed
    )
  except (
    ValueError,
    FileExistsError,
    FileNotFoundError,
  ) as e:  # ConversionError, PthFormatError, bad --set
    print(f"error: {e}")
    return 1
  print(json.dumps({k: v for k, v in summary.items() if k != "ignored"}, indent=2))
  return 0
