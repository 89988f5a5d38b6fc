"""Each augmentation op against an independent expectation, then composed specs."""

import colorsys
import io
import itertools

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
from PIL import Image

from vicmae_jax.data import augment


def _photo(height=96, width=128) -> np.ndarray:
  """A real photo (scikit-image's astronaut), resized: uint8 [height, width, 3]."""
  return np.asarray(
    Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.BILINEAR)
  )


def _jpeg(image: np.ndarray, quality=95) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


def _luma(image: np.ndarray) -> np.ndarray:
  """ITU-R 601-2 luma as float: 0.299 R + 0.587 G + 0.114 B."""
  return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _run(op, image, seed=0):
  return augment.to_array(op({"image": image}, np.random.default_rng(seed))["image"])


# ---------------------------------------------------------------------------------------------------
# Ops alone.


def test_flip():
  image = _photo()
  np.testing.assert_array_equal(_run(augment.flip(p=1.0), image), image[:, ::-1])
  np.testing.assert_array_equal(_run(augment.flip(p=0.0), image), image)
  flipped = [
    np.array_equal(_run(augment.flip(), image, seed), image[:, ::-1]) for seed in range(400)
  ]
  assert 160 < sum(flipped) < 240  # p = 0.5


def test_grayscale_is_itu_601():
  image = _photo()
  out = _run(augment.grayscale(p=1.0), image)
  assert out.shape == image.shape
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  assert np.abs(out[..., 0].astype(np.float64) - _luma(image)).max() <= 1.0
  applied = sum(
    not np.array_equal(_run(augment.grayscale(), image, seed), image) for seed in range(500)
  )
  assert 70 < applied < 130  # p = 0.2


def test_solarize_by_hand():
  image = np.array([[[0, 127, 128], [129, 200, 255]]], np.uint8)
  expected = np.array([[[0, 127, 127], [126, 55, 0]]], np.uint8)
  np.testing.assert_array_equal(_run(augment.solarize(p=1.0), image), expected)
  np.testing.assert_array_equal(
    _run(augment.solarize(p=1.0, threshold=200), image), [[[0, 127, 128], [129, 55, 0]]]
  )
  np.testing.assert_array_equal(_run(augment.solarize(p=0.0), image), image)


def test_brightness_contrast_saturation_match_numpy_formulas():
  image = _photo(48, 64)
  x = image.astype(np.float64)
  for factor in (0.6, 1.0, 1.37):
    out = np.asarray(augment.adjust_brightness(Image.fromarray(image), factor)).astype(np.float64)
    assert np.abs(out - np.clip(x * factor, 0, 255)).max() <= 1.0

    mean = np.floor(_luma(image).mean() + 0.5)
    out = np.asarray(augment.adjust_contrast(Image.fromarray(image), factor)).astype(np.float64)
    assert np.abs(out - np.clip(mean + factor * (x - mean), 0, 255)).max() <= 1.5

    gray = np.round(_luma(image))[..., None]
    out = np.asarray(augment.adjust_saturation(Image.fromarray(image), factor)).astype(np.float64)
    assert np.abs(out - np.clip(gray + factor * (x - gray), 0, 255)).max() <= 1.5


def test_hue_rotation():
  red = np.zeros((2, 2, 3), np.uint8)
  red[..., 0] = 255
  np.testing.assert_array_equal(
    np.asarray(augment.adjust_hue(Image.fromarray(red), 1 / 3))[..., 1], 255
  )
  np.testing.assert_array_equal(
    np.asarray(augment.adjust_hue(Image.fromarray(red), 1 / 3))[..., [0, 2]], 0
  )
  grey = np.full((2, 2, 3), 77, np.uint8)
  np.testing.assert_array_equal(np.asarray(augment.adjust_hue(Image.fromarray(grey), 0.3)), grey)
  image = _photo(16, 16)
  np.testing.assert_array_equal(np.asarray(augment.adjust_hue(Image.fromarray(image), 0.0)), image)
  # The HSV hue (colorsys, an independent definition) moves by about the factor for unclipped colours.
  colours = np.random.default_rng(0).integers(0, 256, (200, 1, 3)).astype(np.uint8)
  for factor in (0.1, -0.07):
    out = np.asarray(augment.adjust_hue(Image.fromarray(colours), factor))
    shifts = []
    for before, after in zip(colours[:, 0] / 255, out[:, 0] / 255):
      h0, s0, v0 = colorsys.rgb_to_hsv(*before)
      h1, _, _ = colorsys.rgb_to_hsv(*after)
      if s0 > 0.3 and v0 > 0.3 and 0 < after.min() and after.max() < 1:
        shifts.append((h1 - h0 + 0.5) % 1.0 - 0.5)
    assert len(shifts) > 50
    assert np.abs(np.array(shifts) - factor).max() < 0.012
    assert abs(np.mean(shifts) - factor) < 0.003


