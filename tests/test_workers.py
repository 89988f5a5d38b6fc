"""data/workers.py: batches made by worker processes into reused shared memory."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import grain
import numpy as np
import pytest

from vicmae_jax.data import workers


class Rows:
  """Row i -> an example whose every value says i (a row that raises when i == fail_at)."""

  def __init__(self, fail_at: int = -1):
    self.fail_at = fail_at

  def __call__(self, i):
    if i == self.fail_at:
      raise ValueError(f"row {i} cannot be made")
    return {
      "x": np.full((4, 3), i, np.int32),
      "y": np.float32(i),
      "v": np.arange(5, dtype=np.uint8),
    }


def _pool(length, batch, count, *, fail_at=-1, drop_remainder=True):
  dataset = grain.MapDataset.range(length).map(Rows(fail_at))
  return workers.WorkerPool(
    dataset, batch, count, num_threads=2, prefetch_elements=8, drop_remainder=drop_remainder
  )


def _reference(length, batch, drop_remainder=True):
  dataset = grain.MapDataset.range(length).map(Rows())
  return list(dataset.to_iter_dataset().batch(batch, drop_remainder=drop_remainder))


def _assert_equal(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    assert set(g) == set(w)
    for key in w:
      assert g[key].dtype == w[key].dtype
      np.testing.assert_array_equal(g[key], w[key])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_batches_are_grains_for_any_worker_count(count):
  """Many more batches than slots: a batch handed out is a copy, not the slot it was made in."""
  iterator = iter(_pool(10**6, 4, count))
  try:
    got = [next(iterator) for _ in range(12)]
  finally:
    iterator.close()
  reference = iter(grain.MapDataset.range(10**6).map(Rows()).to_iter_dataset().batch(4))
  want = [next(reference) for _ in range(12)]
  _assert_equal(got, want)


def test_a_finite_stream_ends_with_its_short_batch():
  got = list(_pool(23, 5, 2, drop_remainder=False))
  _assert_equal(got, _reference(23, 5, drop_remainder=False))
  assert [len(b["y"]) for b in got] == [5, 5, 5, 5, 3]
  assert len(list(_pool(23, 5, 2))) == 4  # drop_remainder


def test_state_restores_in_a_fresh_iterator():
  first = iter(_pool(10**6, 3, 2))
  try:
    for _ in range(5):
      next(first)
    state = json.loads(json.dumps(first.get_state()))
    want = [next(first) for _ in range(4)]
  finally:
    first.close()
  second = iter(_pool(10**6, 3, 2))
  try:
    second.set_state(state)
    _assert_equal([next(second) for _ in range(4)], want)
  finally:
    second.close()
  with pytest.raises(ValueError, match="data.worker_count"):
    iter(_pool(10**6, 3, 2)).set_state({"parents": []})


def _segments():
  return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}


def test_slots_are_made_once_per_worker():
  """Two slots per worker for the whole run: no new shared-memory segment per batch."""
  before = _segments()
  iterator = iter(_pool(10**6, 4, 2))
  try:
    counts = []
    for _ in range(20):
      next(iterator)
      counts.append(len(_segments() - before))
    assert max(counts) <= 2 * workers.SLOTS_PER_WORKER
    assert [len(s) for s in iterator._segments] == [workers.SLOTS_PER_WORKER] * 2
  finally:
    iterator.close()
  assert not _segments() - before  # unlinked on close


def test_a_failing_row_raises_with_the_workers_traceback():
  iterator = iter(_pool(10**6, 4, 2, fail_at=9))  # row 9: batch 2, worker 0
  try:
    next(iterator), next(iterator)
    with pytest.raises(RuntimeError, match=r"(?s)data worker 0 failed.*row 9 cannot be made"):
      next(iterator)
  finally:
    iterator.close()


def test_a_killed_worker_is_named():
  iterator = iter(_pool(10**6, 4, 2))
  try:
    next(iterator)
    os.kill(iterator._processes[1].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"data worker 1 of 2 exited \(exit code -9\)"):
      for _ in range(10):
        next(iterator)
  finally:
    iterator.close()


def test_workers_end_with_a_killed_training_process(tmp_path):
  """kill -9 of the training process: its workers exit and the slots are removed."""
  script = tmp_path / "train.py"
  script.write_text(
    textwrap.dedent(
      f"""
      import json, sys, time
      sys.path[:0] = {[os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]!r}
      from test_workers import _pool
      if __name__ == "__main__":
        iterator = iter(_pool(10**6, 4, 2))
        next(iterator), next(iterator), next(iterator)
        print(json.dumps({{"pids": [p.pid for p in iterator._processes],
                          "slots": [s.name for ss in iterator._segments for s, _ in ss]}}), flush=True)
        time.sleep(600)
      """
    )
  )
  process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
  try:
    info = json.loads(process.stdout.readline())
  finally:
    process.kill()
    process.wait()
  assert len(info["pids"]) == 2 and info["slots"]

  def alive(pid):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waits for init only
      return stat.read().split(")")[-1].split()[0] != "Z"

  deadline = time.time() + 15
  while time.time() < deadline and (
    any(alive(pid) for pid in info["pids"])
    or any(os.path.exists(f"/dev/shm/{name.lstrip('/')}") for name in info["slots"])
  ):
    time.sleep(0.2)
  assert not any(alive(pid) for pid in info["pids"])
  assert not any(os.path.exists(f"/dev/shm/{name.lstrip('/')}") for name in info["slots"])
