"""PyAV decoding against real encoded files whose frames carry their own index."""

import pickle

import numpy as np
import pytest

from media_utils import BOTTOM_RGB, make_bad_files, make_truncated, make_video, read_index
from vicmae_jax.data import video_io
from vicmae_jax.data.video_io import VideoDecodeError, decode_at_times, probe, read_frames

FPS = 10.0
NUM_FRAMES = 30
VFR_TIMES = [0.0, 0.1, 0.15, 0.4, 0.5, 0.9, 1.0, 1.45]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  directory = tmp_path_factory.mktemp("media")
  return {
    "mp4": make_video(directory / "clip.mp4", num_frames=NUM_FRAMES, fps=FPS),
    "webm": make_video(directory / "clip.webm", num_frames=NUM_FRAMES, fps=FPS),
    # A streamed webm: no duration, no cues, no frame count, like many real webm files.
    "live_webm": make_video(directory / "live.webm", num_frames=NUM_FRAMES, fps=FPS, live=True),
    "vfr": make_video(directory / "vfr.mp4", num_frames=len(VFR_TIMES), frame_times=VFR_TIMES),
    "ntsc": make_video(directory / "ntsc.mp4", num_frames=NUM_FRAMES, fps=30000 / 1001),
    "long_gop5": make_video(directory / "long.mp4", num_frames=200, fps=25.0, gop_size=5),
    "bad": make_bad_files(directory / "bad"),
  }


def indices(frames):
  return [read_index(frame) for frame in frames]


def nearest_indices(frame_times, targets):
  """Reference: index of the nearest frame time to each target, ties to the earlier frame."""
  frame_times = np.asarray(frame_times)
  return [
    int(np.argmin(np.abs(frame_times - t) + 1e-9 * np.arange(len(frame_times)))) for t in targets
  ]


def resampled_reference(frame_times, target_fps):
  """Reference: the nearest frame to each k / target_fps up to the last frame time, each kept once."""
  grid = np.arange(0, frame_times[-1] + 1e-9, 1.0 / target_fps)
  return sorted(set(nearest_indices(frame_times, grid)))


def test_probe_reports_what_the_container_says(media):
  info = probe(media["mp4"])
  assert (info.fps, info.num_frames, info.width, info.height) == (FPS, NUM_FRAMES, 64, 48)
  assert info.duration_s == pytest.approx(NUM_FRAMES / FPS)
  live = probe(media["live_webm"])
  assert live.duration_s is None and live.num_frames is None
  assert live.fps == FPS and (live.width, live.height) == (64, 48)


@pytest.mark.parametrize("kind", ["mp4", "webm", "live_webm"])
def test_read_all_frames_in_order_with_their_times(media, kind):
  frames, timestamps, source_fps = read_frames(media[kind])
  assert frames.shape == (NUM_FRAMES, 48, 64, 3) and frames.dtype == np.uint8
  assert indices(frames) == list(range(NUM_FRAMES))
  np.testing.assert_allclose(timestamps, np.arange(NUM_FRAMES) / FPS, atol=1e-3)
  assert source_fps == FPS
  # RGB order: the bottom half was encoded red.
  np.testing.assert_allclose(frames[:, 40, 32].mean(0), BOTTOM_RGB, atol=12)


@pytest.mark.parametrize("kind", ["mp4", "webm", "live_webm", "ntsc"])
@pytest.mark.parametrize("target_fps", [4.0, 8.0, 3.0])
def test_resampling_keeps_the_nearest_frame_to_each_grid_time(media, kind, target_fps):
  source_fps = FPS if kind != "ntsc" else 30000 / 1001
  frame_times = np.arange(NUM_FRAMES) / source_fps
  frames, timestamps, reported_fps = read_frames(media[kind], target_fps=target_fps)
  expected = resampled_reference(frame_times, target_fps)
  assert indices(frames) == expected
  np.testing.assert_allclose(timestamps, frame_times[expected], atol=1e-3)
  assert reported_fps == pytest.approx(source_fps)


def test_resampling_variable_frame_rate_uses_timestamps(media):
  frames, timestamps, _ = read_frames(media["vfr"], target_fps=4.0)
  # Grid 0, .25, .5, .75, 1.0, 1.25: nearest frames 0 (0.0), 2 (0.15), 4 (0.5), 5 (0.9), 6 (1.0), 7 (1.45).
  assert indices(frames) == [0, 2, 4, 5, 6, 7]
  np.testing.assert_allclose(timestamps, [VFR_TIMES[i] for i in [0, 2, 4, 5, 6, 7]], atol=1e-3)


def test_target_rate_above_source_keeps_every_frame_once(media):
  frames, timestamps, _ = read_frames(media["mp4"], target_fps=25.0)
  assert indices(frames) == list(range(NUM_FRAMES))
  assert np.all(np.diff(timestamps) > 0)


def test_resize_short_side_keeps_aspect_and_content(media):
  frames, _, _ = read_frames(media["webm"], short_side=24)
  assert frames.shape == (NUM_FRAMES, 24, 32, 3)
  assert indices(frames) == list(range(NUM_FRAMES))
  frames, _, _ = read_frames(media["mp4"], short_side=96, max_frames=4)
  assert frames.shape == (4, 96, 128, 3)
  assert indices(frames) == [0, 1, 2, 3]
  assert video_io.resized_size(720, 1280, 256) == (256, 455)
  assert video_io.resized_size(1280, 720, 256) == (455, 256)


