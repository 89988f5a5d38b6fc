"""Image augmentations as small named ops, composed from a spec string.

Each op is built by a registered factory and has the signature `op(data, rng) -> data`: it reads
`data["image"]` and returns a new dict with the new image (the input dict is not changed). All
randomness comes from the `np.random.Generator` passed in, so a view is a function of (image, rng).

A spec is a string of ops separated by "|", each a name with optional Python-literal arguments:

    "decode|random_resized_crop(224, scale=(0.08, 1.0))|flip|color_jitter(p=0.8)|grayscale(0.2)|blur"

or a list of such op strings. Ops that take `size` (or `scale`, for random_resized_crop) use the
pipeline's image size (crop scale) when the spec leaves it out, so one spec serves every resolution.

Images travel between ops as uint8 [H, W, 3] RGB arrays (or, straight after `decode`, as still
encoded bytes); `Augmentation.__call__` returns uint8 [S, S, 3]. Normalization to floats happens on
the device, not here. JPEGs are decoded by libjpeg-turbo (through simplejpeg), other formats by
OpenCV; resizing and filtering run in OpenCV (SIMD, one thread per call: the pipeline's own workers
are the parallelism).

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

Interpolation names: "area", "nearest", "bilinear", "bicubic", "lanczos" resize with OpenCV (no
antialiasing filter except "area"; when enlarging, "area" repeats source pixels and blends only
across their edges, close to nearest-neighbour, where "bilinear" blends throughout); "pil_nearest", "pil_bilinear", "pil_bicubic", "pil_lanczos",
"pil_box" resize with Pillow's antialiased filters, as torchvision's PIL transforms (and so the
official evaluation and fine-tuning recipes) do.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image

# One thread per OpenCV call: images here are small and the pipeline runs many calls at once
# (grain threads or worker processes); OpenCV's own thread pool would only add contention.
cv2.setNumThreads(1)

Data = dict[str, Any]
Op = Callable[[Data, np.random.Generator], Data]

# The two views of the official ViC-MAE pretraining recipe (view 1 blurred, view 2 solarized).
DEFAULT_VIEW_SPECS = (
  "decode|random_resized_crop|flip|color_jitter|grayscale|blur",
  "decode|random_resized_crop|flip|color_jitter|grayscale|solarize",
)
# The fast path measured in benchmarks/input_pipeline.py.
CROP_FLIP_SPEC = "decode|random_resized_crop|flip"
# Evaluation: torchvision Resize(S / 0.875, bicubic) + CenterCrop(S) when `size` is left to the pipeline.
EVAL_CROP_FRACTION = 224 / 256

_CV2_INTERPOLATIONS = {
  "area": cv2.INTER_AREA,
  "nearest": cv2.INTER_NEAREST,
  "bilinear": cv2.INTER_LINEAR,
  "bicubic": cv2.INTER_CUBIC,
  "lanczos": cv2.INTER_LANCZOS4,
}
_PIL_INTERPOLATIONS = {
  "pil_nearest": Image.Resampling.NEAREST,
  "pil_bilinear": Image.Resampling.BILINEAR,
  "pil_bicubic": Image.Resampling.BICUBIC,
  "pil_lanczos": Image.Resampling.LANCZOS,
  "pil_box": Image.Resampling.BOX,
}
INTERPOLATIONS = tuple(_CV2_INTERPOLATIONS) + tuple(_PIL_INTERPOLATIONS)

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Registers an op factory under `name` (used by specs)."""

  def decorator(factory: Callable[..., Op]) -> Callable[..., Op]:
    if name in _REGISTRY:
      raise ValueError(f"augmentation op {name!r} is registered twice")
    _REGISTRY[name] = factory
    return factory

  return decorator


def registered_ops() -> tuple[str, ...]:
  """Names usable in specs."""
  return tuple(sorted(_REGISTRY))


# ----------------------------------------------------------------------------------------------------
# Images: encoded bytes, arrays, and the conversions between them.

# cv2.IMREAD_REDUCED_* without its colour bits (those come from IMREAD_COLOR_RGB): libjpeg DCT scaling.
_REDUCED_DECODE_FLAGS = {1: 0, 2: 16, 4: 32, 8: 64}
_DECODE_FLAGS = (
  cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
)  # pixels as stored, like PIL and tf.io
_JPEG_START = b"\xff\xd8"


