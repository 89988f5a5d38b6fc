"""The global stream: which example each row of each process's batches holds, and host batches
-> global jax.Arrays.

  EpochOrder     a source's endless stream: a fresh permutation of its records every epoch
  GlobalRows     row of this process -> position of the one global stream (the same on every
                 process), with the replacement of unusable examples
  finish         threads -> batch (-> worker processes, data/workers.py) -> batches ready ahead
  to_global      this process's host batch -> a global jax.Array laid out by a sharding
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from vicmae_jax.data import sampling
from vicmae_jax.data import sources as sources_lib
from vicmae_jax.data import workers


def seed32(*values: int) -> int:
  return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  return process_index, process_count


def host_batch_size(batch_size: int, process_count: int, field: str = "batch_size") -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
      f"{field}: global batch {batch_size} is not a positive multiple of the process count {process_count}"
    )
  return batch_size // process_count


def thread_count(cfg: Mapping[str, Any]) -> int:
  """Threads of each process that makes examples: num_threads, or for -1 the cores shared out over
  the worker processes (all of them in the training process without workers)."""
  threads = int(cfg.get("num_threads", -1))
  if threads >= 0:
    return threads
  return max(1, (os.cpu_count() or 1) // max(1, int(cfg.get("worker_count", 0))))


def finish(
  dataset: grain.MapDataset, cfg: Mapping[str, Any], host_batch: int, *, drop_remainder: bool
) -> grain.IterDataset:
  """Threads -> batch (-> worker processes) -> batches ready ahead in a thread.

  Without workers, grain's thread pool makes the examples in this process. With data.worker_count
  = W, batch k is made whole by worker k % W (workers.WorkerPool) into shared memory that is reused
  batch after batch. The batches are the same whatever the worker count.
  """
  worker_count = int(cfg.get("worker_count", 0))
  threads = thread_count(cfg)
  prefetch_elements = int(cfg.get("prefetch_elements", 256))
  if worker_count > 0:
    iter_dataset = workers.WorkerPool(
      dataset,
      host_batch,
      worker_count,
      num_threads=threads,
      prefetch_elements=prefetch_elements,
      drop_remainder=drop_remainder,
    )
  else:
    read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch_elements)
    iter_dataset = dataset.to_iter_dataset(read_options).batch(
      host_batch, drop_remainder=drop_remainder
    )
  prefetch_batches = int(cfg.get("prefetch_batches", 0))
  if prefetch_batches > 0:
    iter_dataset = grain.experimental.ThreadPrefetchIterDataset(
      iter_dataset, prefetch_buffer_size=prefetch_batches
    )
  return iter_dataset


class EpochOrder:
  """Position in one source's endless stream -> (record index, epoch): a fresh permutation every epoch.

  The permutation of epoch e is a function of (seed, e) only. (grain's index_shuffle takes
  milliseconds per element on small datasets, a numpy permutation per epoch costs microseconds per
  element at any size.)
  """

  def __init__(self, num_records: int, seed: int):
    self.num_records = int(num_records)
    self.seed = int(seed)
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"num_records": self.num_records, "seed": self.seed}

  def __setstate__(self, state):
    self.__init__(state["num_records"], state["seed"])

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      order = self._cache.get(epoch)
      if order is None:
        order = np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(
          self.num_records
        )
        # Threads may straddle an epoch boundary: keep the newest two epochs.
        self._cache = {e: o for e, o in self._cache.items() if e >= epoch - 1}
        self._cache[epoch] = order
      return order

  def __call__(self, position: int) -> tuple[int, int]:
    epoch, offset = divmod(int(position), self.num_records)
    return int(self.permutation(epoch)[offset]), epoch


class _SourceStream:
  """Position in one source's stream -> (source index, record index, epoch)."""

  def __init__(self, source_index: int, order: EpochOrder):
    self.source_index, self.order = source_index, order

  def __call__(self, position: int, _: Any = None) -> tuple[int, int, int]:
    return (self.source_index, *self.order(position))


