"""model.token_gather: the one-hot (matmul) form of the masked-token gather and the decoder's
un-shuffle gives the same model outputs and gradients as the gather form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vicmae_jax import losses
from vicmae_jax.models import vicmae, vit


def test_gather_tokens_one_hot_equals_take_exactly():
  x = jax.random.normal(jax.random.key(0), (3, 10, 5))
  ids = jax.random.permutation(
    jax.random.key(1), jnp.tile(jnp.arange(10), (3, 1)), axis=1, independent=True
  )[:, :4]
  for dtype in (jnp.float32, jnp.bfloat16):
    a = vit.gather_tokens(x.astype(dtype), ids, "take")
    b = vit.gather_tokens(x.astype(dtype), ids, "one_hot")
    assert b.dtype == dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  with pytest.raises(ValueError, match="token_gather"):
    vit.gather_tokens(x, ids, "sorted")


def _loss_and_grads(token_gather):
  model = vicmae.build_model({"variant": "mu/8", "token_gather": token_gather}, rngs=nnx.Rngs(0))
  graphdef, params, others = nnx.split(model, nnx.Param, ...)
  images = jax.random.normal(jax.random.key(1), (4, 2, 32, 32, 3))

  def run(params, others):
    model = nnx.merge(graphdef, params, others)

    def loss_fn(m):
      out = m(images, mask_ratio=0.5, key=jax.random.key(2), train=True)
      loss, _ = losses.pretrain_loss(
        images, out, patch_size=8, temperature=0.1, weight_recon=0.97, weight_contrast=0.03
      )
      return loss, out["pred"]

    (loss, pred), grads = nnx.value_and_grad(
      loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True
    )(model)
    return loss, pred, nnx.state(grads, nnx.Param)

  return jax.jit(run)(params, others)


@pytest.mark.slow
def test_one_hot_model_matches_take_model():
  loss_a, pred_a, grads_a = _loss_and_grads("take")
  loss_b, pred_b, grads_b = _loss_and_grads("one_hot")
  np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
  np.testing.assert_allclose(pred_b, pred_a, atol=1e-5)
  for (path, a), (_, b) in zip(
    jax.tree_util.tree_leaves_with_path(grads_a), jax.tree_util.tree_leaves_with_path(grads_b)
  ):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_unknown_token_gather_names_the_field():
  with pytest.raises(ValueError, match=r"model\.token_gather"):
    vicmae.resolve_model_config({"variant": "mu/8", "token_gather": "scatter"})
