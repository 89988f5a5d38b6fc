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
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.BILINEAR))


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
    flipped = [np.array_equal(_run(augment.flip(), image, seed), image[:, ::-1]) for seed in range(400)]
    assert 160 < sum(flipped) < 240  # p = 0.5


def test_grayscale_is_itu_601():
    image = _photo()
    out = _run(augment.grayscale(p=1.0), image)
    assert out.shape == image.shape
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert np.abs(out[..., 0].astype(np.float64) - _luma(image)).max() <= 1.0
    applied = sum(not np.array_equal(_run(augment.grayscale(), image, seed), image) for seed in range(500))
    assert 70 < applied < 130  # p = 0.2


def test_solarize_by_hand():
    image = np.array([[[0, 127, 128], [129, 200, 255]]], np.uint8)
    expected = np.array([[[0, 127, 127], [126, 55, 0]]], np.uint8)
    np.testing.assert_array_equal(_run(augment.solarize(p=1.0), image), expected)
    np.testing.assert_array_equal(_run(augment.solarize(p=1.0, threshold=200), image), [[[0, 127, 128], [129, 55, 0]]])
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
    np.testing.assert_array_equal(np.asarray(augment.adjust_hue(Image.fromarray(red), 1 / 3))[..., 1], 255)
    np.testing.assert_array_equal(np.asarray(augment.adjust_hue(Image.fromarray(red), 1 / 3))[..., [0, 2]], 0)
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
    for field, lo, hi in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("saturation", 0.8, 1.2), ("hue", -0.1, 0.1)):
        values = np.array([getattr(d, field) for d in draws])
        assert lo <= values.min() and values.max() <= hi
        assert abs(values.mean() - (lo + hi) / 2) < 0.01 * (hi - lo) * 5
        assert values.min() < lo + 0.02 * (hi - lo) and values.max() > hi - 0.02 * (hi - lo)
    none = augment.draw_jitter_params(rng, 0.0, 0.4, 0.0, 0.0)
    assert none.brightness is None and none.saturation is None and none.hue is None


def test_apply_jitter_follows_the_drawn_order():
    image = Image.fromarray(_photo(32, 32))
    params = augment.JitterParams(order=(3, 2, 1, 0), brightness=1.3, contrast=0.7, saturation=1.1, hue=0.05)
    expected = augment.adjust_brightness(
        augment.adjust_contrast(augment.adjust_saturation(augment.adjust_hue(image, 0.05), 1.1), 0.7), 1.3
    )
    np.testing.assert_array_equal(np.asarray(augment.apply_jitter(image, params)), np.asarray(expected))
    other = augment.JitterParams(order=(0, 1, 2, 3), brightness=1.3, contrast=0.7, saturation=1.1, hue=0.05)
    assert not np.array_equal(np.asarray(augment.apply_jitter(image, other)), np.asarray(expected))
    op = augment.color_jitter()
    applied = sum(not np.array_equal(_run(op, np.asarray(image), seed), np.asarray(image)) for seed in range(300))
    assert 210 < applied < 270  # p = 0.8


def test_blur_matches_scipy_reference():
    image = _photo(40, 50)
    for sigma in (0.1, 0.8, 2.0):
        kx = augment.gaussian_kernel1d(5, sigma).astype(np.float64)
        ky = augment.gaussian_kernel1d(9, sigma).astype(np.float64)
        # Independent closed form of the taps, then a 2-D correlation; scipy "mirror" == torch "reflect".
        x = np.arange(-2, 3)
        np.testing.assert_allclose(kx, np.exp(-x**2 / (2 * sigma**2)) / np.exp(-x**2 / (2 * sigma**2)).sum(), rtol=1e-5, atol=1e-12)
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
    assert np.log(aspects).min() > np.log(3 / 4) - 0.05 and np.log(aspects).max() < np.log(4 / 3) + 0.05
    # Log-uniform aspect: symmetric about 0 among first-try crops (wide crops fit more often above 9/16).
    assert abs(np.mean(np.log(aspects[areas < 0.5]))) < 0.015
    # Ten failed tries (a sliver image, whole-image crops) fall back to a centre crop with clamped aspect.
    assert augment.random_resized_crop_box(10, 100, (0.99, 1.0), (3 / 4, 4 / 3), rng) == (0, 43, 10, 13)
    assert augment.random_resized_crop_box(100, 10, (0.99, 1.0), (3 / 4, 4 / 3), rng) == (43, 0, 13, 10)


