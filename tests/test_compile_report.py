"""Ahead-of-time compile report: memory per device before any data is read, FSDP shrinks it."""

import pytest
from runs import load_config

from vicmae_jax.trainers import pretrain


def _config(fsdp):
  c = load_config("pretrain_k400.py", "runlocal")
  c.data.sources.k400.path = "/nonexistent/never/read"  # the report must not touch the data
  c.model.embed_dim = 128
  c.mesh.fsdp = fsdp
  return c


@pytest.mark.slow
def test_report_and_fsdp_shards_state():
  replicated = pretrain.compile_report(_config(1))
  sharded = pretrain.compile_report(_config(8))
  state_bytes = replicated["params_bytes_total"] + replicated["opt_state_bytes_total"]
  # Without FSDP every device holds the whole train state (+ the batch shard).
  assert replicated["argument_bytes_per_device"] >= state_bytes
  # With fsdp=8 the large parameters and their optimizer slots are split 8 ways.
  assert sharded["argument_bytes_per_device"] < 0.5 * replicated["argument_bytes_per_device"]
  for r in (replicated, sharded):
    assert (
      r["peak_bytes_per_device"] >= r["argument_bytes_per_device"] - r["alias_bytes_per_device"]
    )
    assert r["analytic_flops_per_step"] > 0 and r["compile_s"] > 0