@dataclasses.dataclass(frozen=True)
class EncodedImage:
  """Image bytes not decoded yet (what `decode` hands on), so a crop can choose the decode scale."""

  data: bytes

  @property
  def size(self) -> tuple[int, int]:
    """(height, width) from the header alone."""
    if self.data[:2] == _JPEG_START:
      try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(self.data)
        return height, width
      except ValueError:
        pass  # Pillow below reads what libjpeg-turbo's header parser refuses, or says why not
    try:
      with Image.open(io.BytesIO(self.data)) as image:
        width, height = image.size
    except Exception as error:  # PIL raises several types for undecodable bytes
      raise ValueError(f"cannot decode image bytes ({len(self.data)} bytes): {error}") from error
    return height, width


def decode_image(data: bytes, reduction: int = 1) -> np.ndarray:
  """uint8 [H, W, 3] RGB from encoded bytes; reduction 2, 4 or 8 decodes JPEGs at that fraction of
  the size (ceil(H / reduction) x ceil(W / reduction), libjpeg's DCT scaling).

  JPEGs go to libjpeg-turbo through simplejpeg (with the accurate IDCT: the fast one saves ~3% of
  the time and moves pixels by ~2 grey levels on average at quality 90+), other formats to
  OpenCV. What those refuse (CMYK JPEGs, damaged files, formats OpenCV lacks) goes to Pillow,
  which decodes it or raises; a ValueError then says the bytes cannot be decoded.
  """
  if data[:2] == _JPEG_START:
    try:
      if reduction == 1:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
      height, width, _, _ = simplejpeg.decode_jpeg_header(data)
      return simplejpeg.decode_jpeg(
        data, colorspace="RGB", min_height=-(-height // reduction), min_width=-(-width // reduction)
      )
    except ValueError:
      pass  # CMYK, truncated or damaged: Pillow below decodes it or says why not
  else:
    try:
      image = cv2.imdecode(
        np.frombuffer(data, np.uint8), _DECODE_FLAGS | _REDUCED_DECODE_FLAGS[reduction]
      )
    except cv2.error:
      image = None
    if image is not None:
      return image
  try:
    with Image.open(io.BytesIO(bytes(data))) as pil:
      return np.asarray(_rgb(pil))
  except Exception as error:  # PIL raises several types for undecodable bytes
    raise ValueError(f"cannot decode image bytes ({len(data)} bytes): {error}") from error


def _rgb(image: Image.Image) -> Image.Image:
  return image if image.mode == "RGB" else image.convert("RGB")


def to_array(image: Any) -> np.ndarray:
  """uint8 [H, W, 3] RGB from encoded bytes, an EncodedImage, a PIL image or a uint8 [H, W(, 1|3|4)] array."""
  if isinstance(image, EncodedImage):
    return decode_image(image.data)
  if isinstance(image, (bytes, bytearray, memoryview)):
    return decode_image(bytes(image))
  if isinstance(image, Image.Image):
    return np.asarray(_rgb(image))
  array = np.asarray(image)
  if (
    array.dtype != np.uint8
    or array.ndim not in (2, 3)
    or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4))
  ):
    raise ValueError(
      f"image array must be uint8 [H, W] or [H, W, 1|3|4], got {array.dtype} {array.shape}"
    )
  if array.ndim == 3 and array.shape[-1] == 4:
    array = array[..., :3]  # alpha dropped, as PIL's convert("RGB") does
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_GRAY2RGB)
  return array


def _with_image(data: Data, image: Any) -> Data:
  out = dict(data)
  out["image"] = image
  return out


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


def resize_array(image: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
  """uint8 [H, W, 3] -> [height, width, 3] with one of INTERPOLATIONS (OpenCV, or Pillow for "pil_*")."""
  if interpolation in _PIL_INTERPOLATIONS:
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((width, height), _PIL_INTERPOLATIONS[interpolation]))
  return cv2.resize(image, (width, height), interpolation=_CV2_INTERPOLATIONS[interpolation])


