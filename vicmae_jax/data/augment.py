"""The named image augmentation ops, and the views built from them.

(Over 400 lines on purpose: one short factory per op of the recipe, each next to its documented
defaults; parsing is in augment_spec.py, the pixel kernels in image_codec.py.)

Each op is built by a factory registered in `augment_spec` (which parses spec strings such as
"decode|random_resized_crop(224)|flip|blur(p=0.5)" and composes them) and has the signature
`op(data, rng) -> data`: it reads `data["image"]` and returns a new dict with the new image (the
input dict is not changed). All randomness comes from the `np.random.Generator` passed in, so a
view is a function of (image, rng); the pixel work is in `image_codec`. Ops that take `size` (or
`scale`, for random_resized_crop) use the pipeline's image size (crop scale) when the spec leaves it
out, so one spec serves every resolution.

Images travel between ops as uint8 [H, W, 3] RGB arrays (or, straight after `decode`, as still
encoded bytes); `Augmentation.__call__` returns uint8 [S, S, 3]. Normalization to floats happens on
the device, not here.

Ops (probabilities default to the ViC-MAE recipe):
    decode                      encoded bytes (JPEG/PNG/...) stay encoded until a crop or pixel op
                                needs them, so a crop can decode at reduced scale; arrays and PIL
                                images become uint8 arrays.
    random_resized_crop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3), interpolation="area")
                                torchvision RandomResizedCrop's box (10 tries, then a centre crop),
                                resized with OpenCV's INTER_AREA by default: the resize of the FFCV
                                crop decoder the official pretraining recipe runs. On a not-yet-decoded
                                JPEG, libjpeg decodes at 1/2, 1/4 or 1/8 scale when the crop is that
                                much larger than `size`.
    flip(p=0.5)                 horizontal flip.
    color_jitter(p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
                                torchvision ColorJitter: factors uniform in [1-x, 1+x] (hue in
                                [-x, x] turns), applied in a random order; brightness, contrast and
                                saturation as PIL's ImageEnhance formulas, hue as a rotation about the
                                grey axis.
    grayscale(p=0.2)            ITU-R 601-2 luma, replicated to 3 channels.
    blur(p=1.0, sigma=(0.1, 2.0), kernel_size=(5, 9))
                                torchvision GaussianBlur: sigma uniform in the range, kernel
                                (width, height), reflect padding.
    solarize(p=0.2, threshold=128)   pixels >= threshold become 255 - pixel.
    resize_short(size, interpolation="pil_bicubic")   shorter side to `size`, aspect kept.
    center_crop(size)           torchvision CenterCrop (pads with zeros when the image is smaller).
    resize(size, interpolation="pil_bilinear")        to size x size.

Interpolation names (`INTERPOLATIONS`): OpenCV's "area", "nearest", "bilinear", "bicubic",
"lanczos" and Pillow's antialiased "pil_nearest", "pil_bilinear", "pil_bicubic", "pil_lanczos",
"pil_box" (what torchvision's PIL transforms, and so the official evaluation and fine-tuning
recipes, use); `image_codec` describes how they differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vicmae_jax.data import augment_spec
from vicmae_jax.data.augment_spec import (
  Augmentation,
  Data,
  Op,
  parse_spec,  # noqa: F401  (importable from here)
  register,
  registered_ops,  # noqa: F401  (importable from here)
)
from vicmae_jax.data.image_codec import (
  INTERPOLATIONS,
  EncodedImage,
  adjust_brightness,
  adjust_contrast,
  adjust_hue,
  adjust_saturation,
  center_crop_array,
  crop_and_resize,
  decode_crop_and_resize,
  decode_image,  # noqa: F401  (importable from here)
  decode_reduction,  # noqa: F401  (importable from here)
  flip_array,
  gaussian_blur_array,
  gaussian_kernel1d,  # noqa: F401  (importable from here)
  grayscale_image,
  resize_array,
  solarize_array,
  to_array,
)

# The two views of the official ViC-MAE pretraining recipe (view 1 blurred, view 2 solarized).
DEFAULT_VIEW_SPECS = (
  "decode|random_resized_crop|flip|color_jitter|grayscale|blur",
  "decode|random_resized_crop|flip|color_jitter|grayscale|solarize",
)

# The fast path measured in benchmarks/input_pipeline.py.
CROP_FLIP_SPEC = "decode|random_resized_crop|flip"

# Evaluation: torchvision Resize(S / 0.875, bicubic) + CenterCrop(S) when `size` is left to the pipeline.
EVAL_CROP_FRACTION = 224 / 256


# ----------------------------------------------------------------------------------------------------
# Argument checks and the two op shapes.


def _check_probability(name: str, p: float) -> float:
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"{name}: p must be in [0, 1], got {p}")
  return float(p)


def _pair(name: str, field: str, value: Any) -> tuple[float, float]:
  if isinstance(value, (int, float)):
    return float(value), float(value)
  if len(value) != 2:
    raise ValueError(f"{name}: {field} must be a number or (lo, hi), got {value!r}")
  return float(value[0]), float(value[1])


def _size(name: str, size: Any) -> int:
  if size is None:
    raise ValueError(f"{name}: `size` is not set and the pipeline gave no image size")
  if int(size) <= 0:
    raise ValueError(f"{name}: size must be positive, got {size}")
  return int(size)


def _interpolation(name: str, interpolation: str) -> str:
  if interpolation not in INTERPOLATIONS:
    raise ValueError(
      f"{name}: interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}"
    )
  return interpolation


def _with_image(data: Data, image: Any) -> Data:
  out = dict(data)
  out["image"] = image
  return out


def _image_op(fn: Callable[[Any, np.random.Generator], Any], p: float | None = None) -> Op:
  """The op that replaces data["image"] by fn(image, rng); with `p`, only when one uniform draw
  (made whatever p is) falls below p."""

  def op(data: Data, rng: np.random.Generator) -> Data:
    if p is not None and rng.random() >= p:
      return data
    return _with_image(data, fn(data["image"], rng))

  return op


# ----------------------------------------------------------------------------------------------------
# Random resized crop.


def random_resized_crop_box(
  height: int,
  width: int,
  scale: tuple[float, float],
  ratio: tuple[float, float],
  rng: np.random.Generator,
) -> tuple[int, int, int, int]:
  """torchvision RandomResizedCrop.get_params: (top, left, crop_height, crop_width) inside the image.

  Up to 10 tries of area ~ U(scale) * H * W and log aspect ~ U(log ratio); then a centre crop with
  the aspect clamped to `ratio`.
  """
  area = height * width
  log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
    crop_width = int(round(np.sqrt(target_area * aspect)))
    crop_height = int(round(np.sqrt(target_area / aspect)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      return top, left, crop_height, crop_width
  in_ratio = width / height
  if in_ratio < min(ratio):
    crop_width = width
    crop_height = int(round(crop_width / min(ratio)))
  elif in_ratio > max(ratio):
    crop_height = height
    crop_width = int(round(crop_height * max(ratio)))
  else:
    crop_width, crop_height = width, height
  return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


@register("random_resized_crop")
def random_resized_crop(
  size: int | None = None,
  scale: Sequence[float] = (0.08, 1.0),
  ratio: Sequence[float] = (3 / 4, 4 / 3),
  interpolation: str = "area",
) -> Op:
  size = _size("random_resized_crop", size)
  scale = _pair("random_resized_crop", "scale", scale)
  ratio = _pair("random_resized_crop", "ratio", ratio)
  if not 0 < scale[0] <= scale[1] <= 1.0:
    raise ValueError(f"random_resized_crop: scale must satisfy 0 < lo <= hi <= 1, got {scale}")
  if not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"random_resized_crop: ratio must satisfy 0 < lo <= hi, got {ratio}")
  interpolation = _interpolation("random_resized_crop", interpolation)

  def crop(image: Any, rng: np.random.Generator) -> np.ndarray:
    if isinstance(image, (bytes, bytearray, memoryview)):
      image = EncodedImage(bytes(image))
    if isinstance(image, EncodedImage):
      full_size = image.size
      box = random_resized_crop_box(*full_size, scale, ratio, rng)
      return decode_crop_and_resize(image, box, full_size, size, interpolation)
    pixels = to_array(image)
    box = random_resized_crop_box(pixels.shape[0], pixels.shape[1], scale, ratio, rng)
    return crop_and_resize(pixels, box, size, interpolation)

  return _image_op(crop)


# ----------------------------------------------------------------------------------------------------
# Simple ops.


@register("decode")
def decode() -> Op:
  """Encoded bytes stay encoded (a following crop picks the decode scale); anything else becomes an array."""

  def decoded(image: Any, rng: np.random.Generator) -> Any:
    del rng
    if isinstance(image, (bytes, bytearray, memoryview)):
      return EncodedImage(bytes(image))
    if isinstance(image, EncodedImage):
      return image
    return to_array(image)

  return _image_op(decoded)


@register("flip")
def flip(p: float = 0.5) -> Op:
  return _image_op(lambda image, _: flip_array(image), _check_probability("flip", p))


@register("grayscale")
def grayscale(p: float = 0.2) -> Op:
  return _image_op(lambda image, _: grayscale_image(image), _check_probability("grayscale", p))


@register("solarize")
def solarize(p: float = 0.2, threshold: int = 128) -> Op:
  p = _check_probability("solarize", p)
  return _image_op(lambda image, _: solarize_array(image, threshold), p)


# ----------------------------------------------------------------------------------------------------
# Colour jitter.


@dataclasses.dataclass(frozen=True)
class JitterParams:
  """One draw of ColorJitter: the order of the 4 adjustments and their factors (None = not applied)."""

  order: tuple[int, ...]
  brightness: float | None
  contrast: float | None
  saturation: float | None
  hue: float | None


def draw_jitter_params(
  rng: np.random.Generator, brightness: float, contrast: float, saturation: float, hue: float
) -> JitterParams:
  """torchvision ColorJitter.get_params: a random permutation, then factors in the fixed order b, c, s, h."""
  order = tuple(int(i) for i in rng.permutation(4))
  b = float(rng.uniform(max(0.0, 1 - brightness), 1 + brightness)) if brightness > 0 else None
  c = float(rng.uniform(max(0.0, 1 - contrast), 1 + contrast)) if contrast > 0 else None
  s = float(rng.uniform(max(0.0, 1 - saturation), 1 + saturation)) if saturation > 0 else None
  h = float(rng.uniform(-hue, hue)) if hue > 0 else None
  return JitterParams(order, b, c, s, h)


def apply_jitter(image: Any, params: JitterParams) -> np.ndarray:
  image = to_array(image)
  for which in params.order:
    if which == 0 and params.brightness is not None:
      image = adjust_brightness(image, params.brightness)
    elif which == 1 and params.contrast is not None:
      image = adjust_contrast(image, params.contrast)
    elif which == 2 and params.saturation is not None:
      image = adjust_saturation(image, params.saturation)
    elif which == 3 and params.hue is not None:
      image = adjust_hue(image, params.hue)
  return image


@register("color_jitter")
def color_jitter(
  p: float = 0.8,
  brightness: float = 0.4,
  contrast: float = 0.4,
  saturation: float = 0.2,
  hue: float = 0.1,
) -> Op:
  p = _check_probability("color_jitter", p)
  for field, value in (
    ("brightness", brightness),
    ("contrast", contrast),
    ("saturation", saturation),
  ):
    if value < 0:
      raise ValueError(f"color_jitter: {field} must be >= 0, got {value}")
  if not 0 <= hue <= 0.5:
    raise ValueError(f"color_jitter: hue must be in [0, 0.5], got {hue}")

  def jitter(image: Any, rng: np.random.Generator) -> np.ndarray:
    return apply_jitter(image, draw_jitter_params(rng, brightness, contrast, saturation, hue))

  return _image_op(jitter, p)


# ----------------------------------------------------------------------------------------------------
# Gaussian blur.


@register("blur")
def blur(
  p: float = 1.0, sigma: Sequence[float] = (0.1, 2.0), kernel_size: Sequence[int] = (5, 9)
) -> Op:
  p = _check_probability("blur", p)
  sigma = _pair("blur", "sigma", sigma)
  if not 0 < sigma[0] <= sigma[1]:
    raise ValueError(f"blur: sigma must satisfy 0 < lo <= hi, got {sigma}")
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  kernel = (int(kernel_size[0]), int(kernel_size[1]))
  if any(k <= 0 or k % 2 == 0 for k in kernel):
    raise ValueError(f"blur: kernel_size must be odd and positive, got {kernel_size}")

  def blurred(image: Any, rng: np.random.Generator) -> np.ndarray:
    return gaussian_blur_array(image, float(rng.uniform(sigma[0], sigma[1])), kernel)

  return _image_op(blurred, p)


# ----------------------------------------------------------------------------------------------------
# Deterministic resizing (evaluation).


@register("resize_short")
def resize_short(size: int | None = None, interpolation: str = "pil_bicubic") -> Op:
  """Shorter side to `size` (torchvision Resize(int)); default size = image size / 0.875."""
  size = _size("resize_short", size)
  interpolation = _interpolation("resize_short", interpolation)

  def resized(image: Any, rng: np.random.Generator) -> np.ndarray:
    del rng
    image = to_array(image)
    height, width = image.shape[:2]
    if width <= height:
      new_width, new_height = size, int(size * height / width)
    else:
      new_width, new_height = int(size * width / height), size
    if (new_height, new_width) == (height, width):
      return image
    return resize_array(image, new_width, new_height, interpolation)

  return _image_op(resized)


@register("center_crop")
def center_crop(size: int | None = None) -> Op:
  size = _size("center_crop", size)
  return _image_op(lambda image, _: np.ascontiguousarray(center_crop_array(to_array(image), size)))


@register("resize")
def resize(size: int | None = None, interpolation: str = "pil_bilinear") -> Op:
  size = _size("resize", size)
  interpolation = _interpolation("resize", interpolation)
  return _image_op(lambda image, _: resize_array(to_array(image), size, size, interpolation))


# ----------------------------------------------------------------------------------------------------
# Views.


def build(
  spec: str | Sequence[str],
  *,
  image_size: int | None = None,
  crop_scale: Sequence[float] | None = None,
  eval_resize: int | None = None,
) -> Augmentation:
  """Builds a spec; ops that leave out `size` get `image_size` (resize_short: `eval_resize`, default
  image_size / 0.875) and random_resized_crop without `scale` gets `crop_scale`.

  Raises ValueError naming the op for unknown names or bad arguments.
  """
  if eval_resize is None and image_size is not None:
    eval_resize = int(image_size / EVAL_CROP_FRACTION)
  op_defaults = {"resize_short": {"size": eval_resize}}
  if crop_scale is not None:
    op_defaults["random_resized_crop"] = {"scale": tuple(crop_scale)}
  return augment_spec.compose(
    spec, defaults={"size": image_size}, op_defaults=op_defaults, output_size=image_size
  )


def build_views(
  specs: Sequence[str | Sequence[str]],
  *,
  image_size: int,
  crop_scale: Sequence[float] | None = None,
) -> tuple[Augmentation, ...]:
  """One Augmentation per view spec (the pretraining pipeline uses two)."""
  return tuple(build(spec, image_size=image_size, crop_scale=crop_scale) for spec in specs)
