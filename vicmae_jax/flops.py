"""Analytic FLOPs of a ViC-MAE train step, and peak FLOP/s per accelerator for MFU.

Convention (the usual one for MFU, as in the PaLM / MaxText reports):
- only matrix multiplications count, at 2 FLOPs per multiply-accumulate; layer norms, softmax, GELU, the loss
  element-wise ops and the optimizer update are left out (they are a few percent at ViT widths);
- attention counts its two batched matmuls (q k^T and attn v) over the full token set, 2 * 2 * n^2 * D;
- a train step is forward + backward = 3x the forward matmul FLOPs (the backward of a matmul is two matmuls of
  the same size). The patch embedding's input gradient is not needed in practice, which this rule ignores.
- both views are counted: every image pair goes through the encoder, decoder and projector twice.

Per view, with L = (image_size / p)^2 patches and K = int(L * (1 - mask_ratio)) kept (the official rounding):
  patch embedding   over all L patches (they are embedded, then masked): 2 * L * (p*p*3) * D
  encoder           depth blocks over 1 + K tokens
  decoder embed     2 * (1 + K) * D * D_dec
  decoder           decoder_depth blocks over 1 + L tokens
  decoder pred      2 * (1 + L) * D_dec * (p*p*3)  (the cls row is predicted, then dropped)
  projector         2 * (D*H + H*H + H*P)
plus the contrastive similarity matrix of the batch, 2 * (2B)^2 * P, once per step.
One transformer block over n tokens of width W with MLP width M: 2n(4 W^2 + 2 W M) + 4 n^2 W.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# Model dimension names this module reads (as produced by `vicmae_jax.models.vicmae.resolve_model_config`).
_REQUIRED = (
  "patch_size",
  "embed_dim",
  "depth",
  "decoder_embed_dim",
  "decoder_depth",
  "projector_hidden_dim",
  "projector_out_dim",
)


def _dims(model_dims: Mapping[str, Any]) -> dict:
  missing = [name for name in _REQUIRED if name not in model_dims]
  if missing:
    raise ValueError(
      f"model_dims is missing field(s) {missing}; pass resolve_model_config(...) output"
    )
  dims = {name: int(model_dims[name]) for name in _REQUIRED}
  mlp_ratio = float(model_dims.get("mlp_ratio", 4.0))
  dims["mlp_dim"] = int(model_dims.get("mlp_dim") or round(mlp_ratio * dims["embed_dim"]))
  dims["decoder_mlp_dim"] = int(
    model_dims.get("decoder_mlp_dim") or round(mlp_ratio * dims["decoder_embed_dim"])
  )
  dims["in_channels"] = int(model_dims.get("in_channels", 3))
  return dims


def transformer_block_flops(num_tokens: int, width: int, mlp_dim: int) -> float:
  """Forward matmul FLOPs of one pre-norm block (qkv, scores, attn @ v, out proj, 2-layer MLP) on one sequence."""
  n, w = float(num_tokens), float(width)
  dense = 2.0 * n * (3 * w * w + w * w + 2 * w * mlp_dim)
  attention = 2.0 * 2.0 * n * n * w
  return dense + attention


def num_patches(image_size: int, patch_size: int) -> int:
  if image_size % patch_size:
    raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
  return (image_size // patch_size) ** 2


def num_kept(num_patches_: int, mask_ratio: float) -> int:
  """Visible patches per view: the official `int(L * (1 - mask_ratio))` (the one copy of the
  rule: the model's masking, the config check and the FLOP count use it).

  Raises:
    ValueError: `mask_ratio` outside [0, 1) or leaving no visible patch.
  """
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  keep = int(num_patches_ * (1 - mask_ratio))
  if keep < 1:
    raise ValueError(f"mask_ratio={mask_ratio} keeps no patch out of {num_patches_}")
  return keep


def vicmae_forward_flops_per_view(
  model_dims: Mapping[str, Any], image_size: int, mask_ratio: float
) -> dict:
  """Forward matmul FLOPs of one view of one example, by part (see the module docstring)."""
  d = _dims(model_dims)
  p, width, dec_width = d["patch_size"], d["embed_dim"], d["decoder_embed_dim"]
  patch_dim = p * p * d["in_channels"]
  length = num_patches(image_size, p)
  kept = num_kept(length, mask_ratio)
  hidden, out = d["projector_hidden_dim"], d["projector_out_dim"]
  return {
    "patch_embed": 2.0 * length * patch_dim * width,
    "encoder": d["depth"] * transformer_block_flops(1 + kept, width, d["mlp_dim"]),
    "decoder_embed": 2.0 * (1 + kept) * width * dec_width,
    "decoder": d["decoder_depth"]
    * transformer_block_flops(1 + length, dec_width, d["decoder_mlp_dim"]),
    "decoder_pred": 2.0 * (1 + length) * dec_width * patch_dim,
    "projector": 2.0 * (width * hidden + hidden * hidden + hidden * out),
  }


def vicmae_forward_flops(
  model_dims: Mapping[str, Any], image_size: int, mask_ratio: float, batch: int
) -> float:
  """Forward matmul FLOPs of a batch of `batch` image pairs (both views, plus the contrastive similarities)."""
  per_view = sum(vicmae_forward_flops_per_view(model_dims, image_size, mask_ratio).values())
  similarities = 2.0 * (2 * batch) ** 2 * int(model_dims["projector_out_dim"])
  return 2 * batch * per_view + similarities


def vicmae_train_flops(
  model_dims: Mapping[str, Any], image_size: int, mask_ratio: float, batch: int
) -> float:
  """FLOPs of one train step on `batch` pairs: 3x the forward matmul FLOPs (forward + backward)."""
  return 3.0 * vicmae_forward_flops(model_dims, image_size, mask_ratio, batch)


# Dense (no structured sparsity) peak FLOP/s per chip, from the vendors' data sheets.
# "float32" means what a float32 matmul runs at under JAX's default precision: on TPUs that is one bfloat16 pass
# (the bfloat16 peak); on NVIDIA GPUs the plain FP32 (non tensor core) rate. "tfloat32" is the TF32 tensor core
# rate, which XLA uses for float32 matmuls under precision="tensorfloat32".
_PEAK_FLOPS = {
  "h100_sxm": {"bfloat16": 989.4e12, "float16": 989.4e12, "tfloat32": 494.7e12, "float32": 66.9e12},
  "h100_pcie": {
    "bfloat16": 756.5e12,
    "float16": 756.5e12,
    "tfloat32": 378.0e12,
    "float32": 51.2e12,
  },
  "h100_nvl": {"bfloat16": 835.5e12, "float16": 835.5e12, "tfloat32": 417.5e12, "float32": 60.0e12},
  "h200": {"bfloat16": 989.4e12, "float16": 989.4e12, "tfloat32": 494.7e12, "float32": 66.9e12},
  "a100": {"bfloat16": 312e12, "float16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
  "tpu_v4": {"bfloat16": 275e12, "float32": 275e12},
  "tpu_v5e": {"bfloat16": 197e12, "float32": 197e12},
  "tpu_v5p": {"bfloat16": 459e12, "float32": 459e12},
  "tpu_v6e": {"bfloat16": 918e12, "float32": 918e12},
}


_DTYPE_ALIASES = {
  "bf16": "bfloat16",
  "fp16": "float16",
  "f16": "float16",
  "f32": "float32",
  "fp32": "float32",
  "tf32": "tfloat32",
}


def _chip_family(device_kind: str) -> str | None:
  kind = device_kind.lower().replace("-", " ")
  if "h200" in kind:
    return "h200"
  if "h100" in kind:
    if "pcie" in kind:
      return "h100_pcie"
    if "nvl" in kind:
      return "h100_nvl"
    return "h100_sxm"  # "NVIDIA H100 80GB HBM3" is the SXM part
  if "a100" in kind:
    return "a100"
  compact = kind.replace(" ", "")
  if "tpuv6" in compact:  # "TPU v6 lite" / "TPU v6e"
    return "tpu_v6e"
  if "tpuv5lite" in compact or "tpuv5e" in compact:
    return "tpu_v5e"
  if "tpuv5" in compact:  # "TPU v5" / "TPU v5p"
    return "tpu_v5p"
  if "tpuv4" in compact:
    return "tpu_v4"
  return None


def peak_flops(device: Any, dtype: str = "bfloat16") -> float | None:
  """Peak dense FLOP/s of one chip for matmuls in `dtype`, or None when the chip or dtype is not in the table.

  Args:
    device: a `jax.Device` (its `device_kind` is read) or a device-kind string such as "NVIDIA H100 80GB HBM3",
      "TPU v5 lite".
    dtype: "bfloat16", "float16", "float32" or "tfloat32" (a numpy/jax dtype is accepted too).
  """
  device_kind = device if isinstance(device, str) else getattr(device, "device_kind", "")
  family = _chip_family(str(device_kind))
  if family is None:
    return None
  if isinstance(dtype, str):
    dtype_name = _DTYPE_ALIASES.get(dtype, dtype)
  else:
    dtype_name = np.dtype(dtype).name
  return _PEAK_FLOPS[family].get(dtype_name)
