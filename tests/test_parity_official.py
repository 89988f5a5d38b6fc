"""Parity with the official PyTorch ViC-MAE: its checkpoint, converted here, reproduces its outputs.

The fixtures (tests/fixtures/official_vicmae_small.{pth,npz}) come from tests/fixtures/make_official_golden.py
running the official models_vicmae.py with torch and timm. This test needs neither: the `.pth` is read by the
torch-free reader and the official masking noise is fed to our model. Tolerance: 1e-5 absolute (float32).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vicmae_jax import convert
from vicmae_jax import losses
from vicmae_jax.models import vicmae

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
  with np.load(os.path.join(FIXTURES, "official_vicmae_small.npz")) as data:
    return dict(data)


@pytest.fixture(scope="module")
def model_cfg(golden):
  # The fixture's official model, spelled as our config: the tiny variant with its decoder and projector sizes.
  cfg = {
    "variant": "mu/8",
    "decoder_depth": int(golden["config_decoder_depth"]),
    "projector_out_dim": int(golden["config_projector_out_dim"]),
  }
  dims = vicmae.resolve_model_config(cfg)
  for field in (
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "decoder_embed_dim",
    "decoder_num_heads",
    "projector_hidden_dim",
    "mlp_ratio",
    "temperature",
    "weight_recon",
    "weight_contrast",
  ):
    assert dims[field] == pytest.approx(float(golden[f"config_{field}"])), field
  return cfg


@pytest.fixture(scope="module")
def converted(model_cfg):
  checkpoint = convert.load_pth(os.path.join(FIXTURES, "official_vicmae_small.pth"))
  tree, report = convert.official_to_ours(convert.extract_state_dict(checkpoint), model_cfg)
  assert report["missing"] == report["unexpected"] == report["mismatched"] == []
  assert report["initialized"] == []
  return tree


def _model(model_cfg, tree):
  model = vicmae.build_model(model_cfg, rngs=nnx.Rngs(123))
  convert.load_into_model(model, tree)
  return model


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _run(graphdef, state, images, noise, mask_ratio, patch_size):
  model = nnx.merge(graphdef, state)
  out = model(images, mask_ratio=mask_ratio, noise=noise, train=True)
  _, parts = losses.pretrain_loss(
    images, out, patch_size=patch_size, temperature=0.1, weight_recon=0.97, weight_contrast=0.03
  )
  return out, parts, nnx.state(model, nnx.BatchStat)


def _masked_run(graphdef, state, golden):
  """The model's outputs on the golden images with the golden masking noise."""
  out, _, _ = _run(
    graphdef,
    state,
    jnp.asarray(golden["images"]),
    jnp.asarray(golden["masked_noise"]),
    float(golden["masked_mask_ratio"]),
    8,
  )
  return out


@pytest.mark.parametrize("case", ["ratio0", "masked"])
def test_train_forward_matches_official(golden, model_cfg, converted, case):
  model = _model(model_cfg, converted)
  graphdef, state = nnx.split(model)
  mask_ratio = float(golden[f"{case}_mask_ratio"])
  out, parts, batch_stats = _run(
    graphdef,
    state,
    jnp.asarray(golden["images"]),
    jnp.asarray(golden[f"{case}_noise"]),
    mask_ratio,
    8,
  )
  np.testing.assert_array_equal(np.asarray(out["mask"]), golden[f"{case}_mask"])
  if case == "masked":
    assert golden["masked_mask"].mean() == pytest.approx(mask_ratio)
  for name in ("pred", "pooled", "proj"):
    np.testing.assert_allclose(
      np.asarray(out[name]), golden[f"{case}_{name}"], rtol=0, atol=ATOL, err_msg=name
    )
  np.testing.assert_allclose(
    float(parts["loss_contrast"]), golden[f"{case}_loss_contrast"], rtol=0, atol=ATOL
  )
  if case == "masked":
    np.testing.assert_allclose(
      float(parts["loss_recon"]), golden["masked_loss_recon"], rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(float(parts["loss"]), golden["masked_loss"], rtol=0, atol=ATOL)
  else:
    # The official reconstruction loss at mask ratio 0 is 0/0 (no removed patch); the fixture records NaN.
    assert np.isnan(golden["ratio0_loss_recon"])
  # Running statistics after both views went through the projector's BatchNorms in train mode.
  stats = nnx.to_pure_dict(batch_stats)["projector"]
  for ours, index in (("bn1", 1), ("bn2", 4)):
    np.testing.assert_allclose(
      np.asarray(stats[ours]["mean"]), golden[f"{case}_bn_running_mean_{index}"], rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(
      np.asarray(stats[ours]["var"]), golden[f"{case}_bn_running_var_{index}"], rtol=0, atol=ATOL
    )


def test_encoder_tokens_and_eval_projector_match_official(golden, model_cfg, converted):
  model = _model(model_cfg, converted)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, images):
    model = nnx.merge(graphdef, state)
    tokens, _ = model.encode(images[:, 0])
    return tokens, model(images, mask_ratio=0.0, train=False)["proj"]

  tokens, proj_eval = run(state, jnp.asarray(golden["images"]))
  np.testing.assert_allclose(np.asarray(tokens), golden["tokens"], rtol=0, atol=ATOL)
  # Eval-mode BatchNorm reads the converted running statistics.
  np.testing.assert_allclose(np.asarray(proj_eval), golden["proj_eval"], rtol=0, atol=ATOL)


def test_conversion_is_not_trivially_right(golden, model_cfg, converted):
  """The outputs are sensitive to the mapping: swapping q and k halves of one qkv kernel breaks parity."""
  broken = jax.tree.map(np.array, converted)
  qkv = broken["params"]["encoder"]["blocks"]["1"]["attn"]["qkv"]["kernel"]
  width = qkv.shape[0]
  qkv[:, :width], qkv[:, width : 2 * width] = (
    qkv[:, width : 2 * width].copy(),
    qkv[:, :width].copy(),
  )
  model = _model(model_cfg, broken)
  graphdef, state = nnx.split(model)
  out = _masked_run(graphdef, state, golden)
  assert np.abs(np.asarray(out["pooled"]) - golden["masked_pooled"]).max() > 100 * ATOL


def test_scan_layers_model_matches_official(golden, model_cfg, converted):
  """The same converted tree loads into the scan (stacked blocks) model and gives the same outputs."""
  model = _model(dict(model_cfg, scan_layers=True), converted)
  graphdef, state = nnx.split(model)
  out = _masked_run(graphdef, state, golden)
  for name in ("pred", "pooled", "proj"):
    np.testing.assert_allclose(
      np.asarray(out[name]), golden[f"masked_{name}"], rtol=0, atol=ATOL, err_msg=name
    )
