"""Test set-up: 8 fake CPU devices and the persistent compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, so it is done here at import time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

_CACHE_DIR = os.environ.setdefault(
  "VICMAE_TEST_COMPILE_CACHE",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"),
)

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
  from vicmae_jax.data import demo

  root = tmp_path_factory.mktemp("demo_digits")
  demo.ensure_demo_dataset(str(root), num_train_clips=24, num_val_clips=12)
  return str(root)


@pytest.fixture(scope="session")
def reference(demo_root, tmp_path_factory):
  """An uninterrupted in-process run of 10 steps: the per-step losses every resumed run must hit."""
  from vicmae_jax import main
  from runs import tiny_config

  workdir = str(tmp_path_factory.mktemp("reference"))
  summary = main.run(tiny_config(demo_root, num_steps=10, **{"checkpoint.every_steps": 3}), workdir)
  assert summary["final_step"] == 10
  return workdir


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
  """A pretraining-style workdir: WORKDIR/checkpoints/3/state with ViC-MAE (mu/8) params and stats."""
  from flax import nnx
  from runs import save_params
  from vicmae_jax.models import vicmae

  model = vicmae.build_model({"variant": "mu/8"}, rngs=nnx.Rngs(42))
  return save_params(
    tmp_path_factory.mktemp("pretrain"),
    nnx.state(model, nnx.Param),
    nnx.state(model, nnx.BatchStat),
  )
