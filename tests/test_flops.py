"""Tests of vicmae_jax.flops against a hand count and against the matmuls in the real model's jaxpr."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vicmae_jax import flops
from vicmae_jax import losses
from vicmae_jax.models import variants, vicmae

TINY = {"variant": "mu/8", "decoder_depth": 2}


def dot_general_flops(jaxpr) -> float:
  """2 * output size * contracted size for every dot_general, recursing into sub-jaxprs (scan x length)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += (
        2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs_shape[i] for i in lhs_contracting])
      )
    repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += repeat * dot_general_flops(inner)
  return total


def test_one_block_model_by_hand():
  # Heads change no FLOPs count (1 each here).
  dims = variants.sizes(4, 8, 1, 1, 4, 1, 1, mlp_ratio=4.0, projector_hidden_dim=6)
  dims["projector_out_dim"] = 3
  # Image 8, patch 4: L = 4 patches of 48 values; mask 0.5 keeps K = 2, so 3 encoder tokens, 5 decoder tokens.
  matmuls = [  # (rows, contracted, columns) of every matmul of one view
    (4, 48, 8),  # patch embedding of all patches
    (3, 8, 24),
    (3, 8, 3),
    (3, 3, 8),
    (3, 8, 8),
    (3, 8, 32),
    (3, 32, 8),  # encoder block: qkv, qk, av, proj, mlp
    (3, 8, 4),  # decoder embedding
    (5, 4, 12),
    (5, 4, 5),
    (5, 5, 4),
    (5, 4, 4),
    (5, 4, 16),
    (5, 16, 4),  # decoder block
    (5, 4, 48),  # pixel prediction (cls row included)
    (1, 8, 6),
    (1, 6, 6),
    (1, 6, 3),  # projector
  ]
  per_view = sum(2 * m * k * n for m, k, n in matmuls)
  assert per_view == 12604
  batch = 1
  similarities = 2 * (2 * batch) * (2 * batch) * 3
  assert flops.vicmae_forward_flops(dims, 8, 0.5, batch) == 2 * batch * per_view + similarities
  assert flops.vicmae_train_flops(dims, 8, 0.5, batch) == 3 * (2 * batch * per_view + similarities)


def test_official_rounding_of_kept_patches():
  assert flops.num_kept(196, 0.75) == 49
  assert flops.num_kept(10, 0.55) == 4  # int(4.5)
  with pytest.raises(ValueError, match="mask_ratio"):
    flops.num_kept(196, 1.0)
  with pytest.raises(ValueError, match="image_size 30 is not a multiple of patch_size 16"):
    flops.num_patches(30, 16)
  with pytest.raises(ValueError, match="projector_out_dim"):
    flops.vicmae_train_flops(
      {
        "patch_size": 16,
        "embed_dim": 8,
        "depth": 1,
        "decoder_embed_dim": 4,
        "decoder_depth": 1,
        "projector_hidden_dim": 8,
      },
      32,
      0.5,
      2,
    )


def _model_jaxprs(cfg, batch, image_size, mask_ratio):
  dims = vicmae.resolve_model_config(cfg)
  model = vicmae.build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  images = jnp.zeros((batch, 2, image_size, image_size, 3), jnp.float32)
  key = jax.random.key(0)

  def loss_of(model):
    out = model(images, mask_ratio=mask_ratio, key=key, train=True)
    return losses.pretrain_loss(
      images,
      out,
      patch_size=dims["patch_size"],
      temperature=0.1,
      weight_recon=0.97,
      weight_contrast=0.03,
    )[0]

  def forward(params, rest):
    return loss_of(nnx.merge(graphdef, params, rest))

  def train(params, rest):
    return nnx.value_and_grad(loss_of, argnums=nnx.DiffState(0, nnx.Param))(
      nnx.merge(graphdef, params, rest)
    )

  return dims, forward, train, (params, rest)


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [False, True])
def test_matches_the_matmuls_of_the_real_model(scan_layers):
  batch, image_size, mask_ratio = 3, 32, 0.5
  dims, forward, train, args = _model_jaxprs(
    dict(TINY, scan_layers=scan_layers), batch, image_size, mask_ratio
  )
  analytic = flops.vicmae_forward_flops(dims, image_size, mask_ratio, batch)
  assert dot_general_flops(jax.make_jaxpr(forward)(*args).jaxpr) == analytic
  # Backward: two matmuls per forward matmul, except that no gradient flows into the pixels, so the patch
  # embedding has no input-gradient matmul. The 3x convention counts that one too.
  patch_embed = (
    2 * batch * flops.vicmae_forward_flops_per_view(dims, image_size, mask_ratio)["patch_embed"]
  )
  assert dot_general_flops(jax.make_jaxpr(train)(*args).jaxpr) == 3 * analytic - patch_embed
  assert flops.vicmae_train_flops(dims, image_size, mask_ratio, batch) == 3 * analytic


