"""Worker processes that make whole host batches into shared memory the training process reuses.

  WorkerPool   a grain IterDataset over the batches of a MapDataset of examples: batch k (rows
               [k * b, (k + 1) * b)) is made by worker k % W, so the batches are the same for any
               worker count W, and the state (the next batch) restores exactly in a fresh process

Each worker is a spawned process with the pickled dataset. It reads its rows with grain's thread
pool (`num_threads` threads, `prefetch_elements` rows in flight) and stacks each batch straight into
one of two shared-memory slots of its own; the training process copies the batch out and hands the
slot back. The slots are made once per worker (sized by the worker's first batch, which travels
pickled), so a batch costs no fresh segment, no mapping and no page faults on either side; a batch
whose shapes do not fit the slots (the short last batch of a finite stream) travels pickled.

Faults: an exception in a worker is raised in the training process with the worker's traceback; a
worker that dies (killed, out of memory) raises naming it and its exit code; workers whose
training process has gone exit within a second, and the segments, created and unlinked by the
training process, are removed by Python's resource tracker when every process holding them ends.
"""

from __future__ import annotations

import atexit
import multiprocessing
import pickle
import queue
import traceback
import weakref
from multiprocessing import shared_memory
from typing import Any

import grain
import numpy as np

SLOTS_PER_WORKER = 2
_ALIGN = 64
_POLL_SECONDS = 0.5


class _WorkerRows:
  """Element m of one worker's stream -> row of the dataset: its batches are first, first + W, ..."""

  def __init__(self, first_batch: int, length: int, host_batch: int, workers: int):
    self.first_batch, self.length = int(first_batch), int(length)
    self.host_batch, self.workers = int(host_batch), int(workers)

  def batches(self) -> list[tuple[int, int]]:
    """(batch index, rows) of this worker's batches, in order (rows < b only for a short last one)."""
    total = -(-self.length // self.host_batch)
    return [
      (k, min(self.host_batch, self.length - k * self.host_batch))
      for k in range(self.first_batch, total, self.workers)
    ]

  def row_count(self) -> int:
    if self.length > 10**15:  # an endless stream: no list of its batches
      return self.length
    return sum(rows for _, rows in self.batches())

  def __call__(self, element: int) -> int:
    j, offset = divmod(int(element), self.host_batch)
    return (self.first_batch + j * self.workers) * self.host_batch + offset


class _Read:
  def __init__(self, dataset, rows: _WorkerRows):
    self.dataset, self.rows = dataset, rows

  def __call__(self, element: int) -> Any:
    return self.dataset[self.rows(element)]


def _layout(batch: dict[str, np.ndarray]) -> tuple[tuple[tuple[str, str, tuple, int], ...], int]:
  """(key, dtype, shape, offset) of each field in a slot, and the slot's size in bytes."""
  fields, offset = [], 0
  for key, value in batch.items():
    fields.append((key, value.dtype.str, tuple(value.shape), offset))
    offset += -(-value.nbytes // _ALIGN) * _ALIGN
  return tuple(fields), max(offset, 1)


def _views(buf, layout) -> dict[str, np.ndarray]:
  return {
    key: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buf, offset=offset)
    for key, dtype, shape, offset in layout
  }


def _fits(examples: list[dict], layout) -> bool:
  if len(examples) != layout[0][2][0] or set(examples[0]) != {key for key, *_ in layout}:
    return False
  for key, dtype, shape, _ in layout:
    for example in examples:
      value = np.asarray(example[key])
      if value.dtype.str != dtype or value.shape != shape[1:]:
        return False
  return True


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def _worker_main(index: int, payload: bytes, credits, ready) -> None:
  """One worker: take a credit (a free slot, or leave to send pickled), make a batch, send it."""
  parent = multiprocessing.parent_process()
  attached: dict[str, shared_memory.SharedMemory] = {}
  try:
    dataset, rows, threads, prefetch = pickle.loads(payload)
    batches = rows.batches() if rows.length <= 10**15 else None
    elements = grain.MapDataset.range(rows.row_count()).map(_Read(dataset, rows))
    iterator = iter(
      elements.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
      )
    )
    k = rows.first_batch
    j = 0
    while True:
      if batches is not None and j >= len(batches):
        ready.put(("end", k))
        return
      count = rows.host_batch if batches is None else batches[j][1]
      examples = [next(iterator) for _ in range(count)]
      credit = None
      while credit is None:
        try:
          credit = credits.get(timeout=_POLL_SECONDS)
        except queue.Empty:
          if parent is not None and not parent.is_alive():
            return
      name, layout = credit
      if name is not None and _fits(examples, layout):
        if name not in attached:
          attached[name] = shared_memory.SharedMemory(name=name)
        for key, view in _views(attached[name].buf, layout).items():
          np.stack([np.asarray(e[key]) for e in examples], out=view)
          del view
        ready.put(("slot", k, credit))
      else:
        ready.put(("pickled", k, credit, _stack(examples)))
      k += rows.workers
      j += 1
  except BaseException:  # noqa: BLE001 - every failure reaches the training process
    try:
      ready.put(("error", index, traceback.format_exc()))
    except Exception:  # noqa: BLE001
      pass
  finally:
    for segment in attached.values():
      try:
        segment.close()
      except BufferError:
        pass


