"""The ViT encoder with masking (Flax NNX, MAE / ViC-MAE conventions): images to patches, fixed
sin-cos positions, per-sample random masking, and ``VisionTransformer`` itself.

Shapes (channels last everywhere):
  images   [B, H, W, C]             float32, normalized with ``normalize_images``
  patches  [B, L, p*p*C]            L = (H/p)*(W/p), row-major over the patch grid, pixels in
                                    (row-in-patch, column-in-patch, channel) order like the
                                    official ``patchify`` ('nchpwq->nhwpqc')
  tokens   [B, 1 + K, D]            cls token first, then the K visible patch tokens, in the
                                    model's ``activation_dtype`` (float32 by default)
  mask     [B, L]                   float32, 1 = removed, 0 = visible (official convention)
  ids_restore [B, L]                int32, ``take_along_axis(shuffled, ids_restore)`` un-shuffles

Parameter tree of ``VisionTransformer`` (names follow timm where possible)::

  patch_embed.{kernel [p*p*C, D], bias [D]}     the patch projection as a flattened Dense
  cls_token [1, 1, D]
  blocks[i].norm1.{scale, bias} [D]
  blocks[i].attn.qkv.{kernel [D, 3D], bias [3D]} output order (q|k|v, head, head_dim)
  blocks[i].attn.proj.{kernel [D, D], bias [D]}
  blocks[i].norm2.{scale, bias} [D]
  blocks[i].mlp.fc1.{kernel [D, F], bias [F]}
  blocks[i].mlp.fc2.{kernel [F, D], bias [D]}
  norm.{scale, bias} [D]

The blocks and their layouts (a list, or with ``scan_layers=True`` one Block of stacked
``[depth, ...]`` arrays) are those of ``block_stack``. Position embeddings are fixed 2-D sin-cos
tables computed for the input's grid (no parameter).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicmae_jax.flops import num_kept  # noqa: F401  (the masking rule, shared)
from vicmae_jax.models import block_stack, layers

# Names of the layers and block stacks that callers reach through this module.
from vicmae_jax.models.block_stack import stack_blocks_in_tree, unstack_blocks_in_tree  # noqa: F401
from vicmae_jax.models.layers import (  # noqa: F401
  CUDNN_SEQUENCE_MULTIPLE,
  multi_head_attention,
  padded_dot_product_attention,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(x: Any) -> jax.Array:
  """uint8 (or 0..255 float) images ``[..., H, W, 3]`` -> float32 ``(x/255 - mean) / std``."""
  x = jnp.asarray(x, jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def patch_grid(images: jax.Array, patch_size: int) -> tuple[int, int]:
  """Patch grid (rows, cols) of ``images [..., H, W, C]``.

  Raises:
    ValueError: when H or W is not divisible by ``patch_size``.
  """
  height, width = images.shape[-3], images.shape[-2]
  p = patch_size
  if height % p or width % p:
    raise ValueError(f"image_size {height}x{width} is not divisible by patch_size {p}")
  return height // p, width // p


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """``[..., H, W, C]`` -> ``[..., L, p*p*C]`` in the official (p, q, c) order.

  Raises:
    ValueError: when H or W is not divisible by ``patch_size``.
  """
  *lead, _, _, channels = images.shape
  p = patch_size
  gh, gw = patch_grid(images, p)
  # Each patch row (p pixels x C channels) is contiguous in the image, so only the row-in-patch
  # and patch-column axes swap: a 4-D transpose instead of a 6-D one with a 3-wide inner axis.
  x = images.reshape(*lead, gh, p, gw, p * channels)
  n = len(lead)
  x = jnp.swapaxes(x, n + 1, n + 2)  # [..., gh, gw, p, p*C]
  return x.reshape(*lead, gh * gw, p * p * channels)


def unpatchify(x: jax.Array, patch_size: int, h: int, w: int, channels: int = 3) -> jax.Array:
  """``[..., L, p*p*C]`` -> ``[..., h*p, w*p, C]``; ``h``, ``w`` are the grid size in patches.

  Raises:
    ValueError: when ``h * w != L`` or the last axis is not ``p*p*C``.
  """
  *lead, length, dim = x.shape
  p = patch_size
  if h * w != length:
    raise ValueError(f"unpatchify: grid {h}x{w} (in patches) does not match L={length}")
  if dim != p * p * channels:
    raise ValueError(
      f"unpatchify: last axis {dim} != patch_size**2 * channels = {p * p * channels}"
    )
  n = len(lead)
  x = x.reshape(*lead, h, w, p, p, channels)
  x = jnp.moveaxis(x, n + 2, n + 1)  # [..., h, p, w, p, C]
  return x.reshape(*lead, h * p, w * p, channels)


def _sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000**omega
  angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


@functools.lru_cache(maxsize=64)
def _sincos_2d_cached(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool) -> np.ndarray:
  if embed_dim % 4:
    raise ValueError(f"sin-cos position embeddings need embed_dim divisible by 4, got {embed_dim}")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  # Official layout: the first half of the channels encodes the column (w), the second the row (h).
  emb = np.concatenate([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
  emb = emb.astype(np.float32)
  emb.setflags(write=False)
  return emb


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings ``[(1 +) grid_h*grid_w, embed_dim]`` float32.

  Same values as the official ``get_2d_sincos_pos_embed`` for square grids (row-major patch
  order, zero row first for the cls token when ``cls_token``), extended to any grid_h x grid_w.
  """
  return _sincos_2d_cached(int(embed_dim), int(grid_h), int(grid_w), bool(cls_token))


