"""Mixup / cutmix with label smoothing: the batch's draw, and the host reference of the mixing.

The recipe is the MAE / ViC-MAE fine-tuning one (timm's 'batch' mode: mixup 0.8, cutmix 1.0, switch
prob 0.5, label smoothing 0.1). `sample_mix` draws one lambda per batch (and, for cutmix, the box;
lambda is then recomputed from the box actually pasted, clipped at the border); the loaders send
that draw with the batch and the trainer mixes on the device (losses.mix_batch). `mixup_cutmix` is
the same mixing on the host in numpy: partner = the batch reversed, targets are smoothed one-hot
vectors mixed with the same lambda. It is the reference the device mixing is tested against.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.1) -> np.ndarray:
  """int [B] -> float32 [B, num_classes]: 1 - smoothing + smoothing / C on the label,
  smoothing / C elsewhere (rows sum to 1)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be int [B], got {labels.dtype} {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
      f"labels must be in [0, num_classes={num_classes}), got range "
      f"[{labels.min()}, {labels.max()}]"
    )
  off = smoothing / num_classes
  targets = np.full((labels.shape[0], num_classes), off, np.float64)
  targets[np.arange(labels.shape[0]), labels] = 1.0 - smoothing + off
  return targets.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class MixParams:
  """lam: weight of the original sample (1 = untouched); box: the cutmix region pasted from
  the partner (rows [top, bottom), columns [left, right)), None for mixup or no mixing."""

  lam: float
  use_cutmix: bool
  box: tuple[int, int, int, int] | None = None


@dataclasses.dataclass(frozen=True)
class MixSettings:
  """The Beta parameters of mixup and cutmix (<= 0 turns one off), the chance of cutmix when both
  are on, and of mixing a batch at all. The defaults are the fine-tuning recipe's."""

  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  switch_prob: float = 0.5
  prob: float = 1.0

  @classmethod
  def from_config(cls, mixup_cfg) -> MixSettings:
    """From a ``config.mixup`` block; an alpha it does not give is 0 (off)."""
    return cls(
      float(mixup_cfg.get("mixup_alpha", 0.0)),
      float(mixup_cfg.get("cutmix_alpha", 0.0)),
      float(mixup_cfg.get("switch_prob", 0.5)),
      float(mixup_cfg.get("prob", 1.0)),
    )


def sample_mix(
  rng: np.random.Generator, height: int, width: int, settings: MixSettings = MixSettings()
) -> MixParams:
  """Draws the batch's mixing (timm 'batch' mode) and, for cutmix, the box and corrected lam."""
  mixup_alpha, cutmix_alpha = settings.mixup_alpha, settings.cutmix_alpha
  switch_prob, prob = settings.switch_prob, settings.prob
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError("at least one of mixup_alpha and cutmix_alpha must be > 0")
  if rng.random() >= prob:
    return MixParams(1.0, False)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = bool(rng.random() < switch_prob)
  else:
    use_cutmix = cutmix_alpha > 0
  alpha = cutmix_alpha if use_cutmix else mixup_alpha
  lam = float(rng.beta(alpha, alpha))
  if not use_cutmix:
    return MixParams(lam, False)
  ratio = math.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * ratio), int(width * ratio)
  center_y, center_x = int(rng.integers(0, height)), int(rng.integers(0, width))
  top, bottom = np.clip([center_y - cut_h // 2, center_y + (cut_h + 1) // 2], 0, height)
  left, right = np.clip([center_x - cut_w // 2, center_x + (cut_w + 1) // 2], 0, width)
  area = (bottom - top) * (right - left)
  return MixParams(
    1.0 - area / float(height * width), True, (int(top), int(bottom), int(left), int(right))
  )


def mixup_cutmix(
  images: np.ndarray,
  labels: np.ndarray,
  rng: np.random.Generator,
  *,
  num_classes: int,
  settings: MixSettings = MixSettings(),
  label_smoothing: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, MixParams]:
  """Mixes a batch with its reverse.

  images: [B, ..., H, W, C] (uint8 or float; images or clips, the box covers H and W of every
    frame). labels: int [B].
  Returns images float32 (same shape, pixel scale kept: normalization is affine, so mixing
  raw pixels then normalizing equals mixing normalized inputs), targets float32
  [B, num_classes] = lam * smooth(y) + (1 - lam) * smooth(y reversed), and the MixParams.
  """
  images = np.asarray(images)
  if images.ndim < 4:
    raise ValueError(f"images must be [B, ..., H, W, C], got shape {images.shape}")
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1]:
    raise ValueError(f"labels must be [B={images.shape[0]}], got shape {labels.shape}")
  targets = smooth_one_hot(labels, num_classes, label_smoothing)
  params = sample_mix(rng, images.shape[-3], images.shape[-2], settings)
  mixed = images.astype(np.float32)
  if params.lam == 1.0:
    return mixed, targets, params
  partner = images[::-1].astype(np.float32)
  if params.use_cutmix:
    top, bottom, left, right = params.box
    mixed[..., top:bottom, left:right, :] = partner[..., top:bottom, left:right, :]
  else:
    mixed = params.lam * mixed + (1.0 - params.lam) * partner
  targets = (params.lam * targets + (1.0 - params.lam) * targets[::-1]).astype(np.float32)
  return mixed.astype(np.float32), targets, params
