"""ViT / ViC-MAE model: official semantics against a numpy reference, masking, layouts, sharded steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from vicmae_jax import losses, sharding
from vicmae_jax.models import vicmae, vit

TINY = {"variant": "mu/8"}


def _build(**overrides):
  return vicmae.build_model({**TINY, **overrides}, rngs=nnx.Rngs(0))


def _images(batch=2, views=2, height=32, width=32, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(batch, views, height, width, 3), jnp.float32)


def _pure(model, kind=nnx.Param):
  return jax.tree.map(np.asarray, nnx.state(model, kind).to_pure_dict())


def _load(model, pure):
  state = nnx.state(model)
  state.replace_by_pure_dict(pure)
  nnx.update(model, state)


# --------------------------------------------------------------------------------------------
# Patches and position embeddings


def test_patchify_matches_official_order_and_unpatchify_inverts():
  rng = np.random.RandomState(0)
  images = rng.randn(2, 16, 24, 3).astype(np.float32)
  p = 8
  patches = np.asarray(vit.patchify(jnp.asarray(images), p))
  assert patches.shape == (2, 6, 192)
  # Patch (row 1, col 2), pixel (row-in-patch 3, col-in-patch 5), channel 1 -> index (3*p + 5)*3 + 1.
  assert patches[0, 1 * 3 + 2, (3 * p + 5) * 3 + 1] == images[0, 8 + 3, 16 + 5, 1]
  # The official NCHW definition: 'nchpwq->nhwpqc'.
  nchw = images.transpose(0, 3, 1, 2).reshape(2, 3, 2, p, 3, p)
  official = np.einsum("nchpwq->nhwpqc", nchw).reshape(2, 6, p * p * 3)
  np.testing.assert_array_equal(patches, official)
  np.testing.assert_array_equal(np.asarray(vit.unpatchify(jnp.asarray(patches), p, 2, 3)), images)
  # Leading dims are kept.
  assert vit.patchify(jnp.zeros((4, 2, 16, 16, 3)), 8).shape == (4, 2, 4, 192)
  with pytest.raises(ValueError, match="image_size"):
    vit.patchify(jnp.zeros((1, 20, 16, 3)), 8)
  with pytest.raises(ValueError, match="grid"):
    vit.unpatchify(jnp.asarray(patches), p, 3, 3)


def _sincos_by_formula(dim, grid_h, grid_w):
  """Channel c < D/4: sin(col * w_c); then cos(col * w_c); then sin(row * w_c); then cos(row * w_c)."""
  quarter = dim // 4
  out = np.zeros((grid_h * grid_w, dim))
  for row in range(grid_h):
    for col in range(grid_w):
      for c in range(quarter):
        omega = 1.0 / 10000 ** (c / quarter)
        out[row * grid_w + col, c] = math.sin(col * omega)
        out[row * grid_w + col, quarter + c] = math.cos(col * omega)
        out[row * grid_w + col, 2 * quarter + c] = math.sin(row * omega)
        out[row * grid_w + col, 3 * quarter + c] = math.cos(row * omega)
  return out


def test_sincos_2d_official_layout_any_grid():
  emb = vit.sincos_2d(16, 3, 5, cls_token=True)
  assert emb.shape == (16, 16) and emb.dtype == np.float32
  np.testing.assert_array_equal(emb[0], 0.0)
  np.testing.assert_allclose(emb[1:], _sincos_by_formula(16, 3, 5), atol=1e-6)
  assert vit.sincos_2d(8, 2, 2, cls_token=False).shape == (4, 8)


# --------------------------------------------------------------------------------------------
# Masking


@pytest.mark.parametrize("length,ratio", [(196, 0.75), (196, 0.9), (16, 0.5), (49, 0.6), (10, 0.0)])
def test_random_masking_keeps_exact_count_and_restores(length, ratio):
  batch, dim = 3, 5
  keep = vit.num_kept(length, ratio)
  assert keep == int(length * (1 - ratio))
  x = jnp.asarray(np.random.RandomState(0).randn(batch, length, dim), jnp.float32)
  noise = jax.random.uniform(jax.random.key(0), (batch, length))
  kept, mask, ids_restore = vit.random_masking(x, noise, keep)
  assert kept.shape == (batch, keep, dim)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), length - keep)
  # Smallest noise is kept.
  ranks = np.argsort(np.argsort(np.asarray(noise), axis=1), axis=1)
  np.testing.assert_array_equal(np.asarray(mask), (ranks >= keep).astype(np.float32))
  # Un-shuffling [kept, placeholders] with ids_restore puts every kept token back in place.
  padded = jnp.concatenate([kept, jnp.zeros((batch, length - keep, dim))], axis=1)
  restored = jnp.take_along_axis(padded, ids_restore[:, :, None], axis=1)
  np.testing.assert_array_equal(
    np.asarray(restored), np.asarray(x) * (1 - np.asarray(mask))[:, :, None]
  )
  # restore o shuffle is the identity permutation.
  ids_shuffle = jnp.argsort(noise, axis=1)
  np.testing.assert_array_equal(
    np.asarray(jnp.take_along_axis(ids_shuffle, ids_restore, axis=1)),
    np.tile(np.arange(length), (batch, 1)),
  )


def test_num_kept_rejects_bad_ratios():
  with pytest.raises(ValueError, match="mask_ratio"):
    vit.num_kept(16, 1.0)
  with pytest.raises(ValueError, match="mask_ratio"):
    vit.num_kept(4, 0.9)


def test_masks_differ_across_samples_views_and_steps():
  model = _build()
  images = _images(batch=4)
  run = nnx.jit(lambda m, x, k: m(x, mask_ratio=0.5, key=k)["mask"])
  base = jax.random.key(7)
  step1 = np.asarray(run(model, images, jax.random.fold_in(base, 1)))
  step2 = np.asarray(run(model, images, jax.random.fold_in(base, 2)))
  again = np.asarray(run(model, images, jax.random.fold_in(base, 1)))
  np.testing.assert_array_equal(step1.sum(-1), 8.0)  # 16 patches, ratio 0.5
  assert not np.array_equal(step1[0, 0], step1[1, 0])  # samples
  assert not np.array_equal(step1[0, 0], step1[0, 1])  # views of one sample
  assert not np.array_equal(step1, step2)  # steps
  np.testing.assert_array_equal(step1, again)  # deterministic given the key


# --------------------------------------------------------------------------------------------
# Official semantics: numpy reference forward


def _np_ln(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _np_block(x, p, heads):
  n, length, dim = x.shape
  hd = dim // heads
  h = _np_ln(x, p["norm1"])
  qkv = _np_dense(h, p["attn"]["qkv"]).reshape(n, length, 3, heads, hd).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv
  logits = q @ k.transpose(0, 1, 3, 2) * hd**-0.5
  logits -= logits.max(-1, keepdims=True)
  attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  out = (attn @ v).transpose(0, 2, 1, 3).reshape(n, length, dim)
  x = x + _np_dense(out, p["attn"]["proj"])
  h = _np_dense(_np_ln(x, p["norm2"]), p["mlp"]["fc1"])
  h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
  return x + _np_dense(h, p["mlp"]["fc2"])


def _np_bn_train(x, p, stats, momentum=0.1, eps=1e-5):
  mean = x.mean(0)
  var = x.var(0)
  stats["mean"] = (1 - momentum) * stats["mean"] + momentum * mean
  stats["var"] = (1 - momentum) * stats["var"] + momentum * x.var(0, ddof=1)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_vicmae(params, stats, images, noise, cfg, mask_ratio):
  """The official forward, one view at a time (float64)."""
  p = cfg["patch_size"]
  enc, dec, proj = params["encoder"], params["decoder"], params["projector"]
  stats = {k: dict(v) for k, v in stats["projector"].items()}
  batch, views, height, width, _ = images.shape
  gh, gw = height // p, width // p
  length = gh * gw
  keep = int(length * (1 - mask_ratio))
  pos = _sincos_by_formula(cfg["embed_dim"], gh, gw)
  dec_pos = np.concatenate(
    [np.zeros((1, cfg["decoder_embed_dim"])), _sincos_by_formula(cfg["decoder_embed_dim"], gh, gw)]
  )
  preds, masks, pooled_all, projs = [], [], [], []
  for v in range(views):
    nchw = images[:, v].transpose(0, 3, 1, 2).reshape(batch, 3, gh, p, gw, p)
    patches = np.einsum("nchpwq->nhwpqc", nchw).reshape(batch, length, p * p * 3)
    x = _np_dense(patches, enc["patch_embed"]) + pos
    ids_shuffle = np.argsort(noise[:, v], axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    x = np.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
    mask = np.ones((batch, length))
    mask[:, :keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1)
    x = np.concatenate([np.broadcast_to(enc["cls_token"], (batch, 1, x.shape[-1])), x], axis=1)
    for i in range(cfg["depth"]):
      x = _np_block(x, enc["blocks"][i], cfg["num_heads"])
    z = _np_ln(x, enc["norm"])
    pooled = z[:, 1:].mean(1)
    h = _np_dense(z, dec["embed"])
    mask_tokens = np.broadcast_to(dec["mask_token"], (batch, length + 1 - h.shape[1], h.shape[-1]))
    h_ = np.concatenate([h[:, 1:], mask_tokens], axis=1)
    h_ = np.take_along_axis(h_, ids_restore[:, :, None], axis=1)
    h = np.concatenate([h[:, :1], h_], axis=1) + dec_pos
    for i in range(cfg["decoder_depth"]):
      h = _np_block(h, dec["blocks"][i], cfg["decoder_num_heads"])
    pred = _np_dense(_np_ln(h, dec["norm"]), dec["pred"])[:, 1:]
    u = np.maximum(_np_bn_train(_np_dense(pooled, proj["fc1"]), proj["bn1"], stats["bn1"]), 0)
    u = np.maximum(_np_bn_train(_np_dense(u, proj["fc2"]), proj["bn2"], stats["bn2"]), 0)
    u = _np_dense(u, proj["fc3"])
    preds.append(pred)
    masks.append(mask)
    pooled_all.append(pooled)
    projs.append(u)
  stack = lambda xs: np.stack(xs, axis=1)  # noqa: E731
  return {
    "pred": stack(preds),
    "mask": stack(masks),
    "pooled": stack(pooled_all),
    "proj": stack(projs),
  }, stats


@pytest.mark.slow
@pytest.mark.parametrize("height,width,mask_ratio", [(16, 24, 0.5), (24, 24, 0.75)])
def test_forward_matches_numpy_reference_of_official_code(height, width, mask_ratio):
  cfg = vicmae.resolve_model_config({**TINY, "depth": 2, "decoder_depth": 2})
  model = vicmae.build_model(cfg, rngs=nnx.Rngs(3))
  # Non-trivial LayerNorm / BN affine parameters and running stats so that every term matters.
  params = _pure(model)
  rng = np.random.RandomState(5)
  params = jax.tree.map(lambda a: a + 0.1 * rng.randn(*a.shape).astype(np.float32), params)
  _load(model, params)
  stats = _pure(model, nnx.BatchStat)
  images = np.random.RandomState(1).randn(3, 2, height, width, 3).astype(np.float32)
  length = (height // 8) * (width // 8)
  noise = np.random.RandomState(2).rand(3, 2, length).astype(np.float32)
  out = model(jnp.asarray(images), mask_ratio=mask_ratio, noise=jnp.asarray(noise), train=True)
  f64 = jax.tree.map(lambda a: a.astype(np.float64), params)
  expected, expected_stats = _np_vicmae(
    f64, stats, images.astype(np.float64), noise, cfg, mask_ratio
  )
  np.testing.assert_array_equal(np.asarray(out["mask"]), expected["mask"])
  for name in ("pred", "pooled", "proj"):
    assert out[name].dtype == jnp.float32
    np.testing.assert_allclose(
      np.asarray(out[name]), expected[name], rtol=2e-4, atol=2e-4, err_msg=name
    )
  # BatchNorm running statistics: updated with view 1 then view 2, unbiased variance, momentum 0.1.
  new_stats = _pure(model, nnx.BatchStat)["projector"]
  for bn in ("bn1", "bn2"):
    for stat in ("mean", "var"):
      np.testing.assert_allclose(
        new_stats[bn][stat], expected_stats[bn][stat], rtol=1e-4, atol=1e-5
      )
    assert not np.allclose(new_stats[bn]["var"], stats["projector"][bn]["var"])


@pytest.mark.slow
def test_eval_mode_uses_running_stats_and_does_not_update():
  model = _build()
  images = _images()
  before = _pure(model, nnx.BatchStat)
  out_eval = model(images, mask_ratio=0.5, key=jax.random.key(0), train=False)
  after = _pure(model, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, after)
  # With running stats mean 0 / var 1 the BN is (x / sqrt(1 + eps)) * scale + bias.
  fc1 = model.projector.fc1
  h = np.asarray(fc1(out_eval["pooled"]))
  bn = np.asarray(model.projector.bn1(jnp.asarray(h), train=False))
  np.testing.assert_allclose(bn, h / np.sqrt(1 + 1e-5), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Initialization and parameter counts


def test_official_initialization():
  model = vicmae.build_model({**TINY, "projector_hidden_dim": 256}, rngs=nnx.Rngs(0))
  params = _pure(model)
  kernel = params["projector"]["fc2"]["kernel"]  # 256 x 256
  bound = math.sqrt(6 / (256 + 256))
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.05)  # uniform std
  patch = params["encoder"]["patch_embed"]["kernel"]  # [p*p*3, D] as a flattened Dense
  assert patch.shape == (192, 64)
  assert np.abs(patch).max() <= math.sqrt(6 / (192 + 64))
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']"):
      np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
    elif "norm" in name or "bn" in name:
      np.testing.assert_array_equal(leaf, 1.0, err_msg=name)  # LayerNorm / BN scales
  for token in (params["encoder"]["cls_token"], params["decoder"]["mask_token"]):
    assert 0.005 < token.std() < 0.04 and token.shape[:2] == (1, 1)
  stats = _pure(model, nnx.BatchStat)["projector"]
  np.testing.assert_array_equal(stats["bn1"]["mean"], 0.0)
  np.testing.assert_array_equal(stats["bn1"]["var"], 1.0)


# Official counts, obtained once with torch 2.13 + timm 1.0.31 by instantiating
# models_vicmae.vicmae_vit_{base,large}_patch16() from the official code and summing numel() of the
# trainable parameters (requires_grad; the fixed sin-cos pos_embed is excluded); "encoder" sums
# patch_embed, cls_token, blocks and norm.
OFFICIAL_COUNTS = {
  "S/16": {"encoder": 21_590_016, "total": 47_103_872},
  "B/16": {"encoder": 85_647_360, "total": 132_127_616},
  "L/16": {"encoder": 303_099_904, "total": 350_759_808},
  "H/14": {"encoder": 630_435_840, "total": 679_183_052},
}


@pytest.mark.parametrize("variant", ["B/16", "L/16"])
def test_parameter_counts_equal_official(variant):
  abstract = nnx.eval_shape(lambda: vicmae.build_model({"variant": variant}, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param)
  assert sharding.tree_size(params["encoder"]) == OFFICIAL_COUNTS[variant]["encoder"]
  assert sharding.tree_size(params) == OFFICIAL_COUNTS[variant]["total"]


# --------------------------------------------------------------------------------------------
# Layouts and numerics options


def _loss_and_grads(model, images, key):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(p, rest):
    m = nnx.merge(graphdef, p, rest, copy=True)
    out = m(images, mask_ratio=0.5, key=key, train=True)
    loss, _ = losses.pretrain_loss(
      images, out, patch_size=8, temperature=0.1, weight_recon=0.97, weight_contrast=0.03
    )
    return loss, out

  (loss, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, rest)
  return loss, out, grads.to_pure_dict()


@pytest.mark.slow
def test_scan_equals_no_scan():
  images, key = _images(), jax.random.key(1)
  plain = _build(depth=3, decoder_depth=2)
  scanned = _build(depth=3, decoder_depth=2, scan_layers=True)
  pure = _pure(plain)
  _load(scanned, vit.stack_blocks_in_tree(pure))
  assert scanned.encoder.blocks.attn.qkv.kernel[...].shape == (3, 64, 192)
  loss_a, out_a, grads_a = _loss_and_grads(plain, images, key)
  loss_b, out_b, grads_b = _loss_and_grads(scanned, images, key)
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
  for name in out_a:
    np.testing.assert_allclose(
      np.asarray(out_a[name]), np.asarray(out_b[name]), rtol=1e-5, atol=1e-6
    )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
    grads_a,
    vit.unstack_blocks_in_tree(grads_b),
  )
  # The layout helpers are inverses.
  jax.tree.map(
    np.testing.assert_array_equal, pure, vit.unstack_blocks_in_tree(vit.stack_blocks_in_tree(pure))
  )


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_equals_no_remat(remat):
  images, key = _images(), jax.random.key(2)
  plain = _build()
  loss_a, out_a, grads_a = _loss_and_grads(plain, images, key)
  rematted = _build(remat=remat)
  _load(rematted, _pure(plain))
  loss_b, out_b, grads_b = _loss_and_grads(rematted, images, key)
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_a, grads_b
  )


@pytest.mark.slow
@pytest.mark.parametrize("length,multiple", [(99, 64), (17, 8), (64, 64), (1, 8)])
def test_padded_attention_equals_attention_over_real_tokens(length, multiple):
  rng = np.random.RandomState(length)
  q, k, v = (jnp.asarray(rng.randn(2, length, 3, 16), jnp.float32) for _ in range(3))
  cotangent = jnp.asarray(rng.randn(2, length, 3, 16), jnp.float32)

  def plain(q, k, v):  # heads-major reference
    out = vit.multi_head_attention(*(jnp.transpose(t, (0, 2, 1, 3)) for t in (q, k, v)), 16**-0.5)
    return jnp.sum(jnp.transpose(out, (0, 2, 1, 3)) * cotangent), out

  def padded(q, k, v):  # the "cudnn" path's padding and length masks, run by XLA here
    out = vit.padded_dot_product_attention(
      q, k, v, scale=16**-0.5, implementation="xla", multiple=multiple
    )
    return jnp.sum(out * cotangent), jnp.transpose(out, (0, 2, 1, 3))

  (_, out_a), grads_a = jax.value_and_grad(plain, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, out_b), grads_b = jax.value_and_grad(padded, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  np.testing.assert_allclose(np.asarray(out_b), np.asarray(out_a), rtol=1e-5, atol=1e-6)
  for a, b in zip(grads_a, grads_b):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_cudnn_attention_option(monkeypatch):
  with pytest.raises(ValueError, match="attention_impl='cudnn' needs a GPU"):
    _build(attention_impl="cudnn")
  with pytest.raises(ValueError, match="model.attention_impl='flash'"):
    vicmae.resolve_model_config({**TINY, "attention_impl": "flash"})
  # The wiring on a CPU: the model asks jax.nn.dot_product_attention for cuDNN with padded
  # sequences and length masks; XLA stands in for the kernel, and the step equals the default one.
  images, key = _images(), jax.random.key(3)
  plain = _build()
  loss_a, out_a, grads_a = _loss_and_grads(plain, images, key)
  original, calls = jax.nn.dot_product_attention, []

  def stand_in(q, k, v, *, implementation, **kwargs):
    calls.append((implementation, q.shape[1], "key_value_seq_lengths" in kwargs))
    return original(q, k, v, implementation="xla", **kwargs)

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
  cudnn = _build(attention_impl="cudnn")
  _load(cudnn, _pure(plain))
  loss_b, out_b, grads_b = _loss_and_grads(cudnn, images, key)
  assert calls and all(
    impl == "cudnn" and n % vit.CUDNN_SEQUENCE_MULTIPLE == 0 and masked for impl, n, masked in calls
  )
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5)
  # float32 sums in another order: gradients agree to ~1e-4 of their scale (largest entries ~1e-2).
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), grads_a, grads_b
  )


def test_encode_at_mask_zero_equals_pooled_features():
  model = _build()
  images = _images(batch=3)
  out = nnx.jit(lambda m, x: m(x, mask_ratio=0.0, train=False))(model, images)
  np.testing.assert_array_equal(np.asarray(out["mask"]), 0.0)
  encode = nnx.jit(lambda m, x: m.encode(x))
  for view in range(2):
    tokens, pooled = encode(model, images[:, view])
    assert tokens.shape == (3, 1 + 16, 64) and pooled.shape == (3, 64)
    np.testing.assert_allclose(
      np.asarray(pooled), np.asarray(out["pooled"][:, view]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(tokens[:, 1:].mean(1)), rtol=1e-6)


@pytest.mark.slow
def test_bfloat16_compute_runs_close_to_float32():
  images, key = _images(), jax.random.key(3)
  ref = _build()
  half = _build(dtype="bfloat16")
  _load(half, _pure(ref))
  loss_ref, out_ref, _ = _loss_and_grads(ref, images, key)
  loss_half, out_half, grads_half = _loss_and_grads(half, images, key)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(half, nnx.Param)))
  assert all(out_half[name].dtype == jnp.float32 for name in out_half)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads_half))
  assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads_half))
  assert abs(float(loss_half) - float(loss_ref)) < 0.05 * abs(float(loss_ref))
  # The matmuls really ran in bfloat16: results are close but not identical.
  assert not np.array_equal(np.asarray(out_half["pred"]), np.asarray(out_ref["pred"]))


def test_any_image_size_divisible_by_patch():
  model = _build()
  out = nnx.jit(lambda m, x: m(x, mask_ratio=0.75, key=jax.random.key(0)))(
    model, _images(height=24, width=40)
  )
  assert out["pred"].shape == (2, 2, 15, 192)
  np.testing.assert_array_equal(np.asarray(out["mask"]).sum(-1), 15 - int(15 * 0.25))
  with pytest.raises(ValueError, match="image_size"):
    model(_images(height=20, width=32), mask_ratio=0.5, key=jax.random.key(0))
  with pytest.raises(ValueError, match="noise"):
    model(_images(), mask_ratio=0.5)


def test_drop_path_only_in_training_with_a_key():
  model = _build(drop_path_rate=0.5, depth=4)
  x = _images()[:, 0]
  base = model.encode(x)[1]
  np.testing.assert_array_equal(
    np.asarray(model.encode(x, key=jax.random.key(0))[1]), np.asarray(base)
  )
  dropped = model.encode(x, key=jax.random.key(0), train=True)[1]
  assert not np.allclose(np.asarray(dropped), np.asarray(base))


def test_resolve_model_config_defaults_overrides_and_errors():
  cfg = vicmae.resolve_model_config({"variant": "B/16", "projector_hidden_dim": 1024})
  assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (768, 12, 12)
  assert (cfg["decoder_embed_dim"], cfg["decoder_depth"], cfg["decoder_num_heads"]) == (512, 8, 16)
  assert (cfg["projector_hidden_dim"], cfg["projector_out_dim"]) == (1024, 128)
  assert (cfg["temperature"], cfg["weight_recon"], cfg["weight_contrast"]) == (0.1, 0.97, 0.03)
  assert vicmae.resolve_model_config({"variant": "S/16"})["decoder_embed_dim"] == 256
  assert vicmae.resolve_model_config({"variant": "H/14"})["patch_size"] == 14
  with pytest.raises(ValueError, match="model.variant"):
    vicmae.resolve_model_config({"variant": "X/3"})
  with pytest.raises(ValueError, match="embed_dimm"):
    vicmae.resolve_model_config({"variant": "B/16", "embed_dimm": 3})
  with pytest.raises(ValueError, match="model.num_heads"):
    vicmae.resolve_model_config({"variant": "B/16", "num_heads": 7})
  with pytest.raises(ValueError, match="model.remat"):
    vicmae.resolve_model_config({"variant": "B/16", "remat": "sometimes"})
  with pytest.raises(ValueError, match="missing fields"):
    vicmae.resolve_model_config({"embed_dim": 64})


# --------------------------------------------------------------------------------------------
# One gradient step on a device mesh equals the single-device step


def _train_step(graphdef):
  def step(params, stats, images, key):
    def loss_fn(p):
      model = nnx.merge(graphdef, p, stats, copy=True)
      out = model(images, mask_ratio=0.5, key=key, train=True)
      loss, _ = losses.pretrain_loss(
        images, out, patch_size=8, temperature=0.1, weight_recon=0.97, weight_contrast=0.03
      )
      return loss, nnx.state(model, nnx.BatchStat)

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_stats

  return jax.jit(step)


def _rel_diff(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_cfg", [{"data": 8}, {"data": 4, "fsdp": 2}])
def test_sharded_gradient_step_equals_single_device(mesh_cfg):
  model = _build()
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  images = _images(batch=8, seed=4)
  key = jax.random.key(11)
  step = _train_step(graphdef)
  device0 = jax.devices()[0]
  ref = step(*jax.device_put((params, stats, images), device0), key)

  mesh = sharding.make_mesh(mesh_cfg)
  put = lambda tree: jax.device_put(tree, sharding.state_shardings(tree, mesh))  # noqa: E731
  sharded_params, sharded_stats = put(params), put(stats)
  if mesh_cfg.get("fsdp", 1) > 1:
    kernel = sharded_params["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"][...]
    assert kernel.sharding.spec[0] == "fsdp"  # really sharded
  sharded_images = jax.device_put(images, sharding.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    got = step(sharded_params, sharded_stats, sharded_images, key)
  assert len(got[0].sharding.device_set) == 8
  assert _rel_diff(got[0], ref[0]) <= 1e-5
  ref_leaves = jax.tree_util.tree_leaves_with_path(
    jax.tree.map(np.asarray, (ref[1].to_pure_dict(), ref[2].to_pure_dict()))
  )
  got_leaves = jax.tree.leaves(
    jax.tree.map(np.asarray, (got[1].to_pure_dict(), got[2].to_pure_dict()))
  )
  assert len(ref_leaves) == len(got_leaves) > 40
  flat_ref = np.concatenate([np.ravel(leaf) for _, leaf in ref_leaves])
  flat_got = np.concatenate([np.ravel(leaf) for leaf in got_leaves])
  assert _rel_diff(flat_got, flat_ref) <= 1e-5
  scale = np.linalg.norm(flat_ref)
  for (path, expected), actual in zip(ref_leaves, got_leaves):
    # Biases right before a BatchNorm have an exactly-zero gradient (BN removes the mean), so
    # both sides are rounding noise; the floor relative to the whole gradient covers them.
    diff = np.linalg.norm(np.asarray(actual, np.float64) - expected)
    assert diff <= 1e-5 * np.linalg.norm(expected) + 1e-8 * scale, jax.tree_util.keystr(path)
  # The BN statistics did move in this step.
  assert (
    _rel_diff(ref[2]["projector"]["bn1"]["var"][...], stats["projector"]["bn1"]["var"][...]) > 1e-3
  )