def test_xla_counts_at_least_the_matmuls():
  batch, image_size, mask_ratio = 2, 32, 0.75
  dims, forward, _, args = _model_jaxprs(TINY, batch, image_size, mask_ratio)
  cost = jax.jit(forward).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = flops.vicmae_forward_flops(dims, image_size, mask_ratio, batch)
  # XLA adds element-wise work (norms, softmax, GELU, loss) on top of the matmuls.
  assert analytic <= cost["flops"] <= 2 * analytic


def test_published_size_is_plausible():
  dims = vicmae.resolve_model_config({"variant": "B/16"})
  # ViT-B/16 on 224 images, all 197 tokens: the well-known 17.6 GMACs = 35.1 GFLOPs per image.
  encoder_full = (
    flops.transformer_block_flops(197, 768, 3072) * 12
    + flops.vicmae_forward_flops_per_view(dims, 224, 0.0)["patch_embed"]
  )
  assert encoder_full == pytest.approx(35.1e9, rel=0.01)
  per_pair = flops.vicmae_train_flops(dims, 224, 0.5, 1)
  assert 150e9 < per_pair < 190e9


def test_peak_flops_table():
  assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3", jnp.float32) == 66.9e12
  assert flops.peak_flops("NVIDIA H100 PCIe", "bf16") == 756.5e12
  assert flops.peak_flops("NVIDIA H200", "tf32") == 494.7e12
  assert flops.peak_flops("TPU v4") == 275e12
  assert flops.peak_flops("TPU v5 lite") == 197e12
  assert flops.peak_flops("TPU v5e") == 197e12
  assert flops.peak_flops("TPU v5p") == 459e12
  assert flops.peak_flops("TPU v5") == 459e12
  assert flops.peak_flops("TPU v6 lite") == 918e12
  assert flops.peak_flops("TPU v6e", "float32") == 918e12
  assert flops.peak_flops("TPU v4", "tfloat32") is None
  assert flops.peak_flops("some accelerator") is None
  assert flops.peak_flops(jax.devices("cpu")[0]) is None


@pytest.mark.slow
def test_step_benchmark_reports_the_analytic_flops(tmp_path):
  import importlib.util
  import json
  import os

  path = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "step.py"
  )
  spec = importlib.util.spec_from_file_location("step_benchmark", path)
  step_benchmark = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(step_benchmark)
  json_out = tmp_path / "rows.json"
  rows = step_benchmark.main(
    [
      "--variant=mu/8",
      "--image_size=32",
      "--batch=4",
      "--dtype=float32",
      "--steps=2",
      "--warmup=1",
      "--set",
      "decoder_depth=1",
      f"--json_out={json_out}",
    ]
  )
  assert len(rows) == 1
  row = rows[0]
  dims = vicmae.resolve_model_config({"variant": "mu/8"})
  assert row["flops_per_step"] == flops.vicmae_train_flops(dims, 32, 0.5, 4)
  assert row["pairs_per_s"] == pytest.approx(4 / (row["step_ms"] / 1e3))
  assert row["step_ms_min"] <= row["step_ms"] and row["compile_s"] > 0 and row["peak_mem_gib"] > 0
  assert np.isfinite(row["final_loss"]) and row["mfu"] is None  # no peak known for a CPU
  assert json.loads(json_out.read_text())[0]["flops_per_step"] == row["flops_per_step"]
