"""Frozen-feature evaluators against independent computations."""

import numpy as np
from sklearn.linear_model import LogisticRegression

from vicmae_jax.evaluators import frozen


def test_knn_matches_bruteforce():
  rng = np.random.default_rng(0)
  xtr = rng.normal(size=(200, 16)).astype(np.float32)
  ytr = rng.integers(0, 5, size=200)
  xte = rng.normal(size=(50, 16)).astype(np.float32)
  yte = rng.integers(0, 5, size=50)
  k, t = 7, 0.1
  acc = frozen.knn_accuracy(xtr, ytr, xte, yte, k=k, temperature=t, chunk=13)
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
  assert frozen.knn_accuracy(xtr, ytr, xte, yte, k=5) == 1.0
  assert frozen.knn_accuracy(xtr, rng.permutation(ytr), xte, yte, k=5) < 0.7


def test_linear_probe_close_to_sklearn():
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = x.astype(np.float32)
  xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
  ours = frozen.linear_probe_accuracy(xtr, ytr, xte, yte, steps=300, learning_rate=0.01)
  mean, std = xtr.mean(0), xtr.std(0) + 1e-6
  ref = (
    LogisticRegression(max_iter=2000).fit((xtr - mean) / std, ytr).score((xte - mean) / std, yte)
  )
  assert ours > 0.85
  assert abs(ours - ref) < 0.05
