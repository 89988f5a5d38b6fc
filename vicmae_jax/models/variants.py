"""The model config: the table of ViT variants and its resolution into every model field.

A model config names a variant (``{"variant": "B/16"}``) and/or gives architecture fields, plus
numerics and the method's hyperparameters. ``resolve_model_config`` fills in the variant and the
defaults and checks every value; ``dtype`` and ``encoder_kwargs`` turn a resolved config into the
constructor arguments of the modules (``vit.VisionTransformer``, ``vicmae.ViCMAE``,
``video.VideoViT``, ``classifier.ImageClassifier``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from vicmae_jax.models import block_stack

# The fields a variant fixes: the encoder's and the MAE decoder's sizes.
ARCH_FIELDS = (
  "patch_size",
  "embed_dim",
  "depth",
  "num_heads",
  "decoder_embed_dim",
  "decoder_depth",
  "decoder_num_heads",
)


def sizes(*values: int, **extra: Any) -> dict[str, Any]:
  """The ``ARCH_FIELDS`` in their order (patch, width, depth, heads, decoder width, depth, heads),
  plus ``extra`` fields: a row of ``VARIANTS``, or a small model's sizes in a test."""
  return {**dict(zip(ARCH_FIELDS, values, strict=True)), **extra}


# Architectures. Decoder sizes follow the official scripts (S: 256 wide; others 512 wide, 8 deep).
VARIANTS: dict[str, dict[str, int]] = {
  #               patch, width, depth, heads, decoder: width, depth, heads
  # A tiny model for tests and the demo (not a published size).
  "mu/8": sizes(8, 64, 2, 4, 32, 1, 4, projector_hidden_dim=64, projector_out_dim=32),
  "Ti/16": sizes(16, 192, 12, 3, 128, 4, 4),
  "S/16": sizes(16, 384, 12, 6, 256, 8, 8),
  "B/16": sizes(16, 768, 12, 12, 512, 8, 16),
  "L/16": sizes(16, 1024, 24, 16, 512, 8, 16),
  "H/14": sizes(14, 1280, 32, 16, 512, 8, 16),
}

