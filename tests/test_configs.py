"""Every config file loads, with each of its options, and passes the checks made before a run."""

import glob
import os

import pytest
from runs import load_config

from vicmae_jax import config_lib
from vicmae_jax import main as main_lib
from vicmae_jax import optim
from vicmae_jax.data import classification as data_lib
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
  for candidate in ("runlocal", "tiny", "variant=B/16", "dataset=ssv2", "video", "head=attentive"):
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
  else:
    vicmae.resolve_model_config(c.model)
    data_lib.validate_augment_config(c.augment)
    data_lib.validate_mixup_config(c.mixup)
    name = os.path.basename(path)
    assert (c.input_kind == "clip") == (
      "k400" in name or "video" in name or (arg or "").startswith(("dataset=", "video"))
    )
    if name.startswith("demo_"):
      # The downstream demos read the encoder that configs/demo.py pretrains.
      pretrain = load_config("demo.py", "tiny" if arg == "tiny" else None)
      for field in ("variant", "embed_dim", "depth", "num_heads", "patch_size"):
        assert c.model[field] == pretrain.model[field], field
      assert c.image_size == pretrain.image_size


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


def test_paper_downstream_recipes():
  probe = load_config("linear_probe_in1k.py")
  assert (probe.optim.name, probe.optim.base_lr, probe.optim.weight_decay) == ("lars", 0.1, 0.0)
  assert (probe.batch_size, probe.num_epochs, probe.warmup_epochs) == (16384, 90.0, 10.0)
  assert (probe.probe.pool, probe.probe.head_init_std) == ("mean", 0.01)
  ft = load_config("finetune_in1k.py")
  assert (ft.optim.name, ft.optim.base_lr, ft.optim.b1, ft.optim.b2, ft.optim.weight_decay) == (
    "adamw",
    5e-4,
    0.9,
    0.999,
    0.05,
  )
  assert (ft.optim.layer_decay, ft.model.drop_path_rate, ft.batch_size) == (0.65, 0.1, 1024)
  assert (ft.num_epochs, ft.warmup_epochs, ft.classifier.pool) == (100.0, 5.0, "cls")
  assert (ft.mixup.mixup_alpha, ft.mixup.cutmix_alpha, ft.mixup.label_smoothing) == (0.8, 1.0, 0.1)
  assert (
    ft.augment.rand_augment_ops,
    ft.augment.magnitude,
    ft.augment.magnitude_std,
    ft.augment.erase_prob,
  ) == (2, 9.0, 0.5, 0.25)
  for frames in (8, 16, 32):
    k400 = load_config("finetune_video.py", f"dataset=k400,frames={frames}")
    assert k400.data.clip_num_frames == frames == k400.eval_data.clip_num_frames
    assert k400.data.sources.k400.path == "/data/k400/prepared_15fps"
  ssv2 = load_config("finetune_video.py", "dataset=ssv2")
  assert "flip" not in ssv2.data.clip_augmentation and "flip" in k400.data.clip_augmentation
  assert (ssv2.num_classes, ssv2.batch_size, ssv2.optim.base_lr) == (174, 384, 5e-4)
  assert (ssv2.eval_data.num_temporal_views, ssv2.eval_data.num_spatial_views) == (2, 3)
  with pytest.raises(ValueError, match="dataset='ucf'"):
    load_config("finetune_video.py", "dataset=ucf")
