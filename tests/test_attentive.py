"""Attentive probe: shapes, a toy task a linear probe on pooled features cannot learn, and its
runs as a downstream trainer and as a pretraining evaluator."""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from vicmae_jax.evaluators import attentive as attentive_eval
from vicmae_jax.evaluators import frozen
from vicmae_jax.models import attentive


def test_head_shapes():
  head = attentive.AttentiveProbeHead(32, 5, num_heads=4, num_queries=3, rngs=nnx.Rngs(0))
  for length in (1, 7, 50):
    tokens = jnp.asarray(np.random.default_rng(length).normal(size=(2, length, 32)), jnp.float32)
    assert head.pool(tokens).shape == (2, 3, 32)
    logits = head(tokens)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  with pytest.raises(ValueError, match="num_heads"):
    attentive.AttentiveProbeHead(30, 5, num_heads=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="tokens must be"):
    head(jnp.zeros((2, 32)))


def _marked_token_task(n, rng, protos, *, length=6):
  """Each example: `length` tokens, each the prototype of a random class plus noise; one token,
  at a random place, carries a marker. The label is the marked token's class. The mean of the
  tokens is the same whichever token is marked, so no classifier of pooled features can tell."""
  classes, width = protos.shape[0], protos.shape[1] + 1
  token_class = rng.integers(0, classes, size=(n, length))
  tokens = np.zeros((n, length, width), np.float32)
  tokens[..., 1:] = protos[token_class] + 0.1 * rng.normal(size=(n, length, width - 1))
  marked = rng.integers(0, length, size=n)
  tokens[np.arange(n), marked, 0] = 3.0
  return tokens, token_class[np.arange(n), marked]


@pytest.mark.slow
def test_attentive_probe_learns_what_a_linear_probe_on_pooled_features_cannot():
  rng = np.random.default_rng(0)
  protos = np.linalg.qr(rng.normal(size=(15, 4)))[0].T * 2.0  # 4 orthogonal class prototypes
  xtr, ytr = _marked_token_task(2000, rng, protos)
  xte, yte = _marked_token_task(500, rng, protos)
  linear = frozen.linear_probe_accuracy(frozen.Split(xtr.mean(1), ytr, xte.mean(1), yte), steps=500)
  attn = attentive_eval.attentive_probe_accuracy(
    frozen.Split(xtr, ytr, xte, yte), steps=600, batch_size=128, learning_rate=3e-3, num_heads=2
  )
  assert linear < 0.6, linear
  assert attn > 0.95, attn


def test_evaluator_is_registered_and_checks_its_fields():
  import ml_collections

  from vicmae_jax import config_lib
  from vicmae_jax.evaluators import common

  evals = ml_collections.ConfigDict(
    {"attn": dict(kind="attentive_probe", every_steps=5, train_data={}, test_data={})}
  )
  (built,) = common.build(evals, batch_size=16)
  assert isinstance(built, attentive_eval.AttentiveProbeEvaluator) and built.pool == "tokens"
  assert built.due(5, 10) and not built.due(3, 10)
  evals.attn.num_queries = 0
  with pytest.raises(config_lib.ConfigError, match=r"evals\.attn\.num_queries: must be >= 1"):
    common.build(evals)
  assert attentive_eval.default_heads(128) == 8 and attentive_eval.default_heads(48) == 2