@pytest.mark.parametrize("kind", ["mp4", "webm", "live_webm", "ntsc", "vfr", "long_gop5"])
def test_decode_at_times_gives_nearest_frames_in_request_order(media, kind):
  _, frame_times, _ = read_frames(media[kind])
  rng = np.random.default_rng(0)
  targets = np.concatenate(
    [
      rng.uniform(0, frame_times[-1], size=12),
      [-1.0, frame_times[-1] + 5.0, 0.0, frame_times[len(frame_times) // 2]],
      rng.uniform(0, frame_times[-1], size=2),  # a close pair, as frame pairs are
    ]
  )
  frames = decode_at_times(media[kind], targets)
  assert frames.shape == (len(targets), 48, 64, 3)
  assert indices(frames) == nearest_indices(frame_times, targets)


def test_decode_at_times_matches_sequential_decoding_pixels(media):
  all_frames, frame_times, _ = read_frames(media["long_gop5"], short_side=32)
  targets = frame_times[[150, 3, 77, 78]]
  frames = decode_at_times(media["long_gop5"], targets, short_side=32)
  np.testing.assert_array_equal(frames, all_frames[[150, 3, 77, 78]])


def test_decode_at_times_seeks_instead_of_decoding_from_the_start(media, monkeypatch):
  decoded = []
  original = video_io._timed_frames

  def counting(*args, **kwargs):
    for item in original(*args, **kwargs):
      decoded.append(item[0])
      yield item

  monkeypatch.setattr(video_io, "_timed_frames", counting)
  # 200 frames at 25 fps, a keyframe every 5 frames: frame 190 is reached from keyframe 190.
  frames = decode_at_times(media["long_gop5"], [190 / 25.0, 190 / 25.0 + 1.0 / 25])
  assert indices(frames) == [190, 191]
  assert len(decoded) <= 2 * 5, f"decoded {len(decoded)} frames for two nearby targets"


@pytest.mark.parametrize(
  "kind, reason",
  [
    ("zero_byte", video_io.REASON_EMPTY),
    ("truncated", video_io.REASON_CORRUPT),
    ("random_bytes", video_io.REASON_CORRUPT),
    ("audio_only", video_io.REASON_NO_VIDEO),
  ],
)
def test_bad_files_raise_decode_error_with_reason(media, kind, reason):
  path = media["bad"][kind]
  for call in (probe, read_frames, video_io.frame_times, lambda p: decode_at_times(p, [0.5])):
    with pytest.raises(VideoDecodeError) as caught:
      call(path)
    assert caught.value.reason == reason
    assert str(path) in str(caught.value)


def test_missing_file_and_single_frame(media, tmp_path):
  with pytest.raises(VideoDecodeError) as caught:
    read_frames(tmp_path / "absent.mp4")
  assert caught.value.reason == video_io.REASON_NOT_FOUND
  frames, timestamps, _ = read_frames(media["bad"]["too_short"])
  assert frames.shape[0] == 1 and timestamps.tolist() == [0.0]


@pytest.mark.parametrize("kind", ["mp4", "webm", "live_webm", "ntsc", "vfr", "long_gop5"])
def test_frame_times_from_packets_match_decoded_times(media, kind):
  _, decoded_times, _ = read_frames(media[kind])
  np.testing.assert_allclose(video_io.frame_times(media[kind]), decoded_times, atol=1e-9)


@pytest.mark.parametrize("kind", ["mp4", "webm", "live_webm", "ntsc"])
def test_clip_seconds_from_the_header_or_the_packets(media, kind):
  """30 frames cover 30 frame intervals, whether the container states a duration (mp4, webm) or
  not (live webm: last packet time plus one interval)."""
  fps = 30000 / 1001 if kind == "ntsc" else FPS
  assert video_io.clip_seconds(media[kind]) == pytest.approx(NUM_FRAMES / fps, abs=1e-3)


@pytest.mark.parametrize("kind", ["zero_byte", "random_bytes", "audio_only"])
def test_clip_seconds_of_a_bad_file_raises_decode_error(media, kind):
  with pytest.raises(VideoDecodeError):
    video_io.clip_seconds(media["bad"][kind])


def test_truncated_webm_gives_the_frames_before_the_cut(tmp_path):
  path = make_truncated(tmp_path / "cut.webm", num_frames=NUM_FRAMES, keep_fraction=0.6)
  frames, timestamps, _ = read_frames(path)
  assert 0 < len(frames) < NUM_FRAMES
  assert indices(frames) == list(range(len(frames)))
  np.testing.assert_allclose(video_io.frame_times(path), timestamps, atol=1e-9)
  assert indices(decode_at_times(path, [100.0])) == [len(frames) - 1]


def test_decode_error_survives_pickling():
  error = pickle.loads(
    pickle.dumps(VideoDecodeError("/x.mp4", video_io.REASON_CORRUPT, "bad header"))
  )
  assert (error.path, error.reason, error.detail) == ("/x.mp4", "corrupt", "bad header")


def test_bad_arguments_are_rejected(media):
  with pytest.raises(ValueError, match="target_fps"):
    read_frames(media["mp4"], target_fps=0)
  with pytest.raises(ValueError, match="times_s"):
    decode_at_times(media["mp4"], [])
