"""ViC-MAE: a ViT encoder shared by two views, an MAE pixel decoder and a contrastive projector.

Shapes:
  images   [B, V, H, W, C]  float32 normalized, V = 2 views (both views go through the encoder in
                            one call as a batch of B*V, sample-major: row b*V + v)
  pred     [B, V, L, p*p*C] float32 predicted pixels of every patch (cls dropped), official
                            (p, q, c) patch order
  mask     [B, V, L]        float32, 1 = removed
  pooled   [B, V, D]        float32 mean of the visible patch tokens after the final norm (no cls;
                            the cls token instead with contrast_pool="cls", an ablation)
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
from vicmae_jax.models import block_stack, layers, variants, vit

# The model config's resolution, also reached as vicmae.resolve_model_config.
from vicmae_jax.models.variants import resolve_model_config


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
    self.mean, self.var = layers.running_statistics(num_features, "mlp")

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    if train:
      mean, var, unbiased = layers.batch_moments(x, "batch_size >= 2 per view")  # [V, F] each
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


class MAEDecoder(block_stack.BlockStackModule):
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
    settings: block_stack.StackSettings,
    rngs: nnx.Rngs,
  ):
    self.embed_dim = embed_dim
    self.activation_dtype = settings.activation_dtype
    self.token_gather = settings.token_gather
    dtype, param_dtype = settings.dtype, settings.param_dtype
    self.embed = layers.dense(
      in_dim, embed_dim, ("embed", None), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.mask_token = layers.token_param(
      (1, 1, embed_dim), (None, None, "embed"), param_dtype=param_dtype, rngs=rngs
    )
    self.init_stack(
      depth,
      embed_dim,
      num_heads,
      mlp_ratio,
      settings=settings,
      rngs=rngs,
    )
    self.pred = layers.dense(
      embed_dim, patch_dim, ("embed", "patch"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(self, tokens: jax.Array, ids_restore: jax.Array, grid: tuple[int, int]) -> jax.Array:
    act = self.activation_dtype
    x = self.embed(tokens).astype(act)
    batch, length = ids_restore.shape
    num_masked = length + 1 - x.shape[1]
    mask_tokens = jnp.broadcast_to(
      self.mask_token[...].astype(act), (batch, num_masked, self.embed_dim)
    )
    if self.token_gather == "one_hot":
      # Kept token k goes where ids_restore == k; removed patches (ids >= K) get the mask token.
      patches = vit.gather_tokens(x[:, 1:], ids_restore, "one_hot")
      removed = (ids_restore >= x.shape[1] - 1)[:, :, None]
      patches = jnp.where(removed, self.mask_token[...].astype(act), patches)
    else:
      patches = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
      patches = jnp.take_along_axis(patches, ids_restore[:, :, None], axis=1)
    x = jnp.concatenate([x[:, :1], patches], axis=1).astype(jnp.float32)
    x = x + jnp.asarray(vit.sincos_2d(self.embed_dim, grid[0], grid[1], cls_token=True))
    x = x.astype(act)
    x = self.run_stack(x)
    x = self.pred(x).astype(jnp.float32)
    return x[:, 1:]


class ViCMAE(nnx.Module):
  """Encoder + decoder + projector; returns everything the losses need (see module docstring)."""

  def __init__(
    self,
    dims: block_stack.EncoderDims,
    *,
    decoder_embed_dim: int,
    decoder_depth: int,
    decoder_num_heads: int,
    projector_hidden_dim: int = 4096,
    projector_out_dim: int = 128,
    drop_path_rate: float = 0.0,
    contrast_pool: str = "mean",
    settings: block_stack.StackSettings = block_stack.StackSettings(),
    rngs: nnx.Rngs,
  ):
    self.patch_size = dims.patch_size
    self.in_channels = dims.in_channels
    self.contrast_pool = contrast_pool
    # Both stacks compute alike (dtypes, rematerialization, scan, attention kernel, token gather).
    stack = dict(settings=settings, rngs=rngs)
    self.encoder = vit.VisionTransformer(dims, drop_path_rate=drop_path_rate, **stack)
    self.decoder = MAEDecoder(
      in_dim=dims.embed_dim,
      embed_dim=decoder_embed_dim,
      depth=decoder_depth,
      num_heads=decoder_num_heads,
      patch_dim=dims.patch_dim,
      mlp_ratio=dims.mlp_ratio,
      **stack,
    )
    self.projector = Projector(
      dims.embed_dim,
      projector_hidden_dim,
      projector_out_dim,
      dtype=settings.dtype,
      param_dtype=settings.param_dtype,
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
    pooled = vit.pool_tokens(tokens, self.contrast_pool).reshape(batch, views, -1)
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
    return tokens, vit.mean_patch_tokens(tokens)


# ViCMAE's own fields next to the encoder's (variants.encoder_kwargs).
_HEAD_FIELDS = (
  "decoder_embed_dim",
  "decoder_depth",
  "decoder_num_heads",
  "projector_hidden_dim",
  "projector_out_dim",
  "contrast_pool",
)


def build_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> ViCMAE:
  """Builds ``ViCMAE`` from a model config (see ``variants.resolve_model_config``)."""
  c = resolve_model_config(cfg)
  return ViCMAE(
    **variants.encoder_kwargs(c),
    **{field: c[field] for field in _HEAD_FIELDS},
    rngs=rngs,
  )
