"""Attentive probe: learned query tokens cross-attend to a frozen encoder's patch tokens, then a
linear head (the frozen-evaluation protocol of V-JEPA and later video work).

``AttentiveProbeHead(tokens [B, N, D], train) -> logits [B, K]`` float32, N any token count (the
patch tokens of an image, or of every frame of a clip, concatenated). One pre-norm cross-attention
block over the tokens::

  q   = queries [Q, D]                      learned, N(0, 0.02)
  x   = q + proj(attend(q Wq, LN(t) Wk, LN(t) Wv))   multi-head, softmax in float32
  x   = x + mlp(LN(x))                      hidden 4D, exact GELU
  out = head(LN(mean over the Q queries of x))       Linear, trunc-normal init_std

Parameter tree: queries, norm_kv, q, kv, proj, norm_mlp, mlp.{fc1, fc2}, norm_out, head.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from vicmae_jax.models import layers


class AttentiveProbeHead(nnx.Module):
  def __init__(
    self,
    embed_dim: int,
    num_classes: int,
    *,
    num_heads: int = 8,
    num_queries: int = 1,
    mlp_ratio: float = 4.0,
    init_std: float = 0.01,
    rngs: nnx.Rngs,
  ):
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_queries < 1:
      raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    if embed_dim % num_heads:
      raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    f32 = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    self.num_heads = num_heads
    self.queries = layers.token_param(
      (num_queries, embed_dim), (None, "embed"), param_dtype=jnp.float32, rngs=rngs
    )
    self.norm_kv = layers.layer_norm(embed_dim, param_dtype=jnp.float32, rngs=rngs)
    self.q = layers.dense(embed_dim, embed_dim, ("embed", "heads"), **f32)
    self.kv = layers.dense(embed_dim, 2 * embed_dim, ("embed", "heads"), **f32)
    self.proj = layers.dense(embed_dim, embed_dim, ("heads", "embed"), **f32)
    self.norm_mlp = layers.layer_norm(embed_dim, param_dtype=jnp.float32, rngs=rngs)
    self.mlp = layers.Mlp(embed_dim, int(embed_dim * mlp_ratio), **f32)
    self.norm_out = layers.layer_norm(embed_dim, param_dtype=jnp.float32, rngs=rngs)
    self.head = nnx.Linear(
      embed_dim,
      num_classes,
      kernel_init=nnx.initializers.truncated_normal(init_std),
      bias_init=nnx.initializers.zeros_init(),
      rngs=rngs,
    )

  def pool(self, tokens: jax.Array) -> jax.Array:
    """``[B, N, D]`` -> ``[B, Q, D]``: the queries after the cross-attention block."""
    if tokens.ndim != 3:
      raise ValueError(f"tokens must be [B, N, D], got shape {tokens.shape}")
    batch, length, dim = tokens.shape
    heads, head_dim = self.num_heads, dim // self.num_heads
    queries = jnp.broadcast_to(self.queries[...][None], (batch,) + self.queries.shape)
    kv = self.kv(self.norm_kv(tokens.astype(jnp.float32)))
    k, v = jnp.split(kv, 2, axis=-1)
    split = lambda x: x.reshape(batch, x.shape[1], heads, head_dim).transpose(0, 2, 1, 3)
    out = layers.multi_head_attention(split(self.q(queries)), split(k), split(v), head_dim**-0.5)
    x = queries + self.proj(out.transpose(0, 2, 1, 3).reshape(batch, -1, dim))
    return x + self.mlp(self.norm_mlp(x))

  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no batch statistics or dropout: the same function in training and evaluation
    pooled = jnp.mean(self.pool(tokens), axis=1)
    return self.head(self.norm_out(pooled)).astype(jnp.float32)