def patch_embedding(
  patch_dim: int, embed_dim: int, *, use_cls: bool, dtype: Any, param_dtype: Any, rngs: nnx.Rngs
) -> tuple[nnx.Linear, nnx.Param | None]:
  """An encoder's ``patch_embed`` (a Dense ``[patch_dim, D]``, axes 'patch' x 'embed') and, with
  ``use_cls``, its ``cls_token [1, 1, D]`` (None without), initialized from ``rngs`` in that order."""
  embed = layers.dense(
    patch_dim, embed_dim, ("patch", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
  )
  if not use_cls:
    return embed, None
  token = layers.token_param(
    (1, 1, embed_dim), (None, None, "embed"), param_dtype=param_dtype, rngs=rngs
  )
  return embed, token


POOLS = ("mean", "cls")


def mean_patch_tokens(tokens: jax.Array, num_cls: int = 1) -> jax.Array:
  """``[B, num_cls + L, D]`` -> ``[B, D]`` float32: the mean of the patch tokens (the leading
  ``num_cls`` cls tokens excluded)."""
  return jnp.mean(tokens[:, num_cls:].astype(jnp.float32), axis=1)


def pool_tokens(tokens: jax.Array, pool: str) -> jax.Array:
  """``[B, 1 + L, D]`` -> ``[B, D]`` float32: the mean of the patch tokens (cls excluded, "mean")
  or the cls token ("cls")."""
  if pool == "mean":
    return mean_patch_tokens(tokens)
  if pool == "cls":
    return tokens[:, 0].astype(jnp.float32)
  raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


TOKEN_GATHERS = ("take", "one_hot")


def gather_tokens(x: jax.Array, ids: jax.Array, how: str = "take") -> jax.Array:
  """``x [B, L, D]``, ``ids [B, M]`` -> ``[B, M, D]`` with row m = ``x[:, ids[:, m]]``; an id
  outside [0, L) gives a zero row with "one_hot" (take_along_axis clamps it).

  "take": a gather (its gradient a scatter-add). "one_hot": a batched matmul with the 0/1 matrix
  ``ids[..., None] == arange(L)`` (its gradient two matmuls, no scatter; exact, as each output is
  one input times 1, the float32 form at the highest matmul precision so no TF32 rounding).
  """
  if how == "take":
    return jnp.take_along_axis(x, ids[:, :, None], axis=1)
  if how != "one_hot":
    raise ValueError(f"token_gather must be one of {TOKEN_GATHERS}, got {how!r}")
  select = (ids[:, :, None] == jnp.arange(x.shape[1], dtype=ids.dtype)).astype(x.dtype)
  return jnp.einsum(
    "bml,bld->bmd",
    select,
    x,
    precision=jax.lax.Precision.HIGHEST,
    preferred_element_type=jnp.float32,
  ).astype(x.dtype)


def random_masking(
  x: jax.Array, noise: jax.Array, len_keep: int, gather: str = "take"
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-sample random masking by argsort of noise (small noise = kept).

  Args:
    x: ``[B, L, D]`` tokens.
    noise: ``[B, L]`` any real values (uniform in [0, 1) in training).
    len_keep: K, number of tokens to keep.
    gather: how the kept tokens are picked (``gather_tokens``).
  Returns:
    ``x_kept [B, K, D]`` (in shuffled order), ``mask [B, L]`` float32 (1 = removed),
    ``ids_restore [B, L]`` int32.
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :len_keep]
  x_kept = gather_tokens(x, ids_keep, gather)
  # A patch is removed exactly when its rank in the shuffle is >= K.
  mask = (ids_restore >= len_keep).astype(jnp.float32)
  return x_kept, mask, ids_restore


class VisionTransformer(block_stack.BlockStackModule):
  """ViT encoder: patch Dense + fixed sin-cos positions, cls token, random masking, blocks, LayerNorm.

  ``__call__(images [B, H, W, C], ...) -> dict(tokens [B, 1+K, D], mask [B, L], ids_restore [B, L])``.
  """

  def __init__(
    self,
    dims: block_stack.EncoderDims,
    *,
    drop_path_rate: float = 0.0,
    settings: block_stack.StackSettings = block_stack.StackSettings(),
    rngs: nnx.Rngs,
  ):
    self.activation_dtype = settings.activation_dtype
    self.token_gather = settings.token_gather
    self.dims = dims
    self.patch_size, self.embed_dim, self.in_channels = (
      dims.patch_size,
      dims.embed_dim,
      dims.in_channels,
    )
    self.patch_embed, self.cls_token = patch_embedding(
      dims.patch_dim,
      dims.embed_dim,
      use_cls=True,
      dtype=settings.dtype,
      param_dtype=settings.param_dtype,
      rngs=rngs,
    )
    self.init_stack(
      dims.depth,
      dims.embed_dim,
      dims.num_heads,
      dims.mlp_ratio,
      drop_path_rate=drop_path_rate,
      settings=settings,
      rngs=rngs,
    )

  def grid(self, images: jax.Array) -> tuple[int, int]:
    """Patch grid (rows, cols) of ``images [..., H, W, C]``."""
    return patch_grid(images, self.patch_size)

  def embed_patches(self, images: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` -> patch tokens with position embeddings ``[B, L, D]`` (no cls), in the
    activation dtype (the sum taken in float32)."""
    if images.shape[-1] != self.in_channels:
      raise ValueError(
        f"images must have {self.in_channels} channels (last axis), got shape {images.shape}"
      )
    gh, gw = self.grid(images)
    x = self.patch_embed(patchify(images, self.patch_size)).astype(jnp.float32)
    x = x + jnp.asarray(sincos_2d(self.embed_dim, gh, gw, cls_token=False))
    return x.astype(self.activation_dtype)

  def cls_tokens(self, batch: int) -> jax.Array:
    """``[B, 1, D]`` in the activation dtype; the cls position embedding is the zero row, so it
    adds nothing."""
    token = self.cls_token[...].astype(self.activation_dtype)
    return jnp.broadcast_to(token, (batch, 1, self.embed_dim))

  def transform(
    self, x: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """Blocks + final LayerNorm on any token sequence ``[B, N, D]`` -> ``[B, N, D]`` (activation
    dtype)."""
    return self.run_stack(x, key=key, train=train)

  def __call__(
    self,
    images: jax.Array,
    *,
    mask_ratio: float = 0.0,
    noise: jax.Array | None = None,
    key: jax.Array | None = None,
    train: bool = False,
  ) -> dict[str, jax.Array]:
    """Encodes the visible patches of ``images [B, H, W, C]``.

    Args:
      mask_ratio: fraction of patches removed (static Python float); 0 keeps all, in order.
      noise: ``[B, L]`` argsort noise; drawn from ``key`` when None and masking.
      key: PRNG key for masking noise and stochastic depth (``train`` only).
    Returns:
      ``tokens [B, 1+K, D]`` after the final norm (activation dtype), ``mask [B, L]`` float32 (1 = removed),
      ``ids_restore [B, L]`` int32.
    """
    x = self.embed_patches(images)
    batch, length, _ = x.shape
    len_keep = num_kept(length, mask_ratio)
    mask_key, drop_key = jax.random.split(key) if key is not None else (None, None)
    if len_keep < length:
      if noise is None:
        if mask_key is None:
          raise ValueError("masking needs `noise` or a PRNG `key`")
        noise = jax.random.uniform(mask_key, (batch, length))
      elif noise.shape != (batch, length):
        raise ValueError(f"noise must have shape {(batch, length)}, got {noise.shape}")
      x, mask, ids_restore = random_masking(x, noise, len_keep, self.token_gather)
    else:
      mask = jnp.zeros((batch, length), jnp.float32)
      ids_restore = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    x = jnp.concatenate([self.cls_tokens(batch), x], axis=1)
    tokens = self.transform(x, key=drop_key, train=train)
    return {"tokens": tokens, "mask": mask, "ids_restore": ids_restore}
