"""What the benchmark scripts share: a bare ViC-MAE pretraining step and the JSON report.

`pretrain_step` is the computation of a pretraining step (mask, encode both views, decode, project,
0.97 * recon + 0.03 * NT-Xent, grads, the optax update) without the trainer's metrics, sharding and
checkpoint state, so that a benchmark times that computation alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vicmae_jax import losses
from vicmae_jax.models import vit


def init_state(params, batch_stats, tx: optax.GradientTransformation) -> dict[str, Any]:
  """The state `pretrain_step` updates: step, params, batch_stats, opt_state."""
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": tx.init(params),
  }


def pretrain_step(
  graphdef, rest, tx: optax.GradientTransformation, dims: Mapping[str, Any], *, uint8_views: bool
) -> Callable:
  """`step(state, pixels, key) -> (new_state, (loss, parts))`, to be jitted by the caller.

  `pixels`: uint8 views [B, 2, H, W, 3], normalized inside the step (`uint8_views`), or images
  already normalized."""
  mask_ratio = float(dims["mask_ratio"])

  def step_fn(state, pixels, key):
    key = jax.random.fold_in(key, state["step"])
    images = vit.normalize_images(pixels) if uint8_views else pixels
    model = nnx.merge(graphdef, state["params"], state["batch_stats"], rest)

    def loss_fn(model):
      out = model(images, mask_ratio=mask_ratio, key=key, train=True)
      return losses.pretrain_loss(
        images,
        out,
        patch_size=int(dims["patch_size"]),
        temperature=float(dims["temperature"]),
        weight_recon=float(dims["weight_recon"]),
        weight_contrast=float(dims["weight_contrast"]),
        norm_pix=bool(dims["norm_pix_loss"]),
      )

    (loss, parts), grads = nnx.value_and_grad(
      loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True
    )(model)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      "step": state["step"] + 1,
      "params": optax.apply_updates(state["params"], updates),
      "batch_stats": nnx.state(model, nnx.BatchStat),
      "opt_state": opt_state,
    }
    return new_state, (loss, parts)

  return step_fn


def write_json(path: str | None, result: Any) -> None:
  """Writes `result` to `path` (indented), if a path is given, and says so."""
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {path}")
