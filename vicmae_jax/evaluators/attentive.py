"""Attentive-probe evaluator of pretraining: an attentive head on the frozen encoder's patch tokens.

  config.evals.attentive_probe = dict(every_steps=N, train_data=..., test_data=..., steps=500,
                                      batch_size=256, learning_rate=1e-3, weight_decay=0.05,
                                      num_heads=0, num_queries=1)

The frozen encoder's patch tokens (after the final norm, cls excluded) of the train and test data
are extracted once per step (shared through FrozenFeatures with pool "tokens"), then
`models/attentive.AttentiveProbeHead` (learned queries cross-attending to the tokens + a Linear
head) is trained with AdamW on random minibatches and scored top-1 on the test tokens.
`num_heads` 0 takes the width's largest divisor up to 8 that leaves heads of >= 16 channels.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vicmae_jax import config_lib
from vicmae_jax.evaluators import common, frozen
from vicmae_jax.models import attentive


def default_heads(width: int) -> int:
  for heads in (8, 4, 2):
    if width % heads == 0 and width // heads >= 16:
      return heads
  return 1


@functools.partial(
  jax.jit, static_argnames=("graphdef", "steps", "batch_size", "learning_rate", "weight_decay")
)
def _fit(graphdef, params, xtr, ytr, key, *, steps, batch_size, learning_rate, weight_decay):
  """AdamW with cosine decay on random minibatches; one compilation per shape and setting."""
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)

  def loss_fn(p, i):
    rows = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, xtr.shape[0])
    logits = nnx.merge(graphdef, p)(xtr[rows])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ytr[rows]).mean()

  return frozen.fit(loss_fn, params, tx, steps)


def attentive_probe_accuracy(
  split: frozen.Split,
  *,
  steps: int = 500,
  batch_size: int = 256,
  learning_rate: float = 1e-3,
  weight_decay: float = 0.05,
  num_heads: int = 0,
  num_queries: int = 1,
  num_classes: int | None = None,
  seed: int = 0,
) -> float:
  """Top-1 of an AttentiveProbeHead trained on tokens ``[N, L, D]`` (AdamW, cosine decay)."""
  train_x, train_y, test_x, test_y = split
  if train_x.ndim != 3 or test_x.ndim != 3:
    raise ValueError(f"tokens must be [N, L, D], got {train_x.shape} and {test_x.shape}")
  num_classes = split.class_count(num_classes)
  width = int(train_x.shape[-1])
  head = attentive.AttentiveProbeHead(
    width,
    num_classes,
    num_heads=int(num_heads) or default_heads(width),
    num_queries=int(num_queries),
    rngs=nnx.Rngs(seed),
  )
  graphdef, params = nnx.split(head)
  params = _fit(
    graphdef,
    params,
    jnp.asarray(train_x, jnp.float32),
    jnp.asarray(train_y, jnp.int32),
    jax.random.key(seed),
    steps=int(steps),
    batch_size=int(min(batch_size, len(train_y))),
    learning_rate=float(learning_rate),
    weight_decay=float(weight_decay),
  )
  model = nnx.merge(graphdef, params)
  logits = jax.jit(lambda x: model(x))(jnp.asarray(test_x, jnp.float32))
  return float(np.mean(np.asarray(jnp.argmax(logits, axis=1)) == test_y))


@common.register
class AttentiveProbeEvaluator(frozen._FrozenEvaluator):
  """config.evals.<name> (kind "attentive_probe"): steps (500), batch_size, learning_rate (1e-3),
  weight_decay (0.05), num_heads (0: auto), num_queries (1), train_data, test_data."""

  kind = "attentive_probe"

  def __init__(self, name: str, cfg, *, batch_size: int = 256, seed: int = 0):
    super().__init__(name, cfg, batch_size=batch_size, seed=seed)
    self.pool = "tokens"
    for field in ("steps", "num_queries"):
      value = int(cfg.get(field, 1))
      config_lib.require(value >= 1, f"evals.{name}.{field}", f"must be >= 1, got {value}")

  def accuracy(self, split: frozen.Split) -> float:
    return attentive_probe_accuracy(
      split,
      steps=int(self.cfg.get("steps", 500)),
      batch_size=self.batch_size,
      learning_rate=float(self.cfg.get("learning_rate", 1e-3)),
      weight_decay=float(self.cfg.get("weight_decay", 0.05)),
      num_heads=int(self.cfg.get("num_heads", 0)),
      num_queries=int(self.cfg.get("num_queries", 1)),
      seed=self.seed,
    )
