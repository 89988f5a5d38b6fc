"""The transformer layers of the ViT encoder and the MAE decoder: Dense, LayerNorm, attention,
MLP, stochastic depth, and the pre-norm ``Block`` built from them.

Shapes (channels last, token-major):
  x        [B, N, D]      residual stream between blocks, in ``activation_dtype`` (float32 by default)
  q, k, v  [B, H, N, hd]  heads-major (``multi_head_attention``) or [B, N, H, hd] (the cuDNN path)

Parameter tree of one ``Block`` (names follow timm)::

  norm1.{scale, bias} [D]
  attn.qkv.{kernel [D, 3D], bias [3D]}   output order (q|k|v, head, head_dim)
  attn.proj.{kernel [D, D], bias [D]}
  norm2.{scale, bias} [D]
  mlp.fc1.{kernel [D, F], bias [F]}
  mlp.fc2.{kernel [F, D], bias [D]}

Stacks of Blocks (list or scanned layout, remat) are ``block_stack``'s.

Numerics: parameters in ``param_dtype`` (float32); Dense layers compute in ``dtype`` (e.g.
bfloat16); LayerNorm statistics, softmax and GELU are computed in float32. The residual stream and
the activations saved for the backward pass (LayerNorm outputs, attention probabilities) are kept
in ``activation_dtype``: float32 by default (every op then as before), bfloat16 to halve the bytes
each block reads, writes and keeps (the sums into the stream are taken in float32, then rounded).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def dense(
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
  # Statistics in float32 whatever x's dtype; the output and the saved normalized input in x's.
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  centered = x32 - mean
  rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
  normed = centered * rstd
  out = (normed * scale + bias).astype(x.dtype)
  return out, (normed.astype(x.dtype), rstd, scale)


def _layer_norm_f32_bwd(epsilon, residuals, dy):
  del epsilon
  normed, rstd, scale = residuals
  out_dtype = normed.dtype
  normed = normed.astype(jnp.float32)
  dy = dy.astype(jnp.float32)
  token_axes = tuple(range(dy.ndim - 1))
  d_scale = jnp.sum(dy * normed, axis=token_axes)
  d_bias = jnp.sum(dy, axis=token_axes)
  g = dy * scale
  d_x = rstd * (
    g - jnp.mean(g, axis=-1, keepdims=True) - normed * jnp.mean(g * normed, axis=-1, keepdims=True)
  )
  return d_x.astype(out_dtype), d_scale, d_bias


_layer_norm_f32.defvjp(_layer_norm_f32_fwd, _layer_norm_f32_bwd)


class LayerNorm(nnx.LayerNorm):
  """LayerNorm over the last axis, statistics in float32: ``(x - mean) * rsqrt(var + eps) * scale + bias``.

  ``[..., D] -> [..., D]`` in ``activation_dtype`` (float32 unless set; the input is cast to it).
  Two-pass (biased) variance like PyTorch. The gradient is
  written out by hand (the usual closed form ``rstd * (g - mean(g) - x_hat * mean(g * x_hat))``,
  ``g = dy * scale``): the autodiff gradient of flax's formula is a longer chain of elementwise
  ops around a full ``[N, D]`` product ``rstd * scale``, which XLA:CPU fuses into several
  consumers and computes again in each. Parameters and names are those of ``nnx.LayerNorm``.
  """

  activation_dtype: Any = jnp.float32

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    if mask is not None or self.scale is None or self.bias is None or self.reduction_axes != -1:
      return super().__call__(x, mask=mask)
    return _layer_norm_f32(
      x.astype(self.activation_dtype),
      self.scale[...].astype(jnp.float32),
      self.bias[...].astype(jnp.float32),
      float(self.epsilon),
    )


def layer_norm(
  dim: int, *, param_dtype: Any, rngs: nnx.Rngs, activation_dtype: Any = jnp.float32
) -> LayerNorm:
  """LayerNorm(eps=1e-6), statistics in float32 with a two-pass variance like PyTorch, output in
  ``activation_dtype``."""
  norm = LayerNorm(
    dim,
    epsilon=1e-6,
    dtype=jnp.float32,
    param_dtype=param_dtype,
    use_fast_variance=False,
    scale_init=nnx.with_partitioning(_ones, ("norm",), eager_sharding=False),
    bias_init=nnx.with_partitioning(_zeros, ("norm",), eager_sharding=False),
    rngs=rngs,
  )
  norm.activation_dtype = activation_dtype
  return norm


def token_param(
  shape: Sequence[int], axes: tuple, *, param_dtype: Any, rngs: nnx.Rngs
) -> nnx.Param:
  """A learned token (cls / mask) initialized N(0, 0.02) like the official code."""
  value = 0.02 * jax.random.normal(rngs.params(), tuple(shape), param_dtype)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def running_statistics(num_features: int, axis: str) -> tuple[nnx.BatchStat, nnx.BatchStat]:
  """A BatchNorm's running mean (zeros) and variance (ones), ``[num_features]`` float32, sharded
  along the logical ``axis``."""
  mean = nnx.BatchStat(
    jnp.zeros((num_features,), jnp.float32), out_sharding=(axis,), eager_sharding=False
  )
  var = nnx.BatchStat(
    jnp.ones((num_features,), jnp.float32), out_sharding=(axis,), eager_sharding=False
  )
  return mean, var


def batch_moments(x: jax.Array, needs: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training BatchNorm statistics over axis 0 of ``x [B, ...]`` (PyTorch semantics): the mean and
  the biased variance, and the unbiased variance (no gradient) for the running statistics.

  Raises:
    ValueError: "BatchNorm in training needs {needs}, got B" when B < 2.
  """
  batch = x.shape[0]
  if batch < 2:
    raise ValueError(f"BatchNorm in training needs {needs}, got {batch}")
  mean = jnp.mean(x, axis=0)
  var = jnp.mean(jnp.square(x - mean), axis=0)
  unbiased = jax.lax.stop_gradient(var * (batch / (batch - 1)))
  return mean, var, unbiased


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax_as(logits: jax.Array, dtype: Any) -> jax.Array:
  return _softmax_as_fwd(logits, dtype)[0]


