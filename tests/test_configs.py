"""Every config file loads, with each of its options, and passes the checks made before a run."""

import glob
import os

import pytest

from vicmae_jax import config_lib
from vicmae_jax import main as main_lib
from vicmae_jax import optim
from vicmae_jax.data import pipeline
from vicmae_jax.models import vicmae

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/common.py holds the pieces the configs share; every other file there is a config.
CONFIG_FILES = sorted(
  p for p in glob.glob(os.path.join(REPO, "configs", "*.py")) if os.path.basename(p) != "common.py"
)


def load(path, arg=None):
  module = config_lib.load_module(path)
  return module, module.get_config(arg)


def options(path):
  module, _ = load(path)
  doc = module.__doc__ or ""
  args = [None]
  for candidate in ("runlocal", "tiny", "variant=B/16"):
    if f":{candidate}" in doc or f"py:{candidate}" in doc:
      args.append(candidate)
  return args


CASES = [(p, a) for p in CONFIG_FILES for a in options(p)]


def test_all_expected_configs_exist():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  for required in (
    "demo.py",
    "pretrain_k400.py",
    "pretrain_mit.py",
    "pretrain_in1k_k400.py",
    "pretrain_mix.py",
  ):
    assert required in names


@pytest.mark.parametrize("path,arg", CASES, ids=[f"{os.path.basename(p)}:{a}" for p, a in CASES])
def test_config_loads_and_validates(path, arg, tmp_path):
  module, c = load(path, arg)
  assert module.__doc__ and "python3 -m vicmae_jax.main" in module.__doc__, (
    "docstring lacks the launch command"
  )
  assert c.trainer in main_lib.TRAINERS
  config_lib.validate_common(c, 8)
  optim.resolve_optim_config(c.optim)
  if c.trainer == "pretrain":
    dims = vicmae.resolve_model_config(c.model)
    assert c.image_size % dims["patch_size"] == 0
    data = c.data
    # Point every source at an existing folder: the paths are the user's, the rest is checked.
    with data.unlocked():
      for name in data.sources.keys():
        src = data.sources[name]
        if src.kind != "tfds":
          src.path = str(tmp_path)
    pipeline.validate_data_config(data)


def test_unknown_option_is_named():
  with pytest.raises(config_lib.ConfigError, match="varaint"):
    load(os.path.join(REPO, "configs", "pretrain_k400.py"), "varaint=B/16")


def test_paper_k400_recipe():
  _, c = load(os.path.join(REPO, "configs", "pretrain_k400.py"))
  dims = vicmae.resolve_model_config(c.model)
  assert (dims["embed_dim"], dims["depth"], dims["patch_size"]) == (1024, 24, 16)
  assert c.batch_size == 4096 and c.num_epochs == 800 and c.warmup_epochs == 40
  assert optim.peak_learning_rate(c.optim, global_batch_size=c.batch_size) == pytest.approx(
    1.5e-4 * 16
  )
  assert dims["mask_ratio"] == 0.5 and dims["temperature"] == 0.1
  assert (dims["weight_recon"], dims["weight_contrast"]) == (0.97, 0.03)
  assert c.data.frame_gap_seconds == pytest.approx(1.06)


def test_demo_pins_the_cpu_threads(monkeypatch):
  """The demo's figures need XLA's per-op CPU thread count fixed (NPROC, read when JAX starts)."""
  _, c = load(os.path.join(REPO, "configs", "demo.py"))
  assert c.cpu_threads == 2
  # The smoke test keeps XLA's default, like the in-process runs the tests compare it with.
  assert load(os.path.join(REPO, "configs", "demo.py"), "tiny")[1].cpu_threads == 0
  monkeypatch.delenv("NPROC", raising=False)
  assert main_lib.pin_cpu_threads(c) == 2 and os.environ["NPROC"] == "2"
  monkeypatch.delenv("NPROC")
  _, other = load(os.path.join(REPO, "configs", "pretrain_k400.py"))
  assert main_lib.pin_cpu_threads(other) == 0 and "NPROC" not in os.environ
  with c.unlocked():
    c.cpu_threads = 0
  assert main_lib.pin_cpu_threads(c) == 0 and "NPROC" not in os.environ
