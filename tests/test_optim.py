"""Schedules, masks, layer-wise lr decay, LARS and AdamW against hand / numpy computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vicmae_jax import optim
from vicmae_jax.models import block_stack, vicmae, vit


# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------


def official_lr(epoch, *, lr, min_lr, warmup_epochs, epochs):
  """util/lr_sched.py of the official code, evaluated at a fractional epoch."""
  if epoch < warmup_epochs:
    return lr * epoch / warmup_epochs
  return min_lr + (lr - min_lr) * 0.5 * (
    1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs))
  )


def test_cosine_schedule_matches_official_per_fractional_epoch():
  steps_per_epoch, epochs, warmup_epochs = 7, 10, 3
  peak, min_lr = 2e-3, 1e-5
  schedule = optim.make_lr_schedule(
    peak, epochs * steps_per_epoch, warmup_epochs * steps_per_epoch, min_lr=min_lr
  )
  for step in [0, 1, 5, 20, 21, 22, 35, 50, 69]:
    expected = official_lr(
      step / steps_per_epoch, lr=peak, min_lr=min_lr, warmup_epochs=warmup_epochs, epochs=epochs
    )
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)
  # Hand values at the landmarks: 0 at the start, the peak at the end of warm-up, min at the end.
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(21)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(70)), min_lr, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(500)), min_lr, rtol=1e-5)  # past the end: stays
  # Halfway through the cosine the rate is the mean of peak and min.
  np.testing.assert_allclose(float(schedule(21 + 49 / 2)), (peak + min_lr) / 2, rtol=1e-5)


def test_schedule_is_jittable_and_other_kinds():
  cosine = optim.make_lr_schedule(1.0, 10, 2)
  values = jax.jit(jax.vmap(cosine))(jnp.arange(11))
  np.testing.assert_allclose(np.asarray(values)[[0, 1, 2, 10]], [0.0, 0.5, 1.0, 0.0], atol=1e-6)
  linear = optim.make_lr_schedule(1.0, 10, 2, kind="linear")
  np.testing.assert_allclose(float(linear(6)), 0.5, rtol=1e-6)
  constant = optim.make_lr_schedule(1.0, 10, 2, kind="constant")
  np.testing.assert_allclose([float(constant(s)) for s in (1, 5, 10)], [0.5, 1.0, 1.0])
  no_warmup = optim.make_lr_schedule(1.0, 10, 0)
  assert float(no_warmup(0)) == 1.0
  with pytest.raises(ValueError, match="kind"):
    optim.make_lr_schedule(1.0, 10, 2, kind="step")
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.make_lr_schedule(1.0, 10, 11)


def test_scaled_lr():
  assert optim.scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
  assert optim.scaled_lr(0.1, 128, base=256) == pytest.approx(0.05)


# ----------------------------------------------------------------------------------------------
# Trees used below
# ----------------------------------------------------------------------------------------------


class _Block(nnx.Module):
  def __init__(self, dim, rngs):
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, rngs=rngs)


class _TinyViT(nnx.Module):
  """The naming of a ViT classifier: tokens, patch embedding, a list of blocks, norm, head."""

  def __init__(self, dim=8, depth=3, rngs=None):
    self.cls_token = nnx.Param(jnp.full((1, 1, dim), 0.1))
    self.pos_embed = nnx.Param(jnp.full((1, 5, dim), 0.1))
    self.patch_embed = nnx.Linear(12, dim, rngs=rngs)
    self.blocks = nnx.List([_Block(dim, rngs) for _ in range(depth)])
    self.fc_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, 4, rngs=rngs)


def _flat(tree):
  return {optim.path_string(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stacked_tree(depth=3, dim=4):
  """A scanned layout: block params stacked along a leading layer axis."""
  rng = np.random.default_rng(0)
  return {
    "cls_token": rng.normal(size=(1, 1, dim)).astype(np.float32),
    "patch_embed": {
      "kernel": rng.normal(size=(6, dim)).astype(np.float32),
      "bias": np.zeros(dim, np.float32),
    },
    "blocks": {
      "mlp": {
        "kernel": rng.normal(size=(depth, dim, 2 * dim)).astype(np.float32),
        "bias": rng.normal(size=(depth, 2 * dim)).astype(np.float32),
      },
      "norm": {"scale": np.ones((depth, dim), np.float32)},
    },
    "head": {"kernel": rng.normal(size=(dim, 3)).astype(np.float32)},
  }


# ----------------------------------------------------------------------------------------------
# Weight decay mask
# ----------------------------------------------------------------------------------------------


def test_weight_decay_mask_on_model_tree():
  params = nnx.state(_TinyViT(rngs=nnx.Rngs(0)), nnx.Param)
  mask = _flat(optim.weight_decay_mask(params))
  decayed = sorted(k for k, v in mask.items() if v)
  assert decayed == sorted(
    ["patch_embed/kernel", "head/kernel"]
    + [f"blocks/{i}/{m}/kernel" for i in range(3) for m in ("qkv", "proj")]
  )
  # Same structure as the params, so optax can use it directly.
  assert jax.tree_util.tree_structure(
    optim.weight_decay_mask(params)
  ) == jax.tree_util.tree_structure(params)


SCANNED = block_stack.StackSettings(scan_layers=True)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_weight_decay_mask_on_vit_encoder(scan_layers):
  # Abstract (shape-only) params, as the trainers pass them.
  encoder = nnx.eval_shape(
    lambda: vit.VisionTransformer(
      block_stack.EncoderDims(patch_size=4, embed_dim=16, depth=2, num_heads=2),
      settings=block_stack.StackSettings(scan_layers=scan_layers),
      rngs=nnx.Rngs(0),
    )
  )
  mask = _flat(optim.weight_decay_mask(nnx.state(encoder, nnx.Param)))
  blocks = ["blocks"] if scan_layers else ["blocks/0", "blocks/1"]
  expected = ["patch_embed/kernel"] + [
    f"{b}/{m}/kernel" for b in blocks for m in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")
  ]
  assert sorted(k for k, v in mask.items() if v) == sorted(expected)
  assert not mask["cls_token"]  # [1, 1, D]: 3-D, but a token
  assert not mask["blocks/norm1/scale" if scan_layers else "blocks/0/norm1/scale"]
  assert optim.count_blocks(nnx.state(encoder, nnx.Param)) == 2


def test_weight_decay_mask_on_vicmae_tree():
  model = nnx.eval_shape(lambda: vicmae.build_model({"variant": "mu/8"}, rngs=nnx.Rngs(0)))
  mask = _flat(optim.weight_decay_mask(nnx.state(model, nnx.Param)))
  assert not mask["decoder/mask_token"] and not mask["encoder/cls_token"]
  assert mask["decoder/embed/kernel"] and mask["projector/fc3/kernel"]
  assert not mask["projector/bn1/scale"] and not mask["projector/fc1/bias"]
  with pytest.raises(ValueError, match="decoder/blocks, encoder/blocks"):
    optim.count_blocks(nnx.state(model, nnx.Param))
  # Every decayed leaf is a matrix; every matrix except the tokens is decayed.
  params = _flat(nnx.state(model, nnx.Param))
  assert {k for k, v in mask.items() if v} == {
    k for k, v in params.items() if np.ndim(v) == 2 and "token" not in k
  }


def test_weight_decay_mask_on_stacked_blocks():
  mask = _flat(optim.weight_decay_mask(_stacked_tree()))
  # A stacked bias / scale is 2-D but still a vector per layer: no decay.
  assert mask == {
    "cls_token": False,
    "patch_embed/kernel": True,
    "patch_embed/bias": False,
    "blocks/mlp/kernel": True,
    "blocks/mlp/bias": False,
    "blocks/norm/scale": False,
    "head/kernel": True,
  }


# ----------------------------------------------------------------------------------------------
# Layer-wise lr decay
# ----------------------------------------------------------------------------------------------


def test_layerwise_scales_by_hand():
  params = nnx.state(_TinyViT(depth=3, rngs=nnx.Rngs(0)), nnx.Param)
  assert optim.count_blocks(params) == 3
  scales = _flat(optim.layerwise_lr_decay_scales(params, 3, 0.5))
  # num_layers + 1 = 4; scale = 0.5 ** (4 - layer_id)
  assert scales["cls_token"] == pytest.approx(0.0625)
  assert scales["pos_embed"] == pytest.approx(0.0625)
  assert scales["patch_embed/kernel"] == pytest.approx(0.0625)
  assert scales["blocks/0/qkv/kernel"] == pytest.approx(0.125)
  assert scales["blocks/1/norm1/scale"] == pytest.approx(0.25)
  assert scales["blocks/2/proj/bias"] == pytest.approx(0.5)
  assert scales["fc_norm/scale"] == pytest.approx(1.0)
  assert scales["head/kernel"] == pytest.approx(1.0)


def test_layerwise_scales_stacked_are_per_slice():
  tree = _stacked_tree(depth=3)
  assert optim.count_blocks(tree) == 3
  scales = _flat(optim.layerwise_lr_decay_scales(tree, 3, 0.5))
  np.testing.assert_allclose(scales["blocks/mlp/kernel"].reshape(-1), [0.125, 0.25, 0.5])
  assert scales["blocks/mlp/kernel"].shape == (3, 1, 1)
  assert scales["blocks/mlp/bias"].shape == (3, 1)
  assert scales["cls_token"] == pytest.approx(0.0625)
  assert scales["head/kernel"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="blocks/mlp/.*scanned stack has 3 layers"):
    optim.layerwise_lr_decay_scales(tree, 4, 0.5)


def test_layerwise_scales_on_scanned_vit_match_list_layout():
  dims = block_stack.EncoderDims(patch_size=4, embed_dim=16, depth=3, num_heads=2)
  listed = _flat(
    optim.layerwise_lr_decay_scales(
      nnx.state(nnx.eval_shape(lambda: vit.VisionTransformer(dims, rngs=nnx.Rngs(0))), nnx.Param),
      3,
      0.75,
    )
  )
  scanned = _flat(
    optim.layerwise_lr_decay_scales(
      nnx.state(
        nnx.eval_shape(lambda: vit.VisionTransformer(dims, settings=SCANNED, rngs=nnx.Rngs(0))),
        nnx.Param,
      ),
      3,
      0.75,
    )
  )
  for i in range(3):
    assert listed[f"blocks/{i}/mlp/fc1/kernel"] == pytest.approx(0.75 ** (3 - i))
    assert scanned["blocks/mlp/fc1/kernel"][i, 0, 0] == pytest.approx(
      listed[f"blocks/{i}/mlp/fc1/kernel"]
    )
    assert scanned["blocks/norm2/bias"][i, 0] == pytest.approx(listed[f"blocks/{i}/norm2/bias"])
  assert listed["patch_embed/kernel"] == listed["cls_token"] == pytest.approx(0.75**4)
  assert listed["norm/scale"] == 1.0


def test_block_index_out_of_range_names_the_path():
  params = nnx.state(_TinyViT(depth=3, rngs=nnx.Rngs(0)), nnx.Param)
  with pytest.raises(ValueError, match="blocks/2"):
    optim.layerwise_lr_decay_scales(params, 2, 0.5)


# ----------------------------------------------------------------------------------------------
# AdamW against numpy
# ----------------------------------------------------------------------------------------------


def _numpy_adamw_step(p, g, *, lr, wd, decay, b1=0.9, b2=0.95, eps=1e-8, scale=1.0):
  """PyTorch AdamW, first step, one param group with lr * scale."""
  m = (1 - b1) * g
  v = (1 - b2) * g * g
  m_hat = m / (1 - b1)
  v_hat = v / (1 - b2)
  update = m_hat / (np.sqrt(v_hat) + eps)
  if decay:
    update = update + wd * p
  return p - lr * scale * update


def test_adamw_masked_layer_decay_one_step_vs_numpy():
  params = nnx.state(_TinyViT(depth=2, rngs=nnx.Rngs(0)), nnx.Param)
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  lr, wd, layer_decay = 0.01, 0.05, 0.7
  tx = optim.make_adamw(lr, weight_decay=wd, layer_decay=layer_decay, num_layers=2)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  new_params = optax.apply_updates(params, updates)

  flat_p, flat_g, flat_new = _flat(params), _flat(grads), _flat(new_params)
  layer_of = {"cls_token": 0, "pos_embed": 0, "patch_embed": 0, "blocks/0": 1, "blocks/1": 2}
  for name, p in flat_p.items():
    layer = next((v for k, v in layer_of.items() if name.startswith(k)), 3)
    decay = name.endswith("kernel")
    expected = _numpy_adamw_step(
      np.asarray(p),
      np.asarray(flat_g[name]),
      lr=lr,
      wd=wd,
      decay=decay,
      scale=layer_decay ** (3 - layer),
    )
    np.testing.assert_allclose(
      np.asarray(flat_new[name]), expected, rtol=1e-5, atol=1e-7, err_msg=name
    )


# ----------------------------------------------------------------------------------------------
# LARS against numpy
# ----------------------------------------------------------------------------------------------


def _numpy_lars(params, grads_per_step, lrs, *, wd, momentum=0.9, trust=0.001):
  """The official util/lars.py, written in numpy; returns params after len(lrs) steps."""
  params = {k: v.copy() for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, lr in zip(grads_per_step, lrs):
    for k, p in params.items():
      d = grads[k]
      if p.ndim > 1:
        d = d + wd * p
        p_norm, d_norm = np.linalg.norm(p), np.linalg.norm(d)
        q = trust * p_norm / d_norm if (p_norm > 0 and d_norm > 0) else 1.0
        d = d * q
      mu[k] = momentum * mu[k] + d
      params[k] = p - lr * mu[k]
  return params


def test_lars_two_steps_with_changing_lr_vs_numpy():
  rng = np.random.default_rng(2)
  params = {
    "head": {
      "kernel": rng.normal(size=(6, 3)).astype(np.float32),
      "bias": rng.normal(size=(3,)).astype(np.float32),
    },
    "zero": {"kernel": np.zeros((2, 2), np.float32)},
  }  # |p| = 0: ratio 1
  grads = [
    jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params) for _ in range(2)
  ]
  lrs = [0.5, 0.2]
  tx = optim.lars(lambda step: jnp.asarray(lrs)[step], weight_decay=0.1)
  state = tx.init(params)
  current = params
  for g in grads:
    updates, state = tx.update(g, state, current)
    current = optax.apply_updates(current, updates)

  expected = _numpy_lars(_flat(params), [_flat(g) for g in grads], lrs, wd=0.1)
  for name, value in _flat(current).items():
    np.testing.assert_allclose(
      np.asarray(value), expected[name], rtol=1e-5, atol=1e-7, err_msg=name
    )


def test_lars_trust_ratio_is_per_slice_for_stacked_blocks():
  tree = {
    "blocks": {
      "mlp": {"kernel": np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)]).astype(np.float32)}
    }
  }
  grads = {
    "blocks": {
      "mlp": {"kernel": np.stack([np.full((2, 2), 2.0), np.full((2, 2), 0.5)]).astype(np.float32)}
    }
  }
  direction = optim.scale_by_lars_trust_ratio(0.0, 0.001)
  updates, _ = direction.update(grads, direction.init(tree), tree)
  got = np.asarray(updates["blocks"]["mlp"]["kernel"])
  # Per slice: 0.001 * |p_i| / |g_i| * g_i  -> every entry 0.001 * p_i (constant arrays).
  np.testing.assert_allclose(got[0], np.full((2, 2), 0.001), rtol=1e-6)
  np.testing.assert_allclose(got[1], np.full((2, 2), 0.003), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# From a config: accumulation, clipping, validation
# ----------------------------------------------------------------------------------------------


def test_accumulation_averages_micro_batches():
  params = {"w": {"kernel": np.ones((2, 2), np.float32)}}
  g1 = {"w": {"kernel": np.full((2, 2), 1.0, np.float32)}}
  g2 = {"w": {"kernel": np.full((2, 2), 3.0, np.float32)}}
  cfg = {"name": "adamw", "lr": 0.1, "schedule": "constant", "weight_decay": 0.0}
  accumulated = optim.make_optimizer({**cfg, "grad_accum_steps": 2}, 10, params)
  state = accumulated.init(params)
  first, state = accumulated.update(g1, state, params)
  second, state = accumulated.update(g2, state, params)
  assert float(jnp.abs(first["w"]["kernel"]).max()) == 0.0  # nothing applied mid-group
  plain = optim.make_optimizer(cfg, 5, params)
  reference, _ = plain.update(
    {"w": {"kernel": np.full((2, 2), 2.0, np.float32)}}, plain.init(params), params
  )
  np.testing.assert_allclose(
    np.asarray(second["w"]["kernel"]), np.asarray(reference["w"]["kernel"]), rtol=1e-6
  )


def test_clipping_scales_global_norm():
  params = {"a": np.zeros((3,), np.float32), "b": np.zeros((4,), np.float32)}
  grads = {"a": np.full((3,), 4.0, np.float32), "b": np.full((4,), 3.0, np.float32)}
  norm = math.sqrt(3 * 16 + 4 * 9)
  cfg = {"name": "lars", "lr": 1.0, "schedule": "constant", "momentum": 0.0, "clip_grad_norm": 1.0}
  tx = optim.make_optimizer(cfg, 4, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # 1-D params: LARS passes the clipped gradient straight to -lr * g.
  np.testing.assert_allclose(np.asarray(updates["a"]), -4.0 / norm, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates["b"]), -3.0 / norm, rtol=1e-6)


def test_lr_fn_uses_base_lr_scaling_and_accumulation():
  cfg = {"base_lr": 1e-3, "grad_accum_steps": 2, "min_lr": 0.0}
  lr_fn = optim.make_lr_fn(cfg, 20, warmup_steps=4, global_batch_size=512)
  peak = 2e-3
  # 10 updates, 2 of warm-up; train step s uses update s // 2.
  np.testing.assert_allclose(
    [float(lr_fn(s)) for s in (0, 1, 2, 3, 4)], [0.0, 0.0, peak / 2, peak / 2, peak], rtol=1e-6
  )
  assert optim.peak_learning_rate({"lr": 0.3, "base_lr": 1.0}) == pytest.approx(0.3)


@pytest.mark.parametrize(
  "cfg, field",
  [
    ({"base_lr": 1e-3, "wieght_decay": 0.1}, "optim.wieght_decay"),
    ({"base_lr": 1e-3, "name": "sgd"}, "optim.name"),
    ({"base_lr": 1e-3, "b2": 1.5}, "optim.b2"),
    ({"base_lr": 1e-3, "grad_accum_steps": 0}, "optim.grad_accum_steps"),
    ({"base_lr": 1e-3, "grad_accum_steps": 2.0}, "optim.grad_accum_steps"),
    ({"base_lr": 1e-3, "schedule": "poly"}, "optim.schedule"),
    ({"name": "adamw"}, "optim.lr"),
    ({"name": "lars", "lr": 0.1, "layer_decay": 0.75}, "optim.layer_decay"),
  ],
)
def test_config_errors_name_the_field(cfg, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    optim.make_optimizer(cfg, 10, None, global_batch_size=256)


def test_config_lib_optim_section_is_accepted():
  from vicmae_jax import config_lib

  cfg = config_lib.optim_config()
  resolved = optim.resolve_optim_config(cfg)
  assert resolved["lr"] is None and resolved["clip_grad_norm"] is None
  assert optim.peak_learning_rate(cfg, global_batch_size=4096) == pytest.approx(2.4e-3)
