"""The training loop's step path: device prefetch, the consumed data state, no hidden transfers.

`run_loop` runs here on a small jitted step over an in-memory source (global arrays on the test's
8 CPU devices, real orbax checkpoints, real clu writers); the pretraining run under
`transfer_guard="disallow"` is in test_pretrain.py's style, through `vicmae_jax.main`.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runs import NO_EVALS, run_main
from vicmae_jax import config_lib
from vicmae_jax import metrics as metrics_lib
from vicmae_jax import sharding as sharding_lib
from vicmae_jax.data import pipeline as data_pipeline
from vicmae_jax.trainers import common

BATCH = 8


class ListSource:
  """Batches from a list, with a grain-like get_state/set_state (the position)."""

  def __init__(self, batches):
    self.batches = batches
    self.position = 0
    self.reads = 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.position >= len(self.batches):
      raise StopIteration
    batch = self.batches[self.position]
    self.position += 1
    self.reads += 1
    return batch

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


def _batches(n):
  rng = np.random.default_rng(0)
  return [
    {"x": rng.integers(0, 255, (BATCH, 4), dtype=np.uint8), "skipped": np.zeros(BATCH, np.int32)}
    for _ in range(n)
  ]


def _loop(tmp_path, batches, *, guard="disallow", prefetch=2, leak=False, steps=None):
  config = config_lib.base_config()
  config.num_steps = steps or len(batches)
  config.checkpoint.every_steps = 3
  config.log.every_steps = 2
  config.transfer_guard = guard
  config.device_prefetch = prefetch
  mesh = common.make_mesh(config)
  batch_sh = sharding_lib.batch_sharding(mesh)
  repl = sharding_lib.replicated(mesh)

  def step_fn(state, batch):
    # The state records the sum and an order-sensitive hash of every batch it saw.
    total = jnp.sum(batch["x"].astype(jnp.float32))
    new = {
      "step": state["step"] + 1,
      "sum": state["sum"] + total,
      "hash": state["hash"] * 1.0001 + total,
    }
    return new, {"loss": total}

  state_sh = {"step": repl, "sum": repl, "hash": repl}
  step = jax.jit(step_fn, out_shardings=(state_sh, repl), donate_argnums=(0,))
  if leak:  # a hidden transfer in the loop: an eager op with a Python number sends it to the device
    jitted = step

    def step(state, batch):
      state, metrics = jitted(state, batch)
      return state, {"loss": metrics["loss"] * 2.0}

  state = jax.device_put(
    {"step": jnp.int32(0), "sum": jnp.float32(0), "hash": jnp.float32(0)}, state_sh
  )
  workdir = str(tmp_path)
  ckpt = common.make_checkpointer(config, workdir)
  logger = metrics_lib.TrainLogger(
    workdir, total_steps=config.num_steps, global_batch=BATCH, unit="pairs"
  )
  source = ListSource(batches)
  try:
    out = common.run_loop(
      config=config,
      workdir=workdir,
      state=state,
      train_step=step,
      feed=common.Feed(
        source, functools.partial(data_pipeline.to_global, sharding=batch_sh), ("x",)
      ),
      ckpt=ckpt,
      logger=logger,
      steps=(0, config.num_steps),
    )
  finally:
    ckpt.close()
    logger.close()
  return out, source


def _expected(batches):
  total, h = np.float32(0), np.float32(0)
  for b in batches:
    t = np.float32(np.sum(b["x"].astype(np.float32)))
    total, h = total + t, np.float32(h * np.float32(1.0001) + t)
  return total, h


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_loop_with_prefetch_sees_every_batch_once_in_order_under_the_transfer_guard(
  tmp_path, prefetch
):
  batches = _batches(12)
  out, source = _loop(tmp_path, batches, prefetch=prefetch, steps=7)
  total, h = _expected(batches[:7])
  assert out["final_step"] == 7 and out["last_checkpoint"] == 7
  assert float(out["state"]["sum"]) == float(total)
  np.testing.assert_allclose(float(out["state"]["hash"]), float(h), rtol=1e-6)
  # The loop reads exactly `prefetch` batches ahead of the last step it ran.
  assert source.reads == 7 + prefetch
  recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs if "train/loss" in r] == [2, 4, 6, 7]


def test_hidden_transfer_in_the_loop_is_an_error_under_the_guard(tmp_path):
  # On CPU a device-to-host read is no copy (jax does not guard it); host-to-device transfers are
  # guarded on every backend, device-to-host ones on accelerators.
  with pytest.raises(Exception, match="[Dd]isallowed host-to-device transfer"):
    _loop(tmp_path / "a", _batches(4), leak=True)
  out, _ = _loop(tmp_path / "b", _batches(4), leak=True, guard="allow")  # the same loop runs
  assert out["final_step"] == 4


def test_prefetch_state_is_that_of_the_batch_last_returned():
  source = ListSource(_batches(6))
  mesh = common.make_mesh(config_lib.base_config())
  to_global = functools.partial(data_pipeline.to_global, sharding=sharding_lib.batch_sharding(mesh))
  ahead = common.DevicePrefetch(source, to_global, ("x",), depth=2)
  assert ahead.get_state() == {"position": 0}
  for i in range(6):
    host, device = next(ahead)
    assert ahead.get_state() == {"position": i + 1}
    assert source.position == (1 if i == 0 else min(i + 2, 6))  # read ahead only by fill()
    ahead.fill()
    assert source.position == min(i + 3, 6)  # two batches ahead, until the source ends
    assert ahead.get_state() == {"position": i + 1}
    np.testing.assert_array_equal(np.asarray(device["x"]), host["x"])
    assert isinstance(device["x"], jax.Array) and "skipped" not in device
  with pytest.raises(StopIteration):
    next(ahead)


@pytest.mark.slow
def test_pretraining_loop_makes_no_implicit_transfer(demo_root, tmp_path):
  proc = run_main(
    tmp_path,
    demo_root,
    "--config.transfer_guard=disallow",
    "--config.log.image_every_steps=0",
    *NO_EVALS,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 6/6" in proc.stderr


def test_bad_loop_fields_name_the_field():
  for field, value in (("device_prefetch", -1), ("transfer_guard", "never")):
    config = config_lib.base_config()
    config.num_steps = 1
    config[field] = value
    with pytest.raises(config_lib.ConfigError, match=field):
      config_lib.validate_common(config, jax.device_count())
