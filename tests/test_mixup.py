"""Mixup / cutmix draws and the host mixing (data/mixup.py) against hand computations."""

import numpy as np
import pytest

from vicmae_jax.data import mixup


def test_smoothing_values_are_exact():
  targets = mixup.smooth_one_hot(np.array([2, 0]), 5, 0.1)
  expected = np.full((2, 5), 0.02, np.float32)
  expected[0, 2] = expected[1, 0] = 0.92
  np.testing.assert_array_equal(targets, expected)
  with pytest.raises(ValueError, match="num_classes=5"):
    mixup.smooth_one_hot(np.array([5]), 5)


def _constant_batch(batch=6, height=16, width=12):
  """Sample i is filled with the value 10 * (i + 1): its pixels can be told apart."""
  values = 10 * (np.arange(batch) + 1)
  return np.broadcast_to(values[:, None, None, None], (batch, height, width, 3)).astype(
    np.uint8
  ), values


MIXUP_ONLY = mixup.MixSettings(cutmix_alpha=0.0)


def test_mixup_blends_images_and_labels_with_one_lambda():
  images, values = _constant_batch()
  labels = np.array([0, 1, 2, 3, 4, 0])
  mixed, targets, params = mixup.mixup_cutmix(
    images, labels, np.random.default_rng(0), num_classes=5, settings=MIXUP_ONLY
  )
  lam = params.lam
  assert not params.use_cutmix and 0.0 < lam < 1.0
  assert mixed.dtype == np.float32
  np.testing.assert_allclose(mixed[:, 0, 0, 0], lam * values + (1 - lam) * values[::-1], rtol=1e-6)
  smooth = mixup.smooth_one_hot(labels, 5, 0.1)
  np.testing.assert_allclose(targets, lam * smooth + (1 - lam) * smooth[::-1], rtol=1e-6)
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_lambda_matches_pasted_pixel_mass():
  images, values = _constant_batch(batch=4, height=16, width=12)
  labels = np.array([0, 1, 2, 3])
  seen_clipped = False
  for seed in range(30):
    mixed, targets, params = mixup.mixup_cutmix(
      images,
      labels,
      np.random.default_rng(seed),
      num_classes=4,
      settings=mixup.MixSettings(mixup_alpha=0.0),
      label_smoothing=0.0,
    )
    assert params.use_cutmix
    for i in range(4):
      from_partner = (mixed[i, ..., 0] == values[3 - i]).mean()
      np.testing.assert_allclose(from_partner, 1 - params.lam, atol=1e-9)
      # Without smoothing the target weights are exactly lam and 1 - lam.
      np.testing.assert_allclose(targets[i, i], params.lam, atol=1e-6)
      np.testing.assert_allclose(targets[i, 3 - i], 1 - params.lam, atol=1e-6)
    top, bottom, left, right = params.box
    np.testing.assert_array_equal(mixed[0, top:bottom, left:right, 0], values[3])
    seen_clipped |= top == 0 or left == 0 or bottom == 16 or right == 12
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
  assert seen_clipped  # the lambda correction was exercised on boxes cut by the border


CUTMIX_ONLY = mixup.MixSettings(mixup_alpha=0.0)


def test_cutmix_on_clips_pastes_the_same_box_in_every_frame():
  clips = np.random.default_rng(0).integers(0, 256, size=(2, 3, 8, 8, 3), dtype=np.uint8)
  mixed, _, params = mixup.mixup_cutmix(
    clips, np.array([0, 1]), np.random.default_rng(4), num_classes=2, settings=CUTMIX_ONLY
  )
  top, bottom, left, right = params.box
  np.testing.assert_array_equal(
    mixed[0, :, top:bottom, left:right], clips[1, :, top:bottom, left:right]
  )
  outside = np.ones((8, 8), bool)
  outside[top:bottom, left:right] = False
  np.testing.assert_array_equal(mixed[0][:, outside], clips[0][:, outside])


def test_switch_probability_and_no_mix_path():
  rng = np.random.default_rng(0)
  draws = [mixup.sample_mix(rng, 16, 16) for _ in range(2000)]
  cutmix_share = np.mean([d.use_cutmix for d in draws])
  assert 0.46 < cutmix_share < 0.54
  # Beta(0.8, 0.8) and Beta(1, 1) both have mean 1/2.
  assert 0.45 < np.mean([d.lam for d in draws if not d.use_cutmix]) < 0.55
  images, _ = _constant_batch(batch=2)
  mixed, targets, params = mixup.mixup_cutmix(
    images,
    np.array([1, 0]),
    np.random.default_rng(0),
    num_classes=3,
    settings=mixup.MixSettings(prob=0.0),
  )
  assert params.lam == 1.0
  np.testing.assert_array_equal(mixed, images.astype(np.float32))
  np.testing.assert_allclose(targets, mixup.smooth_one_hot(np.array([1, 0]), 3, 0.1))


def test_mixup_rejects_bad_shapes():
  images, _ = _constant_batch(batch=2)
  with pytest.raises(ValueError, match="labels"):
    mixup.mixup_cutmix(images, np.array([0, 1, 2]), np.random.default_rng(0), num_classes=3)
  with pytest.raises(ValueError, match="images"):
    mixup.mixup_cutmix(images[0], np.array([0]), np.random.default_rng(0), num_classes=3)
