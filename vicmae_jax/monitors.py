"""Collapse and health monitors of pretraining, computed inside the train step from its outputs.

Logged with the losses under ``health/``; all float32 scalars over the global batch, from values
the step already has (no extra forward pass), under ``stop_gradient``:

  z_std            mean over dimensions of the per-dimension std of the L2-normalized projector
                   outputs (all 2N of them). Collapse: 0. Spread evenly on the sphere: ~1/sqrt(P).
  z_rank           effective rank (RankMe: exp of the entropy of the normalized singular values)
                   of the normalized projector outputs [2N, P]. Collapse: 1; at most min(2N, P).
  pooled_std       z_std of the L2-normalized encoder representation (mean of visible tokens).
  pooled_rank      z_rank of it [2N, D].
  pos_cos          mean cosine similarity of the two views of a sample. Collapse: 1.
  neg_cos          mean cosine similarity over the 2N-2 negatives of each anchor. Collapse: 1.
  contrast_top1    fraction of the 2N anchors whose positive is strictly more similar than every
                   one of the 2N-2 negatives (the nearest of the 2N-1 others; ties count as
                   misses, so a collapsed batch gives 0; chance is ~1 / (2N-1)).
  recon_masked     the reconstruction loss on the removed patches (the trained term).
  recon_visible    the same error on the visible patches, which the loss never sees; with a mask
                   ratio of 0 it is the only one.

The two ranks need an eigendecomposition (slow next to the rest on a GPU): the train step
computes them on the steps it logs only (`rank_now`) and reports NaN on the others, which the
logger skips (`SAMPLED_KEYS`). The other monitors are a few reductions and run every step.

Singular values come from the eigenvalues of the Gram matrix of the smaller side ([P, P] or
[D, D] once 2N exceeds the width: a reduction over the batch, cheap and sharding-friendly).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vicmae_jax import losses

SAMPLED_KEYS = ("health/z_rank", "health/pooled_rank")


def _normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def effective_rank(x: jax.Array, eps: float = 1e-7) -> jax.Array:
  """RankMe of rows ``x [M, F]``: ``exp(-sum p log p)``, ``p = s / sum(s) + eps``, s the singular
  values. One distinct row (or one direction) gives 1; M orthogonal rows of equal norm give M."""
  x = x.astype(jnp.float32)
  # The Gram matrix of the smaller side has the same non-zero eigenvalues (the squared singular
  # values) and no surplus zeros. Eigenvalues under 1e-5 of the largest are float32 round-off of
  # zeros (a singular value under 0.3% of the largest) and count as 0.
  spec = "mf,mg->fg" if x.shape[1] <= x.shape[0] else "fm,gm->fg"
  gram = jnp.einsum(spec, x, x, preferred_element_type=jnp.float32)
  eig = jnp.linalg.eigvalsh(gram)
  eig = jnp.where(eig > 1e-5 * jnp.max(eig), eig, 0.0)
  singular = jnp.sqrt(eig)
  p = singular / jnp.maximum(jnp.sum(singular), 1e-12) + eps
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def embedding_health(z: jax.Array, prefix: str) -> dict[str, jax.Array]:
  """``{prefix}_std`` and ``{prefix}_rank`` of embeddings ``[N, V, F]`` (all N*V rows)."""
  flat = _normalize(z).reshape(-1, z.shape[-1])
  return {
    f"{prefix}_std": jnp.mean(jnp.std(flat, axis=0)),
    f"{prefix}_rank": effective_rank(flat),
  }


def contrastive_health(z: jax.Array) -> dict[str, jax.Array]:
  """pos_cos, neg_cos and contrast_top1 of projector outputs ``z [N, 2, P]`` (rows 2i + v, as
  ``losses.nt_xent`` arranges them)."""
  if z.ndim != 3 or z.shape[1] != 2:
    raise ValueError(f"contrastive_health expects z of shape [N, 2, P], got {z.shape}")
  n = z.shape[0]
  flat = _normalize(z).reshape(2 * n, -1)
  sim = jnp.einsum("ip,jp->ij", flat, flat, preferred_element_type=jnp.float32)
  index = jnp.arange(2 * n)
  positive = index ^ 1
  pos = sim[index, positive]
  is_negative = (index[:, None] != index[None, :]) & (index[None, :] != positive[:, None])
  neg_mean = jnp.sum(jnp.where(is_negative, sim, 0.0)) / jnp.maximum(
    jnp.sum(is_negative.astype(jnp.float32)), 1.0
  )
  hardest = jnp.max(jnp.where(is_negative, sim, -jnp.inf), axis=1)
  return {
    "pos_cos": jnp.mean(pos),
    "neg_cos": neg_mean,
    "contrast_top1": jnp.mean((pos > hardest).astype(jnp.float32)),
  }


def reconstruction_health(
  images: jax.Array, pred: jax.Array, mask: jax.Array, patch_size: int, norm_pix: bool = True
) -> dict[str, jax.Array]:
  """recon_masked / recon_visible: mean over views of the per-patch MSE on removed / kept patches
  (as ``losses.reconstruction_loss`` weighs them; a view with none of a kind contributes 0)."""
  target = losses.patch_targets(images, patch_size, norm_pix)
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # [B, V, L]
  mask = mask.astype(jnp.float32)
  return {
    "recon_masked": losses.mean_over_views(per_patch, mask),
    "recon_visible": losses.mean_over_views(per_patch, 1.0 - mask),
  }


def pretrain_health(
  images: jax.Array,
  outputs: Mapping[str, jax.Array],
  *,
  patch_size: int,
  norm_pix: bool = True,
  rank_now: jax.Array | bool = True,
) -> dict[str, jax.Array]:
  """Every monitor of the module docstring as ``{"health/<name>": scalar}`` (gradient-free).

  rank_now: a (traced) bool; where false the two ranks are NaN and their eigendecompositions are
  not run (``lax.cond``).
  """
  out = jax.lax.stop_gradient(dict(outputs))
  images = jax.lax.stop_gradient(images)
  z = _normalize(out["proj"]).reshape(-1, out["proj"].shape[-1])
  pooled = _normalize(out["pooled"]).reshape(-1, out["pooled"].shape[-1])

  def ranks():
    return effective_rank(z), effective_rank(pooled)

  def skipped():
    return jnp.float32(jnp.nan), jnp.float32(jnp.nan)

  z_rank, pooled_rank = jax.lax.cond(jnp.asarray(rank_now), ranks, skipped)
  metrics = {
    "z_std": jnp.mean(jnp.std(z, axis=0)),
    "z_rank": z_rank,
    "pooled_std": jnp.mean(jnp.std(pooled, axis=0)),
    "pooled_rank": pooled_rank,
    **contrastive_health(out["proj"]),
    **reconstruction_health(images, out["pred"], out["mask"], patch_size, norm_pix),
  }
  return {f"health/{k}": v for k, v in metrics.items()}
