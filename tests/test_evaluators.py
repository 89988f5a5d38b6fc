"""Frozen-feature evaluators against independent computations."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vicmae_jax.evaluators import frozen


def test_knn_matches_bruteforce():
  rng = np.random.default_rng(0)
  xtr = rng.normal(size=(200, 16)).astype(np.float32)
  ytr = rng.integers(0, 5, size=200)
  xte = rng.normal(size=(50, 16)).astype(np.float32)
  yte = rng.integers(0, 5, size=50)
  k, t = 7, 0.1
  acc = frozen.knn_accuracy(frozen.Split(xtr, ytr, xte, yte), k=k, temperature=t, chunk=13)
  # Independent: full sort, explicit loops.
  ntr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
  correct = 0
  for i in range(len(xte)):
    q = xte[i] / np.linalg.norm(xte[i])
    sims = ntr @ q
    order = np.argsort(-sims)[:k]
    votes = np.zeros(5)
    for j in order:
      votes[ytr[j]] += np.exp(sims[j] / t)
    correct += votes.argmax() == yte[i]
  assert acc == correct / len(xte)


def test_knn_separable_clusters_is_perfect_and_random_is_not():
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(4, 8)) * 10
  ytr = np.repeat(np.arange(4), 30)
  xtr = centers[ytr] + rng.normal(size=(120, 8))
  yte = np.repeat(np.arange(4), 10)
  xte = centers[yte] + rng.normal(size=(40, 8))
  assert frozen.knn_accuracy(frozen.Split(xtr, ytr, xte, yte), k=5) == 1.0
  assert frozen.knn_accuracy(frozen.Split(xtr, rng.permutation(ytr), xte, yte), k=5) < 0.7


def test_linear_probe_close_to_sklearn():
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = x.astype(np.float32)
  xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
  ours = frozen.linear_probe_accuracy(
    frozen.Split(xtr, ytr, xte, yte), steps=300, learning_rate=0.01
  )
  mean, std = xtr.mean(0), xtr.std(0) + 1e-6
  ref = (
    LogisticRegression(max_iter=2000).fit((xtr - mean) / std, ytr).score((xte - mean) / std, yte)
  )
  assert ours > 0.85
  assert abs(ours - ref) < 0.05


# ------------------------------------------------------------------------------------------------
# The plug-in protocol (evaluators/common.py).


def test_build_by_kind_and_schedule():
  import ml_collections

  from vicmae_jax import config_lib
  from vicmae_jax.evaluators import common

  evals = ml_collections.ConfigDict(
    {
      "knn": dict(every_steps=4, train_data={}, test_data={}),
      "probe_cls": dict(kind="linear_probe", every_steps=-1, train_data={}, test_data={}),
      "final": dict(kind="classification", every_steps=0),
    }
  )
  built = {e.name: e for e in common.build(evals, batch_size=8, eval_batches=lambda: [])}
  knn, probe, final = built["knn"], built["probe_cls"], built["final"]
  assert (type(knn).__name__, type(probe).__name__) == ("KnnEvaluator", "LinearProbeEvaluator")
  assert knn.batch_size == 8 and probe.name == "probe_cls"
  assert [s for s in range(11) if knn.due(s, 10)] == [0, 4, 8, 10]
  assert not any(probe.due(s, 10) for s in range(11))  # < 0: never
  assert [s for s in range(11) if final.due(s, 10)] == [10]  # classification: not at step 0
  with pytest.raises(config_lib.ConfigError, match=r"evals\.foo: unknown evaluator kind 'knnn'"):
    common.build(ml_collections.ConfigDict({"foo": dict(kind="knnn")}))
  with pytest.raises(config_lib.ConfigError, match=r"evals\.knn\.test_data: missing"):
    common.build(ml_collections.ConfigDict({"knn": dict(train_data={})}))


def test_run_due_makes_the_predictor_once_and_only_when_due():
  from vicmae_jax.evaluators import common

  class Counting(common.Base):
    kind = "counting"

    def run(self, predict):
      return {f"eval/{self.name}": predict["value"]}

  evaluators = [Counting("a", {"every_steps": 2}), Counting("b", {"every_steps": 3})]
  made = []

  def predict():
    made.append(1)
    return {"value": 7.0}

  assert common.run_due(evaluators, 1, 10, predict) == {} and not made
  assert common.run_due(evaluators, 6, 10, predict) == {"eval/a": 7.0, "eval/b": 7.0}
  assert len(made) == 1
