"""Classifiers on top of the pretrained ViT encoder: the fine-tuning model and the linear-probe head.

Shapes (channels last):
  images    [B, H, W, C]      float32, normalized with ``vit.normalize_images``
  clips     [B, T, H, W, C]   float32 normalized frames (the linear probe averages frame features)
  tokens    [B, 1 + L, D]     cls first, after the encoder's final LayerNorm
  features  [B, D]            pooled tokens: "mean" of the patch tokens or the "cls" token
  logits    [B, K]            float32

Two models:

* ``ImageClassifier`` (fine-tuning): the encoder with *learned* position embeddings
  ``pos_embed [1, 1 + L, D]`` (timm layout: a zero row for cls, then the patch grid row-major),
  initialized from the fixed 2-D sin-cos table the encoder was pretrained with, and a Linear head
  on the pooled tokens. Pooling "cls" (the default, as the official fine-tuning) takes the cls token
  after the encoder's final norm; no extra fc_norm. Parameter tree::

    encoder.*            exactly ``vit.VisionTransformer`` (so a ViC-MAE ``encoder.*`` subtree loads as is)
    pos_embed [1, 1+L, D]
    head.{kernel [D, K], bias [K]}   kernel ~ truncated N(0, head_init_std), official 2e-5

* ``LinearProbeHead`` (MAE linear-probe protocol): BatchNorm without affine (eps 1e-6) on frozen
  features, then a Linear layer (kernel ~ truncated N(0, 0.01), zero bias). Tree:
  ``bn.{mean, var}`` (nnx.BatchStat) and ``head.{kernel, bias}``.

``interpolate_pos_embed`` resizes a learned table to another grid with PyTorch's bicubic
(``align_corners=False``, a = -0.75), as the official code does when loading at another resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicmae_jax.models import layers, variants, vit

# Also reached through this module: the block-layout conversion of loaded trees and the pooling
# of the encoder's tokens.
from vicmae_jax.models.param_tree import match_block_layout  # noqa: F401
from vicmae_jax.models.vit import POOLS, pool_tokens


def _head(
  embed_dim: int, num_classes: int, init_std: float, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
) -> nnx.Linear:
  return nnx.Linear(
    embed_dim,
    num_classes,
    kernel_init=nnx.with_partitioning(
      nnx.initializers.truncated_normal(stddev=init_std), ("embed", "vocab"), eager_sharding=False
    ),
    bias_init=nnx.with_partitioning(
      nnx.initializers.zeros_init(), ("vocab",), eager_sharding=False
    ),
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


def encoder_dims(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The encoder fields of a ViC-MAE model config (``variants.resolve_model_config``)."""
  return variants.resolve_model_config(model_cfg)


