"""Frame-pair and clip sampling: gaps measured in time, determinism from (seed, record, epoch)."""

import zlib

import numpy as np
import pytest

from vicmae_jax.data import sampling


def test_example_rng_depends_only_on_its_arguments():
  a = sampling.example_rng(3, 11, 7, 2).random(4)
  b = sampling.example_rng(3, 11, 7, 2).random(4)
  np.testing.assert_array_equal(a, b)
  for other in [(4, 11, 7, 2), (3, 12, 7, 2), (3, 11, 8, 2), (3, 11, 7, 3), (3, 11, 7, 2, 1)]:
    assert not np.array_equal(a, sampling.example_rng(*other).random(4)), other
  with pytest.raises(ValueError, match="record_index"):
    sampling.example_rng(0, 0, -1, 0)


def test_source_key_is_stable():
  # crc32 of the UTF-8 name: fixed across processes and Python versions (unlike hash()).
  assert sampling.source_key("k400") == zlib.crc32(b"k400")
  assert sampling.source_key("k400") != sampling.source_key("imagenet")


def test_draw_gap_fixed_and_range():
  rng = np.random.default_rng(0)
  assert sampling.draw_gap_seconds(rng) == pytest.approx(1.06)
  assert sampling.draw_gap_seconds(rng, 0.0) == 0.0
  gaps = np.array([sampling.draw_gap_seconds(rng, frame_gap_range=(0.5, 2.0)) for _ in range(4000)])
  assert gaps.min() >= 0.5 and gaps.max() <= 2.0
  assert abs(gaps.mean() - 1.25) < 0.03
  assert abs(gaps.std() - 1.5 / np.sqrt(12)) < 0.03  # uniform, not concentrated
  with pytest.raises(ValueError, match="frame_gap_range"):
    sampling.draw_gap_seconds(rng, frame_gap_range=(2.0, 1.0))
  with pytest.raises(ValueError, match="frame_gap_seconds"):
    sampling.draw_gap_seconds(rng, -1.0)


@pytest.mark.parametrize("fps", [8.0, 30.0, 7.3])
def test_pair_indices_are_the_requested_time_apart(fps):
  times = np.arange(int(10 * fps)) / fps  # a 10 s clip
  rng = np.random.default_rng(1)
  swapped = 0
  starts = []
  for _ in range(3000):
    i, j = sampling.pair_indices(times, 1.06, rng)
    assert abs(abs(times[j] - times[i]) - 1.06) <= 0.5 / fps + 1e-9
    swapped += i > j
    starts.append(min(i, j))
  assert 1300 < swapped < 1700  # both orders, equally often
  # The earlier frame covers every valid start: 0 .. the last frame that still has a partner.
  last_start = np.flatnonzero(times + 1.06 <= times[-1] + 0.5 / fps)[-1]
  assert min(starts) == 0 and max(starts) == last_start


def test_pair_indices_use_timestamps_not_frame_counts():
  # Variable frame rate: dense frames in the first second, sparse after.
  times = np.concatenate([np.arange(0, 1.0, 0.02), np.arange(1.0, 6.0, 0.25)])
  rng = np.random.default_rng(2)
  for _ in range(300):
    i, j = sampling.pair_indices(times, 1.5, rng)
    lo, hi = sorted((i, j))
    # The later frame is the nearest to earlier + gap.
    assert hi == np.argmin(np.abs(times - (times[lo] + 1.5)))
    assert abs(times[hi] - times[lo] - 1.5) <= 0.125 + 1e-9


def test_pair_indices_short_clip_gives_largest_gap_and_zero_gap_same_frame():
  times = np.arange(5) / 8.0  # 0.5 s long, shorter than the gap
  rng = np.random.default_rng(3)
  for _ in range(20):
    assert sorted(sampling.pair_indices(times, 1.06, rng)) == [0, 4]
    i, j = sampling.pair_indices(np.arange(40) / 8.0, 0.0, rng)
    assert i == j
  assert sampling.pair_indices(np.array([0.0]), 1.0, rng) == (0, 0)
  with pytest.raises(ValueError, match="timestamps"):
    sampling.pair_indices(np.array([]), 1.0, rng)


def test_pair_times():
  rng = np.random.default_rng(4)
  firsts = []
  for _ in range(500):
    a, b = sampling.pair_times(5.0, 1.06, rng)
    assert abs(abs(b - a) - 1.06) < 1e-9
    assert 0.0 <= min(a, b) and max(a, b) <= 5.0
    firsts.append(min(a, b))
  assert abs(np.mean(firsts) - (5.0 - 1.06) / 2) < 0.15
  assert sorted(sampling.pair_times(0.7, 1.06, rng)) == [0.0, 0.7]


def test_clip_indices():
  rng = np.random.default_rng(5)
  starts = set()
  for _ in range(200):
    idx = sampling.clip_indices(100, 16, 4, rng)
    assert idx.shape == (16,)
    np.testing.assert_array_equal(np.diff(idx), 4)
    assert 0 <= idx[0] and idx[-1] <= 99
    starts.add(int(idx[0]))
  assert min(starts) == 0 and max(starts) == 100 - 61  # every start position reachable
  np.testing.assert_array_equal(sampling.clip_indices(100, 4, 2, None), 46 + 2 * np.arange(4))
  # Shorter than the window: the last frame repeats.
  np.testing.assert_array_equal(sampling.clip_indices(5, 4, 2, None), [0, 2, 4, 4])


def test_multi_view_clip_indices():
  idx = sampling.multi_view_clip_indices(100, 8, 2, 3)
  assert idx.shape == (3, 8)
  np.testing.assert_array_equal(
    idx[:, 0], [0, 42, 85]
  )  # evenly spaced over 0 .. 100 - 15 (42.5 rounds to even)
  np.testing.assert_array_equal(idx[:, -1], [14, 56, 99])
  np.testing.assert_array_equal(sampling.multi_view_clip_indices(100, 8, 2, 1)[0, 0], 42)
  with pytest.raises(ValueError, match="num_views"):
    sampling.multi_view_clip_indices(100, 8, 2, 0)


def test_clip_times():
  rng = np.random.default_rng(6)
  t = sampling.clip_times(10.0, 4, 0.5, rng)
  np.testing.assert_allclose(np.diff(t), 0.5)
  assert 0 <= t[0] <= 8.5
  np.testing.assert_allclose(sampling.clip_times(10.0, 3, 1.0, None), [4.0, 5.0, 6.0])
  np.testing.assert_allclose(sampling.clip_times(1.0, 3, 1.0, None), [0.0, 1.0, 1.0])
