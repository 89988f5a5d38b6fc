"""Image pixels in and out: decoding, resizing and the pixel kernels the augmentation ops use.

Every function here is deterministic, numpy in / numpy out: uint8 [H, W, 3] RGB arrays (or encoded
bytes to decode). The random draws and the named ops built on these kernels live in `augment.py`.

JPEGs are decoded by libjpeg-turbo (through simplejpeg), at full or reduced (1/2, 1/4, 1/8) scale,
with dimensions read from the header alone; other formats by OpenCV, and what both refuse by Pillow.
Resizing and filtering run in OpenCV (SIMD, one thread per call: the pipeline's own workers are the
parallelism), or in Pillow for the "pil_*" interpolations.

Interpolation names: "area", "nearest", "bilinear", "bicubic", "lanczos" resize with OpenCV (no
antialiasing filter except "area"; when enlarging, "area" repeats source pixels and blends only
across their edges, close to nearest-neighbour, where "bilinear" blends throughout); "pil_nearest",
"pil_bilinear", "pil_bicubic", "pil_lanczos", "pil_box" resize with Pillow's antialiased filters, as
torchvision's PIL transforms (and so the official evaluation and fine-tuning recipes) do.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image

# One thread per OpenCV call: images here are small and the pipeline runs many calls at once
# (grain threads or worker processes); OpenCV's own thread pool would only add contention.
cv2.setNumThreads(1)

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

# ----------------------------------------------------------------------------------------------------
# Encoded images and decoding.

# cv2.IMREAD_REDUCED_* without its colour bits (those come from IMREAD_COLOR_RGB): libjpeg DCT scaling.
_REDUCED_DECODE_FLAGS = {1: 0, 2: 16, 4: 32, 8: 64}
# Pixels as stored (EXIF orientation not applied), like PIL and tf.io.
_DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
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


# ----------------------------------------------------------------------------------------------------
# Resizing and cropping.


def resize_array(image: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
  """uint8 [H, W, 3] -> [height, width, 3] with one of INTERPOLATIONS (OpenCV, or Pillow for "pil_*")."""
  if interpolation in _PIL_INTERPOLATIONS:
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((width, height), _PIL_INTERPOLATIONS[interpolation]))
  return cv2.resize(image, (width, height), interpolation=_CV2_INTERPOLATIONS[interpolation])


def crop_and_resize(
  image: np.ndarray, box: tuple[int, int, int, int], size: int, interpolation: str
) -> np.ndarray:
  """Crops box=(top, left, height, width) and resizes the crop (only its pixels) to size x size."""
  top, left, crop_height, crop_width = box
  return resize_array(
    image[top : top + crop_height, left : left + crop_width], size, size, interpolation
  )


def decode_reduction(box: tuple[int, int, int, int], size: int) -> int:
  """The largest libjpeg scale-down (1, 2, 4 or 8) that still leaves the crop `size` pixels on each side."""
  smaller_side = min(box[2], box[3])
  for reduction in (8, 4, 2):
    if smaller_side >= reduction * size:
      return reduction
  return 1


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


def flip_array(image: Any) -> np.ndarray:
  """Horizontal mirror of uint8 [H, W, 3]."""
  return cv2.flip(np.ascontiguousarray(to_array(image)), 1)


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


# ----------------------------------------------------------------------------------------------------
# Colour.

_VALUES = np.arange(256, dtype=np.float64)


def _lut(image: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Applies a per-value table (256 floats, rounded and clipped to uint8) to every channel."""
  table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
  return cv2.LUT(np.ascontiguousarray(image), table)


def grayscale_image(image: Any) -> np.ndarray:
  """ITU-R 601-2 luma (299, 587, 114 per mille, rounded) in all three channels."""
  luma = cv2.cvtColor(np.ascontiguousarray(to_array(image)), cv2.COLOR_RGB2GRAY)
  return cv2.cvtColor(luma, cv2.COLOR_GRAY2RGB)


def solarize_array(image: Any, threshold: int) -> np.ndarray:
  """uint8 [H, W, 3] with every value >= threshold replaced by 255 - value."""
  values = np.arange(256, dtype=np.float32)
  return _lut(to_array(image), np.where(values >= threshold, 255 - values, values))


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