def build_encoder(model_cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> vit.VisionTransformer:
  """The ViC-MAE image encoder alone (fixed sin-cos positions), for frozen features."""
  return vit.VisionTransformer(**variants.encoder_kwargs(encoder_dims(model_cfg)), rngs=rngs)


def encoder_features(
  encoder: vit.VisionTransformer, inputs: jax.Array, pool: str = "mean"
) -> jax.Array:
  """Frozen features of images ``[B, H, W, C]`` or clips ``[B, T, H, W, C]`` -> ``[B, D]`` float32.

  Clips: every frame goes through the image encoder (as one batch of B*T) and the frame
  features are averaged over T. ``pool="tokens"`` (the attentive probe's input) keeps the patch
  tokens instead: ``[B, L, D]``, for clips those of every frame in order, ``[B, T*L, D]``.
  """
  if inputs.ndim == 4:
    return _pool(encoder(inputs, mask_ratio=0.0)["tokens"], pool)
  if inputs.ndim == 5:
    batch, frames = inputs.shape[:2]
    flat = inputs.reshape(batch * frames, *inputs.shape[2:])
    per_frame = _pool(encoder(flat, mask_ratio=0.0)["tokens"], pool)
    if pool == "tokens":
      return per_frame.reshape(batch, -1, per_frame.shape[-1])
    return jnp.mean(per_frame.reshape(batch, frames, -1), axis=1)
  raise ValueError(
    f"inputs must be images [B, H, W, C] or clips [B, T, H, W, C], got shape {inputs.shape}"
  )


def _pool(tokens: jax.Array, pool: str) -> jax.Array:
  if pool == "tokens":
    return tokens[:, 1:].astype(jnp.float32)
  return pool_tokens(tokens, pool)


class ImageClassifier(nnx.Module):
  """ViT encoder with learned position embeddings and a Linear head (see module docstring).

  ``__call__(images [B, H, W, C], *, key=None, train=False) -> logits [B, K]``.
  """

  def __init__(
    self,
    encoder: vit.VisionTransformer,
    *,
    num_classes: int,
    image_size: int,
    pool: str = "cls",
    head_init_std: float = 2e-5,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    patch = encoder.patch_size
    if image_size <= 0 or image_size % patch:
      raise ValueError(
        f"image_size {image_size} is not a positive multiple of the patch size {patch}"
      )
    self.encoder = encoder
    self.pool = pool
    self.grid_size = image_size // patch
    table = vit.sincos_2d(encoder.embed_dim, self.grid_size, self.grid_size, cls_token=True)
    self.pos_embed = nnx.Param(
      jnp.asarray(table, param_dtype)[None],
      out_sharding=(None, None, "embed"),
      eager_sharding=False,
    )
    self.head = _head(
      encoder.embed_dim, num_classes, head_init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def position_table(self, grid: tuple[int, int]) -> jax.Array:
    """``[1 + gh*gw, D]`` float32; resized like ``interpolate_pos_embed`` when the input grid
    differs from the one the model was built for."""
    table = self.pos_embed[...][0].astype(jnp.float32)
    if grid == (self.grid_size, self.grid_size):
      return table
    patches = table[1:].reshape(self.grid_size, self.grid_size, -1)
    rows = jnp.asarray(bicubic_matrix(self.grid_size, grid[0]), jnp.float32)
    cols = jnp.asarray(bicubic_matrix(self.grid_size, grid[1]), jnp.float32)
    resized = jnp.einsum("oh,hwd,pw->opd", rows, patches, cols)
    return jnp.concatenate([table[:1], resized.reshape(grid[0] * grid[1], -1)], axis=0)

  def tokens(
    self, images: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, 1 + L, D]`` float32 after the final norm (no masking)."""
    encoder = self.encoder
    if images.ndim != 4 or images.shape[-1] != encoder.in_channels:
      raise ValueError(f"images must be [B, H, W, {encoder.in_channels}], got shape {images.shape}")
    grid = encoder.grid(images)
    table = self.position_table(grid)
    x = (
      encoder.patch_embed(vit.patchify(images, encoder.patch_size)).astype(jnp.float32) + table[1:]
    )
    cls = encoder.cls_tokens(images.shape[0]) + table[:1]
    return encoder.transform(jnp.concatenate([cls, x], axis=1), key=key, train=train)

  def features(
    self, images: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """Pooled ``[B, D]`` float32."""
    return pool_tokens(self.tokens(images, key=key, train=train), self.pool)

  def __call__(
    self, images: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    return self.head(self.features(images, key=key, train=train)).astype(jnp.float32)


def build_image_classifier(
  model_cfg: Mapping[str, Any],
  *,
  num_classes: int,
  image_size: int,
  pool: str = "cls",
  head_init_std: float = 2e-5,
  rngs: nnx.Rngs,
) -> ImageClassifier:
  """``ImageClassifier`` with the encoder of a ViC-MAE model config (variant, drop_path_rate, dtype...)."""
  c = encoder_dims(model_cfg)
  return ImageClassifier(
    build_encoder(model_cfg, rngs=rngs),
    num_classes=num_classes,
    image_size=image_size,
    pool=pool,
    head_init_std=head_init_std,
    dtype=variants.dtype(c),
    param_dtype=variants.dtype(c, "param_dtype"),
    rngs=rngs,
  )


class FeatureBatchNorm(nnx.Module):
  """BatchNorm1d without affine (PyTorch semantics). ``[B, D] -> [B, D]`` float32.

  Training normalizes with the biased batch statistics of the (global) batch and updates the
  running statistics ``r = (1 - momentum) r + momentum s`` with the unbiased variance; evaluation
  uses the running statistics.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-6):
    self.momentum = momentum
    self.epsilon = epsilon
    self.mean, self.var = layers.running_statistics(num_features, "embed")

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    if train:
      mean, var, unbiased = layers.batch_moments(x, "a batch of at least 2")
      self.mean[...] = (1 - self.momentum) * self.mean[...] + self.momentum * jax.lax.stop_gradient(
        mean
      )
      self.var[...] = (1 - self.momentum) * self.var[...] + self.momentum * unbiased
    else:
      mean, var = self.mean[...], self.var[...]
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon)


class LinearProbeHead(nnx.Module):
  """BatchNorm (no affine, eps 1e-6) + Linear. ``(features [B, D], train) -> logits [B, K]`` float32."""

  def __init__(self, embed_dim: int, num_classes: int, *, init_std: float = 0.01, rngs: nnx.Rngs):
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    self.bn = FeatureBatchNorm(embed_dim)
    self.head = _head(
      embed_dim, num_classes, init_std, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs
    )

  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    return self.head(self.bn(features, train=train)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def encoder_subtree(params: Mapping[str, Any]) -> dict[str, Any]:
  """The image-encoder part of a loaded params tree (nested dict).

  Accepts a ViC-MAE tree (``encoder.*``, plus decoder/projector), a classifier tree (``encoder.*``,
  ``pos_embed``, ``head``) or a bare encoder tree (``patch_embed``, ``blocks``, ...).
  Raises ValueError listing the top-level entries when neither form is present.
  """
  if "encoder" in params and isinstance(params["encoder"], Mapping):
    return dict(params["encoder"])
  if "patch_embed" in params:
    return {
      k: v for k, v in params.items() if k not in ("pos_embed", "head", "decoder", "projector")
    }
  raise ValueError(
    "the checkpoint holds no image encoder: expected an 'encoder' entry or encoder "
    f"parameters (patch_embed, blocks, ...); top-level entries: {sorted(params)}"
  )


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights ``[..., 4]`` for taps at offsets -1, 0, 1, 2 (PyTorch a = -0.75)."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out_size, in_size]`` resampling matrix of PyTorch ``interpolate(mode='bicubic',
  align_corners=False)`` along one axis (taps clamped at the borders, no antialiasing)."""
  scale = in_size / out_size
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  base = np.floor(src)
  weights = _cubic_weights(src - base)
  matrix = np.zeros((out_size, in_size), np.float64)
  for tap in range(4):
    index = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
  return matrix


def interpolate_pos_embed(
  table: np.ndarray, new_grid: tuple[int, int], num_extra_tokens: int = 1
) -> np.ndarray:
  """Resizes a learned position table to another patch grid (bicubic, PyTorch semantics).

  table: ``[1, E + g*g, D]`` or ``[E + g*g, D]`` with E = ``num_extra_tokens`` leading rows (cls)
  kept as they are and a square g x g grid after them. Returns the same layout for ``new_grid``.
  Raises ValueError when the rows after the extra tokens do not form a square grid.
  """
  table = np.asarray(table)
  batched = table.ndim == 3
  rows = table[0] if batched else table
  extra, grid_rows = rows[:num_extra_tokens], rows[num_extra_tokens:]
  size = int(round(np.sqrt(grid_rows.shape[0])))
  if size * size != grid_rows.shape[0]:
    raise ValueError(
      f"pos_embed has {grid_rows.shape[0]} grid rows after {num_extra_tokens} extra "
      "token(s), not a square grid"
    )
  if (size, size) == tuple(new_grid):
    return table
  grid = grid_rows.reshape(size, size, -1).astype(np.float64)
  resized = np.einsum(
    "oh,hwd,pw->opd", bicubic_matrix(size, new_grid[0]), grid, bicubic_matrix(size, new_grid[1])
  )
  out = np.concatenate(
    [extra.astype(np.float64), resized.reshape(new_grid[0] * new_grid[1], -1)], axis=0
  )
  out = out.astype(table.dtype)
  return out[None] if batched else out