class WorkerPool(grain.IterDataset):
  """The batches of `dataset` (a MapDataset of example dicts), b rows each, made by W processes."""

  def __init__(
    self,
    dataset: grain.MapDataset,
    host_batch: int,
    workers: int,
    *,
    num_threads: int,
    prefetch_elements: int,
    drop_remainder: bool,
  ):
    super().__init__()
    if workers < 1:
      raise ValueError(f"data.worker_count: a worker pool needs at least 1 worker, got {workers}")
    self.dataset, self.host_batch, self.workers = dataset, int(host_batch), int(workers)
    self.num_threads, self.prefetch_elements = int(num_threads), int(prefetch_elements)
    length = len(dataset)
    self.length = length // self.host_batch * self.host_batch if drop_remainder else length

  def __iter__(self) -> "WorkerPoolIterator":
    return WorkerPoolIterator(self)


class WorkerPoolIterator(grain.DatasetIterator):
  """Batches in order; state {"next_batch": k, "worker_count": W}. Workers start at the first next()."""

  def __init__(self, pool: WorkerPool):
    super().__init__()
    self._pool = pool
    self._next = 0
    self._processes: list = []
    self._credits: list = []
    self._ready: list = []
    self._segments: list[list[shared_memory.SharedMemory]] = []
    self._ended = False

  # -- state ------------------------------------------------------------------------------------
  def get_state(self) -> dict[str, Any]:
    return {"next_batch": self._next, "worker_count": self._pool.workers}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or "next_batch" not in state:
      raise ValueError(
        "the data iterator's saved state was written without worker processes (data.worker_count "
        "= 0) or by another version; resume with the run's own data.worker_count"
      )
    self._stop()
    self._next, self._ended = int(state["next_batch"]), False

  # -- workers ----------------------------------------------------------------------------------
  def _start(self) -> None:
    pool = self._pool
    context = multiprocessing.get_context("spawn")
    for w in range(pool.workers):
      first = self._next + (w - self._next) % pool.workers
      rows = _WorkerRows(first, pool.length, pool.host_batch, pool.workers)
      payload = pickle.dumps((pool.dataset, rows, pool.num_threads, pool.prefetch_elements))
      credits, ready = context.Queue(), context.Queue()
      for _ in range(SLOTS_PER_WORKER):
        credits.put((None, None))  # the first batches travel pickled and size the slots
      process = context.Process(
        target=_worker_main, args=(w, payload, credits, ready), daemon=True, name=f"data-worker-{w}"
      )
      process.start()
      self._processes.append(process)
      self._credits.append(credits)
      self._ready.append(ready)
      self._segments.append([])

  def _receive(self, w: int):
    while True:
      try:
        return self._ready[w].get(timeout=_POLL_SECONDS)
      except queue.Empty:
        process = self._processes[w]
        if not process.is_alive():
          code = process.exitcode
          self._stop()
          raise RuntimeError(
            f"data worker {w} of {self._pool.workers} exited (exit code {code}) without sending "
            f"batch {self._next}: killed, or out of memory (lower data.worker_count or "
            "data.prefetch_elements)"
          ) from None

  def _slot_for(self, w: int, batch: dict[str, np.ndarray]):
    """A credit for worker w: a new slot sized for `batch`, while it has fewer than two."""
    segments = self._segments[w]
    if len(segments) >= SLOTS_PER_WORKER:
      return None
    layout, size = _layout(batch)
    segment = shared_memory.SharedMemory(create=True, size=size)
    segments.append((segment, layout))
    return segment.name, layout

  def __next__(self) -> dict[str, np.ndarray]:
    if self._ended:
      raise StopIteration
    if not self._processes:
      self._start()
      _LIVE.add(self)
    w = self._next % self._pool.workers
    message = self._receive(w)
    kind = message[0]
    if kind == "error":
      self._stop()
      raise RuntimeError(f"data worker {message[1]} failed:\n{message[2]}")
    if kind == "end":
      self._stop()
      self._ended = True
      raise StopIteration
    k = message[1]
    if k != self._next:
      self._stop()
      raise RuntimeError(f"data worker {w} sent batch {k}, expected {self._next}")
    if kind == "slot":
      name, layout = message[2]
      segment = next(s for s, _ in self._segments[w] if s.name == name)
      views = _views(segment.buf, layout)
      batch = {key: view.copy() for key, view in views.items()}
      del views
      credit = message[2]
    else:
      credit, batch = message[2], message[3]
      if credit[0] is None:
        credit = self._slot_for(w, batch) or credit
    self._credits[w].put(credit)
    self._next += 1
    return batch

  def _stop(self) -> None:
    # The slots belong to this process, so workers need no orderly exit: end them at once.
    for process in self._processes:
      if process.is_alive():
        process.terminate()
    for process in self._processes:
      process.join(timeout=10)
      if process.is_alive():
        process.kill()
        process.join()
    for q in self._credits + self._ready:
      q.cancel_join_thread()
      q.close()
    for segments in self._segments:
      for segment, _ in segments:
        segment.close()
        segment.unlink()
    self._processes, self._credits, self._ready, self._segments = [], [], [], []

  def close(self) -> None:
    self._stop()

  def __del__(self):  # a pool dropped unclosed
    try:
      self._stop()
    except Exception:  # noqa: BLE001 - interpreter teardown
      pass


# Pools still running at exit end their workers and unlink their slots while the modules exist.
_LIVE: "weakref.WeakSet[WorkerPoolIterator]" = weakref.WeakSet()


@atexit.register
def _stop_live_pools() -> None:
  for pool in list(_LIVE):
    pool.close()
