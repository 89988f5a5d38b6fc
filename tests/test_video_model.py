"""Inflated space-time ViT: a static clip reproduces the image encoder; frame counts; mapping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vicmae_jax import optim
from vicmae_jax.models import block_stack, video, vit

DIMS = block_stack.EncoderDims(patch_size=4, embed_dim=32, depth=2, num_heads=4)
IMAGE_SIZE = 8  # 2 x 2 patches


def _encoder(scan_layers=False, seed=0):
  settings = block_stack.StackSettings(scan_layers=scan_layers)
  return vit.VisionTransformer(DIMS, settings=settings, rngs=nnx.Rngs(seed))


def _video_model(
  num_frames=8, use_cls=True, scan_layers=False, seed=1, drop_path_rate=0.0, **settings
):
  return video.VideoViT(
    DIMS,
    num_classes=5,
    num_frames=num_frames,
    use_cls=use_cls,
    drop_path_rate=drop_path_rate,
    settings=block_stack.StackSettings(scan_layers=scan_layers, **settings),
    rngs=nnx.Rngs(seed),
  )


def _images(batch=2, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)


def _image_pooled(encoder, images):
  """The image encoder's pooled features: mean of patch tokens after the final norm, no cls."""
  return encoder(images)["tokens"][:, 1:].mean(axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("num_frames", [8, 16])
def test_static_clip_reproduces_image_pooled_features(num_frames):
  encoder = _encoder()
  model = _video_model(num_frames=num_frames)
  video.from_image_encoder(model, encoder)
  images = _images()
  clip = jnp.repeat(images[:, None], num_frames, axis=1)  # [B, T, H, W, 3], all frames equal
  expected = _image_pooled(encoder, images)
  got = model.features(clip)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)
  # The check is not vacuous: a clip that moves gives different features.
  moving = clip.at[:, 1::2].set(_images(seed=5)[:, None])
  assert float(jnp.abs(model.features(moving) - expected).max()) > 1e-3
  logits = model(clip)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32


@pytest.mark.slow
def test_static_clip_without_cls_matches_encoder_without_cls():
  encoder = _encoder()
  model = _video_model(use_cls=False)
  report = video.from_image_encoder(model, encoder)
  assert video.ParamMapping(None, "cls_token", "unused") in report
  images = _images()
  clip = jnp.repeat(images[:, None], 8, axis=1)
  expected = encoder.transform(encoder.embed_patches(images)).mean(axis=1)
  np.testing.assert_allclose(
    np.asarray(model.features(clip)), np.asarray(expected), atol=1e-5, rtol=1e-5
  )
  # ... and differs from the encoder with cls: cls really takes part in the image features.
  assert float(jnp.abs(expected - _image_pooled(encoder, images)).max()) > 1e-4


def test_scanned_layouts_load_from_either_side():
  images = _images()
  clip = jnp.repeat(images[:, None], 8, axis=1)
  list_encoder = _encoder(scan_layers=False)
  expected = _image_pooled(list_encoder, images)
  scanned_model = _video_model(scan_layers=True)
  report = video.from_image_encoder(scanned_model, list_encoder)
  assert (
    video.ParamMapping("blocks/attn/qkv/kernel", "blocks/*/attn/qkv/kernel", "stacked") in report
  )
  np.testing.assert_allclose(
    np.asarray(scanned_model.features(clip)), np.asarray(expected), atol=1e-5
  )

  scanned_encoder = _encoder(scan_layers=True, seed=3)
  list_model = _video_model(scan_layers=False)
  report = video.from_image_encoder(list_model, nnx.state(scanned_encoder, nnx.Param))
  assert video.ParamMapping("blocks/1/mlp/fc2/bias", "blocks/mlp/fc2/bias", "unstacked") in report
  np.testing.assert_allclose(
    np.asarray(list_model.features(clip)),
    np.asarray(_image_pooled(scanned_encoder, images)),
    atol=1e-5,
  )


def test_bfloat16_activations_run_in_both_block_layouts_alike():
  clip = jnp.repeat(_images()[:, None], 8, axis=1)
  encoder = _encoder()
  outputs = []
  for scan_layers in (False, True):
    model = _video_model(scan_layers=scan_layers, activation_dtype=jnp.bfloat16)
    video.from_image_encoder(model, encoder)
    outputs.append(np.asarray(model.features(clip), np.float32))
  assert np.isfinite(outputs[0]).all()
  np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-6)


