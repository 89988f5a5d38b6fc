"""Vision Transformer encoder in Flax NNX with the MAE / ViC-MAE conventions.

Shapes (channels last everywhere):
  images   [B, H, W, C]             float32, normalized with ``normalize_images``
  patches  [B, L, p*p*C]            L = (H/p)*(W/p), row-major over the patch grid, pixels in
                                    (row-in-patch, column-in-patch, channel) order like the
                                    official ``patchify`` ('nchpwq->nhwpqc')
  tokens   [B, 1 + K, D]            cls token first, then the K visible patch tokens
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

With ``scan_layers=True`` ``blocks`` is one Block whose arrays carry a leading ``[depth]`` axis
(logical name 'layers'); ``stack_layers`` / ``unstack_layers`` convert between the two layouts.
Position embeddings are fixed 2-D sin-cos tables computed for the input's grid (no parameter).

Numerics: parameters in ``param_dtype`` (float32); Dense layers compute in ``dtype`` (e.g.
bfloat16); LayerNorm, softmax, GELU and the residual stream stay in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicmae_jax import sharding

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

REMAT_POLICIES = ("none", "full", "dots")

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def normalize_images(x: Any) -> jax.Array:
  """uint8 (or 0..255 float) images ``[..., H, W, 3]`` -> float32 ``(x/255 - mean) / std``."""
  x = jnp.asarray(x, jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """``[..., H, W, C]`` -> ``[..., L, p*p*C]`` in the official (p, q, c) order.

  Raises:
    ValueError: when H or W is not divisible by ``patch_size``.
  """
  *lead, height, width, channels = images.shape
  p = patch_size
  if height % p or width % p:
    raise ValueError(f"image_size {height}x{width} is not divisible by patch_size {p}")
  gh, gw = height // p, width // p
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


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """Visible patches per sample: ``int(L * (1 - mask_ratio))`` exactly as the official code.

  Raises:
    ValueError: ``mask_ratio`` outside [0, 1) or leaving no visible patch.
  """
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  keep = int(num_patches * (1 - mask_ratio))
  if keep < 1:
    raise ValueError(f"mask_ratio={mask_ratio} keeps no patch out of {num_patches}")
  return keep


def random_masking(
  x: jax.Array, noise: jax.Array, len_keep: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-sample random masking by argsort of noise (small noise = kept).

  Args:
    x: ``[B, L, D]`` tokens.
    noise: ``[B, L]`` any real values (uniform in [0, 1) in training).
    len_keep: K, number of tokens to keep.
  Returns:
    ``x_kept [B, K, D]`` (in shuffled order), ``mask [B, L]`` float32 (1 = removed),
    ``ids_restore [B, L]`` int32.
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :len_keep]
  x_kept = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
  # A patch is removed exactly when its rank in the shuffle is >= K.
  mask = (ids_restore >= len_keep).astype(jnp.float32)
  return x_kept, mask, ids_restore


def _dense(
  in_features: int,
  out_features: int,
  axes: tuple[str | None, str | None],
  *,
  dtype: Any,
  param_dtype: Any,
  rngs: nnx.Rngs,
) -> nnx.Linear:
  """Dense with xavier-uniform kernel, zero bias and logical axis names (official init)."""
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=nnx.with_partitioning(_xavier, axes, eager_sharding=False),
    bias_init=nnx.with_partitioning(_zeros, (axes[1],), eager_sharding=False),
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_f32(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  return _layer_norm_f32_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_f32_fwd(x, scale, bias, epsilon):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centered = x - mean
  rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
  normed = centered * rstd
  return normed * scale + bias, (normed, rstd, scale)


def _layer_norm_f32_bwd(epsilon, residuals, dy):
  del epsilon
  normed, rstd, scale = residuals
  token_axes = tuple(range(dy.ndim - 1))
  d_scale = jnp.sum(dy * normed, axis=token_axes)
  d_bias = jnp.sum(dy, axis=token_axes)
  g = dy * scale
  d_x = rstd * (
    g - jnp.mean(g, axis=-1, keepdims=True) - normed * jnp.mean(g * normed, axis=-1, keepdims=True)
  )
  return d_x, d_scale, d_bias


_layer_norm_f32.defvjp(_layer_norm_f32_fwd, _layer_norm_f32_bwd)


class LayerNorm(nnx.LayerNorm):
  """LayerNorm over the last axis in float32: ``(x - mean) * rsqrt(var + eps) * scale + bias``.

  ``[..., D] -> [..., D]`` float32. Two-pass (biased) variance like PyTorch. The gradient is
  written out by hand (the usual closed form ``rstd * (g - mean(g) - x_hat * mean(g * x_hat))``,
  ``g = dy * scale``): the autodiff gradient of flax's formula is a longer chain of elementwise
  ops around a full ``[N, D]`` product ``rstd * scale``, which XLA:CPU fuses into several
  consumers and computes again in each. Parameters and names are those of ``nnx.LayerNorm``.
  """

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    if mask is not None or self.scale is None or self.bias is None or self.reduction_axes != -1:
      return super().__call__(x, mask=mask)
    return _layer_norm_f32(
      x.astype(jnp.float32),
      self.scale[...].astype(jnp.float32),
      self.bias[...].astype(jnp.float32),
      float(self.epsilon),
    )


def layer_norm(dim: int, *, param_dtype: Any, rngs: nnx.Rngs) -> LayerNorm:
  """LayerNorm(eps=1e-6) computed in float32 with a two-pass variance like PyTorch."""
  return LayerNorm(
    dim,
    epsilon=1e-6,
    dtype=jnp.float32,
    param_dtype=param_dtype,
    use_fast_variance=False,
    scale_init=nnx.with_partitioning(_ones, ("norm",), eager_sharding=False),
    bias_init=nnx.with_partitioning(_zeros, ("norm",), eager_sharding=False),
    rngs=rngs,
  )


def token_param(
  shape: Sequence[int], axes: tuple, *, param_dtype: Any, rngs: nnx.Rngs
) -> nnx.Param:
  """A learned token (cls / mask) initialized N(0, 0.02) like the official code."""
  value = 0.02 * jax.random.normal(rngs.params(), tuple(shape), param_dtype)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def drop_path(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
  """Stochastic depth on a residual branch ``[B, ...]``: drops whole samples, rescales the rest."""
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  keep_mask = jax.random.uniform(key, shape) < keep
  return jnp.where(keep_mask, x / jnp.maximum(keep, 1e-12).astype(x.dtype), jnp.zeros_like(x))


def gelu_erf(x: jax.Array) -> jax.Array:
  """Exact GELU ``0.5 * x * (1 + erf(x / sqrt(2)))`` in float32 (PyTorch's ``nn.GELU()``).

  Same function as ``jax.nn.gelu(approximate=False)``, which goes through ``erfc``; XLA:CPU
  expands ``erfc`` into a branchy polynomial about twice as dear as its ``erf``.
  """
  x = x.astype(jnp.float32)
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(2**-0.5)))


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
  """Softmax attention on heads-major inputs ``[B, H, N, hd]`` -> ``[B, H, N, hd]``.

  Logits and softmax in float32 (the compute dtype's matmuls accumulate in float32); the
  probabilities are cast back to the dtype of ``v`` for the second matmul, as
  ``jax.nn.dot_product_attention``'s XLA path does.
  """
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits * np.float32(scale), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", probs, v)


# cuDNN's fused attention works on tiles of 64 tokens. A masked ViT's sequence (1 + kept patches, 99
# tokens at mask 0.5 on 224 px) is padded up to a multiple of it, the padding masked out by length.
CUDNN_SEQUENCE_MULTIPLE = 64


def padded_dot_product_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  scale: float,
  implementation: str | None,
  multiple: int = CUDNN_SEQUENCE_MULTIPLE,
) -> jax.Array:
  """``jax.nn.dot_product_attention`` on ``[B, N, H, hd]`` with N padded to a multiple of ``multiple``.

  Padded keys are excluded by ``key_value_seq_lengths`` (each row's true length N), padded query rows
  are dropped from the output, so the result equals attention over the N real tokens.
  """
  batch, length = q.shape[:2]
  padded = -(-length // multiple) * multiple
  if padded == length:
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation)
  widths = ((0, 0), (0, padded - length), (0, 0), (0, 0))
  q, k, v = (jnp.pad(t, widths) for t in (q, k, v))
  lengths = jnp.full((batch,), length, jnp.int32)
  out = jax.nn.dot_product_attention(
    q,
    k,
    v,
    scale=scale,
    implementation=implementation,
    query_seq_lengths=lengths,
    key_value_seq_lengths=lengths,
  )
  return out[:, :length]


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv Dense (bias) and scale ``head_dim**-0.5``.

  ``[B, N, D] -> [B, N, D]`` (output in the compute dtype).
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    attention_impl: str | None = None,
    rngs: nnx.Rngs,
  ):
    if dim % num_heads:
      raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
    if attention_impl == "cudnn" and jax.default_backend() != "gpu":
      raise ValueError(
        f"model.attention_impl='cudnn' needs a GPU backend (cuDNN); this process runs on "
        f"{jax.default_backend()!r}: leave attention_impl unset there"
      )
    self.num_heads = num_heads
    self.attention_impl = attention_impl
    self.qkv = _dense(
      dim, 3 * dim, ("embed", "heads"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.proj = _dense(
      dim, dim, ("heads", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, dim = x.shape
    return self.attend_tokens(x.reshape(batch * length, dim), batch, length).reshape(
      batch, length, dim
    )

  def attend_tokens(self, x: jax.Array, batch: int, length: int) -> jax.Array:
    """Token-major form: ``x [B*N, D]`` (sample b's tokens in rows b*N .. b*N+N-1) -> ``[B*N, D]``."""
    dim = x.shape[-1]
    head_dim = dim // self.num_heads
    qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, head_dim)
    if self.attention_impl in (None, "xla"):
      # One transpose to heads-major [3, B, H, N, hd] so both attention matmuls batch over
      # leading (B, H) axes.
      q, k, v = jnp.transpose(qkv, (2, 0, 3, 1, 4))
      out = multi_head_attention(q, k, v, head_dim**-0.5)
      out = jnp.transpose(out, (0, 2, 1, 3))  # [B, N, H, hd]
    else:
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      out = padded_dot_product_attention(
        q, k, v, scale=head_dim**-0.5, implementation=self.attention_impl
      )
    return self.proj(out.reshape(batch * length, dim))


class Mlp(nnx.Module):
  """fc1 -> exact (erf) GELU in float32 -> fc2. ``[..., D] -> [..., D]``."""

  def __init__(self, dim: int, hidden: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.fc1 = _dense(
      dim, hidden, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.fc2 = _dense(
      hidden, dim, ("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.fc1(x)
    return self.fc2(gelu_erf(h).astype(h.dtype))


class Block(nnx.Module):
  """Pre-norm transformer block (timm ``Block``): x + attn(norm1(x)); x + mlp(norm2(x)).

  ``[B, N, D]`` float32 residual stream in and out.
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    attention_impl: str | None = None,
    rngs: nnx.Rngs,
  ):
    self.norm1 = layer_norm(dim, param_dtype=param_dtype, rngs=rngs)
    self.attn = Attention(
      dim, num_heads, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl, rngs=rngs
    )
    self.norm2 = layer_norm(dim, param_dtype=param_dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(
    self, x: jax.Array, drop_path_rate: jax.Array | None = None, key: jax.Array | None = None
  ) -> jax.Array:
    batch, length, dim = x.shape
    # The residual stream stays token-major [B*N, D] inside the block, so every Dense reads
    # and its gradient is written as one matrix: with a reshape between the residual adds and
    # the matmuls XLA:CPU instead re-derives each residual gradient from all later blocks.
    h = x.reshape(batch * length, dim)
    attn_key, mlp_key = jax.random.split(key) if key is not None else (None, None)

    def residual(h: jax.Array, branch: jax.Array, branch_key: jax.Array | None) -> jax.Array:
      branch = branch.astype(jnp.float32)
      if branch_key is not None:
        branch = drop_path(branch.reshape(batch, length, dim), drop_path_rate, branch_key)
        branch = branch.reshape(batch * length, dim)
      return h + branch

    h = residual(h, self.attn.attend_tokens(self.norm1(h), batch, length), attn_key)
    h = residual(h, self.mlp(self.norm2(h)), mlp_key)
    return h.reshape(batch, length, dim)


def make_blocks(
  depth: int, make_block: Callable[[nnx.Rngs], Block], rngs: nnx.Rngs, *, scan_layers: bool
):
  """``depth`` blocks: an ``nnx.List`` of Blocks, or one Block of stacked ``[depth, ...]`` arrays."""
  if not scan_layers:
    return nnx.List([make_block(rngs) for _ in range(depth)])

  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(layer_rngs: nnx.Rngs) -> Block:
    return make_block(layer_rngs)

  return create(rngs)


def remat_policy(remat: str):
  """Maps the config value to a ``jax.checkpoint`` policy (None = save nothing).

  Raises:
    ValueError: naming ``remat`` for an unknown value.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
  if remat == "dots":
    # Keep weight matmul outputs, recompute attention and elementwise ops.
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return None


def apply_blocks(
  blocks: Any,
  x: jax.Array,
  *,
  scan_layers: bool,
  remat: str = "none",
  drop_path_rates: np.ndarray | None = None,
  key: jax.Array | None = None,
) -> jax.Array:
  """Runs ``x [B, N, D]`` through the blocks (a list or a stacked Block).

  Args:
    drop_path_rates: ``[depth]`` per-layer stochastic-depth rates; used only with ``key``.
    key: PRNG key for stochastic depth (None = deterministic).
  """
  policy = remat_policy(remat)
  depth = _depth(blocks, scan_layers)
  use_drop = key is not None and drop_path_rates is not None and float(np.max(drop_path_rates)) > 0
  rates = jnp.asarray(drop_path_rates, jnp.float32) if use_drop else None
  keys = jax.random.split(key, depth) if use_drop else None

  def layer(block: Block, h: jax.Array, rate, layer_key) -> jax.Array:
    return block(h, rate, layer_key)

  if remat != "none":
    layer = nnx.remat(layer, policy=policy, prevent_cse=not scan_layers)

  if scan_layers:

    @nnx.scan(in_axes=(0, nnx.Carry, 0, 0), out_axes=nnx.Carry)
    def run(block, h, rate, layer_key):
      return layer(block, h, rate, layer_key)

    return run(blocks, x, rates, keys)

  for i, block in enumerate(blocks):
    x = layer(block, x, None if rates is None else rates[i], None if keys is None else keys[i])
  return x


def _depth(blocks: Any, scan_layers: bool) -> int:
  if scan_layers:
    return int(blocks.norm1.scale[...].shape[0])
  return len(blocks)


def stack_layers(layers: dict) -> dict:
  """``{0: tree, 1: tree, ...}`` (pure dict of one list of blocks) -> one tree of stacked arrays."""
  ordered = [layers[i] for i in sorted(layers, key=int)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *ordered)


def unstack_layers(stacked: dict) -> dict:
  """Inverse of ``stack_layers``: a tree of ``[depth, ...]`` arrays -> ``{0: tree, 1: tree, ...}``."""
  depth = jax.tree.leaves(stacked)[0].shape[0]
  return {i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)}


def stack_blocks_in_tree(tree: Any) -> Any:
  """Converts every ``blocks: {0: .., 1: ..}`` in a nested pure dict to the scanned layout."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for name, sub in tree.items():
    if name == "blocks" and isinstance(sub, dict) and sub and all(isinstance(k, int) for k in sub):
      out[name] = stack_layers(sub)
    else:
      out[name] = stack_blocks_in_tree(sub)
  return out


def unstack_blocks_in_tree(tree: Any) -> Any:
  """Inverse of ``stack_blocks_in_tree``: scanned ``blocks`` arrays -> ``{0: .., 1: ..}``."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for name, sub in tree.items():
    if (
      name == "blocks"
      and isinstance(sub, dict)
      and sub
      and not any(isinstance(k, int) for k in sub)
    ):
      out[name] = unstack_layers(sub)
    else:
      out[name] = unstack_blocks_in_tree(sub)
  return out


class VisionTransformer(nnx.Module):
  """ViT encoder: patch Dense + fixed sin-cos positions, cls token, random masking, blocks, LayerNorm.

  ``__call__(images [B, H, W, C], ...) -> dict(tokens [B, 1+K, D] f32, mask [B, L], ids_restore [B, L])``.
  """

  def __init__(
    self,
    *,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    in_channels: int = 3,
    drop_path_rate: float = 0.0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    remat: str = "none",
    scan_layers: bool = False,
    attention_impl: str | None = None,
    rngs: nnx.Rngs,
  ):
    remat_policy(remat)  # validates the value early
    self.patch_size = patch_size
    self.embed_dim = embed_dim
    self.in_channels = in_channels
    self.remat = remat
    self.scan_layers = scan_layers
    # timm: stochastic depth grows linearly from 0 to drop_path_rate over the blocks.
    self.drop_path_rates = tuple(float(r) for r in np.linspace(0.0, drop_path_rate, depth))
    self.patch_embed = _dense(
      patch_size * patch_size * in_channels,
      embed_dim,
      ("patch", "embed"),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.cls_token = token_param(
      (1, 1, embed_dim), (None, None, "embed"), param_dtype=param_dtype, rngs=rngs
    )
    self.blocks = make_blocks(
      depth,
      lambda r: Block(
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
    self.norm = layer_norm(embed_dim, param_dtype=param_dtype, rngs=rngs)

  def grid(self, images: jax.Array) -> tuple[int, int]:
    """Patch grid (rows, cols) of ``images [..., H, W, C]``."""
    height, width = images.shape[-3], images.shape[-2]
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"image_size {height}x{width} is not divisible by patch_size {p}")
    return height // p, width // p

  def embed_patches(self, images: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` -> patch tokens with position embeddings ``[B, L, D]`` float32 (no cls)."""
    if images.shape[-1] != self.in_channels:
      raise ValueError(
        f"images must have {self.in_channels} channels (last axis), got shape {images.shape}"
      )
    gh, gw = self.grid(images)
    x = self.patch_embed(patchify(images, self.patch_size)).astype(jnp.float32)
    return x + jnp.asarray(sincos_2d(self.embed_dim, gh, gw, cls_token=False))

  def cls_tokens(self, batch: int) -> jax.Array:
    """``[B, 1, D]`` float32; the cls position embedding is the zero row, so it adds nothing."""
    return jnp.broadcast_to(self.cls_token[...].astype(jnp.float32), (batch, 1, self.embed_dim))

  def transform(
    self, x: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """Blocks + final LayerNorm on any token sequence ``[B, N, D]`` -> ``[B, N, D]`` float32."""
    x = sharding.constrain(x, ("batch", None, None))
    x = apply_blocks(
      self.blocks,
      x,
      scan_layers=self.scan_layers,
      remat=self.remat,
      drop_path_rates=np.asarray(self.drop_path_rates) if train else None,
      key=key if train else None,
    )
    return self.norm(x)

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
      ``tokens [B, 1+K, D]`` float32 after the final norm, ``mask [B, L]`` float32 (1 = removed),
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
      x, mask, ids_restore = random_masking(x, noise, len_keep)
    else:
      mask = jnp.zeros((batch, length), jnp.float32)
      ids_restore = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    x = jnp.concatenate([self.cls_tokens(batch), x], axis=1)
    tokens = self.transform(x, key=drop_key, train=train)
    return {"tokens": tokens, "mask": mask, "ids_restore": ids_restore}
