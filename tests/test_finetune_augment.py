"""RandAugment ops and random erasing against numpy references and exact counts."""

import numpy as np
import pytest

from vicmae_jax.data import finetune_augment as fa


def _noise_image(seed=0, height=24, width=20):
  return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# RandAugment
# ----------------------------------------------------------------------------------------------


def test_op_arguments_grow_with_magnitude():
  # timm's increasing level functions, by hand at magnitude 9.
  assert fa.op_argument("Rotate", 9) == pytest.approx(27.0)
  assert fa.op_argument("Rotate", 9, negate=True) == pytest.approx(-27.0)
  assert fa.op_argument("ShearX", 9) == pytest.approx(0.27)
  assert fa.op_argument("TranslateYRel", 9) == pytest.approx(0.405)
  assert fa.op_argument("Posterize", 9) == 1  # 4 - int(3.6)
  assert fa.op_argument("Solarize", 9) == 26  # 256 - int(230.4)
  assert fa.op_argument("SolarizeAdd", 9) == 99  # int(99.0)
  assert fa.op_argument("Brightness", 9) == pytest.approx(1.81)
  assert fa.op_argument("Contrast", 9, negate=True) == pytest.approx(0.19)
  assert fa.op_argument("Color", 10, negate=True) == pytest.approx(0.1)
  # Stronger with magnitude: lower solarize threshold, fewer posterize bits.
  assert fa.op_argument("Solarize", 3) > fa.op_argument("Solarize", 9)
  assert fa.op_argument("Posterize", 2) > fa.op_argument("Posterize", 9)
  with pytest.raises(ValueError, match="Cutout"):
    fa.op_argument("Cutout", 5)


def test_pointwise_ops_match_numpy():
  image = _noise_image()
  x = image.astype(np.int64)
  np.testing.assert_array_equal(fa.apply_op(image, "Invert", 9), 255 - x)
  np.testing.assert_array_equal(fa.apply_op(image, "Solarize", 9), np.where(x < 26, x, 255 - x))
  np.testing.assert_array_equal(
    fa.apply_op(image, "SolarizeAdd", 9), np.where(x < 128, np.minimum(255, x + 99), x)
  )
  np.testing.assert_array_equal(fa.apply_op(image, "Posterize", 9), x & 0b10000000)
  np.testing.assert_array_equal(fa.apply_op(image, "Posterize", 5), x & 0b11000000)
  # Brightness blends with black: factor 1 + 0.45 at magnitude 5.
  bright = fa.apply_op(image, "Brightness", 5).astype(np.int64)
  assert np.abs(bright - np.clip(np.round(x * 1.45), 0, 255)).max() <= 1


def test_autocontrast_stretches_each_channel():
  rng = np.random.default_rng(3)
  image = rng.integers(60, 181, size=(16, 16, 3), dtype=np.uint8)
  out = fa.apply_op(image, "AutoContrast", 9).astype(np.float64)
  x = image.astype(np.float64)
  lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
  expected = (x - lo) * 255.0 / (hi - lo)
  assert np.abs(out - expected).max() <= 1.0
  assert out.min() == 0 and out.max() == 255


def test_translate_moves_content_and_fills_with_mean():
  image = _noise_image(height=12, width=20)
  # magnitude 10: 0.45 * 20 = 9 pixels; integer shifts are exact even with bicubic resampling.
  left = fa.apply_op(image, "TranslateXRel", 10)
  np.testing.assert_array_equal(left[:, :11], image[:, 9:])
  np.testing.assert_array_equal(left[:, 11:], np.broadcast_to(fa.IMAGENET_FILL, (12, 9, 3)))
  right = fa.apply_op(image, "TranslateXRel", 10, negate=True)
  np.testing.assert_array_equal(right[:, 9:], image[:, :11])
  assert fa.IMAGENET_FILL == (124, 116, 104)


def test_geometric_ops_at_magnitude_zero_are_identity():
  image = _noise_image()
  for name in ("Rotate", "ShearX", "ShearY", "TranslateYRel", "Color", "Contrast", "Sharpness"):
    np.testing.assert_array_equal(fa.apply_op(image, name, 0.0), image, err_msg=name)


