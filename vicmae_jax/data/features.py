"""Cached encoder features as a training stream and as padded eval batches (the linear probe).

`make_feature_loader` streams rows of an in-memory [N, D] array like the image loaders (sharded by
process, reshuffled every epoch, resumable through the grain iterator state):
{"features": float32 [b, D], "label": int32 [b]}; `feature_eval_batches` yields this process's rows
in padded batches with `valid`.
"""

from __future__ import annotations

import grain
import numpy as np

from vicmae_jax.data import pipeline
from vicmae_jax.data import sources as sources_lib
from vicmae_jax.data import stream

_SHUFFLE_STREAM = 8  # the random stream of the row order (classification.py's mixing uses 7)


class _FeatureRows:
  """Random access to (features [D], label) rows; what grain shuffles for the cached-feature probe."""

  def __init__(self, features: np.ndarray, labels: np.ndarray):
    self.features, self.labels = features, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"features": self.features[index], "label": np.int32(self.labels[index])}


def make_feature_loader(
  features: np.ndarray,
  labels: np.ndarray,
  *,
  global_batch_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> pipeline.Loader:
  """Infinite shuffled stream of cached features: {"features": float32 [b, D], "label": int32 [b]}.

  `features` [N, D] / `labels` [N] are the whole set (the same on every process); each process
  reads its rows [process_index::process_count], reshuffled every epoch.
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(
      f"features must be [N, D] with labels [N], got {features.shape} and {labels.shape}"
    )
  process_index, process_count = stream.resolve_processes(process_index, process_count)
  host_batch = stream.host_batch_size(int(global_batch_size), process_count)
  mine = np.arange(len(labels))[process_index::process_count]
  if len(mine) < host_batch:
    raise ValueError(
      f"batch_size: {len(labels)} cached examples give process {process_index} {len(mine)} rows, "
      f"fewer than its batch of {host_batch}"
    )
  rows = _FeatureRows(features[mine], labels[mine])
  dataset = (
    grain.MapDataset.source(rows)
    .shuffle(seed=stream.seed32(seed, _SHUFFLE_STREAM))
    .repeat()
    .to_iter_dataset()
    .batch(host_batch, drop_remainder=True)
  )
  return pipeline.Loader(dataset, sources_lib.SkipLog(), ("features",), host_batch)


def feature_eval_batches(
  features: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
):
  """This process's rows of cached features in padded batches (same batch count on every process).

  Yields {"features": float32 [b, D], "label": int32 [b], "valid": bool [b]}.
  """
  process_index, process_count = stream.resolve_processes(process_index, process_count)
  host_batch = stream.host_batch_size(int(batch_size), process_count)
  mine = np.arange(len(labels))[process_index::process_count]
  largest_share = -(-len(labels) // process_count)
  num_batches = -(-largest_share // host_batch)
  dim = features.shape[1]
  for start in range(0, num_batches * host_batch, host_batch):
    rows = mine[start : start + host_batch]
    valid = np.zeros((host_batch,), bool)
    valid[: len(rows)] = True
    feats = np.zeros((host_batch, dim), np.float32)
    labs = np.full((host_batch,), -1, np.int32)
    feats[: len(rows)] = features[rows]
    labs[: len(rows)] = labels[rows]
    yield {"features": feats, "label": labs, "valid": valid}