# Fields with defaults: architecture extras, numerics, and the method's hyperparameters.
DEFAULTS: dict[str, Any] = {
  "variant": None,
  "mlp_ratio": 4.0,
  "in_channels": 3,
  "projector_hidden_dim": 4096,
  "projector_out_dim": 128,
  "dtype": "float32",
  "param_dtype": "float32",
  # The residual stream and the activations kept for the backward pass (layers.py); LayerNorm
  # statistics, softmax, the losses and the optimizer stay float32 whatever it is.
  "activation_dtype": "float32",
  # How the masked encoder picks its kept tokens and the decoder un-shuffles (vit.gather_tokens):
  # "take" (gather, scatter-add gradient) or "one_hot" (0/1 matmuls, no scatter).
  "token_gather": "take",
  "remat": "none",
  "scan_layers": False,
  "drop_path_rate": 0.0,
  "attention_impl": None,
  "mask_ratio": 0.5,
  "temperature": 0.1,
  "weight_recon": 0.97,
  "weight_contrast": 0.03,
  "norm_pix_loss": True,
  # The contrastive representation: "mean" of the visible patch tokens (the method) or "cls".
  "contrast_pool": "mean",
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# None / "xla": plain XLA attention (layers.multi_head_attention: two einsums and a float32
# softmax). "cudnn" (GPU only, opt-in): jax.nn.dot_product_attention's cuDNN fused kernel, the
# sequence padded to a multiple of 64 tokens and the padding masked by length
# (layers.padded_dot_product_attention).
ATTENTION_IMPLS = (None, "xla", "cudnn")


def resolve_model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Variant + explicit overrides -> every model field with defaults filled in.

  Args:
    cfg: e.g. ``{"variant": "B/16", "dtype": "bfloat16", "mask_ratio": 0.75}``; any field of
      ``VARIANTS`` may be overridden; without ``variant`` all architecture fields are required.
  Raises:
    ValueError: naming the field (``model.<field>``) for unknown fields or bad values.
  """
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  cfg = dict(cfg)
  known = set(ARCH_FIELDS) | set(DEFAULTS)
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise ValueError(f"model: unknown fields {unknown}; known fields: {sorted(known)}")
  out = dict(DEFAULTS)
  variant = cfg.get("variant")
  if variant is not None:
    if variant not in VARIANTS:
      raise ValueError(f"model.variant={variant!r} is not one of {list(VARIANTS)}")
    out.update(VARIANTS[variant])
  out.update({k: v for k, v in cfg.items() if v is not None or k in ("variant", "attention_impl")})
  missing = [f for f in ARCH_FIELDS if out.get(f) is None]
  if missing:
    raise ValueError(f"model: missing fields {missing} (set model.variant or give them explicitly)")
  for field in ARCH_FIELDS + ("in_channels", "projector_hidden_dim", "projector_out_dim"):
    value = out[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"model.{field} must be a positive integer, got {value!r}")
  for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
    if out[width] % out[heads]:
      raise ValueError(f"model.{width}={out[width]} is not divisible by model.{heads}={out[heads]}")
    if out[width] % 4:
      raise ValueError(
        f"model.{width}={out[width]} must be divisible by 4 (2-D sin-cos embeddings)"
      )
  for field in ("dtype", "param_dtype", "activation_dtype"):
    if out[field] not in DTYPES:
      raise ValueError(f"model.{field}={out[field]!r} is not one of {list(DTYPES)}")
  if out["remat"] not in block_stack.REMAT_POLICIES:
    raise ValueError(
      f"model.remat={out['remat']!r} is not one of {list(block_stack.REMAT_POLICIES)}"
    )
  if out["attention_impl"] not in ATTENTION_IMPLS:
    raise ValueError(
      f"model.attention_impl={out['attention_impl']!r} is not one of {list(ATTENTION_IMPLS)}"
    )
  if out["contrast_pool"] not in ("mean", "cls"):
    raise ValueError(f"model.contrast_pool={out['contrast_pool']!r} is not one of ['mean', 'cls']")
  if out["token_gather"] not in ("take", "one_hot"):
    raise ValueError(
      f"model.token_gather={out['token_gather']!r} is not one of ['take', 'one_hot']"
    )
  if not 0.0 <= float(out["mask_ratio"]) < 1.0:
    raise ValueError(f"model.mask_ratio must be in [0, 1), got {out['mask_ratio']!r}")
  if not 0.0 <= float(out["drop_path_rate"]) < 1.0:
    raise ValueError(f"model.drop_path_rate must be in [0, 1), got {out['drop_path_rate']!r}")
  if float(out["temperature"]) <= 0:
    raise ValueError(f"model.temperature must be > 0, got {out['temperature']!r}")
  if float(out["mlp_ratio"]) <= 0:
    raise ValueError(f"model.mlp_ratio must be > 0, got {out['mlp_ratio']!r}")
  out["scan_layers"] = bool(out["scan_layers"])
  out["norm_pix_loss"] = bool(out["norm_pix_loss"])
  return out


def dtype(resolved: Mapping[str, Any], field: str = "dtype") -> Any:
  """The jnp dtype named by ``resolved[field]`` ("dtype", "param_dtype" or "activation_dtype")."""
  return DTYPES[resolved[field]]


def encoder_kwargs(resolved: Mapping[str, Any]) -> dict[str, Any]:
  """Constructor arguments of ``vit.VisionTransformer`` (and the encoder part of the other models)
  from a resolved config: sizes, stochastic depth, and the ``block_stack.StackSettings``."""
  dims = block_stack.EncoderDims(
    resolved["patch_size"],
    resolved["embed_dim"],
    resolved["depth"],
    resolved["num_heads"],
    float(resolved["mlp_ratio"]),
    resolved["in_channels"],
  )
  return dict(
    dims=dims,
    drop_path_rate=float(resolved["drop_path_rate"]),
    settings=stack_settings(resolved),
  )


def stack_settings(resolved: Mapping[str, Any]) -> block_stack.StackSettings:
  """How the model of a resolved config computes (``block_stack.StackSettings``)."""
  impl = resolved["attention_impl"]
  return block_stack.StackSettings(
    dtype=dtype(resolved),
    param_dtype=dtype(resolved, "param_dtype"),
    remat=resolved["remat"],
    scan_layers=resolved["scan_layers"],
    attention_impl=None if impl in (None, "xla") else impl,
    activation_dtype=dtype(resolved, "activation_dtype"),
    token_gather=resolved["token_gather"],
  )