def test_jitter_params_distribution():
  rng = np.random.default_rng(1)
  draws = [augment.draw_jitter_params(rng, 0.4, 0.4, 0.2, 0.1) for _ in range(4800)]
  orders = [d.order for d in draws]
  assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
  counts = np.array([orders.count(p) for p in itertools.permutations(range(4))])
  assert counts.min() > 120 and counts.max() < 280  # all 24 orders, about 200 each
  for field, lo, hi in (
    ("brightness", 0.6, 1.4),
    ("contrast", 0.6, 1.4),
    ("saturation", 0.8, 1.2),
    ("hue", -0.1, 0.1),
  ):
    values = np.array([getattr(d, field) for d in draws])
    assert lo <= values.min() and values.max() <= hi
    assert abs(values.mean() - (lo + hi) / 2) < 0.01 * (hi - lo) * 5
    assert values.min() < lo + 0.02 * (hi - lo) and values.max() > hi - 0.02 * (hi - lo)
  none = augment.draw_jitter_params(rng, 0.0, 0.4, 0.0, 0.0)
  assert none.brightness is None and none.saturation is None and none.hue is None


def test_apply_jitter_follows_the_drawn_order():
  image = Image.fromarray(_photo(32, 32))
  params = augment.JitterParams(
    order=(3, 2, 1, 0), brightness=1.3, contrast=0.7, saturation=1.1, hue=0.05
  )
  expected = augment.adjust_brightness(
    augment.adjust_contrast(augment.adjust_saturation(augment.adjust_hue(image, 0.05), 1.1), 0.7),
    1.3,
  )
  np.testing.assert_array_equal(
    np.asarray(augment.apply_jitter(image, params)), np.asarray(expected)
  )
  other = augment.JitterParams(
    order=(0, 1, 2, 3), brightness=1.3, contrast=0.7, saturation=1.1, hue=0.05
  )
  assert not np.array_equal(np.asarray(augment.apply_jitter(image, other)), np.asarray(expected))
  op = augment.color_jitter()
  applied = sum(
    not np.array_equal(_run(op, np.asarray(image), seed), np.asarray(image)) for seed in range(300)
  )
  assert 210 < applied < 270  # p = 0.8


def test_blur_matches_scipy_reference():
  image = _photo(40, 50)
  for sigma in (0.1, 0.8, 2.0):
    kx = augment.gaussian_kernel1d(5, sigma).astype(np.float64)
    ky = augment.gaussian_kernel1d(9, sigma).astype(np.float64)
    # Independent closed form of the taps, then a 2-D correlation; scipy "mirror" == torch "reflect".
    x = np.arange(-2, 3)
    np.testing.assert_allclose(
      kx,
      np.exp(-(x**2) / (2 * sigma**2)) / np.exp(-(x**2) / (2 * sigma**2)).sum(),
      rtol=1e-5,
      atol=1e-12,
    )
    kernel = np.outer(ky, kx)[..., None]
    reference = scipy.ndimage.correlate(image.astype(np.float64), kernel, mode="mirror")
    out = augment.gaussian_blur_array(image, sigma, (5, 9))
    assert np.abs(out - reference).max() <= 0.51 + 1e-3
  constant = np.full((20, 20, 3), 93, np.uint8)
  np.testing.assert_array_equal(augment.gaussian_blur_array(constant, 1.5, (5, 9)), constant)
  # Kernel (5, 9) is 5 wide and 9 tall: a single bright row spreads 4 rows up and down, a column only 2.
  row = np.zeros((21, 21, 3), np.uint8)
  row[10, 10] = 255
  spread = augment.gaussian_blur_array(row, 2.0, (5, 9))[..., 0] > 0
  assert spread[:, 10].sum() == 9 and spread[10, :].sum() == 5