def _softmax_as_fwd(logits, dtype):
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
  return probs, probs


def _softmax_as_bwd(dtype, probs, dp):
  del dtype
  p = probs.astype(jnp.float32)
  dp = dp.astype(jnp.float32)
  return (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)),)


_softmax_as.defvjp(_softmax_as_fwd, _softmax_as_bwd)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
  """Softmax attention on heads-major inputs ``[B, H, N, hd]`` -> ``[B, H, N, hd]``.

  Logits and softmax in float32 (the compute dtype's matmuls accumulate in float32); the
  probabilities are cast back to the dtype of ``v`` for the second matmul, as
  ``jax.nn.dot_product_attention``'s XLA path does. With ``v`` in float32 this is
  ``jax.nn.softmax``'s own gradient; in a narrower dtype the backward pass keeps only the
  probabilities in that dtype (its gradient ``p * (dp - sum(dp * p))`` is taken in float32), not
  a float32 copy as well.
  """
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * np.float32(scale)
  if v.dtype == jnp.float32:
    probs = jax.nn.softmax(logits, axis=-1)
  else:
    probs = _softmax_as(logits, v.dtype)
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
    self.qkv = dense(
      dim, 3 * dim, ("embed", "heads"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.proj = dense(dim, dim, ("heads", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

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
    self.fc1 = dense(dim, hidden, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc2 = dense(hidden, dim, ("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.fc1(x)
    return self.fc2(gelu_erf(h).astype(h.dtype))


class Block(nnx.Module):
  """Pre-norm transformer block (timm ``Block``): x + attn(norm1(x)); x + mlp(norm2(x)).

  ``[B, N, D]`` residual stream in and out, in ``activation_dtype`` (the input is cast to it).
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
    activation_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.activation_dtype = activation_dtype
    self.norm1 = layer_norm(
      dim, param_dtype=param_dtype, rngs=rngs, activation_dtype=activation_dtype
    )
    self.attn = Attention(
      dim, num_heads, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl, rngs=rngs
    )
    self.norm2 = layer_norm(
      dim, param_dtype=param_dtype, rngs=rngs, activation_dtype=activation_dtype
    )
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(
    self, x: jax.Array, drop_path_rate: jax.Array | None = None, key: jax.Array | None = None
  ) -> jax.Array:
    batch, length, dim = x.shape
    # The residual stream stays token-major [B*N, D] inside the block, so every Dense reads
    # and its gradient is written as one matrix: with a reshape between the residual adds and
    # the matmuls XLA:CPU instead re-derives each residual gradient from all later blocks.
    act = self.activation_dtype
    h = x.reshape(batch * length, dim).astype(act)
    attn_key, mlp_key = jax.random.split(key) if key is not None else (None, None)

    def residual(h: jax.Array, branch: jax.Array, branch_key: jax.Array | None) -> jax.Array:
      branch = branch.astype(jnp.float32)
      if branch_key is not None:
        branch = drop_path(branch.reshape(batch, length, dim), drop_path_rate, branch_key)
        branch = branch.reshape(batch * length, dim)
      return (h.astype(jnp.float32) + branch).astype(act)

    h = residual(h, self.attn.attend_tokens(self.norm1(h), batch, length), attn_key)
    h = residual(h, self.mlp(self.norm2(h)), mlp_key)
    return h.reshape(batch, length, dim)
