"""Config schema pieces, validation and duration resolution shared by every trainer.

Config files in `configs/` build on the defaults here, so every experiment has the same field names:

  trainer            "pretrain" | "linear_probe" | "finetune"
  seed               int; model init, masking and data order all derive from it
  batch_size         GLOBAL batch size (pairs for pretraining), split over processes and devices
  num_epochs / num_steps        exactly one > 0: how long to train
  warmup_epochs / warmup_steps  at most one > 0
  model.*            the model (variant and overrides; see models/vicmae.py)
  loss.*             loss weights and temperature
  optim.*            optimizer (see optim/config.py)
  data.*             input pipeline (see data/pipeline.py)
  mesh.*             mesh axis sizes: {"data": -1, "fsdp": 1, "model": 1}; -1 takes the remaining devices
  checkpoint.*       every_steps, keep, keep_every, async_save
  log.*              every_steps, image_every_steps, num_images; log.wandb.{project, entity, mode}
  evals.*            evaluators run every N steps and at the end (see evaluators/)
  init_from          "" or a path (a training workdir or a converted checkpoint) to take parameters from
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import math
import re
import types
from collections.abc import Callable
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""

  def __init__(self, field: str, message: str):
    self.field = field
    super().__init__(f"config.{field}: {message}")


def as_config_error(section: str, fn: Callable[[], Any]) -> Any:
  """Runs fn(); a ValueError from a validation helper becomes a ConfigError on the field it names.

  Helpers word their errors "<section>.<field>: message" or "<section>.<field>=value is ...";
  the field is read from that prefix (else the error is put on `section` as a whole).
  """
  try:
    return fn()
  except ConfigError:
    raise
  except ValueError as e:
    msg = str(e).removeprefix("config.")
    match = re.match(re.escape(section) + r"(\.[A-Za-z_][\w.]*)?", msg)
    if not match:
      raise ConfigError(section, msg) from None
    field = match.group(0).rstrip(".")
    rest = msg[len(field) :].lstrip(" :")
    raise ConfigError(
      field, rest.removeprefix("=").lstrip() if rest.startswith("=") else rest
    ) from None


def base_config() -> ml_collections.ConfigDict:
  """Fields common to every trainer, with their defaults."""
  c = ml_collections.ConfigDict()
  c.trainer = "pretrain"
  c.seed = 0
  c.batch_size = 256
  c.num_epochs = 0.0
  c.num_steps = 0
  c.warmup_epochs = 0.0
  c.warmup_steps = 0
  c.init_from = ""
  # Global batches sent to the device ahead of the step (0: each made when its step starts).
  c.device_prefetch = 2
  # jax.transfer_guard level around each step of the training loop: "disallow" turns any
  # implicit host<->device transfer there (a hidden sync) into an error.
  c.transfer_guard = "allow"

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))

  c.checkpoint = ml_collections.ConfigDict(
    dict(every_steps=1000, keep=3, keep_every=0, async_save=True)
  )
  c.log = ml_collections.ConfigDict(dict(every_steps=50, image_every_steps=0, num_images=4))
  # Weights & Biases beside TensorBoard (wandb_writer.py): off while project is "".
  c.log.wandb = ml_collections.ConfigDict(dict(project="", entity="", mode="online"))
  # Profile a window of steps into the workdir (a trace viewable in TensorBoard's profile tab).
  c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=5))
  c.evals = ml_collections.ConfigDict()
  return c


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """config.optim: the defaults of optim.OPTIM_FIELDS (AdamW of the official pretraining).

  `base_lr` is per 256 examples (lr = base_lr * batch_size / 256) unless `lr` > 0 is given.
  Zero means "off" for clip_grad_norm and layer_decay.
  """
  from vicmae_jax import optim  # optax: imported only when a config asks for this section

  c = ml_collections.ConfigDict(dict(optim.OPTIM_FIELDS))
  c.update(overrides)
  return c


def suggest(name: str, options) -> str:
  close = difflib.get_close_matches(name, list(options), n=1)
  return f" (did you mean '{close[0]}'?)" if close else ""


def load_module(path: str) -> types.ModuleType:
  """Runs the Python file at `path` as a new module named after the file (not put in sys.modules)."""
  module_spec = importlib.util.spec_from_file_location(
    os.path.splitext(os.path.basename(path))[0], path
  )
  if module_spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> the file's `get_config(arg)` (as `--config=` loads it)."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def load_sibling(file: str, name: str) -> types.ModuleType:
  """The module in `name`.py next to `file`, loaded by path.

  For config files, which ml_collections executes by path (`configs/` is no package on sys.path):
  `common = config_lib.load_sibling(__file__, "common")` finds configs/common.py from any working
  directory.
  """
  return load_module(os.path.join(os.path.dirname(os.path.abspath(file)), f"{name}.py"))


def unknown_field(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """None when `dotted` (e.g. "model.mask_ratio") names a field of `config`, else a message:
  "no such field (did you mean model.mask_ratio?)" for the first part that does not exist."""
  node, parts = config, dotted.split(".")
  for depth, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      if not hasattr(node, "keys"):
        where = ".".join(parts[:depth])
        return f"no such field ({where} is a value, not a group)"
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f" (did you mean {'.'.join(parts[:depth] + close)}?)" if close else ""
      return f"no such field{hint}"
    node = node[part]
  return None


def require(cond: bool, field: str, message: str):
  if not cond:
    raise ConfigError(field, message)


def validate_common(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks the fields every trainer shares; raises ConfigError naming the field."""
  for field in ("trainer", "seed", "batch_size", "mesh", "checkpoint", "log"):
    require(field in config, field, "missing")
  require(
    isinstance(config.batch_size, int) and config.batch_size > 0,
    "batch_size",
    f"must be a positive int, got {config.batch_size!r}",
  )
  has_epochs = float(config.get("num_epochs", 0) or 0) > 0
  has_steps = int(config.get("num_steps", 0) or 0) > 0
  require(
    has_epochs != has_steps,
    "num_steps",
    "set exactly one of num_epochs and num_steps to a positive value "
    f"(got num_epochs={config.get('num_epochs')}, num_steps={config.get('num_steps')})",
  )
  require(
    not (
      float(config.get("warmup_epochs", 0) or 0) > 0 and int(config.get("warmup_steps", 0) or 0) > 0
    ),
    "warmup_steps",
    "set at most one of warmup_epochs and warmup_steps",
  )
  mesh_size = mesh_shape(config.mesh, num_devices)
  data_parallel = mesh_size["data"] * mesh_size["fsdp"]
  require(
    config.batch_size % data_parallel == 0,
    "batch_size",
    f"global batch {config.batch_size} is not divisible by the data-parallel size "
    f"{data_parallel} (mesh data={mesh_size['data']} x fsdp={mesh_size['fsdp']})",
  )
  ckpt = config.checkpoint
  require(int(ckpt.every_steps) >= 0, "checkpoint.every_steps", "must be >= 0")
  require(int(ckpt.keep) >= 1, "checkpoint.keep", "must be >= 1")
  require(int(config.log.every_steps) >= 1, "log.every_steps", "must be >= 1")
  wandb_cfg = config.log.get("wandb") or {}
  if wandb_cfg.get("project"):
    modes = ("online", "offline", "disabled")
    require(wandb_cfg.get("mode") in modes, "log.wandb.mode", f"must be one of {', '.join(modes)}")
    require(
      importlib.util.find_spec("wandb") is not None,
      "log.wandb.project",
      "is set but the wandb package is not installed: pip install 'vicmae_jax[wandb]' (or "
      "pip install wandb), or leave log.wandb.project empty",
    )
  prefetch = config.get("device_prefetch", 2)
  require(
    isinstance(prefetch, int) and not isinstance(prefetch, bool) and 0 <= prefetch <= 8,
    "device_prefetch",
    f"must be an int in [0, 8], got {prefetch!r}",
  )
  guards = ("allow", "log", "disallow", "log_explicit", "disallow_explicit")
  require(
    config.get("transfer_guard", "allow") in guards,
    "transfer_guard",
    f"must be one of {', '.join(guards)}, got {config.get('transfer_guard')!r}",
  )


def mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
  """Resolves a mesh config ({"data": -1, "fsdp": 1, "model": 1}) against the device count."""
  sizes = {k: int(mesh_cfg.get(k, 1)) for k in ("data", "fsdp", "model")}
  for k in mesh_cfg.keys():
    require(
      k in sizes, f"mesh.{k}", f"unknown mesh axis{suggest(k, sizes)}; axes are data, fsdp, model"
    )
  free = [k for k, v in sizes.items() if v == -1]
  require(len(free) <= 1, "mesh", f"at most one axis may be -1, got {dict(sizes)}")
  for k, v in sizes.items():
    require(v == -1 or v >= 1, f"mesh.{k}", f"must be -1 or >= 1, got {v}")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    require(
      num_devices % fixed == 0, "mesh", f"{num_devices} devices cannot be split into {dict(sizes)}"
    )
    sizes[free[0]] = num_devices // fixed
  require(
    math.prod(sizes.values()) == num_devices,
    "mesh",
    f"mesh {sizes} needs {math.prod(sizes.values())} devices but {num_devices} are present",
  )
  return sizes


@dataclasses.dataclass(frozen=True)
class Durations:
  total_steps: int
  warmup_steps: int
  steps_per_epoch: int


def resolve_durations(config, dataset_size: int) -> Durations:
  """The one place where epochs become steps: steps_per_epoch = dataset_size // batch_size."""
  steps_per_epoch = max(1, dataset_size // config.batch_size)
  if float(config.get("num_epochs", 0) or 0) > 0:
    total = int(round(float(config.num_epochs) * steps_per_epoch))
  else:
    total = int(config.num_steps)
  if float(config.get("warmup_epochs", 0) or 0) > 0:
    warmup = int(round(float(config.warmup_epochs) * steps_per_epoch))
  else:
    warmup = int(config.get("warmup_steps", 0) or 0)
  require(
    total >= 1,
    "num_epochs",
    f"resolves to {total} steps (dataset of {dataset_size}, batch "
    f"{config.batch_size}); train longer or use a smaller batch",
  )
  warmup = min(warmup, total)
  return Durations(total_steps=total, warmup_steps=warmup, steps_per_epoch=steps_per_epoch)


def to_plain(config: Any):
  """ConfigDict -> plain python (for JSON and hparams)."""
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return {k: to_plain(v) for k, v in config.items()}
  if isinstance(config, (list, tuple)):
    return [to_plain(v) for v in config]
  return config


def model_config(**overrides) -> ml_collections.ConfigDict:
  """ViC-MAE model fields (see models/vicmae.py `resolve_model_config`).

  `variant` sets the architecture; the fields left None take the variant's value and may be
  overridden one by one (`--config.model.depth=6`). The loss hyperparameters live here too.
  """
  none_int = lambda: ml_collections.FieldReference(None, field_type=int)
  c = ml_collections.ConfigDict(
    dict(
      variant="B/16",
      patch_size=none_int(),
      embed_dim=none_int(),
      depth=none_int(),
      num_heads=none_int(),
      decoder_embed_dim=none_int(),
      decoder_depth=none_int(),
      decoder_num_heads=none_int(),
      projector_hidden_dim=none_int(),
      projector_out_dim=none_int(),
      mlp_ratio=4.0,
      dtype="float32",  # compute dtype of matmuls: "bfloat16" on accelerators
      param_dtype="float32",
      # residual stream and saved activations: "bfloat16" on accelerators (norm statistics,
      # softmax, losses and the optimizer stay float32)
      activation_dtype="float32",
      token_gather="take",  # "take" | "one_hot": masked-token gather and decoder un-shuffle
      remat="none",  # "none" | "full" | "dots": rematerialization of blocks
      scan_layers=False,  # stack blocks and run them with a scan (large variants)
      drop_path_rate=0.0,
      attention_impl=ml_collections.FieldReference(None, field_type=str),  # None|"xla"|"cudnn"
      mask_ratio=0.5,
      temperature=0.1,
      weight_recon=0.97,
      weight_contrast=0.03,
      norm_pix_loss=True,
      contrast_pool="mean",  # the contrastive representation: "mean" (the method) | "cls"
    )
  )
  c.update(overrides)
  return c


def pretrain_config() -> ml_collections.ConfigDict:
  """The official pretraining recipe: batch 4096, AdamW blr 1.5e-4, 40 warm-up of 800 epochs."""
  c = base_config()
  c.trainer = "pretrain"
  c.batch_size = 4096
  c.num_epochs = 800.0
  c.warmup_epochs = 40.0
  c.image_size = 224
  c.model = model_config()
  c.optim = optim_config()
  return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`file.py:variant=B/16,runlocal` -> ConfigDict(variant="B/16", runlocal=True) over defaults.

  Values keep the type of their default (bool: true/false/1/0; a bare name sets True).
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(
        f"<arg>.{key}",
        f"unknown config option{suggest(key, defaults)}; options are {', '.join(sorted(defaults))}",
      )
    default = defaults[key]
    if not eq:
      parsed = True
    elif isinstance(default, bool):
      parsed = value.strip().lower() in ("1", "true", "yes", "on")
    elif isinstance(default, int):
      parsed = int(value)
    elif isinstance(default, float):
      parsed = float(value)
    else:
      parsed = value
    out[key] = parsed
  return out


def paper_pretrain_config(variant: str = "L/16") -> ml_collections.ConfigDict:
  """The published pretraining recipe at 224 px (data sources left to the caller).

  ViT `variant` with bfloat16 matmuls and activations, mask ratio 0.5, batch 4096, 800 epochs with 40 warm-up,
  AdamW base lr 1.5e-4 per 256 examples, checkpoints every 1000 steps (the last 3, and every
  20000th kept), metrics every 100 steps, reconstructions every 5000.
  """
  c = pretrain_config()
  c.image_size = 224
  c.model = model_config(
    variant=variant, dtype="bfloat16", activation_dtype="bfloat16", mask_ratio=0.5
  )
  c.optim = optim_config(base_lr=1.5e-4)
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.keep_every = 20000
  c.log.every_steps = 100
  c.log.image_every_steps = 5000
  return c


def shrink_for_local_run(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`:runlocal`: a tiny float32 model for 20 steps at 64 px, same data layout (a smoke test)."""
  c.model = model_config(variant="mu/8", dtype="float32")
  c.image_size, c.batch_size = 64, 16
  c.num_epochs, c.num_steps, c.warmup_epochs, c.warmup_steps = 0.0, 20, 0.0, 5
  c.checkpoint.every_steps, c.log.every_steps, c.log.image_every_steps = 10, 5, 10
  return c