def test_random_resized_crop_box_bounds_and_distribution():
  rng = np.random.default_rng(2)
  areas, aspects = [], []
  for _ in range(3000):
    top, left, h, w = augment.random_resized_crop_box(120, 160, (0.08, 1.0), (3 / 4, 4 / 3), rng)
    assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160 and h > 0 and w > 0
    areas.append(h * w / (120 * 160))
    aspects.append(w / h)
  areas, aspects = np.array(areas), np.array(aspects)
  assert areas.min() > 0.07 and areas.max() <= 1.0
  # Areas up to 9/16 fit at any allowed aspect on a 4:3 image, so the first try is kept: uniform there.
  counts, _ = np.histogram(areas, bins=6, range=(0.08, 0.5))
  assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
  assert (
    np.log(aspects).min() > np.log(3 / 4) - 0.05 and np.log(aspects).max() < np.log(4 / 3) + 0.05
  )
  # Log-uniform aspect: symmetric about 0 among first-try crops (wide crops fit more often above 9/16).
  assert abs(np.mean(np.log(aspects[areas < 0.5]))) < 0.015
  # Ten failed tries (a sliver image, whole-image crops) fall back to a centre crop with clamped aspect.
  assert augment.random_resized_crop_box(10, 100, (0.99, 1.0), (3 / 4, 4 / 3), rng) == (
    0,
    43,
    10,
    13,
  )
  assert augment.random_resized_crop_box(100, 10, (0.99, 1.0), (3 / 4, 4 / 3), rng) == (
    43,
    0,
    13,
    10,
  )


def _coverage_weights(n_in: int, n_out: int, two_tap: bool) -> np.ndarray:
  """[n_out, n_in] weights of OpenCV's INTER_AREA along one axis.

  Shrinking both axes, an output pixel averages the source pixels its footprint [o*s, (o+1)*s)
  covers, each weighted by the covered length. When either axis is enlarged, OpenCV blends, on
  each axis, the source pixel the footprint starts in and the next one, by the fraction of the
  footprint past the first one (kept in single precision, as OpenCV does).
  """
  scale = 1.0 / (n_out / n_in)
  weights = np.zeros((n_out, n_in))
  for o in range(n_out):
    if two_tap:
      first = int(np.floor(o * scale))
      frac = float(np.float32((o + 1) - (first + 1) * (n_out / n_in)))
      frac = 0.0 if frac <= 0 else frac - np.floor(frac)
      weights[o, first] += 1 - frac
      if frac > 0:
        weights[o, min(first + 1, n_in - 1)] += frac
    else:
      lo, hi = o * scale, (o + 1) * scale
      for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
        weights[o, i] = (min(hi, i + 1) - max(lo, i)) / scale
  return weights