def test_random_resized_crop_op_equals_crop_then_resize():
    image = _photo(96, 128)
    op = augment.random_resized_crop(32)
    out = _run(op, image, seed=5)
    box = augment.random_resized_crop_box(96, 128, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(5))
    top, left, h, w = box
    expected = np.asarray(Image.fromarray(image[top : top + h, left : left + w]).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)


def test_reduced_scale_jpeg_decode_matches_full_decode():
    image = np.asarray(Image.fromarray(skimage.data.astronaut()))  # 512 x 512
    data = _jpeg(image)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    # The reduced-scale result differs from a full-resolution bilinear resize by about as much as a
    # different resampling filter would (bicubic vs bilinear), no more.
    for box, decoded_size in (((40, 60, 400, 400), 64), ((0, 0, 100, 100), 256)):
        lazy = Image.open(io.BytesIO(data))
        drafted = np.asarray(augment.crop_and_resize(lazy, box, 48, Image.Resampling.BILINEAR)).astype(np.int32)
        assert lazy.size == (decoded_size, decoded_size)  # libjpeg really decoded at reduced scale
        top, left, h, w = box
        crop = Image.fromarray(full[top : top + h, left : left + w])
        reference = np.asarray(crop.resize((48, 48), Image.Resampling.BILINEAR)).astype(np.int32)
        bicubic = np.asarray(crop.resize((48, 48), Image.Resampling.BICUBIC)).astype(np.int32)
        assert np.abs(drafted - reference).mean() < 1.5 * np.abs(bicubic - reference).mean()
    # A crop smaller than twice the output decodes at full scale and is exact.
    lazy = Image.open(io.BytesIO(data))
    small = augment.crop_and_resize(lazy, (10, 20, 60, 50), 48, Image.Resampling.BILINEAR)
    assert lazy.size == (512, 512)
    np.testing.assert_array_equal(
        np.asarray(small), np.asarray(Image.fromarray(full[10:70, 20:70]).resize((48, 48), Image.Resampling.BILINEAR))
    )


def test_resize_short_and_center_crop():
    image = _photo(60, 90)
    out = _run(augment.resize_short(40), image)
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(image).resize((60, 40), Image.Resampling.BICUBIC)))
    np.testing.assert_array_equal(_run(augment.center_crop(40), image), image[10:50, 25:65])
    np.testing.assert_array_equal(_run(augment.center_crop(41), image), image[10:51, 24:65])  # round(9.5)=10, round(24.5)=24
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
    aug = augment.build("decode|random_resized_crop(scale=(1, 1), ratio=(1, 1))|flip(1.0)|solarize(1.0, 100)", image_size=32)
    expected = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))[:, ::-1]
    expected = np.where(expected >= 100, 255 - expected, expected)
    np.testing.assert_array_equal(aug(image, np.random.default_rng(0)), expected)
    # crop_scale from the pipeline applies when the spec does not set scale.
    full = augment.build("random_resized_crop(ratio=(1, 1))", image_size=32, crop_scale=(1.0, 1.0))
    np.testing.assert_array_equal(
        full(image, np.random.default_rng(3)), np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))
    )


def test_eval_spec_resizes_by_crop_fraction():
    image = _photo(300, 400)
    aug = augment.build("resize_short|center_crop", image_size=224)
    out = aug(image, np.random.default_rng(0))
    resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, resized[16:240, 58:282])
