"""Losses of ViC-MAE pretraining and of classification, written on global arrays.

Shapes:
  images  [B, V, H, W, C]   float normalized views
  pred    [B, V, L, p*p*C]  decoder output, official (p, q, c) patch order
  mask    [B, V, L]         1 = removed (the loss is taken on these patches only)
  z       [B, 2, P]         projector outputs of the two views

Everything is computed in float32 with plain jnp ops over the global batch: under ``jax.jit`` on a
mesh with the batch sharded, XLA inserts the gathers and reductions (no psum / pmap / shard_map).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vicmae_jax.models.vit import patchify


def patch_targets(images: jax.Array, patch_size: int, norm_pix: bool = True) -> jax.Array:
  """Reconstruction targets ``[..., L, p*p*C]`` float32 from images ``[..., H, W, C]``.

  With ``norm_pix`` each patch is normalized by its own mean and unbiased variance:
  ``(x - mean) / sqrt(var + 1e-6)`` (official ``norm_pix_loss``).
  """
  target = patchify(images.astype(jnp.float32), patch_size)
  if norm_pix:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) * jax.lax.rsqrt(var + 1e-6)
  return target


def reconstruction_loss(
  images: jax.Array, pred: jax.Array, mask: jax.Array, patch_size: int, norm_pix: bool = True
) -> jax.Array:
  """Mean over views of the per-view mean squared error on removed patches (scalar float32).

  Matches the official ``0.5 * (mse(view1) + mse(view2))`` where each view's loss is
  ``sum(per_patch_mse * mask) / sum(mask)`` over the (global) batch. A view without removed
  patches (mask ratio 0) contributes 0.
  """
  if images.ndim != 5 or pred.ndim != 4 or mask.ndim != 3:
    raise ValueError(
      f"reconstruction_loss expects images [B,V,H,W,C], pred [B,V,L,ppc], mask [B,V,L]; "
      f"got {images.shape}, {pred.shape}, {mask.shape}"
    )
  target = patch_targets(images, patch_size, norm_pix)
  if target.shape != pred.shape:
    raise ValueError(f"pred shape {pred.shape} does not match the patchified images {target.shape}")
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # [B, V, L]
  return mean_over_views(per_patch, mask)


def mean_over_views(per_patch: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean over views of ``sum(per_patch * weight) / sum(weight)`` per view ``[B, V, L]`` (a view
  with zero total weight contributes 0)."""
  weight = weight.astype(jnp.float32)
  per_view = jnp.sum(per_patch * weight, axis=(0, 2)) / jnp.maximum(
    jnp.sum(weight, axis=(0, 2)), 1.0
  )
  return jnp.mean(per_view)


def nt_xent(z: jax.Array, temperature: float = 0.1) -> jax.Array:
  """NT-Xent / InfoNCE over the global batch (scalar float32).

  Each of the 2N L2-normalized embeddings of ``z [N, 2, P]`` is an anchor whose only positive is
  the other view of the same sample and whose negatives are the other 2N-2 embeddings; the loss
  is the mean over anchors of ``-log softmax`` of the positive's cosine similarity / temperature.
  """
  if z.ndim != 3 or z.shape[1] != 2:
    raise ValueError(f"nt_xent expects z of shape [N, 2, P], got {z.shape}")
  n = z.shape[0]
  z = z.astype(jnp.float32)
  # F.normalize semantics: divide by max(norm, 1e-12).
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  flat = z.reshape(2 * n, -1)  # row 2i + v is view v of sample i
  logits = jnp.einsum("ip,jp->ij", flat, flat, preferred_element_type=jnp.float32) / temperature
  index = jnp.arange(2 * n)
  logits = jnp.where(index[:, None] == index[None, :], -jnp.inf, logits)
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  positive = index ^ 1  # the other view of the same sample
  return -jnp.mean(jnp.take_along_axis(log_prob, positive[:, None], axis=1))


