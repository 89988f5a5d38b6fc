"""Photometric augmentation on the device: each op against the host op on the same parameters, the
drawn parameters against the recipe, the spec split, and an exact resume with the option on."""

import dataclasses
import itertools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from vicmae_jax.data import augment
from vicmae_jax.data import data_config
from vicmae_jax.data import device_photometric as dp
from vicmae_jax.data import image_codec

from runs import losses, tiny_config


@pytest.fixture(scope="module")
def photos():
  """Real photographs, 72 x 80 crops: uint8 [3, 72, 80, 3]."""
  images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
  return np.stack([np.ascontiguousarray(image[::4, ::4][:72, :80]) for image in images])


def _device(fn, photos, *args):
  return np.asarray(fn(jnp.asarray(photos, jnp.float32), *args)).astype(np.int32)


def _assert_close(host, device, max_diff=1):
  diff = np.abs(np.asarray(host, np.int32) - device)
  assert diff.max() <= max_diff, diff.max()
  return diff


@pytest.mark.parametrize("factor", [0.6, 0.93, 1.37])
def test_brightness_contrast_saturation_match_the_host(photos, factor):
  factors = jnp.full((len(photos),), factor)
  for host_op, device_op, exact in (
    (image_codec.adjust_brightness, dp.adjust_brightness, True),
    (image_codec.adjust_contrast, dp.adjust_contrast, True),
    (image_codec.adjust_saturation, dp.adjust_saturation, False),
  ):
    host = np.stack([host_op(image, factor) for image in photos])
    diff = _assert_close(host, _device(device_op, photos, factors))
    if exact:  # the same lookup table, to the grey level
      assert diff.max() == 0, host_op.__name__
    assert diff.mean() < 0.01


@pytest.mark.parametrize("hue", [-0.1, -0.03, 0.07, 0.33])
def test_hue_matches_the_host(photos, hue):
  host = np.stack([image_codec.adjust_hue(image, hue) for image in photos])
  diff = _assert_close(host, _device(dp.adjust_hue, photos, jnp.full((len(photos),), hue)))
  assert diff.mean() < 0.2


def test_grayscale_and_solarize_match_the_host(photos):
  host = np.stack([image_codec.grayscale_image(image) for image in photos])
  assert _assert_close(host, _device(dp.grayscale, photos)).mean() < 0.01
  for threshold in (128, 77):
    host = np.stack([image_codec.solarize_array(image, threshold) for image in photos])
    assert _assert_close(host, _device(dp.solarize, photos, threshold), max_diff=0).max() == 0


@pytest.mark.parametrize("kernel", [(5, 9), (3, 3), (9, 5)])
def test_blur_matches_the_host(photos, kernel):
  sigmas = np.array([0.1, 0.8, 2.0])
  host = np.stack(
    [image_codec.gaussian_blur_array(image, s, kernel) for image, s in zip(photos, sigmas)]
  )
  device = _device(lambda x: dp.gaussian_blur(x, jnp.asarray(sigmas), kernel), photos)
  assert _assert_close(host, device).mean() < 0.01
  assert np.abs(device - photos.astype(np.int32)).mean() > 1.0  # it did blur


def test_jitter_in_every_order_matches_the_host(photos):
  rng = np.random.default_rng(0)
  orders = list(itertools.permutations(range(4)))
  diffs = []
  for order in orders:
    params = augment.draw_jitter_params(rng, 0.4, 0.4, 0.2, 0.1)
    params = dataclasses.replace(params, order=order)
    host = np.stack([augment.apply_jitter(image, params) for image in photos])
    factors = [params.brightness, params.contrast, params.saturation, params.hue]
    device = _device(
      lambda x: dp.apply_jitter(
        x, jnp.asarray([order] * len(photos)), jnp.asarray([factors] * len(photos))
      ),
      photos,
    )
    # Four ops each rounding to whole grey levels (the host's hue in OpenCV's fixed point): an
    # off-by-one of one op can grow by the later ones' factors, rarely, to three levels.
    diffs.append(_assert_close(host, device, max_diff=3))
  diffs = np.stack(diffs)
  assert diffs.mean() < 0.1 and (diffs > 1).mean() < 0.01, (diffs.mean(), (diffs > 1).mean())


def _op(name, **args):
  return dp.split_spec(f"decode|{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})")[1][0]


