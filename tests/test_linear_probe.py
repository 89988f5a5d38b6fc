"""trainers/linear_probe.py end to end through `vicmae_jax.main`: cached features and clips.

Runs use configs/demo_linear_probe.py at its `tiny` size on the prepared clips of conftest.py and a
pretraining-style checkpoint of a ViC-MAE model (`pretrained`), on 8 fake CPU devices.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from runs import downstream_config

from vicmae_jax import config_lib, weights
from vicmae_jax import main as main_lib
from vicmae_jax.data import classification as data_lib
from vicmae_jax.models import vicmae
from vicmae_jax.models import vit
from vicmae_jax.trainers import linear_probe


def _final_params(workdir) -> dict:
  return weights.flatten(weights.load_pretrained_tree(str(workdir))["params"])


@pytest.mark.slow
def test_linear_probe_on_cached_features_uses_the_pretrained_encoder(
  prepared, pretrained, tmp_path
):
  config = downstream_config("demo_linear_probe.py", prepared, init_from=pretrained)
  summary = main_lib.run(config, str(tmp_path))
  assert summary["final_step"] == 4 and not summary["stopped_early"]
  assert (
    summary["eval"]["count"] == 10 and 0 <= summary["eval"]["top1"] <= summary["eval"]["top5"] <= 1
  )
  report = summary["init_report"]
  assert report["unused"] == ["decoder", "projector"] and report["missing"] == []
  assert glob.glob(str(tmp_path / "events.out.tfevents.*")) and os.path.isdir(
    tmp_path / "checkpoints" / "4"
  )

  # The cached evaluation features are those of the checkpoint's encoder (built independently).
  with np.load(tmp_path / "features" / "eval.npz") as cached:
    features, labels = cached["features"], cached["labels"]
  batch, (_, pooled) = _encode_first_eval_batch(pretrained, config)
  np.testing.assert_allclose(features[:8], np.asarray(pooled), atol=2e-5)
  np.testing.assert_array_equal(labels[:8], batch["label"])


def _encode_first_eval_batch(pretrained, config):
  """The first 8 eval images and (tokens, pooled) of the checkpoint's encoder, built independently."""
  model = vicmae.build_model({"variant": "mu/8"}, rngs=nnx.Rngs(0))
  loaded = weights.load_pretrained_tree(pretrained)["params"]
  nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, {"encoder": _int_keys(loaded["encoder"])})))
  loader = data_lib.make_eval_loader(
    config.eval_data, input_kind="image", batch_size=8, image_size=32
  )
  batch = next(iter(loader))
  return batch, model.encode(vit.normalize_images(batch["image"]))


def _int_keys(tree):
  if isinstance(tree, dict):
    return {(int(k) if k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
  return tree


def _run_on_clips(prepared, pretrained, workdir, head, **overrides):
  """Two steps of a `head` probe on uncached clips from `pretrained`: its config and final params."""
  config = downstream_config(
    "demo_linear_probe.py",
    prepared,
    f"tiny,video,nocache,head={head}",
    init_from=pretrained,
    num_steps=2,
    **overrides,
  )
  summary = main_lib.run(config, str(workdir))
  assert summary["final_step"] == 2 and summary["eval"]["count"] == 10
  return config, _final_params(workdir)


def test_linear_probe_on_clips_runs_the_frozen_encoder_in_the_step(prepared, pretrained, tmp_path):
  _, params = _run_on_clips(
    prepared, pretrained, tmp_path, "linear", **{"eval_data.num_temporal_views": 2}
  )
  # Only the head is trained: the checkpoint holds no encoder.
  assert sorted(params) == ["head/bias", "head/kernel"]


@pytest.mark.slow
def test_attentive_probe_on_cached_patch_tokens(prepared, pretrained, tmp_path):
  config = downstream_config(
    "demo_linear_probe.py", prepared, "tiny,head=attentive", init_from=pretrained
  )
  assert config.probe.head == "attentive" and config.optim.name == "adamw"
  summary = main_lib.run(config, str(tmp_path))
  assert summary["final_step"] == 4 and summary["eval"]["count"] == 10
  # The cache holds the checkpoint encoder's patch tokens (cls excluded), flattened per example.
  with np.load(tmp_path / "features" / "eval.npz") as cached:
    features = cached["features"]
  _, (tokens, _) = _encode_first_eval_batch(pretrained, config)
  np.testing.assert_allclose(features[:8], np.asarray(tokens[:, 1:]).reshape(8, -1), atol=2e-5)
  params = _final_params(tmp_path)
  assert "queries" in params and "head/kernel" in params
  assert not any(name.startswith("encoder") for name in params)


@pytest.mark.slow
def test_attentive_probe_on_clips_runs_the_frozen_encoder_in_the_step(
  prepared, pretrained, tmp_path
):
  config, params = _run_on_clips(prepared, pretrained, tmp_path, "attentive")
  assert "queries" in params
  config.probe.head = "attentiv"
  with pytest.raises(config_lib.ConfigError, match="config.probe.head: must be one of"):
    linear_probe.validate(config)


@pytest.mark.slow
def test_prints_accuracy_and_rejects_an_empty_init_from(prepared, pretrained, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  config = downstream_config("demo_linear_probe.py", prepared, init_from=str(empty))
  with pytest.raises(
    config_lib.ConfigError, match="config.init_from: .*holds no usable checkpoint"
  ):
    main_lib.run(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")
  config = downstream_config("demo_linear_probe.py", prepared, init_from=pretrained)
  main_lib.run(config, str(tmp_path / "good"))
  out = capsys.readouterr().out
  assert "linear_probe: top-1" in out and "(10 examples, step 4)" in out


def test_config_errors_name_the_field(prepared):
  config = downstream_config("demo_linear_probe.py", prepared, **{"mixup.cutmix_alpha": 1.0})
  with pytest.raises(
    config_lib.ConfigError, match="config.mixup: the linear probe trains without mixup"
  ):
    linear_probe.validate(config)
  config = downstream_config("demo_linear_probe.py", prepared, **{"eval.batch_size": 12})
  with pytest.raises(
    config_lib.ConfigError,
    match="config.eval.batch_size: 12 is not a positive multiple of the data-parallel size 8",
  ):
    linear_probe.validate(config)
