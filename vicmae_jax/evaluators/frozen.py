"""Frozen-encoder evaluators run during pretraining: kNN and a quick linear probe.

Configured as

  config.evals.knn = dict(every_steps=N, train_data=<eval data cfg>, test_data=<eval data cfg>,
                          k=20, temperature=0.07, pool="mean", batch_size=256, max_examples=0)
  config.evals.linear_probe = dict(every_steps=N, train_data=..., test_data=..., steps=500,
                                   learning_rate=0.01, weight_decay=1e-4, pool="mean", ...)

(`pool`: "mean" of the patch tokens, the method's representation, or "cls"). Both are plug-ins
(evaluators/common.py) and run at step 0, every `every_steps` steps and at the end. Features of the same data at the same
step are extracted once and shared. kNN: cosine similarity on L2-normalized features, the top-k
neighbours vote with weight exp(sim / temperature). Linear probe: BatchNorm-style standardization
(no affine) + one linear layer trained full-batch with AdamW on the train features.
"""

from __future__ import annotations

import functools
import json
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vicmae_jax import config_lib
from vicmae_jax.evaluators import common


def extract_features(
  encode_fn: Callable, loader, to_global: Callable
) -> tuple[np.ndarray, np.ndarray]:
  """Runs `encode_fn(images uint8 [B,S,S,3]) -> [B, D]` over an eval loader.

  Returns host (features f32 [N, D], labels int [N]) of the whole dataset on every process;
  padded examples (valid == False) are dropped.
  """
  feats, labels, valids = [], [], []
  for batch in loader:
    out = encode_fn(to_global({"image": batch["image"]})["image"])
    feats.append(_local(out).astype(np.float32))
    labels.append(np.asarray(batch["label"]).astype(np.int64))
    valids.append(np.asarray(batch["valid"]).astype(bool))
  if not feats:
    raise ValueError("evaluation loader yielded no examples")
  feats, labels, valids = np.concatenate(feats), np.concatenate(labels), np.concatenate(valids)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    feats, labels, valids = (
      np.asarray(multihost_utils.process_allgather(a)).reshape((-1,) + a.shape[1:])
      for a in (feats, labels, valids)
    )
  return feats[valids], labels[valids]


def _local(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start in seen:
      continue
    seen.add(start)
    rows.append(np.asarray(s.data))
  return np.concatenate(rows)


class Split(NamedTuple):
  """Train and test features (``[N, D]``, or ``[N, L, D]`` tokens) with their integer labels: what
  every frozen-feature probe fits and scores."""

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray

  def class_count(self, num_classes: int | None = None) -> int:
    """``num_classes`` where given, else one more than the largest label of either part."""
    return num_classes or int(max(self.train_y.max(), self.test_y.max())) + 1


def knn_accuracy(
  split: Split,
  *,
  k: int = 20,
  temperature: float = 0.07,
  num_classes: int | None = None,
  chunk: int = 1024,
) -> float:
  """Weighted kNN top-1 accuracy (cosine similarity, weights exp(sim / T))."""
  train_x, train_y, test_x, test_y = split
  num_classes = split.class_count(num_classes)
  k = min(k, len(train_x))
  tr = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
  te = test_x / np.maximum(np.linalg.norm(test_x, axis=1, keepdims=True), 1e-12)
  correct = 0
  for i in range(0, len(te), chunk):
    sim = te[i : i + chunk] @ tr.T  # [c, N]
    idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top_sim = np.take_along_axis(sim, idx, axis=1)
    weights = np.exp(top_sim / temperature)
    votes = np.zeros((len(idx), num_classes))
    np.add.at(votes, (np.arange(len(idx))[:, None], train_y[idx]), weights)
    correct += int(np.sum(votes.argmax(1) == test_y[i : i + chunk]))
  return correct / len(te)


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate", "weight_decay"))
def _fit_linear(
  params, xtr: jax.Array, ytr: jax.Array, *, steps: int, learning_rate: float, weight_decay: float
):
  """Full-batch AdamW on a linear softmax classifier; jitted once per shape and setting, so the
  periodic evals of a run reuse one compilation."""
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def loss_fn(p, _):
    logits = xtr @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ytr).mean()

  return fit(loss_fn, params, tx, steps)


def fit(loss_fn, params, tx: optax.GradientTransformation, steps: int):
  """`steps` updates of `tx` on `loss_fn(params, step)` in one `fori_loop` (traced: call it inside
  a jitted function); returns the trained params."""

  def body(i, carry):
    p, s = carry
    u, s = tx.update(jax.grad(loss_fn)(p, i), s, p)
    return optax.apply_updates(p, u), s

  params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
  return params