def test_drawn_parameters_follow_the_recipe():
  n = 24_000
  key = jax.random.key(3)
  jitter = dp.draw_params(_op("color_jitter"), key, n)
  # Applied with p = 0.8 (binomial standard deviation sqrt(p (1 - p) / n) ~ 0.0026).
  assert abs(float(jnp.mean(jitter["apply"])) - 0.8) < 0.013
  factors = np.asarray(jitter["factors"])
  for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
    values = factors[:, column]
    assert low <= values.min() and values.max() <= high
    assert abs(values.mean() - (low + high) / 2) < 4 * (high - low) / np.sqrt(12 * n)
    assert abs(values.std() - (high - low) / np.sqrt(12)) < 0.01 * (high - low)
  # The order: a uniform permutation of the four adjustments (24 of them, each ~1/24).
  order = np.asarray(jitter["order"])
  assert (np.sort(order, axis=1) == np.arange(4)).all()
  counts = np.unique(order @ np.array([64, 16, 4, 1]), return_counts=True)[1]
  assert len(counts) == 24
  expected = n / 24
  assert ((counts - expected) ** 2 / expected).sum() < 50  # chi-square, 23 dof: p ~ 0.001
  # Strength 0 leaves an adjustment out (factor 1, hue 0), as the host's None does.
  still = dp.draw_params(_op("color_jitter", brightness=0.0, hue=0.0), key, 100)["factors"]
  assert (np.asarray(still)[:, 0] == 1.0).all() and (np.asarray(still)[:, 3] == 0.0).all()

  blur = dp.draw_params(_op("blur", p=0.5, sigma=(0.1, 1.0)), jax.random.key(4), n)
  assert abs(float(jnp.mean(blur["apply"])) - 0.5) < 0.015
  sigma = np.asarray(blur["sigma"])
  assert 0.1 <= sigma.min() and sigma.max() <= 1.0 and abs(sigma.mean() - 0.55) < 0.01
  for name, p in (("grayscale", 0.2), ("solarize", 0.2), ("solarize", 0.7)):
    drawn = dp.draw_params(_op(name, p=p), jax.random.key(5), n)
    assert abs(float(jnp.mean(drawn["apply"])) - p) < 0.015, name


@pytest.mark.slow
def test_augment_views_applies_each_views_ops_with_their_probability():
  n = 4000
  views = jnp.full((n, 2, 8, 8, 3), 200, jnp.uint8)
  plan = (
    (dp.split_spec("decode|solarize(p=0.3)")[1][0],),
    (dp.split_spec("decode|color_jitter(p=1.0, contrast=0.0, saturation=0.0, hue=0.0)")[1][0],),
  )
  out = np.asarray(jax.jit(lambda v, k: dp.augment_views(v, k, plan))(views, jax.random.key(0)))
  solarized = (out[:, 0] == 55).all(axis=(1, 2, 3))
  assert (solarized | (out[:, 0] == 200).all(axis=(1, 2, 3))).all()
  assert abs(solarized.mean() - 0.3) < 0.03
  # Brightness in [0.6, 1.4] on a flat 200 image: 120 .. 255 (clipped), whole levels, per example.
  second = out[:, 1, 0, 0, 0]
  assert second.min() >= 120 and second.max() == 255 and (second == np.round(second)).all()
  assert len(np.unique(second)) > 100
  # Another key, other draws; the same key, the same pixels.
  again = np.asarray(dp.augment_views(views, jax.random.key(0), plan))
  other = np.asarray(dp.augment_views(views, jax.random.key(1), plan))
  assert (again == out).all() and not (other == out).all()
  assert dp.augment_views(views, jax.random.key(0), None).dtype == jnp.float32


