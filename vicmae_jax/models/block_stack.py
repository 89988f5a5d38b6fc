"""Stacks of transformer blocks: building ``depth`` Blocks in either layout, running them (remat,
stochastic depth, scan), and converting parameter trees between the layouts.

A stack is an ``nnx.List`` of ``layers.Block`` (parameter paths ``blocks/<i>/...``), or with
``scan_layers=True`` one Block whose arrays carry a leading ``[depth]`` axis (logical name
'layers', paths ``blocks/...``). Tokens run through it as ``[B, N, D]`` in the blocks' activation dtype (float32 by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vicmae_jax import sharding
from vicmae_jax.models import param_tree
from vicmae_jax.models.layers import Block, LayerNorm, layer_norm

REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class EncoderDims:
  """An encoder's sizes: patch side, width, depth, heads, MLP ratio and input channels. The image
  and video encoders and ViC-MAE take one as ``dims`` (``variants.encoder_kwargs``)."""

  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  in_channels: int = 3

  @property
  def patch_dim(self) -> int:
    """Values in one flattened patch: ``patch_size**2 * in_channels``."""
    return self.patch_size * self.patch_size * self.in_channels


@dataclasses.dataclass(frozen=True)
class StackSettings:
  """How a model computes, the same for all of its parts: the matmul and parameter dtypes, the
  residual stream's (``activation_dtype``), block rematerialization (``REMAT_POLICIES``), the
  scanned layout, the attention kernel (None: XLA's) and the masked-token gather (``"take"`` or
  ``"one_hot"``, ``vit.gather_tokens``). Models take one as ``settings``."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  scan_layers: bool = False
  attention_impl: str | None = None
  activation_dtype: Any = jnp.float32
  token_gather: str = "take"


def stack_layout(
  make_block: Callable[[nnx.Rngs], Block], depth: int, *, scan_layers: bool, rngs: nnx.Rngs
) -> Any:
  """``depth`` Blocks from ``make_block(rngs)``: an ``nnx.List``, or (``scan_layers``) one Block of
  stacked ``[depth, ...]`` arrays (the leading axis named 'layers')."""
  if not scan_layers:
    return nnx.List([make_block(rngs) for _ in range(depth)])

  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(layer_rngs: nnx.Rngs) -> Block:
    return make_block(layer_rngs)

  return create(rngs)


def drop_path_schedule(drop_path_rate: float, depth: int) -> tuple[float, ...]:
  """Per-block stochastic-depth rates: 0 up to ``drop_path_rate``, linear over the blocks (timm)."""
  return tuple(float(r) for r in np.linspace(0.0, drop_path_rate, depth))


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


def run_blocks(
  blocks: Any,
  norm: LayerNorm,
  x: jax.Array,
  *,
  scan_layers: bool,
  remat: str = "none",
  drop_path_rates: Sequence[float] = (),
  key: jax.Array | None = None,
  train: bool = False,
) -> jax.Array:
  """Blocks then the final LayerNorm on tokens ``[B, N, D]`` -> ``[B, N, D]`` (in the norm's
  activation dtype, float32 by default).

  The batch axis is constrained to the data sharding first. Stochastic depth (``drop_path_rates``,
  drawn from ``key``) applies only with ``train``.
  """
  x = sharding.constrain(x, ("batch", None, None))
  x = apply_blocks(
    blocks,
    x,
    scan_layers=scan_layers,
    remat=remat,
    drop_path_rates=np.asarray(drop_path_rates) if train else None,
    key=key if train else None,
  )
  return norm(x)


class BlockStackModule(nnx.Module):
  """Base of the modules that own a block stack: its Blocks as ``blocks`` and the final LayerNorm
  as ``norm`` (parameter paths ``blocks/...``, ``norm/...``), built by ``init_stack`` and run by
  ``run_stack``."""

  def init_stack(
    self,
    depth: int,
    dim: int,
    num_heads: int,
    mlp_ratio: float,
    *,
    drop_path_rate: float = 0.0,
    settings: StackSettings,
    norm_activation_dtype: Any = None,
    rngs: nnx.Rngs,
  ) -> None:
    """Validates ``settings.remat``, keeps ``settings`` and builds ``blocks`` (``depth`` Blocks of
    width ``dim`` in the ``settings.scan_layers`` layout, their residual stream in
    ``settings.activation_dtype``) then ``norm``, whose output is in ``norm_activation_dtype``
    (None: ``settings.activation_dtype``).
    """
    remat_policy(settings.remat)  # validates the value early
    self.settings = settings
    self.remat = settings.remat
    self.scan_layers = settings.scan_layers
    # The residual stream's, from the first block on.
    self.stack_dtype = activation_dtype = settings.activation_dtype
    dtype, param_dtype = settings.dtype, settings.param_dtype
    self.drop_path_rates = drop_path_schedule(drop_path_rate, depth)

    def make_block(block_rngs: nnx.Rngs) -> Block:
      return Block(
        dim,
        num_heads,
        mlp_ratio,
        dtype=dtype,
        param_dtype=param_dtype,
        attention_impl=settings.attention_impl,
        activation_dtype=activation_dtype,
        rngs=block_rngs,
      )

    self.blocks = stack_layout(make_block, depth, scan_layers=settings.scan_layers, rngs=rngs)
    if norm_activation_dtype is None:
      norm_activation_dtype = activation_dtype
    self.norm = layer_norm(
      dim, param_dtype=param_dtype, rngs=rngs, activation_dtype=norm_activation_dtype
    )

  def run_stack(
    self, x: jax.Array, *, key: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """``run_blocks`` with this module's blocks, norm and settings: ``[B, N, D] -> [B, N, D]``."""
    return run_blocks(
      self.blocks,
      self.norm,
      x.astype(self.stack_dtype),
      scan_layers=self.scan_layers,
      remat=self.remat,
      drop_path_rates=self.drop_path_rates,
      key=key,
      train=train,
    )


def stack_blocks_in_tree(tree: Any) -> Any:
  """Every ``blocks: {0: .., 1: ..}`` of a pure dict (``nnx.to_pure_dict``) -> the scanned layout,
  stacked with ``jnp.stack``."""
  return param_tree.stack_blocks(tree, stack=jnp.stack)


def unstack_blocks_in_tree(tree: Any) -> Any:
  """Inverse of ``stack_blocks_in_tree``: scanned ``blocks`` arrays -> ``{0: .., 1: ..}``."""
  return param_tree.unstack_blocks(tree, index=int)