def _area_resize_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Float [height, width, 3]: area-relation resampling written out in numpy (see _coverage_weights)."""
  two_tap = image.shape[0] < height or image.shape[1] < width
  rows = _coverage_weights(image.shape[0], height, two_tap)
  cols = _coverage_weights(image.shape[1], width, two_tap)
  return np.einsum("oi,ijc,pj->opc", rows, image.astype(np.float64), cols, optimize=True)


def test_area_resize_matches_coverage_reference():
  image = np.asarray(skimage.data.astronaut())
  # Shrinking, enlarging, mixed, odd sizes, and 300 -> 224 where 168 * 300 / 224 is an integer.
  for crop_height, crop_width in (
    (300, 410),
    (100, 90),
    (60, 300),
    (300, 60),
    (448, 448),
    (33, 77),
  ):
    crop = image[5 : 5 + crop_height, 7 : 7 + crop_width]
    for size in (224, 32):
      out = augment.crop_and_resize(image, (5, 7, crop_height, crop_width), size, "area")
      reference = _area_resize_reference(crop, size, size)
      assert out.shape == (size, size, 3) and out.dtype == np.uint8
      assert (
        np.abs(out - reference).max() <= 0.8
      )  # rounding (and OpenCV's fixed point when enlarging)
      assert np.abs(out - reference).mean() < 0.3


def test_random_resized_crop_op_equals_crop_then_resize():
  image = _photo(96, 128)
  box = augment.random_resized_crop_box(
    96, 128, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5)
  )
  top, left, h, w = box
  crop = image[top : top + h, left : left + w]
  out = _run(
    augment.random_resized_crop(32), image, seed=5
  )  # default: area, the official recipe's resize
  assert np.abs(out - _area_resize_reference(crop, 32, 32)).max() <= 0.8
  # Pillow's antialiased filters (torchvision's PIL semantics) by name.
  out = _run(augment.random_resized_crop(32, interpolation="pil_bilinear"), image, seed=5)
  np.testing.assert_array_equal(
    out, np.asarray(Image.fromarray(crop).resize((32, 32), Image.Resampling.BILINEAR))
  )
  # The same crop from encoded bytes (decoded by the crop; at full scale, the crop being smaller
  # than twice the output) and from pixels.
  data = _jpeg(image)
  decoded = augment.decode_image(data)
  from_bytes = augment.build("decode|random_resized_crop", image_size=64)(
    data, np.random.default_rng(5)
  )
  np.testing.assert_array_equal(from_bytes, _run(augment.random_resized_crop(64), decoded, seed=5))
  with pytest.raises(ValueError, match="interpolation must be one of"):
    augment.random_resized_crop(32, interpolation="cubic")


def test_decode_image():
  image = _photo(60, 80)
  data = _jpeg(image, quality=95)
  decoded = augment.decode_image(data)
  assert decoded.shape == (60, 80, 3) and decoded.dtype == np.uint8
  assert (
    np.abs(decoded.astype(np.int32) - np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).max()
    <= 1
  )
  assert np.abs(decoded.astype(np.int32) - image).mean() < 5.0  # JPEG at quality 95
  assert augment.EncodedImage(data).size == (60, 80)
  # Grayscale and CMYK JPEGs (ImageNet holds both) decode to the RGB Pillow makes of them.
  for mode in ("L", "CMYK"):
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, "JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(np.int32)
    assert np.abs(augment.decode_image(buffer.getvalue()).astype(np.int32) - expected).max() <= 1
  # Grayscale PNG -> 3 equal channels; GIF (Pillow fallback) -> RGB.
  buffer = io.BytesIO()
  Image.fromarray(image[..., 1]).save(buffer, "PNG")
  np.testing.assert_array_equal(
    augment.decode_image(buffer.getvalue()), np.repeat(image[..., 1:2], 3, axis=-1)
  )
  buffer = io.BytesIO()
  Image.fromarray(image).convert("P").save(buffer, "GIF")
  np.testing.assert_array_equal(
    augment.decode_image(buffer.getvalue()),
    np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")),
  )
  for bad in (b"", b"not an image", data[: len(data) // 2]):
    with pytest.raises(ValueError, match="cannot decode image bytes"):
      augment.decode_image(bad)


def test_reduced_scale_jpeg_decode_matches_full_decode():
  image = np.asarray(Image.fromarray(skimage.data.astronaut()))  # 512 x 512
  data = _jpeg(image)
  full = augment.decode_image(data)
  assert augment.decode_reduction((40, 60, 400, 400), 48) == 8
  assert augment.decode_reduction((0, 0, 100, 120), 48) == 2
  assert augment.decode_reduction((10, 20, 60, 50), 48) == 1
  assert augment.decode_image(data, 8).shape == (64, 64, 3)  # libjpeg really decodes at 1/8 scale
  # The reduced-scale result differs from the full-resolution crop's resize by about as much as a
  # different resampling filter would (bilinear vs area), no more.
  for box in ((40, 60, 400, 400), (0, 0, 100, 120)):
    reduced = augment.decode_crop_and_resize(
      augment.EncodedImage(data), box, (512, 512), 48, "area"
    ).astype(np.int32)
    reference = augment.crop_and_resize(full, box, 48, "area").astype(np.int32)
    bilinear = augment.crop_and_resize(full, box, 48, "bilinear").astype(np.int32)
    assert np.abs(reduced - reference).mean() < 1.5 * np.abs(bilinear - reference).mean()
  # A crop smaller than twice the output decodes at full scale and is exact.
  small = augment.decode_crop_and_resize(
    augment.EncodedImage(data), (10, 20, 60, 50), (512, 512), 48, "area"
  )
  np.testing.assert_array_equal(small, augment.crop_and_resize(full, (10, 20, 60, 50), 48, "area"))


def test_resize_short_and_center_crop():
  image = _photo(60, 90)
  out = _run(augment.resize_short(40), image)
  assert out.shape == (40, 60, 3)
  np.testing.assert_array_equal(
    out, np.asarray(Image.fromarray(image).resize((60, 40), Image.Resampling.BICUBIC))
  )
  np.testing.assert_array_equal(_run(augment.center_crop(40), image), image[10:50, 25:65])
  np.testing.assert_array_equal(
    _run(augment.center_crop(41), image), image[10:51, 24:65]
  )  # round(9.5)=10, round(24.5)=24
  padded = _run(augment.center_crop(8), np.full((4, 6, 3), 9, np.uint8))
  assert padded.shape == (8, 8, 3) and padded[0].max() == 0 and padded[2:6, 1:7].min() == 9


# ---------------------------------------------------------------------------------------------------
# Specs and composition.


def test_parse_spec():
  assert augment.parse_spec("decode|flip(0.3)|blur(sigma=(0.5, 1.0))") == [
    ("decode", (), {}),
    ("flip", (0.3,), {}),
    ("blur", (), {"sigma": (0.5, 1.0)}),
  ]
  assert augment.parse_spec(["decode", "flip"]) == [("decode", (), {}), ("flip", (), {})]
  with pytest.raises(ValueError, match="empty op"):
    augment.parse_spec("decode||flip")
  with pytest.raises(ValueError, match="literals"):
    augment.parse_spec("flip(p=some_name)")


def test_build_errors_name_the_op():
  with pytest.raises(ValueError, match="unknown augmentation op 'flipp'"):
    augment.build("decode|flipp", image_size=32)
  with pytest.raises(ValueError, match="random_resized_crop: `size` is not set"):
    augment.build("random_resized_crop")
  with pytest.raises(ValueError, match="grayscale: p must be in"):
    augment.build("grayscale(1.5)")
  with pytest.raises(ValueError, match="'flip'"):
    augment.build("flip(0.5, 0.2)")


def test_default_views_are_deterministic_uint8():
  data = _jpeg(_photo(120, 160))
  for spec in augment.DEFAULT_VIEW_SPECS:
    aug = augment.build(spec, image_size=64)
    a = aug(data, np.random.default_rng(7))
    b = aug(data, np.random.default_rng(7))
    c = aug(data, np.random.default_rng(8))
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
  assert "blur" in augment.DEFAULT_VIEW_SPECS[0] and "solarize" in augment.DEFAULT_VIEW_SPECS[1]


def test_composed_spec_equals_ops_in_sequence():
  image = _photo(64, 64)
  aug = augment.build(
    "decode|random_resized_crop(scale=(1, 1), ratio=(1, 1), interpolation='pil_bilinear')|flip(1.0)|solarize(1.0, 100)",
    image_size=32,
  )
  expected = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))[:, ::-1]
  expected = np.where(expected >= 100, 255 - expected, expected)
  np.testing.assert_array_equal(aug(image, np.random.default_rng(0)), expected)
  # crop_scale from the pipeline applies when the spec does not set scale: the whole 64 x 64 image,
  # area-resized to 32 x 32, is the mean of each 2 x 2 block.
  full = augment.build("random_resized_crop(ratio=(1, 1))", image_size=32, crop_scale=(1.0, 1.0))
  blocks = image.reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
  assert np.abs(full(image, np.random.default_rng(3)) - blocks).max() <= 0.5


def test_eval_spec_resizes_by_crop_fraction():
  image = _photo(300, 400)
  aug = augment.build("resize_short|center_crop", image_size=224)
  out = aug(image, np.random.default_rng(0))
  resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(out, resized[16:240, 58:282])
