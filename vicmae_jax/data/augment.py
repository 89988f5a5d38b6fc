"""Image augmentations as small named ops, composed from a spec string.

Each op is built by a registered factory and has the signature `op(data, rng) -> data`: it reads
`data["image"]` and returns a new dict with the new image (the input dict is not changed). All
randomness comes from the `np.random.Generator` passed in, so a view is a function of (image, rng).

A spec is a string of ops separated by "|", each a name with optional Python-literal arguments:

    "decode|random_resized_crop(224, scale=(0.08, 1.0))|flip|color_jitter(p=0.8)|grayscale(0.2)|blur"

or a list of such op strings. Ops that take `size` (or `scale`, for random_resized_crop) use the
pipeline's image size (crop scale) when the spec leaves it out, so one spec serves every resolution.

Images travel as PIL images between ops (uint8 RGB); `Augmentation.__call__` returns uint8 [S, S, 3].
Normalization to floats happens on the device, not here.

Ops (probabilities default to the ViC-MAE recipe):
    decode                      bytes (JPEG/PNG) -> lazy PIL image; arrays -> PIL; PIL passes through.
    random_resized_crop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3))
                                torchvision RandomResizedCrop (10 tries, then a centre crop), bilinear.
                                On a not-yet-decoded JPEG it lets libjpeg decode at 1/2, 1/4 or 1/8
                                scale when the crop is that much larger than `size`.
    flip(p=0.5)                 horizontal flip.
    color_jitter(p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
                                torchvision ColorJitter: factors uniform in [1-x, 1+x] (hue in
                                [-x, x] turns), applied in a random order; brightness, contrast and
                                saturation as PIL ImageEnhance, hue as a rotation about the grey axis.
    grayscale(p=0.2)            ITU-R 601-2 luma, replicated to 3 channels.
    blur(p=1.0, sigma=(0.1, 2.0), kernel_size=(5, 9))
                                torchvision GaussianBlur: sigma uniform in the range, kernel
                                (width, height), reflect padding.
    solarize(p=0.2, threshold=128)   pixels >= threshold become 255 - pixel.
    resize_short(size, interpolation="bicubic")   shorter side to `size`, aspect kept.
    center_crop(size)           torchvision CenterCrop (pads with zeros when the image is smaller).
    resize(size, interpolation="bilinear")        to size x size.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

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

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

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
    return tuple(sorted(_REGISTRY))


# ----------------------------------------------------------------------------------------------------
# Helpers shared by ops.


def to_pil(image: Any) -> Image.Image:
    """PIL RGB image from bytes (lazy: decoded on first pixel access), uint8 [H, W, 3] or a PIL image."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            return Image.open(io.BytesIO(bytes(image)))
        except Exception as error:  # PIL raises several types for undecodable bytes
            raise ValueError(f"cannot decode image bytes ({len(image)} bytes): {error}") from error
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"image array must be uint8 [H, W] or [H, W, 3], got {array.dtype} {array.shape}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def to_array(image: Any) -> np.ndarray:
    """uint8 [H, W, 3] from anything `to_pil` accepts."""
    return np.asarray(_rgb(to_pil(image)))


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


# ----------------------------------------------------------------------------------------------------
# Random resized crop.


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
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