def linear_probe_accuracy(
  split: Split,
  *,
  steps: int = 500,
  learning_rate: float = 0.01,
  weight_decay: float = 1e-4,
  num_classes: int | None = None,
  seed: int = 0,
) -> float:
  """Standardize (train statistics, no affine) + linear softmax classifier, full batch AdamW."""
  train_x, train_y, test_x, test_y = split
  num_classes = split.class_count(num_classes)
  mean = train_x.mean(0, keepdims=True)
  std = train_x.std(0, keepdims=True) + 1e-6
  xtr = jnp.asarray((train_x - mean) / std, jnp.float32)
  xte = jnp.asarray((test_x - mean) / std, jnp.float32)
  params = {
    "w": jnp.zeros((xtr.shape[1], num_classes), jnp.float32),
    "b": jnp.zeros((num_classes,), jnp.float32),
  }
  params = _fit_linear(
    params,
    xtr,
    jnp.asarray(train_y),
    steps=int(steps),
    learning_rate=float(learning_rate),
    weight_decay=float(weight_decay),
  )
  pred = np.asarray(jnp.argmax(xte @ params["w"] + params["b"], axis=1))
  return float(np.mean(pred == test_y))


class FrozenFeatures:
  """What the frozen-feature evaluators run on: pooled features of the current encoder.

  `encode(images uint8 [B, S, S, 3] global, pool) -> [B, D]` (pool "mean": mean of the patch
  tokens, the ViC-MAE representation; "cls": the cls token). Features of one data config and
  pooling are extracted once per step and shared by every evaluator that asks for them.
  """

  def __init__(self, encode: Callable, to_global: Callable, *, image_size: int):
    self.encode, self.to_global, self.image_size = encode, to_global, int(image_size)
    self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def features(self, data_cfg, *, pool: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    key = json.dumps([pool, data_cfg.to_dict()], sort_keys=True, default=str)
    if key not in self._cache:
      from vicmae_jax.data import pipeline as data_pipeline

      loader = data_pipeline.make_eval_loader(
        data_cfg, batch_size=batch_size, image_size=self.image_size
      )
      self._cache[key] = extract_features(
        lambda images: self.encode(images, pool), loader, self.to_global
      )
    return self._cache[key]


class _FrozenEvaluator(common.Base):
  """Shared by kNN and the linear probe: train/test features of the frozen encoder."""

  def __init__(self, name: str, cfg, *, batch_size: int = 256, seed: int = 0):
    super().__init__(name, cfg)
    for field in ("train_data", "test_data"):
      config_lib.require(field in cfg, f"evals.{name}.{field}", "missing")
    self.pool = str(cfg.get("pool", "mean"))
    config_lib.require(
      self.pool in ("mean", "cls"), f"evals.{name}.pool", f"{self.pool!r}: use 'mean' or 'cls'"
    )
    self.batch_size = int(cfg.get("batch_size", batch_size))
    self.seed = int(seed)

  def run(self, predict: FrozenFeatures) -> dict[str, float]:
    get = lambda data: predict.features(data, pool=self.pool, batch_size=self.batch_size)
    (xtr, ytr), (xte, yte) = get(self.cfg.train_data), get(self.cfg.test_data)
    acc = self.accuracy(Split(xtr, ytr, xte, yte))
    logging.info(
      "eval %s: top-1 %.4f (train %d, test %d examples)", self.name, acc, len(xtr), len(xte)
    )
    return {f"eval/{self.name}_top1": acc}


@common.register
class KnnEvaluator(_FrozenEvaluator):
  """config.evals.knn: k (20), temperature (0.07), pool, batch_size, train_data, test_data."""

  kind = "knn"

  def accuracy(self, split: Split) -> float:
    return knn_accuracy(
      split,
      k=int(self.cfg.get("k", 20)),
      temperature=float(self.cfg.get("temperature", 0.07)),
    )


@common.register
class LinearProbeEvaluator(_FrozenEvaluator):
  """config.evals.linear_probe: steps (500), learning_rate (0.01), weight_decay (1e-4), pool, ..."""

  kind = "linear_probe"

  def accuracy(self, split: Split) -> float:
    return linear_probe_accuracy(
      split,
      steps=int(self.cfg.get("steps", 500)),
      learning_rate=float(self.cfg.get("learning_rate", 0.01)),
      weight_decay=float(self.cfg.get("weight_decay", 1e-4)),
      seed=self.seed,
    )
