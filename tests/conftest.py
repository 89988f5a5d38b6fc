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


DOWNSTREAM_CLASSES = 4


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
  """Prepared train (16) / val (10) clips of 4 classes: real ArrayRecord shards of JPEG frames."""
  import numpy as np

  out = tmp_path_factory.mktemp("prepared")
  rng = np.random.default_rng(0)
  _write_split(out, "train", 16, rng)
  _write_split(out, "val", 10, rng)
  return str(out)


def _write_split(out, split: str, num_clips: int, rng):
  """Clips of 6 JPEG frames, 40 px: a class-coloured square drifting over noise."""
  import io
  import json

  import numpy as np
  from array_record.python.array_record_module import ArrayRecordWriter
  from PIL import Image

  from vicmae_jax.data import records

  writer = ArrayRecordWriter(str(out / f"{split}-00000-of-00001.array_record"), "group_size:1")
  colours = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]])
  for index in range(num_clips):
    label = index % DOWNSTREAM_CLASSES
    frames = []
    for t in range(6):
      image = rng.integers(0, 80, size=(40, 40, 3)).astype(np.uint8)
      top, left = 6 + 2 * t, 8 + t
      image[top : top + 16, left : left + 16] = colours[label]
      buffer = io.BytesIO()
      Image.fromarray(image).save(buffer, format="JPEG", quality=90)
      frames.append(buffer.getvalue())
    writer.write(
      records.encode_clip(
        {
          "clip_id": f"{split}{index}",
          "label": label,
          "label_name": f"class{label}",
          "source_fps": 8.0,
          "timestamps": np.arange(6, dtype=np.float32) / 8,
          "frames": frames,
          "height": 40,
          "width": 40,
        }
      )
    )
  writer.close()
  with open(out / f"{split}_meta.json", "w") as f:
    json.dump(
      {
        "num_clips": num_clips,
        "label_names": [f"class{i}" for i in range(DOWNSTREAM_CLASSES)],
        "fps": 8.0,
        "short_side": 40,
        "skipped": [],
      },
      f,
    )