def crop_and_resize(image: Image.Image, box: tuple[int, int, int, int], size: int, resample: int) -> Image.Image:
    """Crops box=(top, left, height, width) (original pixel coordinates) and resizes to size x size.

    When the image is a JPEG not yet decoded and the crop is at least twice `size` on both sides,
    libjpeg decodes directly at a reduced scale (DCT scaling) and the box is scaled to match.
    """
    top, left, crop_height, crop_width = box
    region = (left, top, left + crop_width, top + crop_height)
    if image.format == "JPEG" and image.tile and min(crop_width, crop_height) >= 2 * size:
        full_width, full_height = image.size
        # draft picks the largest s in {1, 2, 4, 8} with full // s >= requested, so the crop keeps >= size pixels.
        requested = (-(-full_width * size // crop_width), -(-full_height * size // crop_height))
        drafted = image.draft("RGB", requested)
        if drafted is not None and drafted[1][2] != full_width:
            scale = full_width / drafted[1][2]
            # Fractional box at the reduced scale: resize reads it directly, no integer crop.
            return _rgb(image).resize((size, size), resample, box=tuple(c / scale for c in region))
    # Crop first, then resize (torchvision's resized_crop): a resize box would let the filter read
    # pixels outside the crop.
    return _rgb(image.crop(region)).resize((size, size), resample)


@register("random_resized_crop")
def random_resized_crop(
    size: int | None = None,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    interpolation: str = "bilinear",
) -> Op:
    size = _size("random_resized_crop", size)
    scale = _pair("random_resized_crop", "scale", scale)
    ratio = _pair("random_resized_crop", "ratio", ratio)
    if not 0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"random_resized_crop: scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"random_resized_crop: ratio must satisfy 0 < lo <= hi, got {ratio}")
    resample = _resample("random_resized_crop", interpolation)

    def op(data: Data, rng: np.random.Generator) -> Data:
        image = to_pil(data["image"])
        width, height = image.size
        box = random_resized_crop_box(height, width, scale, ratio, rng)
        return _with_image(data, crop_and_resize(image, box, size, resample))

    return op


def _resample(name: str, interpolation: str) -> int:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"{name}: interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
    return _INTERPOLATIONS[interpolation]


# ----------------------------------------------------------------------------------------------------
# Simple ops.


@register("decode")
def decode() -> Op:
    """Opens encoded bytes lazily so a following crop can decode at reduced scale."""

    def op(data: Data, rng: np.random.Generator) -> Data:
        del rng
        return _with_image(data, to_pil(data["image"]))

    return op


@register("flip")
def flip(p: float = 0.5) -> Op:
    p = _check_probability("flip", p)

    def op(data: Data, rng: np.random.Generator) -> Data:
        if rng.random() >= p:
            return data
        return _with_image(data, _rgb(to_pil(data["image"])).transpose(Image.Transpose.FLIP_LEFT_RIGHT))

    return op


def grayscale_image(image: Image.Image) -> Image.Image:
    """ITU-R 601-2 luma (299, 587, 114 per mille) in all three channels."""
    return _rgb(image).convert("L").convert("RGB")


@register("grayscale")
def grayscale(p: float = 0.2) -> Op:
    p = _check_probability("grayscale", p)

    def op(data: Data, rng: np.random.Generator) -> Data:
        if rng.random() >= p:
            return data
        return _with_image(data, grayscale_image(to_pil(data["image"])))

    return op


def solarize_array(image: np.ndarray, threshold: int) -> np.ndarray:
    """uint8 [H, W, 3] with every value >= threshold replaced by 255 - value."""
    return np.where(image >= threshold, 255 - image, image).astype(np.uint8)


@register("solarize")
def solarize(p: float = 0.2, threshold: int = 128) -> Op:
    p = _check_probability("solarize", p)

    def op(data: Data, rng: np.random.Generator) -> Data:
        if rng.random() >= p:
            return data
        return _with_image(data, solarize_array(to_array(data["image"]), threshold))

    return op


# ----------------------------------------------------------------------------------------------------
# Colour jitter.


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    """Blend with black: clip(factor * x)."""
    return ImageEnhance.Brightness(_rgb(image)).enhance(factor)


def adjust_contrast(image: Image.Image, factor: float) -> Image.Image:
    """Blend with the mean luma (rounded): clip(mean + factor * (x - mean))."""
    return ImageEnhance.Contrast(_rgb(image)).enhance(factor)


def adjust_saturation(image: Image.Image, factor: float) -> Image.Image:
    """Blend with the luma image: clip(luma + factor * (x - luma))."""
    return ImageEnhance.Color(_rgb(image)).enhance(factor)


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


def adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """Rotates hue by hue_factor turns (in [-0.5, 0.5]) as a rotation about the grey axis.

    This is the hue jitter of the FFCV pipeline the official recipe trains with: greys stay fixed,
    pure red turns to pure green at 1/3 turn. A PIL 8-bit HSV round trip, torchvision's PIL path, costs
    about ten times more for the same visual effect.
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    pixels = np.asarray(_rgb(image), dtype=np.float32)
    rotated = pixels.reshape(-1, 3) @ hue_rotation_matrix(hue_factor).T
    return Image.fromarray(_round_to_uint8(rotated).reshape(pixels.shape))


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


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


def apply_jitter(image: Image.Image, params: JitterParams) -> Image.Image:
    image = _rgb(image)
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
    p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1
) -> Op:
    p = _check_probability("color_jitter", p)
    for field, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ValueError(f"color_jitter: {field} must be >= 0, got {value}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"color_jitter: hue must be in [0, 0.5], got {hue}")

    def op(data: Data, rng: np.random.Generator) -> Data:
        if rng.random() >= p:
            return data
        params = draw_jitter_params(rng, brightness, contrast, saturation, hue)
        return _with_image(data, apply_jitter(to_pil(data["image"]), params))

    return op


# ----------------------------------------------------------------------------------------------------
# Gaussian blur.


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """Normalized Gaussian taps [kernel_size] at -(k-1)/2 .. (k-1)/2."""
    half = (kernel_size - 1) * 0.5
    x = np.linspace(-half, half, kernel_size)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def gaussian_blur_array(image: np.ndarray, sigma: float, kernel_size: tuple[int, int]) -> np.ndarray:
    """Separable Gaussian blur of uint8 [H, W, C] with reflect padding; kernel_size = (width, height)."""
    kernel_width, kernel_height = kernel_size
    out = image.astype(np.float32)
    for axis, size in ((1, kernel_width), (0, kernel_height)):
        taps = gaussian_kernel1d(size, sigma)
        half = size // 2
        pad_width = [(0, 0)] * out.ndim
        pad_width[axis] = (half, half)
        padded = np.pad(out, pad_width, mode="reflect")
        length = out.shape[axis]

        def window(k: int) -> np.ndarray:
            return padded[:, k : k + length] if axis == 1 else padded[k : k + length]

        acc = window(half) * taps[half]
        pair_sum = np.empty_like(acc)
        # Symmetric taps: add mirrored windows first, halving the multiplies.
        for k in range(half):
            np.add(window(k), window(size - 1 - k), out=pair_sum)
            pair_sum *= taps[k]
            acc += pair_sum
        out = acc
    return _round_to_uint8(out)


@register("blur")
def blur(p: float = 1.0, sigma: Sequence[float] = (0.1, 2.0), kernel_size: Sequence[int] = (5, 9)) -> Op:
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
        return _with_image(data, gaussian_blur_array(to_array(data["image"]), drawn_sigma, kernel))

    return op


# ----------------------------------------------------------------------------------------------------
# Deterministic resizing (evaluation).


@register("resize_short")
def resize_short(size: int | None = None, interpolation: str = "bicubic") -> Op:
    """Shorter side to `size` (torchvision Resize(int)); default size = image size / 0.875."""
    size = _size("resize_short", size)
    resample = _resample("resize_short", interpolation)

    def op(data: Data, rng: np.random.Generator) -> Data:
        del rng
        image = _rgb(to_pil(data["image"]))
        width, height = image.size
        if width <= height:
            new_size = (size, int(size * height / width))
        else:
            new_size = (int(size * width / height), size)
        if new_size == image.size:
            return _with_image(data, image)
        return _with_image(data, image.resize(new_size, resample))

    return op


def center_crop_array(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision CenterCrop: top = round((H - S) / 2); zero padding where the image is smaller."""
    height, width = image.shape[:2]
    if height < size or width < size:
        pad_h, pad_w = max(size - height, 0), max(size - width, 0)
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
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
def resize(size: int | None = None, interpolation: str = "bilinear") -> Op:
    size = _size("resize", size)
    resample = _resample("resize", interpolation)

    def op(data: Data, rng: np.random.Generator) -> Data:
        del rng
        return _with_image(data, _rgb(to_pil(data["image"])).resize((size, size), resample))

    return op


# ----------------------------------------------------------------------------------------------------
# Specs.


def parse_spec(spec: str | Sequence[str]) -> list[tuple[str, tuple, dict]]:
    """"a|b(1, x=2)" or ["a", "b(1, x=2)"] -> [("a", (), {}), ("b", (1,), {"x": 2})]. Literals only."""
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
            raise ValueError(f"augmentation op {part!r} is not `name` or `name(args)`: {error}") from error
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
    """A composed spec: `aug(image, rng) -> uint8 [S, S, 3]` (image: bytes, uint8 array or PIL)."""

    spec: str
    ops: tuple[Op, ...]
    output_size: int | None

    def apply(self, data: Data, rng: np.random.Generator) -> Data:
        for op in self.ops:
            data = op(data, rng)
        return data

    def __call__(self, image: Any, rng: np.random.Generator) -> np.ndarray:
        out = to_array(self.apply({"image": image}, rng)["image"])
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
            raise ValueError(f"unknown augmentation op {name!r} in {spec!r}; known ops: {', '.join(registered_ops())}")
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
    specs: Sequence[str | Sequence[str]], *, image_size: int, crop_scale: Sequence[float] | None = None
) -> tuple[Augmentation, ...]:
    """One Augmentation per view spec (the pretraining pipeline uses two)."""
    return tuple(build(spec, image_size=image_size, crop_scale=crop_scale) for spec in specs)