def test_rand_augment_is_deterministic_given_the_generator():
  image = _noise_image()
  a = fa.rand_augment(image, np.random.default_rng(7))
  b = fa.rand_augment(image, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)
  outputs = {fa.rand_augment(image, np.random.default_rng(s)).tobytes() for s in range(12)}
  assert len(outputs) > 6  # different draws give different images
  assert a.dtype == np.uint8 and a.shape == image.shape
  # prob 0: nothing is applied.
  np.testing.assert_array_equal(fa.rand_augment(image, np.random.default_rng(1), prob=0.0), image)


def test_rand_augment_rejects_bad_input():
  with pytest.raises(ValueError, match="uint8"):
    fa.rand_augment(np.zeros((4, 4, 3), np.float32), np.random.default_rng(0))
  with pytest.raises(ValueError, match="Blur"):
    fa.rand_augment(_noise_image(), np.random.default_rng(0), ops=("Invert", "Blur"))


# ----------------------------------------------------------------------------------------------
# Random erasing
# ----------------------------------------------------------------------------------------------


def test_erasing_boxes_respect_area_and_aspect_bounds():
  rng = np.random.default_rng(0)
  height, width = 48, 64
  boxes = [fa.sample_erasing_box(rng, height, width) for _ in range(2000)]
  boxes = [b for b in boxes if b is not None]
  assert len(boxes) > 1900
  for box in boxes:
    h, w = box.height, box.width
    assert 0 <= box.top and box.top + h <= height and 0 <= box.left and box.left + w <= width
    assert h < height and w < width
    # h and w are rounded: the drawn area lies in [(h-.5)(w-.5), (h+.5)(w+.5)].
    assert (h - 0.5) * (w - 0.5) <= height * width / 3
    assert (h + 0.5) * (w + 0.5) >= 0.02 * height * width
    assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3
  areas = np.array([b.area for b in boxes]) / (height * width)
  assert 0.14 < areas.mean() < 0.22  # U(0.02, 1/3) has mean ~0.18


def test_random_erasing_changes_only_one_box():
  image = np.zeros((40, 40, 3), np.uint8)
  changed_fractions = []
  for seed in range(20):
    out = fa.random_erasing(image, np.random.default_rng(seed), prob=1.0)
    changed = (out != image).any(axis=-1)
    rows, cols = np.nonzero(changed)
    assert rows.size > 0
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    area = (bottom - top) * (right - left)
    assert area <= 1600 / 3 + 40  # rounding slack of half a row/column
    changed_fractions.append(changed[top:bottom, left:right].mean())
  assert min(changed_fractions) > 0.99  # the whole box is noise, not a scattered pattern
  untouched = fa.random_erasing(image, np.random.default_rng(0), prob=0.0)
  np.testing.assert_array_equal(untouched, image)


def test_pixel_fill_is_normalized_noise_mapped_to_uint8():
  fill = fa.erasing_fill(np.random.default_rng(0), (200, 200, 3), "pixel").astype(np.float64)
  # N(0, 1) in normalized space -> mean 255 * mean_c, std 255 * std_c (clipping is rare).
  np.testing.assert_allclose(fill.mean(axis=(0, 1)), 255 * fa.IMAGENET_MEAN, atol=1.5)
  np.testing.assert_allclose(fill.std(axis=(0, 1)), 255 * fa.IMAGENET_STD, rtol=0.05)
  const = fa.erasing_fill(np.random.default_rng(0), (2, 2, 3), "const")
  np.testing.assert_array_equal(const[0, 0], fa.IMAGENET_FILL)
  rand = fa.erasing_fill(np.random.default_rng(0), (5, 5, 3), "rand")
  assert (rand == rand[0, 0]).all()
  with pytest.raises(ValueError, match="mode"):
    fa.erasing_fill(np.random.default_rng(0), (2, 2, 3), "zeros")


# ----------------------------------------------------------------------------------------------
# Mixup / cutmix
# ----------------------------------------------------------------------------------------------


def test_posterize_at_full_magnitude_gives_black():
  # magnitude 10 -> 0 bits kept; PIL refuses 0 bits, the op must still work (black image).
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  out = fa.apply_op(image, "Posterize", 10.0)
  assert out.shape == image.shape and out.max() == 0
  rng = np.random.default_rng(1)
  for _ in range(50):  # RandAugment with magnitude noise reaches the clipped maximum
    fa.rand_augment(image, rng, magnitude=9.0, magnitude_std=2.0, prob=1.0)