def test_split_spec_keeps_the_geometry_on_the_host():
  heads, tails = dp.split_views(augment.DEFAULT_VIEW_SPECS)
  assert heads == (augment.CROP_FLIP_SPEC, augment.CROP_FLIP_SPEC)
  assert [op.name for op in tails[0]] == ["color_jitter", "grayscale", "blur"]
  assert [op.name for op in tails[1]] == ["color_jitter", "grayscale", "solarize"]
  assert tails[1][2].arg("p") == 0.2 and tails[1][2].arg("threshold") == 128
  head, tail = dp.split_spec(
    "decode|random_resized_crop(scale=(0.5, 1.0))|blur(p=0.5, sigma=(0.1, 1.0))"
  )
  assert head == "decode|random_resized_crop(scale=(0.5, 1.0))"
  assert tail[0].arg("sigma") == (0.1, 1.0) and tail[0].arg("kernel_size") == (5, 9)
  with pytest.raises(ValueError, match="data.view_augmentations: op 'flip' follows"):
    dp.split_views(("decode|grayscale|flip", "decode"))
  assert dp.resolve_mode("auto", "gpu") and dp.resolve_mode("auto", "tpu")
  assert not dp.resolve_mode("auto", "cpu") and dp.resolve_mode("on", "cpu")


def test_config_errors_name_the_field(tmp_path):
  cfg = data_config.default_data_config()
  cfg.sources.x = data_config.default_source_config(kind="npz", path=str(tmp_path))
  cfg.photometric_on_device = "sometimes"
  with pytest.raises(ValueError, match="data.photometric_on_device: must be one of"):
    data_config.validate_data_config(cfg, frame_pairs=False)
  cfg.photometric_on_device = "on"
  cfg.view_augmentations = ("decode|color_jitter|random_resized_crop", "decode")
  with pytest.raises(ValueError, match="data.view_augmentations: op 'random_resized_crop'"):
    data_config.validate_data_config(cfg, frame_pairs=False)
  cfg.photometric_on_device = "auto"  # checked on every platform alike
  with pytest.raises(ValueError, match="data.photometric_on_device='off'"):
    data_config.validate_data_config(cfg, frame_pairs=False)
  cfg.photometric_on_device = "off"  # the host runs any order
  data_config.validate_data_config(cfg, frame_pairs=False)


@pytest.mark.slow
def test_resume_is_exact_with_photometric_on_device(demo_root, reference, tmp_path):
  """A 10-step run with the option on; its checkpoint of step 3 alone (as a run killed after it
  leaves it) resumed in a fresh workdir hits the same loss at every later step."""
  from vicmae_jax import main

  def config():
    return tiny_config(
      demo_root,
      num_steps=10,
      **{"checkpoint.every_steps": 3, "checkpoint.keep": 10, "data.photometric_on_device": "on"},
    )

  full = tmp_path / "full"
  assert main.run(config(), str(full))["final_step"] == 10
  resumed = tmp_path / "resumed"
  shutil.copytree(full / "checkpoints", resumed / "checkpoints")
  for step_dir in (resumed / "checkpoints").iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > 3:
      shutil.rmtree(step_dir)
  assert main.run(config(), str(resumed))["final_step"] == 10
  want, got = losses(full), losses(resumed)
  assert sorted(got) == list(range(4, 11))
  assert all(got[step] == want[step] for step in got), (got, want)
  # The option changed the run (the CPU default keeps the photometric ops on the host).
  assert losses(reference)[1] != want[1]


def test_loader_with_the_option_on_makes_only_the_geometric_head(demo_root):
  from vicmae_jax.data import pipeline

  def first_views(**fields):
    data = tiny_config(demo_root).data
    for name, value in fields.items():
      data[name] = value
    iterator = iter(
      pipeline.make_pretrain_loader(
        data, global_batch_size=8, image_size=32, seed=0, process_index=0, process_count=1
      )
    )
    views = next(iterator)["views"]
    iterator.close()
    return views

  specs = tiny_config(demo_root).data.view_augmentations
  on = first_views(photometric_on_device="on")
  head_only = first_views(photometric_on_device="off", view_augmentations=dp.split_views(specs)[0])
  full = first_views(photometric_on_device="off")
  assert on.dtype == np.uint8 and on.shape == (8, 2, 32, 32, 3)
  np.testing.assert_array_equal(on, head_only)
  assert not np.array_equal(on, full)


def test_threads_are_shared_out_over_worker_processes(monkeypatch):
  from vicmae_jax.data import stream

  monkeypatch.setattr(stream.os, "cpu_count", lambda: 16)
  assert stream.thread_count({"num_threads": -1}) == 16
  assert stream.thread_count({"num_threads": -1, "worker_count": 4}) == 4
  assert stream.thread_count({"num_threads": -1, "worker_count": 32}) == 1
  assert stream.thread_count({"num_threads": 3, "worker_count": 4}) == 3