def test_mapping_report_and_inflated_kernel():
  encoder = _encoder()
  model = _video_model()
  report = {m.target: m for m in video.from_image_encoder(model, encoder) if m.target}
  assert report["patch_embed/kernel"] == video.ParamMapping(
    "patch_embed/kernel", "patch_embed/kernel", "inflated"
  )
  assert report["cls_token"].action == "copied"
  assert report["norm/scale"] == video.ParamMapping("norm/scale", "norm/scale", "copied")
  assert report["blocks/0/attn/qkv/kernel"] == video.ParamMapping(
    "blocks/0/attn/qkv/kernel", "blocks/0/attn/qkv/kernel", "copied"
  )
  for name in ("temporal_pos_embed", "fc_norm/scale", "fc_norm/bias", "head/kernel", "head/bias"):
    assert report[name].action == "new" and report[name].source is None
  targets = {
    "/".join(optim.path_names(p))
    for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  }
  assert set(report) == targets  # every parameter is accounted for
  image_kernel = np.asarray(encoder.patch_embed.kernel[...])
  video_kernel = np.asarray(model.patch_embed.kernel[...])
  assert video_kernel.shape == (2 * image_kernel.shape[0], image_kernel.shape[1])
  np.testing.assert_allclose(video_kernel[: image_kernel.shape[0]], image_kernel / 2, rtol=1e-7)
  np.testing.assert_allclose(video_kernel[image_kernel.shape[0] :], image_kernel / 2, rtol=1e-7)
  assert not np.asarray(model.temporal_pos_embed[...]).any()


def test_full_vicmae_tree_is_narrowed_to_its_encoder():
  encoder = _encoder()
  tree = {
    "encoder": nnx.state(encoder, nnx.Param),
    "decoder": {"embed": {"kernel": np.zeros((32, 16))}},
  }
  model = _video_model()
  report = video.from_image_encoder(model, tree)
  assert not [m for m in report if m.action == "unused"]
  np.testing.assert_array_equal(
    np.asarray(model.cls_token[...]), np.asarray(encoder.cls_token[...])
  )


def test_tubelet_order_and_frame_count_errors():
  model = _video_model()
  clip = jax.random.normal(jax.random.key(0), (1, 4, IMAGE_SIZE, IMAGE_SIZE, 3))
  patches = np.asarray(model.tubelets(clip))  # [1, 2, 4, 2*4*4*3]
  image_patches = np.asarray(vit.patchify(clip, 4))  # [1, 4, 4, 48]
  # Tubelet (slot 1, patch 3) = frame 2's patch 3 followed by frame 3's patch 3.
  np.testing.assert_array_equal(
    patches[0, 1, 3], np.concatenate([image_patches[0, 2, 3], image_patches[0, 3, 3]])
  )
  with pytest.raises(ValueError, match="not divisible by tubelet_size"):
    model.features(clip[:, :3])
  with pytest.raises(ValueError, match="num_frames"):
    _video_model(num_frames=7)


@pytest.mark.slow
def test_other_frame_counts_resample_the_temporal_embedding():
  model = _video_model(num_frames=8)  # 4 temporal slots
  model.temporal_pos_embed[...] = jnp.arange(4, dtype=jnp.float32)[:, None] * jnp.ones((1, 32))
  table = np.asarray(model.temporal_embedding(8))[:, 0]
  # Linear, half-pixel centres: 8 slots sample positions (i + 0.5) / 2 - 0.5 of the 4-slot table.
  np.testing.assert_allclose(table, np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3), atol=1e-6)
  for frames in (4, 16, 32):
    out = model(jnp.zeros((1, frames, IMAGE_SIZE, IMAGE_SIZE, 3)))
    assert out.shape == (1, 5)


@pytest.mark.slow
def test_train_mode_drop_path_and_layer_decay_on_video_params():
  model = _video_model(drop_path_rate=0.5)
  clip = jax.random.normal(jax.random.key(0), (4, 4, IMAGE_SIZE, IMAGE_SIZE, 3))
  a = model(clip, key=jax.random.key(1), train=True)
  b = model(clip, key=jax.random.key(2), train=True)
  assert float(jnp.abs(a - b).max()) > 0  # stochastic depth draws differ
  np.testing.assert_array_equal(
    np.asarray(model(clip)), np.asarray(model(clip, key=jax.random.key(1)))
  )
  params = nnx.state(model, nnx.Param)
  scales = {
    optim.path_string(p): float(v)
    for p, v in jax.tree_util.tree_flatten_with_path(
      optim.layerwise_lr_decay_scales(params, 2, 0.5)
    )[0]
  }
  assert (
    scales["temporal_pos_embed"] == scales["patch_embed/kernel"] == scales["cls_token"] == 0.125
  )
  assert scales["blocks/1/mlp/fc1/kernel"] == 0.5 and scales["head/kernel"] == 1.0
  mask = {
    optim.path_string(p): bool(v)
    for p, v in jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params))[0]
  }
  assert not mask["temporal_pos_embed"] and not mask["cls_token"] and mask["head/kernel"]
