"""Fine-tuning augmentations of single images: RandAugment and random erasing (mixing: mixup.py).

Host-side numpy + PIL on uint8 images; every random draw comes from the `np.random.Generator`
passed in, so a seeded generator gives the same output every time.

The recipe is the MAE / ViC-MAE fine-tuning one (timm `rand-m9-mstd0.5-inc1`, `reprob 0.25`,
`remode pixel`):

- `rand_augment(image, rng)`: 2 ops drawn with replacement from `RAND_AUGMENT_OPS`, each
  applied with probability 0.5 at magnitude ~ N(9, 0.5) clipped to [0, 10]; geometric ops
  use bicubic resampling and fill with the ImageNet mean colour (124, 116, 104).
- `random_erasing(image, rng)`: with probability 0.25 one box of 2-33 % of the area, aspect
  in [0.3, 1/0.3], filled per pixel with noise. timm draws N(0, 1) in the *normalized* space;
  on uint8 images we draw the same N(0, 1) and map it back through the ImageNet normalization,
  uint8 = round(255 * (mean_c + std_c * z)) clipped to [0, 255], so the fill has the same
  distribution as timm's up to that clipping.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float64)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float64)
# timm fills geometric transforms with round(255 * mean).
IMAGENET_FILL = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)

MAX_MAGNITUDE = 10.0
# The timm "increasing" RandAugment set (`inc1`): every op gets stronger as magnitude grows.
RAND_AUGMENT_OPS = (
  "AutoContrast",
  "Equalize",
  "Invert",
  "Rotate",
  "Posterize",
  "Solarize",
  "SolarizeAdd",
  "Color",
  "Contrast",
  "Brightness",
  "Sharpness",
  "ShearX",
  "ShearY",
  "TranslateXRel",
  "TranslateYRel",
)
# Ops whose argument gets a random sign: all but those without argument, Posterize (bits kept) and
# the two Solarize thresholds.
SIGNED_OPS = frozenset(RAND_AUGMENT_OPS) - {
  "AutoContrast",
  "Equalize",
  "Invert",
  "Posterize",
  "Solarize",
  "SolarizeAdd",
}
_RESAMPLE = {
  "bicubic": Image.Resampling.BICUBIC,
  "bilinear": Image.Resampling.BILINEAR,
  "nearest": Image.Resampling.NEAREST,
}
ERASE_MODES = ("pixel", "rand", "const")


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"{name} must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  return image


# ----------------------------------------------------------------------------------------------
# RandAugment
# ----------------------------------------------------------------------------------------------


def op_argument(name: str, magnitude: float, negate: bool = False):
  """The argument an op gets at `magnitude` in [0, 10] (timm's increasing level functions).

  Returns None for the ops without argument, degrees for Rotate, a shear factor, a fraction of
  the image size for translations, kept bits for Posterize, a threshold for Solarize, the
  added value for SolarizeAdd and an enhancement factor (1 = identity) for the rest.
  """
  level = magnitude / MAX_MAGNITUDE
  sign = -1.0 if negate else 1.0
  if name in ("AutoContrast", "Equalize", "Invert"):
    return None
  if name == "Rotate":
    return sign * level * 30.0
  if name in ("ShearX", "ShearY"):
    return sign * level * 0.3
  if name in ("TranslateXRel", "TranslateYRel"):
    return sign * level * 0.45
  if name == "Posterize":
    return 4 - int(level * 4)
  if name == "Solarize":
    return 256 - min(256, int(level * 256))
  if name == "SolarizeAdd":
    return min(128, int(level * 110))
  if name in ("Color", "Contrast", "Brightness", "Sharpness"):
    return max(0.1, 1.0 + sign * level * 0.9)
  raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(RAND_AUGMENT_OPS)}")


def apply_op(
  image: np.ndarray,
  name: str,
  magnitude: float,
  *,
  negate: bool = False,
  fill: tuple[int, int, int] = IMAGENET_FILL,
  resample: str = "bicubic",
) -> np.ndarray:
  """One RandAugment op at a fixed magnitude. image: uint8 [H, W, 3] -> uint8 [H, W, 3]."""
  image = _check_image(image)
  if resample not in _RESAMPLE:
    raise ValueError(f"resample must be one of {tuple(_RESAMPLE)}, got {resample!r}")
  arg = op_argument(name, magnitude, negate)
  pil = Image.fromarray(image)
  width, height = pil.size
  affine = dict(resample=_RESAMPLE[resample], fillcolor=tuple(fill))
  if name == "AutoContrast":
    out = ImageOps.autocontrast(pil)
  elif name == "Equalize":
    out = ImageOps.equalize(pil)
  elif name == "Invert":
    out = ImageOps.invert(pil)
  elif name == "Rotate":
    out = pil.rotate(arg, **affine)
  elif name == "Posterize":
    if arg >= 8:
      out = pil
    elif arg <= 0:  # keeping 0 bits leaves black (what older PIL returned; newer PIL refuses 0)
      out = Image.new(pil.mode, pil.size)
    else:
      out = ImageOps.posterize(pil, arg)
  elif name == "Solarize":
    out = ImageOps.solarize(pil, arg)
  elif name == "SolarizeAdd":
    lut = [min(255, i + arg) if i < 128 else i for i in range(256)]
    out = pil.point(lut * 3)
  elif name == "Color":
    out = ImageEnhance.Color(pil).enhance(arg)
  elif name == "Contrast":
    out = ImageEnhance.Contrast(pil).enhance(arg)
  elif name == "Brightness":
    out = ImageEnhance.Brightness(pil).enhance(arg)
  elif name == "Sharpness":
    out = ImageEnhance.Sharpness(pil).enhance(arg)
  # Affine data maps output (x, y) to input (a x + b y + c, d x + e y + f).
  elif name == "ShearX":
    out = pil.transform(pil.size, Image.Transform.AFFINE, (1, arg, 0, 0, 1, 0), **affine)
  elif name == "ShearY":
    out = pil.transform(pil.size, Image.Transform.AFFINE, (1, 0, 0, arg, 1, 0), **affine)
  elif name == "TranslateXRel":
    out = pil.transform(pil.size, Image.Transform.AFFINE, (1, 0, arg * width, 0, 1, 0), **affine)
  else:  # TranslateYRel
    out = pil.transform(pil.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, arg * height), **affine)
  return np.asarray(out, np.uint8)


def rand_augment(
  image: np.ndarray,
  rng: np.random.Generator,
  *,
  num_ops: int = 2,
  magnitude: float = 9.0,
  magnitude_std: float = 0.5,
  prob: float = 0.5,
  ops: tuple[str, ...] = RAND_AUGMENT_OPS,
  fill: tuple[int, int, int] = IMAGENET_FILL,
  resample: str = "bicubic",
) -> np.ndarray:
  """RandAugment: `num_ops` ops drawn with replacement, each applied with probability `prob`.

  Each applied op draws its magnitude from N(magnitude, magnitude_std) (uniform on
  [0, magnitude] if magnitude_std is inf) clipped to [0, 10], and a random sign if signed.
  image: uint8 [H, W, 3] -> uint8 [H, W, 3].
  """
  image = _check_image(image)
  for name in ops:
    op_argument(name, 0.0)  # rejects unknown names before any draw
  for index in rng.integers(0, len(ops), size=num_ops):
    if rng.random() >= prob:
      continue
    if math.isinf(magnitude_std):
      level = rng.uniform(0.0, magnitude)
    elif magnitude_std > 0:
      level = rng.normal(magnitude, magnitude_std)
    else:
      level = magnitude
    level = float(np.clip(level, 0.0, MAX_MAGNITUDE))
    name = ops[index]
    negate = bool(rng.random() < 0.5) if name in SIGNED_OPS else False
    image = apply_op(image, name, level, negate=negate, fill=fill, resample=resample)
  return image


# ----------------------------------------------------------------------------------------------
# Random erasing
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Box:
  """A rectangle of rows [top, top + height) and columns [left, left + width)."""

  top: int
  left: int
  height: int
  width: int

  @property
  def area(self) -> int:
    return self.height * self.width


def sample_erasing_box(
  rng: np.random.Generator,
  height: int,
  width: int,
  *,
  min_area: float = 0.02,
  max_area: float = 1 / 3,
  min_aspect: float = 0.3,
  max_aspect: float | None = None,
  attempts: int = 10,
) -> Box | None:
  """timm's box: area ~ U(min_area, max_area) * H * W, log-uniform aspect (h / w); None if no
  box fits strictly inside the image in `attempts` tries."""
  if not 0 < min_area <= max_area <= 1:
    raise ValueError(f"need 0 < min_area <= max_area <= 1, got {min_area}, {max_area}")
  max_aspect = max_aspect or 1.0 / min_aspect
  log_aspect = (math.log(min_aspect), math.log(max_aspect))
  for _ in range(attempts):
    target_area = rng.uniform(min_area, max_area) * height * width
    aspect = math.exp(rng.uniform(*log_aspect))
    box_h = int(round(math.sqrt(target_area * aspect)))
    box_w = int(round(math.sqrt(target_area / aspect)))
    if box_w < width and box_h < height:
      top = int(rng.integers(0, height - box_h + 1))
      left = int(rng.integers(0, width - box_w + 1))
      return Box(top, left, box_h, box_w)
  return None


def erasing_fill(
  rng: np.random.Generator, shape: tuple[int, ...], mode: str = "pixel"
) -> np.ndarray:
  """uint8 fill of `shape` [h, w, 3]: normalized-space N(0, 1) noise mapped to pixels.

  pixel: a draw per pixel and channel; rand: one draw per channel; const: z = 0 (mean colour).
  """
  if mode not in ERASE_MODES:
    raise ValueError(f"erasing mode must be one of {ERASE_MODES}, got {mode!r}")
  if mode == "pixel":
    z = rng.standard_normal(shape)
  elif mode == "rand":
    z = np.broadcast_to(rng.standard_normal((1,) * (len(shape) - 1) + (shape[-1],)), shape)
  else:
    z = np.zeros(shape)
  return np.clip(np.round(255.0 * (IMAGENET_MEAN + IMAGENET_STD * z)), 0, 255).astype(np.uint8)


def random_erasing(
  image: np.ndarray,
  rng: np.random.Generator,
  *,
  prob: float = 0.25,
  mode: str = "pixel",
  min_area: float = 0.02,
  max_area: float = 1 / 3,
  min_aspect: float = 0.3,
) -> np.ndarray:
  """With probability `prob` erase one box (see module doc). uint8 [H, W, 3] -> a new array."""
  image = _check_image(image)
  if mode not in ERASE_MODES:
    raise ValueError(f"erasing mode must be one of {ERASE_MODES}, got {mode!r}")
  if rng.random() >= prob:
    return image.copy()
  box = sample_erasing_box(
    rng, image.shape[0], image.shape[1], min_area=min_area, max_area=max_area, min_aspect=min_aspect
  )
  out = image.copy()
  if box is not None:
    out[box.top : box.top + box.height, box.left : box.left + box.width] = erasing_fill(
      rng, (box.height, box.width, image.shape[-1]), mode
    )
  return out
