"""ViC-MAE: a ViT encoder shared by two views, an MAE pixel decoder and a contrastive projector.

Shapes:
  images   [B, V, H, W, C]  float32 normalized, V = 2 views (both views go through the encoder in
                            one call as a batch of B*V, sample-major: row b*V + v)
  pred     [B, V, L, p*p*C] float32 predicted pixels of every patch (cls dropped), official
                            (p, q, c) patch order
  mask     [B, V, L]        float32, 1 = removed
  pooled   [B, V, D]        float32 mean of the visible patch tokens after the final norm (no cls)
  proj     [B, V, P]        float32 projector output (not normalized)

Parameter tree::

  encoder.*                          see ``vit.VisionTransformer``
  decoder.embed.{kernel [D, Dd], bias [Dd]}
  decoder.mask_token [1, 1, Dd]
  decoder.blocks[i].*                 same Block layout as the encoder, width Dd
  decoder.norm.{scale, bias} [Dd]
  decoder.pred.{kernel [Dd, p*p*C], bias [p*p*C]}
  projector.fc1.{kernel [D, Hp], bias}  projector.bn1.{scale, bias, mean*, var*}
  projector.fc2.{kernel [Hp, Hp], bias} projector.bn2.{scale, bias, mean*, var*}
  projector.fc3.{kernel [Hp, P], bias}
  (* = nnx.BatchStat running statistics; everything else is nnx.Param)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vicmae_jax import sharding
from vicmae_jax.models import layers, vit

# Architectures. Decoder sizes follow the official scripts (S: 256 wide; others 512 wide, 8 deep).
VARIANTS: dict[str, dict[str, int]] = {
  # A tiny model for tests and the demo (not a published size).
  "mu/8": dict(
    patch_size=8,
    embed_dim=64,
    depth=2,
    num_heads=4,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=4,
    projector_hidden_dim=64,
    projector_out_dim=32,
  ),
  "Ti/16": dict(
    patch_size=16,
    embed_dim=192,
    depth=12,
    num_heads=3,
    decoder_embed_dim=128,
    decoder_depth=4,
    decoder_num_heads=4,
  ),
  "S/16": dict(
    patch_size=16,
    embed_dim=384,
    depth=12,
    num_heads=6,
    decoder_embed_dim=256,
    decoder_depth=8,
    decoder_num_heads=8,
  ),
  "B/16": dict(
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
  ),
  "L/16": dict(
    patch_size=16,
    embed_dim=1024,
    depth=24,
    num_heads=16,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
  ),
  "H/14": dict(
    patch_size=14,
    embed_dim=1280,
    depth=32,
    num_heads=16,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
  ),
}

_ARCH_FIELDS = (
  "patch_size",
  "embed_dim",
  "depth",
  "num_heads",
  "decoder_embed_dim",
  "decoder_depth",
  "decoder_num_heads",
)
# Fields with defaults: architecture extras, numerics, and the method's hyperparameters.
_DEFAULTS: dict[str, Any] = {
  "variant": None,
  "mlp_ratio": 4.0,
  "in_channels": 3,
  "projector_hidden_dim": 4096,
  "projector_out_dim": 128,
  "dtype": "float32",
  "param_dtype": "float32",
  "remat": "none",
  "scan_layers": False,
  "drop_path_rate": 0.0,
  "attention_impl": None,
  "mask_ratio": 0.5,
  "temperature": 0.1,
  "weight_recon": 0.97,
  "weight_contrast": 0.03,
  "norm_pix_loss": True,
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# None / "xla": plain XLA attention (layers.multi_head_attention: two einsums and a float32
# softmax). "cudnn" (GPU only, opt-in): jax.nn.dot_product_attention's cuDNN fused kernel, the
# sequence padded to a multiple of 64 tokens and the padding masked by length
# (layers.padded_dot_product_attention).
_ATTENTION_IMPLS = (None, "xla", "cudnn")


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
  known = set(_ARCH_FIELDS) | set(_DEFAULTS)
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise ValueError(f"model: unknown fields {unknown}; known fields: {sorted(known)}")
  out = dict(_DEFAULTS)
  variant = cfg.get("variant")
  if variant is not None:
    if variant not in VARIANTS:
      raise ValueError(f"model.variant={variant!r} is not one of {list(VARIANTS)}")
    out.update(VARIANTS[variant])
  out.update({k: v for k, v in cfg.items() if v is not None or k in ("variant", "attention_impl")})
  missing = [f for f in _ARCH_FIELDS if out.get(f) is None]
  if missing:
    raise ValueError(f"model: missing fields {missing} (set model.variant or give them explicitly)")
  for field in _ARCH_FIELDS + ("in_channels", "projector_hidden_dim", "projector_out_dim"):
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
  for field in ("dtype", "param_dtype"):
    if out[field] not in _DTYPES:
      raise ValueError(f"model.{field}={out[field]!r} is not one of {list(_DTYPES)}")
  if out["remat"] not in layers.REMAT_POLICIES:
    raise ValueError(f"model.remat={out['remat']!r} is not one of {list(layers.REMAT_POLICIES)}")
  if out["attention_impl"] not in _ATTENTION_IMPLS:
    raise ValueError(
      f"model.attention_impl={out['attention_impl']!r} is not one of {list(_ATTENTION_IMPLS)}"
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


class BatchNorm(nnx.Module):
  """BatchNorm1d with PyTorch semantics, statistics taken separately for each view.

  ``[B, V, F] -> [B, V, F]`` float32. Training normalizes view v with the biased mean/variance of
  ``x[:, v]`` over the (global) batch and updates the running statistics once per view, in view
  order, as ``r = (1 - momentum) * r + momentum * s`` with the unbiased variance (PyTorch).
  """

  def __init__(
    self,
    num_features: int,
    *,
    momentum: float = 0.1,
    epsilon: float = 1e-5,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs  # deterministic init; the argument keeps the constructor uniform
    self.momentum = momentum
    self.epsilon = epsilon
    self.scale = nnx.Param(
      jnp.ones((num_features,), param_dtype), out_sharding=("mlp",), eager_sharding=False
    )
    self.bias = nnx.Param(
      jnp.zeros((num_features,), param_dtype), out_sharding=("mlp",), eager_sharding=False
    )
    self.mean = nnx.BatchStat(
      jnp.zeros((num_features,), jnp.float32), out_sharding=("mlp",), eager_sharding=False
    )
    self.var = nnx.BatchStat(
      jnp.ones((num_features,), jnp.float32), out_sharding=("mlp",), eager_sharding=False
    )

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    if train:
      batch = x.shape[0]
      if batch < 2:
        raise ValueError(f"BatchNorm in training needs batch_size >= 2 per view, got {batch}")
      mean = jnp.mean(x, axis=0)  # [V, F]
      var = jnp.mean(jnp.square(x - mean), axis=0)
      unbiased = jax.lax.stop_gradient(var * (batch / (batch - 1)))
      running_mean, running_var = self.mean[...], self.var[...]
      for view in range(x.shape[1]):
        running_mean = (1 - self.momentum) * running_mean + self.momentum * jax.lax.stop_gradient(
          mean[view]
        )
        running_var = (1 - self.momentum) * running_var + self.momentum * unbiased[view]
      self.mean[...] = running_mean
      self.var[...] = running_var
    else:
      mean, var = self.mean[...], self.var[...]
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    return y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


class Projector(nnx.Module):
  """Linear(D,H)-BN-ReLU-Linear(H,H)-BN-ReLU-Linear(H,P), BN per view. ``[B, V, D] -> [B, V, P]``."""

  def __init__(
    self,
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    *,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
  ):
    dense = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = layers.dense(in_dim, hidden_dim, ("embed", "mlp"), **dense)
    self.bn1 = BatchNorm(hidden_dim, param_dtype=param_dtype)
    # The hidden->hidden kernel contracts like an input layer: 'embed' rows, 'mlp' columns.
    self.fc2 = layers.dense(hidden_dim, hidden_dim, ("embed", "mlp"), **dense)
    self.bn2 = BatchNorm(hidden_dim, param_dtype=param_dtype)
    self.fc3 = layers.dense(hidden_dim, out_dim, ("mlp", "embed"), **dense)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = jax.nn.relu(self.bn1(self.fc1(x), train=train))
    x = jax.nn.relu(self.bn2(self.fc2(x), train=train))
    return self.fc3(x).astype(jnp.float32)


class MAEDecoder(nnx.Module):
  """Fills in mask tokens, adds its own sin-cos positions, predicts pixels of every patch.

  ``(tokens [N, 1+K, D], ids_restore [N, L], grid) -> pred [N, L, p*p*C]`` float32.
  """

  def __init__(
    self,
    *,
    in_dim: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    patch_dim: int,
    mlp_ratio: float,
    dtype: Any,
    param_dtype: Any,
    remat: str,
    scan_layers: bool,
    attention_impl: str | None,
    rngs: nnx.Rngs,
  ):
    self.embed_dim = embed_dim
    self.remat = remat
    self.scan_layers = scan_layers
    self.embed = layers.dense(
      in_dim, embed_dim, ("embed", None), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.mask_token = layers.token_param(
      (1, 1, embed_dim), (None, None, "embed"), param_dtype=param_dtype, rngs=rngs
    )
    self.blocks = layers.make_blocks(
      depth,
      lambda r: layers.Block(
        embed_dim,
        num_heads,
        mlp_ratio,
        dtype=dtype,
        param_dtype=param_dtype,
        attention_impl=attention_impl,
        rngs=r,
      ),
      rngs,
      scan_layers=scan_layers,
    )
    self.norm = layers.layer_norm(embed_dim, param_dtype=param_dtype, rngs=rngs)
    self.pred = layers.dense(
      embed_dim, patch_dim, ("embed", "patch"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(self, tokens: jax.Array, ids_restore: jax.Array, grid: tuple[int, int]) -> jax.Array:
    x = self.embed(tokens).astype(jnp.float32)
    batch, length = ids_restore.shape
    num_masked = length + 1 - x.shape[1]
    mask_tokens = jnp.broadcast_to(
      self.mask_token[...].astype(jnp.float32), (batch, num_masked, self.embed_dim)
    )
    patches = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
    patches = jnp.take_along_axis(patches, ids_restore[:, :, None], axis=1)
    x = jnp.concatenate([x[:, :1], patches], axis=1)
    x = x + jnp.asarray(vit.sincos_2d(self.embed_dim, grid[0], grid[1], cls_token=True))
    x = sharding.constrain(x, ("batch", None, None))
    x = layers.apply_blocks(self.blocks, x, scan_layers=self.scan_layers, remat=self.remat)
    x = self.pred(self.norm(x)).astype(jnp.float32)
    return x[:, 1:]


class ViCMAE(nnx.Module):
  """Encoder + decoder + projector; returns everything the losses need (see module docstring)."""

  def __init__(
    self,
    *,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    decoder_embed_dim: int,
    decoder_depth: int,
    decoder_num_heads: int,
    mlp_ratio: float = 4.0,
    in_channels: int = 3,
    projector_hidden_dim: int = 4096,
    projector_out_dim: int = 128,
    drop_path_rate: float = 0.0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    remat: str = "none",
    scan_layers: bool = False,
    attention_impl: str | None = None,
    rngs: nnx.Rngs,
  ):
    self.patch_size = patch_size
    self.in_channels = in_channels
    self.encoder = vit.VisionTransformer(
      patch_size=patch_size,
      embed_dim=embed_dim,
      depth=depth,
      num_heads=num_heads,
      mlp_ratio=mlp_ratio,
      in_channels=in_channels,
      drop_path_rate=drop_path_rate,
      dtype=dtype,
      param_dtype=param_dtype,
      remat=remat,
      scan_layers=scan_layers,
      attention_impl=attention_impl,
      rngs=rngs,
    )
    self.decoder = MAEDecoder(
      in_dim=embed_dim,
      embed_dim=decoder_embed_dim,
      depth=decoder_depth,
      num_heads=decoder_num_heads,
      patch_dim=patch_size * patch_size * in_channels,
      mlp_ratio=mlp_ratio,
      dtype=dtype,
      param_dtype=param_dtype,
      remat=remat,
      scan_layers=scan_layers,
      attention_impl=attention_impl,
      rngs=rngs,
    )
    self.projector = Projector(
      embed_dim,
      projector_hidden_dim,
      projector_out_dim,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(
    self,
    images: jax.Array,
    *,
    mask_ratio: float,
    key: jax.Array | None = None,
    noise: jax.Array | None = None,
    train: bool = True,
  ) -> dict[str, jax.Array]:
    """Masks each view independently, encodes, reconstructs and projects.

    Args:
      images: ``[B, V, H, W, C]`` float32 normalized (V = 2 for the contrastive loss).
      mask_ratio: fraction of patches removed per view (static Python float).
      key: PRNG key (masking noise, stochastic depth); pure steps fold the step into it.
      noise: optional ``[B, V, L]`` argsort noise (official semantics: small = kept); when
        given, masking uses it instead of ``key``.
      train: BatchNorm uses batch statistics and updates its running statistics.
    Returns:
      dict with ``pred [B, V, L, p*p*C]``, ``mask [B, V, L]``, ``pooled [B, V, D]``,
      ``proj [B, V, P]`` (all float32).
    """
    if images.ndim != 5:
      raise ValueError(f"images must be [B, V, H, W, C], got shape {images.shape}")
    batch, views = images.shape[:2]
    grid = self.encoder.grid(images)
    length = grid[0] * grid[1]
    flat_noise = None
    if noise is not None:
      if noise.shape != (batch, views, length):
        raise ValueError(f"noise must have shape {(batch, views, length)}, got {noise.shape}")
      flat_noise = noise.reshape(batch * views, length)
    # Sample-major folding keeps the batch axis sharding of [B, V, ...] on the folded axis.
    flat = sharding.constrain(
      images.reshape(batch * views, *images.shape[2:]), ("batch", None, None, None)
    )
    encoded = self.encoder(flat, mask_ratio=mask_ratio, noise=flat_noise, key=key, train=train)
    tokens = encoded["tokens"]
    pooled = jnp.mean(tokens[:, 1:], axis=1).reshape(batch, views, -1)
    proj = self.projector(pooled, train=train)
    pred = self.decoder(tokens, encoded["ids_restore"], grid)
    return {
      "pred": pred.reshape(batch, views, length, -1),
      "mask": encoded["mask"].reshape(batch, views, length),
      "pooled": pooled,
      "proj": proj,
    }

  def encode(
    self, images: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes whole images without masking.

    Args:
      images: ``[B, H, W, C]`` float32 normalized.
    Returns:
      ``tokens [B, 1+L, D]`` after the final norm and ``pooled [B, D]`` (mean of the patch
      tokens, cls excluded), float32.
    """
    tokens = self.encoder(images, mask_ratio=0.0, key=key, train=train)["tokens"]
    return tokens, jnp.mean(tokens[:, 1:], axis=1)


def build_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> ViCMAE:
  """Builds ``ViCMAE`` from a model config (see ``resolve_model_config``)."""
  c = resolve_model_config(cfg)
  return ViCMAE(
    patch_size=c["patch_size"],
    embed_dim=c["embed_dim"],
    depth=c["depth"],
    num_heads=c["num_heads"],
    decoder_embed_dim=c["decoder_embed_dim"],
    decoder_depth=c["decoder_depth"],
    decoder_num_heads=c["decoder_num_heads"],
    mlp_ratio=float(c["mlp_ratio"]),
    in_channels=c["in_channels"],
    projector_hidden_dim=c["projector_hidden_dim"],
    projector_out_dim=c["projector_out_dim"],
    drop_path_rate=float(c["drop_path_rate"]),
    dtype=_DTYPES[c["dtype"]],
    param_dtype=_DTYPES[c["param_dtype"]],
    remat=c["remat"],
    scan_layers=c["scan_layers"],
    attention_impl=None if c["attention_impl"] == "xla" else c["attention_impl"],
    rngs=rngs,
  )
