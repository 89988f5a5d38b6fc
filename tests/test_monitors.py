"""Collapse / health monitors against numpy, on collapsed inputs, and in the real train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vicmae_jax import losses, monitors


def _np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_rank(x, eps=1e-7):
  s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
  p = s / s.sum() + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def _np_contrastive(z):
  n = z.shape[0]
  flat = _np_normalize(z.astype(np.float64)).reshape(2 * n, -1)
  sim = flat @ flat.T
  pos, neg, hits = [], [], 0
  for i in range(2 * n):
    j = i + 1 if i % 2 == 0 else i - 1
    others = [k for k in range(2 * n) if k not in (i, j)]
    pos.append(sim[i, j])
    neg.extend(sim[i, others])
    hits += sim[i, j] > sim[i, others].max()
  return float(np.mean(pos)), float(np.mean(neg)), hits / (2 * n)


def test_monitors_match_numpy():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(6, 2, 16)).astype(np.float32)
  z[:, 1] = z[:, 0] + 0.5 * rng.normal(size=(6, 16))  # positives closer than negatives
  z[4, 1] = -z[4, 0]  # one pair pulled apart: its two anchors miss
  got = {k: float(v) for k, v in monitors.contrastive_health(jnp.asarray(z)).items()}
  pos, neg, top1 = _np_contrastive(z)
  assert got["pos_cos"] == pytest.approx(pos, abs=1e-5)
  assert got["neg_cos"] == pytest.approx(neg, abs=1e-5)
  assert round(got["contrast_top1"] * 12) == round(top1 * 12)  # a count of anchors, exact
  assert 0.5 < top1 < 1.0

  health = {k: float(v) for k, v in monitors.embedding_health(jnp.asarray(z), "z").items()}
  flat = _np_normalize(z.reshape(12, 16).astype(np.float64))
  assert health["z_std"] == pytest.approx(float(np.mean(flat.std(axis=0))), rel=1e-5)
  assert health["z_rank"] == pytest.approx(_np_rank(flat), rel=1e-4)


def test_effective_rank_known_values():
  eye = np.eye(8, dtype=np.float32)
  assert float(monitors.effective_rank(jnp.asarray(eye))) == pytest.approx(8.0, rel=1e-4)
  two = np.zeros((10, 8), np.float32)
  two[:5, 0], two[5:, 1] = 1.0, 1.0  # two equal directions
  assert float(monitors.effective_rank(jnp.asarray(two))) == pytest.approx(2.0, rel=1e-4)


@pytest.mark.slow
def test_collapsed_embeddings_give_collapse_values():
  rng = np.random.default_rng(1)
  one = rng.normal(size=(32,)).astype(np.float32)
  z = np.broadcast_to(3.0 * one, (8, 2, 32)).copy()
  health = {
    **monitors.embedding_health(jnp.asarray(z), "z"),
    **monitors.contrastive_health(jnp.asarray(z)),
  }
  health = {k: float(v) for k, v in health.items()}
  assert health["z_std"] == pytest.approx(0.0, abs=1e-6)
  assert health["z_rank"] == pytest.approx(1.0, abs=1e-3)
  assert health["pos_cos"] == pytest.approx(1.0, abs=1e-5)
  assert health["neg_cos"] == pytest.approx(1.0, abs=1e-5)
  assert health["contrast_top1"] == 0.0
  # A healthy batch of random directions, for contrast: std near 1/sqrt(P), rank far above 1.
  healthy = monitors.embedding_health(jnp.asarray(rng.normal(size=(64, 2, 32))), "z")
  assert float(healthy["z_std"]) == pytest.approx(32**-0.5, rel=0.1)
  assert float(healthy["z_rank"]) > 25


def test_reconstruction_masked_and_visible_against_numpy():
  rng = np.random.default_rng(2)
  images = rng.normal(size=(3, 2, 8, 8, 3)).astype(np.float32)
  pred = rng.normal(size=(3, 2, 4, 48)).astype(np.float32)
  mask = (rng.random(size=(3, 2, 4)) < 0.5).astype(np.float32)
  mask[0, :, 0], mask[0, :, 1] = 1.0, 0.0  # each view has both kinds
  got = monitors.reconstruction_health(
    jnp.asarray(images), jnp.asarray(pred), jnp.asarray(mask), patch_size=4
  )
  # numpy: patches in (p, q, c) order, normalized by mean and unbiased std.
  patches = images.reshape(3, 2, 2, 4, 2, 4, 3).transpose(0, 1, 2, 4, 3, 5, 6).reshape(3, 2, 4, 48)
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, ddof=1, keepdims=True)
  err = ((pred - (patches - mean) / np.sqrt(var + 1e-6)) ** 2).mean(-1)
  for name, w in (("recon_masked", mask), ("recon_visible", 1 - mask)):
    want = np.mean([(err[:, v] * w[:, v]).sum() / w[:, v].sum() for v in range(2)])
    assert float(got[name]) == pytest.approx(float(want), rel=1e-5)
  loss = losses.reconstruction_loss(
    jnp.asarray(images), jnp.asarray(pred), jnp.asarray(mask), patch_size=4
  )
  assert float(got["recon_masked"]) == pytest.approx(float(loss), rel=1e-6)


def test_ranks_only_when_asked_and_the_rest_unchanged():
  rng = np.random.default_rng(3)
  outputs = {
    "proj": jnp.asarray(rng.normal(size=(6, 2, 8)), jnp.float32),
    "pooled": jnp.asarray(rng.normal(size=(6, 2, 12)), jnp.float32),
    "pred": jnp.asarray(rng.normal(size=(6, 2, 4, 48)), jnp.float32),
    "mask": jnp.asarray(rng.random(size=(6, 2, 4)) < 0.5, jnp.float32),
  }
  images = jnp.asarray(rng.normal(size=(6, 2, 8, 8, 3)), jnp.float32)
  fn = jax.jit(lambda now: monitors.pretrain_health(images, outputs, patch_size=4, rank_now=now))
  on, off = fn(jnp.asarray(True)), fn(jnp.asarray(False))
  assert set(monitors.SAMPLED_KEYS) <= set(on)
  for k in on:
    if k in monitors.SAMPLED_KEYS:
      assert np.isfinite(float(on[k])) and np.isnan(float(off[k])), k
    else:
      assert float(on[k]) == float(off[k]), k
  flat = np.asarray(outputs["proj"]).reshape(12, 8)
  flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
  assert float(on["health/z_rank"]) == pytest.approx(_np_rank(flat), rel=1e-4)


@pytest.mark.slow
def test_train_step_logs_health(demo_root, tmp_path):
  from runs import tiny_config
  from vicmae_jax import main

  config = tiny_config(demo_root, num_steps=5)
  config.log.every_steps = 2  # ranks measured on steps 2, 4 and 5 (the last)
  summary = main.run(config, str(tmp_path))
  assert [h["step"] for h in summary["history"]] == [2, 4, 5]
  assert all(np.isfinite(h["train/health/z_rank"]) for h in summary["history"])
  last = summary["history"][-1]
  for name in ("z_std", "z_rank", "pooled_std", "pooled_rank", "pos_cos", "neg_cos"):
    assert np.isfinite(last[f"train/health/{name}"]), name
  assert 0.0 <= last["train/health/contrast_top1"] <= 1.0
  assert 1.0 <= last["train/health/z_rank"] <= 2 * config.batch_size
  assert last["train/health/recon_masked"] == pytest.approx(last["train/loss_recon"], rel=1e-5)
