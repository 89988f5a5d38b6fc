"""Classifier models: learned position embeddings, bicubic resizing, probe head, frame averaging, loading forms."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from vicmae_jax.models import classifier
from vicmae_jax.models import vicmae
from vicmae_jax.models import vit


def _classifier(image_size=16, pool="cls", **model):
  cfg = {"variant": "mu/8", **model}
  return classifier.build_image_classifier(
    cfg, num_classes=5, image_size=image_size, pool=pool, rngs=nnx.Rngs(0)
  )


def test_bicubic_matrix_uses_pytorch_weights_and_border_clamping():
  # Upsampling 4 -> 8: output j samples source (j + 0.5) / 2 - 0.5, so j = 2 sits at 0.75 between
  # taps 0 and 1. Keys cubic with a = -0.75 at t = 0.75 gives these weights for taps -1, 0, 1, 2.
  a = -0.75
  t = 0.75
  near = lambda x: (a + 2) * x**3 - (a + 3) * x**2 + 1
  far = lambda x: a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
  expected = np.zeros(4)
  for tap, w in zip((-1, 0, 1, 2), (far(1 + t), near(t), near(1 - t), far(2 - t))):
    expected[min(max(tap, 0), 3)] += w  # tap -1 is clamped onto row 0
  m = classifier.bicubic_matrix(4, 8)
  np.testing.assert_allclose(m[2], expected, atol=1e-12)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(classifier.bicubic_matrix(5, 5), np.eye(5), atol=1e-12)


def _keys_cubic(x, a=-0.75):
  x = abs(x)
  if x <= 1:
    return (a + 2) * x**3 - (a + 3) * x**2 + 1
  return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


def test_interpolate_pos_embed_is_separable_bicubic_and_keeps_cls():
  size, dim = 6, 3
  rng = np.random.default_rng(0)
  table = rng.normal(size=(1, 1 + size * size, dim)).astype(np.float32)
  grid = table[0, 1:].reshape(size, size, dim).astype(np.float64)
  out = classifier.interpolate_pos_embed(table, (9, 4))
  assert out.shape == (1, 1 + 9 * 4, dim) and out.dtype == np.float32
  np.testing.assert_array_equal(out[0, 0], table[0, 0])
  resized = out[0, 1:].reshape(9, 4, dim)
  # Element by element: a 4 x 4 neighbourhood weighted by the kernel along rows and along columns.
  for i, j in [(0, 0), (4, 1), (8, 3), (5, 2)]:
    y = (i + 0.5) * size / 9 - 0.5
    x = (j + 0.5) * size / 4 - 0.5
    value = np.zeros(dim)
    for r in range(int(np.floor(y)) - 1, int(np.floor(y)) + 3):
      for c in range(int(np.floor(x)) - 1, int(np.floor(x)) + 3):
        value += (
          _keys_cubic(y - r)
          * _keys_cubic(x - c)
          * grid[min(max(r, 0), size - 1), min(max(c, 0), size - 1)]
        )
    np.testing.assert_allclose(resized[i, j], value, rtol=1e-5, atol=1e-5)
  constant = np.ones_like(table)
  np.testing.assert_allclose(classifier.interpolate_pos_embed(constant, (5, 5)), 1.0, atol=1e-6)
  assert classifier.interpolate_pos_embed(table, (size, size)) is table
  with pytest.raises(ValueError, match="square grid"):
    classifier.interpolate_pos_embed(table[:, :-1], (3, 3))


def test_learned_pos_embed_starts_as_the_pretrained_sincos_encoder():
  model = _classifier(image_size=24)
  table = np.asarray(model.pos_embed[...])
  np.testing.assert_array_equal(table[0], vit.sincos_2d(64, 3, 3, cls_token=True))
  images = jax.random.normal(jax.random.key(1), (2, 24, 24, 3))
  ours = model.tokens(images)
  reference = model.encoder(images, mask_ratio=0.0)["tokens"]  # fixed sin-cos path
  np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(model.features(images)), np.asarray(reference[:, 0]), atol=1e-5
  )
  logits = model(images)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32


def test_other_input_resolution_resizes_the_table_like_loading():
  model = _classifier(image_size=16)  # grid 2
  model.pos_embed[...] = jax.random.normal(jax.random.key(2), model.pos_embed[...].shape)
  table = np.asarray(model.pos_embed[...])
  on_the_fly = np.asarray(model.position_table((4, 4)))
  np.testing.assert_allclose(
    on_the_fly, classifier.interpolate_pos_embed(table, (4, 4))[0], atol=1e-5
  )


def test_mean_pool_excludes_cls():
  tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
  np.testing.assert_allclose(
    classifier.pool_tokens(tokens, "mean"), tokens[:, 1:].mean(1), atol=1e-6
  )
  np.testing.assert_array_equal(classifier.pool_tokens(tokens, "cls"), tokens[:, 0])
  with pytest.raises(ValueError, match="pool"):
    classifier.pool_tokens(tokens, "max")


def test_probe_batchnorm_has_pytorch_semantics_and_no_affine():
  head = classifier.LinearProbeHead(4, 3, rngs=nnx.Rngs(0))
  assert set(nnx.to_pure_dict(nnx.state(head, nnx.Param))) == {
    "head"
  }  # BatchNorm has no scale/bias
  x = np.random.default_rng(1).normal(2.0, 3.0, size=(6, 4)).astype(np.float32)
  normalized = head.bn(jnp.asarray(x), train=True)
  mean, var = x.mean(0), x.var(0)
  np.testing.assert_allclose(
    np.asarray(normalized), (x - mean) / np.sqrt(var + 1e-6), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(np.asarray(head.bn.mean[...]), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(head.bn.var[...]), 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-5)
  evaluated = head.bn(jnp.asarray(x), train=False)  # running statistics
  np.testing.assert_allclose(
    np.asarray(evaluated),
    (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * x.var(0, ddof=1) + 1e-6),
    rtol=1e-5,
    atol=1e-5,
  )


def test_head_initializations():
  big = classifier.LinearProbeHead(256, 200, rngs=nnx.Rngs(0))
  kernel = np.asarray(big.head.kernel[...])
  assert np.all(np.abs(kernel) <= 2 * 0.01 + 1e-9)  # truncated at two standard deviations
  assert 0.007 < kernel.std() < 0.01
  np.testing.assert_array_equal(np.asarray(big.head.bias[...]), 0.0)
  tiny = np.asarray(_classifier().head.kernel[...])
  assert 0 < np.abs(tiny).max() <= 4e-5


def test_clip_features_average_frame_features():
  encoder = classifier.build_encoder({"variant": "mu/8"}, rngs=nnx.Rngs(0))
  clips = jax.random.normal(jax.random.key(3), (2, 3, 16, 16, 3))
  features = nnx.jit(classifier.encoder_features)
  per_frame = [features(encoder, clips[:, t]) for t in range(3)]
  np.testing.assert_allclose(
    np.asarray(features(encoder, clips)),
    np.mean([np.asarray(f) for f in per_frame], axis=0),
    atol=1e-5,
  )
  # The mean-pooled feature is ViC-MAE's pooled feature of the same encoder.
  model = vicmae.build_model({"variant": "mu/8"}, rngs=nnx.Rngs(0))
  _, pooled = nnx.jit(lambda m, x: m.encode(x))(model, clips[:, 0])
  np.testing.assert_allclose(np.asarray(per_frame[0]), np.asarray(pooled), atol=1e-5)
  with pytest.raises(ValueError, match="images"):
    classifier.encoder_features(encoder, clips[0, 0])


def test_encoder_subtree_accepts_the_three_layouts():
  enc = {"patch_embed": {"kernel": 1}, "blocks": {}, "norm": {}, "cls_token": 0}
  assert classifier.encoder_subtree({"encoder": enc, "decoder": {}, "projector": {}}) == enc
  assert classifier.encoder_subtree({"encoder": enc, "pos_embed": 0, "head": {}}) == enc
  assert classifier.encoder_subtree({**enc, "head": {}}) == enc
  with pytest.raises(ValueError, match="top-level entries: \\['decoder', 'projector'\\]"):
    classifier.encoder_subtree({"decoder": {}, "projector": {}})


def test_block_layout_round_trip():
  rng = np.random.default_rng(0)
  listed = {
    "blocks": {str(i): {"attn": {"w": rng.normal(size=(2, 3))}} for i in range(3)},
    "norm": {"scale": 1.0},
  }
  stacked = classifier.match_block_layout(listed, scanned=True)
  assert stacked["blocks"]["attn"]["w"].shape == (3, 2, 3)
  back = classifier.match_block_layout(stacked, scanned=False)
  for i in range(3):
    np.testing.assert_array_equal(
      back["blocks"][str(i)]["attn"]["w"], listed["blocks"][str(i)]["attn"]["w"]
    )
  assert classifier.match_block_layout(listed, scanned=False) == listed