def pretrain_loss(
  images: jax.Array,
  outputs: Mapping[str, jax.Array],
  *,
  patch_size: int,
  temperature: float,
  weight_recon: float,
  weight_contrast: float,
  norm_pix: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``weight_recon * reconstruction + weight_contrast * nt_xent``.

  Args:
    images: ``[B, 2, H, W, C]`` normalized views (the reconstruction targets).
    outputs: ``ViCMAE.__call__`` outputs (``pred``, ``mask``, ``proj``).
  Returns:
    ``(loss, {"loss", "loss_recon", "loss_contrast"})``, float32 scalars.
  """
  loss_recon = reconstruction_loss(images, outputs["pred"], outputs["mask"], patch_size, norm_pix)
  loss_contrast = nt_xent(outputs["proj"], temperature)
  loss = weight_recon * loss_recon + weight_contrast * loss_contrast
  return loss, {"loss": loss, "loss_recon": loss_recon, "loss_contrast": loss_contrast}


def softmax_cross_entropy(
  logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
  """Mean cross entropy with one-hot or soft targets (scalar float32).

  Args:
    logits: ``[B, K]``.
    labels: ``[B, K]`` one-hot or soft (mixup / label smoothing) targets.
    weights: optional ``[B]`` per-example weights (e.g. 0 for padding); the mean is weighted.
  """
  if labels.shape != logits.shape:
    raise ValueError(
      f"labels shape {labels.shape} must equal logits shape {logits.shape} (one-hot or soft)"
    )
  per_example = -jnp.sum(
    labels.astype(jnp.float32) * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1
  )
  if weights is None:
    return jnp.mean(per_example)
  weights = weights.astype(jnp.float32)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
  """``[B]`` float32: 1 where the integer label is among the top-k logits, else 0.

  Ties are broken by index (``jax.lax.top_k``); sum it with a validity mask for accuracy.
  """
  if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
    raise ValueError(
      f"labels must be integer [B] with B={logits.shape[0]}, got shape {labels.shape}"
    )
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Classification targets: label smoothing, mixup / cutmix (on device)
# ----------------------------------------------------------------------------------------------


def smooth_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """int [B] -> float32 [B, K]: 1 - s + s/K on the label, s/K elsewhere."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot * (1.0 - smoothing) + smoothing / num_classes


def partner_rows(x: jax.Array, num_blocks: int) -> jax.Array:
  """Each block of B / num_blocks rows reversed: the mixing partner of row i within its block.

  Blocks are the processes' host batches, so a partner always comes from the same host (as
  timm mixes within a device's batch) and mixing moves no pixels between hosts.
  """
  rows = x.shape[0]
  blocked = x.reshape(num_blocks, rows // num_blocks, *x.shape[1:])
  return blocked[:, ::-1].reshape(x.shape)


def mix_batch(
  pixels: jax.Array,
  labels: jax.Array,
  lam: jax.Array,
  box: jax.Array,
  *,
  num_classes: int,
  smoothing: float,
  num_blocks: int = 1,
) -> tuple[jax.Array, jax.Array]:
  """Mixup / cutmix of a batch with its reversed partner rows (data/mixup.py's mixup_cutmix on device).

  pixels: [B, ..., H, W, C] (uint8 or float; clips mix every frame alike). labels int [B].
  lam float32 [B]: weight of the row itself. box int32 [B, 4] (top, bottom, left, right): a
  non-empty box means cutmix (pixels inside come from the partner; lam already equals the kept
  area), an empty one mixup (lam x + (1 - lam) partner). lam = 1 with an empty box leaves the
  row untouched. Returns (pixels float32 in the input's scale, targets float32 [B, K] =
  lam smooth(y) + (1 - lam) smooth(y_partner)).
  """
  x = pixels.astype(jnp.float32)
  partner = partner_rows(x, num_blocks)
  height, width = x.shape[-3], x.shape[-2]
  extra = (1,) * (x.ndim - 4)  # frame axes between the batch and H
  top, bottom, left, right = (box[:, i].reshape((-1,) + extra + (1, 1, 1)) for i in range(4))
  rows = jnp.arange(height).reshape(height, 1, 1)
  cols = jnp.arange(width).reshape(1, width, 1)
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  is_cutmix = ((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]) > 0).reshape(
    (-1,) + extra + (1, 1, 1)
  )
  weight = lam.astype(jnp.float32).reshape((-1,) + extra + (1, 1, 1))
  mixed = jnp.where(is_cutmix, jnp.where(inside, partner, x), weight * x + (1.0 - weight) * partner)
  targets = smooth_targets(labels, num_classes, smoothing)
  lam_rows = lam.astype(jnp.float32)[:, None]
  targets = lam_rows * targets + (1.0 - lam_rows) * partner_rows(targets, num_blocks)
  return mixed, targets