def _lut(image: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Applies a per-value table (256 floats, rounded and clipped to uint8) to every channel."""
  table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
  return cv2.LUT(np.ascontiguousarray(image), table)


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


def decode_reduction(box: tuple[int, int, int, int], size: int) -> int:
  """The largest libjpeg scale-down (1, 2, 4 or 8) that still leaves the crop `size` pixels on each side."""
  smaller_side = min(box[2], box[3])
  for reduction in (8, 4, 2):
    if smaller_side >= reduction * size:
      return reduction
  return 1


def crop_and_resize(
  image: np.ndarray, box: tuple[int, int, int, int], size: int, interpolation: str
) -> np.ndarray:
  """Crops box=(top, left, height, width) and resizes the crop (only its pixels) to size x size."""
  top, left, crop_height, crop_width = box
  return resize_array(
    image[top : top + crop_height, left : left + crop_width], size, size, interpolation
  )


def decode_crop_and_resize(
  image: EncodedImage,
  box: tuple[int, int, int, int],
  full_size: tuple[int, int],
  size: int,
  interpolation: str,
) -> np.ndarray:
  """crop_and_resize of an encoded image, decoded at reduced scale when the crop is large enough.

  `box` is in full-resolution pixels; at reduced scale it is mapped onto the decoded grid (to the
  nearest decoded pixel, at most half a decoded pixel off).
  """
  reduction = decode_reduction(box, size)
  pixels = decode_image(image.data, reduction)
  height, width = full_size
  if pixels.shape[:2] != (height, width):
    scale_y, scale_x = pixels.shape[0] / height, pixels.shape[1] / width
    top, left, crop_height, crop_width = box
    y0, y1 = round(top * scale_y), round((top + crop_height) * scale_y)
    x0, x1 = round(left * scale_x), round((left + crop_width) * scale_x)
    y0, x0 = min(y0, pixels.shape[0] - 1), min(x0, pixels.shape[1] - 1)
    box = (y0, x0, max(min(y1, pixels.shape[0]) - y0, 1), max(min(x1, pixels.shape[1]) - x0, 1))
  return crop_and_resize(pixels, box, size, interpolation)


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

  def op(data: Data, rng: np.random.Generator) -> Data:
    image = data["image"]
    if isinstance(image, (bytes, bytearray, memoryview)):
      image = EncodedImage(bytes(image))
    if isinstance(image, EncodedImage):
      full_size = image.size
      box = random_resized_crop_box(*full_size, scale, ratio, rng)
      return _with_image(data, decode_crop_and_resize(image, box, full_size, size, interpolation))
    pixels = to_array(image)
    box = random_resized_crop_box(pixels.shape[0], pixels.shape[1], scale, ratio, rng)
    return _with_image(data, crop_and_resize(pixels, box, size, interpolation))

  return op


# ----------------------------------------------------------------------------------------------------
# Simple ops.


@register("decode")
def decode() -> Op:
  """Encoded bytes stay encoded (a following crop picks the decode scale); anything else becomes an array."""

  def op(data: Data, rng: np.random.Generator) -> Data:
    del rng
    image = data["image"]
    if isinstance(image, (bytes, bytearray, memoryview)):
      return _with_image(data, EncodedImage(bytes(image)))
    if isinstance(image, EncodedImage):
      return data
    return _with_image(data, to_array(image))

  return op


@register("flip")
def flip(p: float = 0.5) -> Op:
  p = _check_probability("flip", p)

  def op(data: Data, rng: np.random.Generator) -> Data:
    if rng.random() >= p:
      return data
    return _with_image(data, cv2.flip(np.ascontiguousarray(to_array(data["image"])), 1))

  return op


def grayscale_image(image: Any) -> np.ndarray:
  """ITU-R 601-2 luma (299, 587, 114 per mille, rounded) in all three channels."""
  luma = cv2.cvtColor(np.ascontiguousarray(to_array(image)), cv2.COLOR_RGB2GRAY)
  return cv2.cvtColor(luma, cv2.COLOR_GRAY2RGB)


@register("grayscale")
def grayscale(p: float = 0.2) -> Op:
  p = _check_probability("grayscale", p)

  def op(data: Data, rng: np.random.Generator) -> Data:
    if rng.random() >= p:
      return data
    return _with_image(data, grayscale_image(data["image"]))

  return op


def solarize_array(image: Any, threshold: int) -> np.ndarray:
  """uint8 [H, W, 3] with every value >= threshold replaced by 255 - value."""
  values = np.arange(256, dtype=np.float32)
  return _lut(to_array(image), np.where(values >= threshold, 255 - values, values))


@register("solarize")
def solarize(p: float = 0.2, threshold: int = 128) -> Op:
  p = _check_probability("solarize", p)

  def op(data: Data, rng: np.random.Generator) -> Data:
    if rng.random() >= p:
      return data
    return _with_image(data, solarize_array(data["image"], threshold))

  return op


# ----------------------------------------------------------------------------------------------------
# Colour jitter.

_VALUES = np.arange(256, dtype=np.float64)


def adjust_brightness(image: Any, factor: float) -> np.ndarray:
  """Blend with black: clip(factor * x) (PIL ImageEnhance.Brightness)."""
  return _lut(to_array(image), factor * _VALUES)


def adjust_contrast(image: Any, factor: float) -> np.ndarray:
  """Blend with the mean luma (rounded): clip(mean + factor * (x - mean)) (PIL ImageEnhance.Contrast)."""
  image = np.ascontiguousarray(to_array(image))
  mean = np.floor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean() + 0.5)
  return _lut(image, mean + factor * (_VALUES - mean))


def adjust_saturation(image: Any, factor: float) -> np.ndarray:
  """Blend with the luma image: clip(luma + factor * (x - luma)) (PIL ImageEnhance.Color)."""
  image = np.ascontiguousarray(to_array(image))
  return cv2.addWeighted(image, factor, grayscale_image(image), 1.0 - factor, 0.0)


def hue_rotation_matrix(hue_factor: float) -> np.ndarray:
  """[3, 3] rotation of RGB vectors about the grey axis (1, 1, 1) by hue_factor turns."""
  angle = 2.0 * np.pi * hue_factor
  cos, sin = np.cos(angle), np.sin(angle)
  diagonal_rest, cross = (1.0 - cos) / 3.0, sin / np.sqrt(3.0)
  return np.array(
    [
      [cos + diagonal_rest, diagonal_rest - cross, diagonal_rest + cross],
      [diagonal_rest + cross, cos + diagonal_rest, diagonal_rest - cross],
      [diagonal_rest - cross, diagonal_rest + cross, cos + diagonal_rest],
    ],
    np.float32,
  )


def adjust_hue(image: Any, hue_factor: float) -> np.ndarray:
  """Rotates hue by hue_factor turns (in [-0.5, 0.5]) as a rotation about the grey axis.

  This is the hue jitter of the FFCV pipeline the official recipe trains with: greys stay fixed,
  pure red turns to pure green at 1/3 turn. A PIL 8-bit HSV round trip, torchvision's PIL path, costs
  about ten times more for the same visual effect.
  """
  if not -0.5 <= hue_factor <= 0.5:
    raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
  return cv2.transform(np.ascontiguousarray(to_array(image)), hue_rotation_matrix(hue_factor))


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

  def op(data: Data, rng: np.random.Generator) -> Data:
    if rng.random() >= p:
      return data
    params = draw_jitter_params(rng, brightness, contrast, saturation, hue)
    return _with_image(data, apply_jitter(data["image"], params))

  return op


# ----------------------------------------------------------------------------------------------------
# Gaussian blur.


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
  """Normalized Gaussian taps [kernel_size] at -(k-1)/2 .. (k-1)/2."""
  half = (kernel_size - 1) * 0.5
  x = np.linspace(-half, half, kernel_size)
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return (taps / taps.sum()).astype(np.float32)


def gaussian_blur_array(image: Any, sigma: float, kernel_size: tuple[int, int]) -> np.ndarray:
  """Separable Gaussian blur of uint8 [H, W, C] with reflect padding; kernel_size = (width, height)."""
  kernel_width, kernel_height = kernel_size
  return cv2.sepFilter2D(
    np.ascontiguousarray(to_array(image)),
    -1,
    gaussian_kernel1d(kernel_width, sigma),
    gaussian_kernel1d(kernel_height, sigma),
    borderType=cv2.BORDER_REFLECT_101,  # torch "reflect": the edge pixel is not repeated
  )


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

  def op(data: Data, rng: np.random.Generator) -> Data:
    if rng.random() >= p:
      return data
    drawn_sigma = float(rng.uniform(sigma[0], sigma[1]))
    return _with_image(data, gaussian_blur_array(data["image"], drawn_sigma, kernel))

  return op


# ----------------------------------------------------------------------------------------------------
# Deterministic resizing (evaluation).


@register("resize_short")
def resize_short(size: int | None = None, interpolation: str = "pil_bicubic") -> Op:
  """Shorter side to `size` (torchvision Resize(int)); default size = image size / 0.875."""
  size = _size("resize_short", size)
  interpolation = _interpolation("resize_short", interpolation)

  def op(data: Data, rng: np.random.Generator) -> Data:
    del rng
    image = to_array(data["image"])
    height, width = image.shape[:2]
    if width <= height:
      new_width, new_height = size, int(size * height / width)
    else:
      new_width, new_height = int(size * width / height), size
    if (new_height, new_width) == (height, width):
      return _with_image(data, image)
    return _with_image(data, resize_array(image, new_width, new_height, interpolation))

  return op


def center_crop_array(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision CenterCrop: top = round((H - S) / 2); zero padding where the image is smaller."""
  height, width = image.shape[:2]
  if height < size or width < size:
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    image = np.pad(
      image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    height, width = image.shape[:2]
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return image[top : top + size, left : left + size]


@register("center_crop")
def center_crop(size: int | None = None) -> Op:
  size = _size("center_crop", size)

  def op(data: Data, rng: np.random.Generator) -> Data:
    del rng
    return _with_image(data, np.ascontiguousarray(center_crop_array(to_array(data["image"]), size)))

  return op


@register("resize")
def resize(size: int | None = None, interpolation: str = "pil_bilinear") -> Op:
  size = _size("resize", size)
  interpolation = _interpolation("resize", interpolation)

  def op(data: Data, rng: np.random.Generator) -> Data:
    del rng
    return _with_image(data, resize_array(to_array(data["image"]), size, size, interpolation))

  return op


# ----------------------------------------------------------------------------------------------------
# Specs.


def parse_spec(spec: str | Sequence[str]) -> list[tuple[str, tuple, dict]]:
  """ "a|b(1, x=2)" or ["a", "b(1, x=2)"] -> [("a", (), {}), ("b", (1,), {"x": 2})]. Literals only."""
  if isinstance(spec, str):
    parts = [part.strip() for part in spec.split("|")]
  else:
    parts = [str(part).strip() for part in spec]
  ops = []
  for part in parts:
    if not part:
      raise ValueError(f"augmentation spec {spec!r} has an empty op")
    try:
      node = ast.parse(part, mode="eval").body
    except SyntaxError as error:
      raise ValueError(
        f"augmentation op {part!r} is not `name` or `name(args)`: {error}"
      ) from error
    if isinstance(node, ast.Name):
      ops.append((node.id, (), {}))
      continue
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      raise ValueError(f"augmentation op {part!r} is not `name` or `name(args)`")
    try:
      args = tuple(ast.literal_eval(arg) for arg in node.args)
      kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError as error:
      raise ValueError(f"augmentation op {part!r}: arguments must be Python literals") from error
    ops.append((node.func.id, args, kwargs))
  return ops


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """A composed spec: `aug(image, rng) -> uint8 [S, S, 3]` (image: bytes, uint8 array or PIL image)."""

  spec: str
  ops: tuple[Op, ...]
  output_size: int | None

  def apply(self, data: Data, rng: np.random.Generator) -> Data:
    for op in self.ops:
      data = op(data, rng)
    return data

  def __call__(self, image: Any, rng: np.random.Generator) -> np.ndarray:
    out = np.ascontiguousarray(to_array(self.apply({"image": image}, rng)["image"]))
    if self.output_size is not None and out.shape[:2] != (self.output_size, self.output_size):
      raise ValueError(
        f"augmentation {self.spec!r} produced {out.shape}, expected [{self.output_size}, {self.output_size}, 3]"
      )
    return out


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
  ops = []
  if eval_resize is None and image_size is not None:
    eval_resize = int(image_size / EVAL_CROP_FRACTION)
  for name, args, kwargs in parse_spec(spec):
    if name not in _REGISTRY:
      raise ValueError(
        f"unknown augmentation op {name!r} in {spec!r}; known ops: {', '.join(registered_ops())}"
      )
    factory = _REGISTRY[name]
    signature = inspect.signature(factory)
    try:
      bound = signature.bind_partial(*args, **kwargs)
    except TypeError as error:
      raise ValueError(f"augmentation op {name!r}: {error}") from error
    arguments = dict(bound.arguments)
    if "size" in signature.parameters and "size" not in arguments:
      arguments["size"] = eval_resize if name == "resize_short" else image_size
    if name == "random_resized_crop" and "scale" not in arguments and crop_scale is not None:
      arguments["scale"] = tuple(crop_scale)
    ops.append(factory(**arguments))
  text = spec if isinstance(spec, str) else "|".join(spec)
  return Augmentation(text, tuple(ops), image_size)


def build_views(
  specs: Sequence[str | Sequence[str]],
  *,
  image_size: int,
  crop_scale: Sequence[float] | None = None,
) -> tuple[Augmentation, ...]:
  """One Augmentation per view spec (the pretraining pipeline uses two)."""
  return tuple(build(spec, image_size=image_size, crop_scale=crop_scale) for spec in specs)