# A position whose example cannot be used (a corrupt record, an undecodable video) takes another
# record of the same source; this many failures in a row mean the source itself is broken.
MAX_REPLACEMENTS = 64


class GlobalRows:
  """Row of this process's stream -> the example at the matching position of the global stream.

  The global stream is the same on every process: position g -> (source, record, epoch) through
  the weighted mixture (grain MapDataset.mix) of the sources' streams, each a new permutation of the
  source's records every epoch. It is cut into global batches of host_batch * process_count rows and
  process p reads rows [p * host_batch, (p + 1) * host_batch) of each, so the global batches (and,
  since every draw is keyed by record and epoch, their pixels) do not depend on the process count.
  An example that cannot be used is replaced by a record of the same source drawn from
  (seed, source, g, attempt) alone, which keeps that property (the replacement repeats its record's
  draws of that epoch); it raises after MAX_REPLACEMENTS failures in a row.
  """

  def __init__(
    self,
    selection: grain.MapDataset,
    makers: Sequence[Any],
    sources: Sequence[Any],
    *,
    seed: int,
    host_batch: int,
    process_index: int,
    process_count: int,
  ):
    self.selection, self.makers, self.sources = selection, list(makers), list(sources)
    self.seed, self.host_batch = int(seed), int(host_batch)
    self.process_index, self.process_count = int(process_index), int(process_count)

  def __len__(self) -> int:
    global_batch = self.host_batch * self.process_count
    return len(self.selection) // global_batch * self.host_batch

  def global_position(self, row: int) -> int:
    batch, offset = divmod(int(row), self.host_batch)
    return (batch * self.process_count + self.process_index) * self.host_batch + offset

  def __call__(self, row: int) -> Any:
    position = self.global_position(row)
    source_index, record_index, epoch = self.selection[position]
    make = self.makers[source_index]
    example = make((record_index, epoch))
    attempt = 0
    while isinstance(example, sources_lib.Skipped):
      attempt += 1
      source = self.sources[source_index]
      if attempt > MAX_REPLACEMENTS:
        raise RuntimeError(
          f"data.sources.{source.name}: {MAX_REPLACEMENTS + 1} records in a row could not be used (last: "
          f"{example.key}: {example.reason} {example.detail}); {source.skip_log.count} bad records so far"
        )
      replacement = np.random.default_rng(
        np.random.SeedSequence([self.seed, sampling.source_key(source.name), position, attempt])
      )
      example = make((int(replacement.integers(len(source))), epoch))
    if isinstance(example, dict):  # how many records this row replaced (counted by the loop)
      example["skipped"] = np.int32(attempt)
    return example


def training_mixture(
  built,
  *,
  seed: int,
  process_index: int,
  process_count: int,
  make_example,
  host_batch_size: int = 1,
) -> grain.MapDataset:
  """This process's rows of the global stream (see GlobalRows), made by make_example(source, source index).

  host_batch_size: rows per process and global batch. With the default of 1 the processes take
  alternate positions: every global batch then holds the same examples for any process count,
  in another row order.
  """
  streams, weights, makers = [], [], []
  for source_index, (name, weight, source) in enumerate(built):
    order = EpochOrder(len(source), seed32(seed, sampling.source_key(name)))
    streams.append(
      grain.MapDataset.range(len(source))
      .repeat()
      .map_with_index(_SourceStream(source_index, order))
    )
    weights.append(weight)
    makers.append(make_example(source, source_index))
  selection = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
  rows = GlobalRows(
    selection,
    makers,
    [source for _, _, source in built],
    seed=seed,
    host_batch=host_batch_size,
    process_index=process_index,
    process_count=process_count,
  )
  return grain.MapDataset.range(len(rows)).map(rows)


def run_seed(data_cfg, seed: int) -> int:
  shuffle_seed = int(data_cfg.get("shuffle_seed", -1))
  return int(seed) if shuffle_seed < 0 else shuffle_seed


def to_global(
  batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
  """Host batches (this process's rows) -> global jax.Arrays laid out by `sharding` along axis 0.

  Every process calls this with its own rows; the global leading dimension is the sum over processes.
  """
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for key, value in batch.items()
  }
