"""Losses against independent numpy computations, including the sharded global NT-Xent."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vicmae_jax import losses, sharding
from vicmae_jax.data import mixup


def _np_patchify_nchw(images_nhwc: np.ndarray, p: int) -> np.ndarray:
  """The official patchify on NCHW images: 'nchpwq->nhwpqc'."""
  imgs = images_nhwc.transpose(0, 3, 1, 2)
  n, c, height, width = imgs.shape
  h, w = height // p, width // p
  x = imgs.reshape(n, c, h, p, w, p)
  x = np.einsum("nchpwq->nhwpqc", x)
  return x.reshape(n, h * w, p * p * c)


def _np_mse_one_view(images, pred, mask, p, norm_pix):
  target = _np_patchify_nchw(images, p).astype(np.float64)
  if norm_pix:
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, keepdims=True, ddof=1)  # torch .var() is unbiased
    target = (target - mean) / (var + 1e-6) ** 0.5
  loss = ((pred - target) ** 2).mean(-1)
  return (loss * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruction_loss_matches_official_formula(norm_pix):
  rng = np.random.RandomState(0)
  batch, views, size, p = 3, 2, 16, 8
  images = rng.randn(batch, views, size, size, 3).astype(np.float32)
  length = (size // p) ** 2
  pred = rng.randn(batch, views, length, p * p * 3).astype(np.float32)
  mask = (rng.rand(batch, views, length) < 0.5).astype(np.float32)
  mask[:, :, 0] = 1.0  # at least one removed patch per view
  expected = 0.5 * sum(
    _np_mse_one_view(images[:, v], pred[:, v], mask[:, v], p, norm_pix) for v in range(views)
  )
  got = losses.reconstruction_loss(
    jnp.asarray(images), jnp.asarray(pred), jnp.asarray(mask), p, norm_pix
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_reconstruction_loss_only_counts_removed_patches():
  rng = np.random.RandomState(1)
  images = rng.randn(2, 2, 8, 16, 3).astype(np.float32)
  target = np.asarray(losses.patch_targets(jnp.asarray(images), 8))
  pred = target.copy()
  mask = np.zeros((2, 2, 2), np.float32)
  mask[:, :, 1] = 1.0
  pred[:, :, 0] += 100.0  # a wrong prediction on visible patches costs nothing
  assert float(losses.reconstruction_loss(images, pred, mask, 8)) == pytest.approx(0.0, abs=1e-6)
  pred[:, :, 1] += 1.0  # off by exactly 1 everywhere on removed patches -> loss 1
  assert float(losses.reconstruction_loss(images, pred, mask, 8)) == pytest.approx(1.0, rel=1e-6)
  # Mask ratio 0: nothing removed, the loss is 0 rather than 0/0.
  assert float(losses.reconstruction_loss(images, pred, np.zeros_like(mask), 8)) == 0.0


def _np_official_info_nce(z: np.ndarray, temperature: float) -> float:
  """Single-process official InfoNCE: z [2N, P] = concat(view1, view2)."""
  z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  sim = np.exp(z @ z.T / temperature)
  n2 = z.shape[0]
  indexes = np.tile(np.arange(n2 // 2), 2)
  pos_mask = indexes[:, None] == indexes[None, :]
  np.fill_diagonal(pos_mask, False)
  neg_mask = indexes[:, None] != indexes[None, :]
  pos = (sim * pos_mask).sum(1)
  neg = (sim * neg_mask).sum(1)
  return float(-np.mean(np.log(pos / (pos + neg))))


def _np_local_index_info_nce(z_by_rank: list[np.ndarray], temperature: float) -> float:
  """The official loss with k processes: positives marked by *local* index after a gather.

  z_by_rank[r] is [2b, P] (view1 rows then view2 rows of rank r's local batch). Returns the
  mean over ranks of each rank's loss (what data-parallel training averages).
  """
  normed = [z / np.linalg.norm(z, axis=-1, keepdims=True) for z in z_by_rank]
  gathered = np.concatenate(normed)
  local_idx = np.tile(np.arange(normed[0].shape[0] // 2), 2)
  gathered_idx = np.concatenate([local_idx] * len(normed))
  values = []
  for rank, z in enumerate(normed):
    sim = np.exp(z @ gathered.T / temperature)
    pos_mask = local_idx[:, None] == gathered_idx[None, :]
    offset = z.shape[0] * rank
    pos_mask[np.arange(z.shape[0]), offset + np.arange(z.shape[0])] = False
    neg_mask = local_idx[:, None] != gathered_idx[None, :]
    pos = (sim * pos_mask).sum(1)
    neg = (sim * neg_mask).sum(1)
    values.append(-np.mean(np.log(pos / (pos + neg))))
  return float(np.mean(values))


def _np_global_nt_xent(z: np.ndarray, temperature: float) -> float:
  """Correct global NT-Xent on z [N, 2, P] written with explicit loops."""
  n = z.shape[0]
  flat = np.concatenate([z[:, 0], z[:, 1]]).astype(np.float64)  # anchors i and i+n are a pair
  flat /= np.linalg.norm(flat, axis=-1, keepdims=True)
  total = 0.0
  for i in range(2 * n):
    partner = (i + n) % (2 * n)
    sims = [flat[i] @ flat[j] / temperature for j in range(2 * n) if j != i]
    log_denominator = math.log(sum(math.exp(s) for s in sims))
    total += -(flat[i] @ flat[partner] / temperature - log_denominator)
  return total / (2 * n)


def test_nt_xent_matches_official_single_process_and_loops():
  rng = np.random.RandomState(0)
  z = rng.randn(6, 2, 16).astype(np.float32)
  got = float(losses.nt_xent(jnp.asarray(z), 0.1))
  official = _np_official_info_nce(np.concatenate([z[:, 0], z[:, 1]]).astype(np.float64), 0.1)
  np.testing.assert_allclose(got, official, rtol=1e-5)
  np.testing.assert_allclose(got, _np_global_nt_xent(z, 0.1), rtol=1e-5)
  # Temperature is used: a different value gives a different loss.
  assert abs(float(losses.nt_xent(jnp.asarray(z), 0.5)) - got) > 1e-2


def test_nt_xent_hand_values():
  # One sample: each anchor's softmax has a single entry (its positive) -> loss exactly 0.
  z = jnp.asarray([[[1.0, 0.0], [0.0, 3.0]]])
  assert float(losses.nt_xent(z, 0.1)) == pytest.approx(0.0, abs=1e-7)
  # Two samples, identical views, samples orthogonal: every anchor sees positive cos=1 and
  # two negatives cos=0 -> loss = -log(e^{1/T} / (e^{1/T} + 2)).
  z = jnp.asarray([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 1.0], [0.0, 5.0]]])
  t = 0.5
  expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2.0))
  assert float(losses.nt_xent(z, t)) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_gradient_is_finite():
  z = jnp.asarray(np.random.RandomState(3).randn(4, 2, 8), jnp.float32)
  grad = jax.grad(losses.nt_xent)(z, 0.1)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert float(jnp.abs(grad).max()) > 0


@pytest.mark.parametrize("mesh_cfg", [{"data": 8}, {"data": 4, "fsdp": 2}])
def test_nt_xent_sharded_equals_global_numpy_not_local_index(mesh_cfg):
  """Batch sharded over 8 devices: every device's local indices 0..1 collide; the loss must not care."""
  rng = np.random.RandomState(0)
  devices = 8
  local_batch = 2
  z = rng.randn(devices * local_batch, 2, 16).astype(np.float32)
  mesh = sharding.make_mesh(mesh_cfg)
  z_global = jax.device_put(z, sharding.batch_sharding(mesh))
  assert len(z_global.sharding.device_set) == devices
  got = float(jax.jit(losses.nt_xent, static_argnums=1)(z_global, 0.1))
  expected = _np_global_nt_xent(z, 0.1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # The official multi-process loss (positives by local index) is a different number here:
  # each anchor would see 2k-1 "positives" instead of one.
  z_by_rank = [
    np.concatenate(
      [z[r * local_batch : (r + 1) * local_batch, 0], z[r * local_batch : (r + 1) * local_batch, 1]]
    )
    for r in range(devices)
  ]
  local_index_value = _np_local_index_info_nce(z_by_rank, 0.1)
  assert abs(local_index_value - expected) > 0.5
  # Sanity of the reference: with one process the local-index version is the correct loss.
  np.testing.assert_allclose(
    _np_local_index_info_nce([np.concatenate([z[:, 0], z[:, 1]])], 0.1), expected, rtol=1e-6
  )


def test_pretrain_loss_weights_the_two_parts():
  rng = np.random.RandomState(2)
  images = jnp.asarray(rng.randn(4, 2, 8, 8, 3), jnp.float32)
  outputs = {
    "pred": jnp.asarray(rng.randn(4, 2, 1, 192), jnp.float32),
    "mask": jnp.ones((4, 2, 1), jnp.float32),
    "proj": jnp.asarray(rng.randn(4, 2, 5), jnp.float32),
  }
  loss, parts = losses.pretrain_loss(
    images, outputs, patch_size=8, temperature=0.2, weight_recon=0.7, weight_contrast=0.3
  )
  recon = losses.reconstruction_loss(images, outputs["pred"], outputs["mask"], 8)
  contrast = losses.nt_xent(outputs["proj"], 0.2)
  assert float(parts["loss_recon"]) == pytest.approx(float(recon), rel=1e-6)
  assert float(parts["loss_contrast"]) == pytest.approx(float(contrast), rel=1e-6)
  assert float(loss) == pytest.approx(0.7 * float(recon) + 0.3 * float(contrast), rel=1e-6)
  assert float(parts["loss"]) == float(loss)


def test_softmax_cross_entropy_and_topk():
  rng = np.random.RandomState(0)
  logits = rng.randn(5, 4).astype(np.float32)
  labels = rng.dirichlet(np.ones(4), size=5).astype(np.float32)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  per_example = -(labels * log_p).sum(-1)
  np.testing.assert_allclose(
    float(losses.softmax_cross_entropy(logits, labels)), per_example.mean(), rtol=1e-5
  )
  weights = np.array([1, 1, 0, 1, 0], np.float32)
  np.testing.assert_allclose(
    float(losses.softmax_cross_entropy(logits, labels, weights)),
    (per_example * weights).sum() / weights.sum(),
    rtol=1e-5,
  )
  with pytest.raises(ValueError, match="labels shape"):
    losses.softmax_cross_entropy(logits, np.zeros(5, np.int32))
  logits = jnp.asarray([[0.1, 0.9, 0.5], [0.8, 0.1, 0.3]])
  labels = jnp.asarray([2, 2])
  np.testing.assert_array_equal(np.asarray(losses.topk_correct(logits, labels, 1)), [0.0, 0.0])
  np.testing.assert_array_equal(np.asarray(losses.topk_correct(logits, labels, 2)), [1.0, 1.0])
  np.testing.assert_array_equal(
    np.asarray(losses.topk_correct(logits, jnp.asarray([1, 0]), 1)), [1.0, 1.0]
  )


def test_device_mixing_equals_the_host_reference():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, size=(6, 3, 12, 10, 3)).astype(np.uint8)  # clips: every frame alike
  labels = rng.integers(0, 5, size=6)
  for seed in range(6):
    params = mixup.sample_mix(np.random.default_rng(seed), 12, 10)
    ref_x, ref_t, ref_params = mixup.mixup_cutmix(
      images, labels, np.random.default_rng(seed), num_classes=5, label_smoothing=0.1
    )
    assert ref_params == params
    box = np.tile(np.asarray(params.box if params.use_cutmix else (0, 0, 0, 0), np.int32), (6, 1))
    x, t = losses.mix_batch(
      jnp.asarray(images),
      jnp.asarray(labels),
      jnp.full((6,), params.lam, jnp.float32),
      jnp.asarray(box),
      num_classes=5,
      smoothing=0.1,
    )
    np.testing.assert_allclose(np.asarray(x), ref_x, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(np.asarray(t), ref_t, atol=1e-6)
  # Two host blocks: partners never cross a block.
  x = jnp.arange(8.0).reshape(8, 1, 1, 1, 1) * jnp.ones((8, 1, 2, 2, 1))
  np.testing.assert_array_equal(
    np.asarray(losses.partner_rows(x, 2))[:, 0, 0, 0, 0], [3, 2, 1, 0, 7, 6, 5, 4]
  )
