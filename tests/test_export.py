"""`vicmae-export`: safetensors under timm's names that timm turns into our features, config, card.

The timm side is in tests/fixtures/timm_export_small.npz, made once with torch + timm by
tests/fixtures/make_timm_fixture.py; these tests need neither.
"""

import hashlib
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from vicmae_jax import export, weights
from vicmae_jax.convert import official_entries, official_order
from vicmae_jax.models import variants, vit

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _fixture_script():
  spec = importlib.util.spec_from_file_location(
    "make_timm_fixture", os.path.join(FIXTURES, "make_timm_fixture.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def timm_side():
  with np.load(os.path.join(FIXTURES, "timm_export_small.npz")) as data:
    return {k: data[k] for k in data.files}


def _our_features(model_cfg, source_dir, images):
  """Our encoder, loaded the way the linear probe loads one, pooled as ViC-MAE pools."""
  resolved = variants.resolve_model_config(model_cfg)
  model = vit.VisionTransformer(**variants.encoder_kwargs(resolved), rngs=nnx.Rngs(0))
  params, report = weights.load_encoder(nnx.state(model, nnx.Param), source_dir, scanned=False)
  nnx.update(model, params)
  tokens = jax.jit(lambda x: model(x)["tokens"])(images)
  return np.asarray(vit.mean_patch_tokens(tokens))


def test_timm_loads_the_export_into_our_features(timm_side, tmp_path):
  script = _fixture_script()
  source = script.save_converted(script.encoder_tree(), str(tmp_path / "converted"))
  summary = export.main([f"--input={source}", f"--output={tmp_path / 'out'}"])
  assert sorted(summary["files"]) == ["README.md", "config.json", "model.safetensors"]

  tensors = load_file(str(tmp_path / "out" / export.WEIGHTS))
  # Exactly the tensors timm holds after loading the folder, byte for byte, under its names.
  assert sorted(tensors) == sorted(timm_side["keys"].tolist())
  for name, digest in zip(timm_side["keys"].tolist(), timm_side["sha256"].tolist()):
    assert tensors[name].dtype == np.float32
    got = hashlib.sha256(np.ascontiguousarray(tensors[name]).tobytes()).hexdigest()
    assert got == digest, name
  for name in ("patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "norm.weight", "pos_embed"):
    assert name in tensors
  assert tensors["pos_embed"].shape == (1, 1 + 16, 32)

  # What timm computes from those tensors is what our encoder computes (mean of patch tokens).
  ours = _our_features(script.MODEL, source, timm_side["images"])
  np.testing.assert_allclose(ours, timm_side["features"], rtol=0, atol=1e-5)
  assert np.abs(timm_side["features"]).max() > 0.1  # not a degenerate output

  with open(tmp_path / "out" / "config.json") as file:
    config = json.load(file)
  assert config["architecture"] == "vit_base_patch16_224"  # a size timm has no name for
  assert config["model_args"] == {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 4.0,
    "in_chans": 3,
    "class_token": True,
    "global_pool": "avg",
    "fc_norm": False,
  }
  assert config["pretrained_cfg"]["mean"] == list(vit.IMAGENET_MEAN)
  assert config["pretrained_cfg"]["std"] == list(vit.IMAGENET_STD)
  assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
  assert "mean of the patch tokens" in config["vicmae"]["pooling"]


def test_a_training_workdir_exports_its_card_and_full_model(pretrained, tmp_path):
  """A pretraining workdir: its step's config names the model; its metrics.jsonl the eval numbers."""
  from vicmae_jax.checkpoint import Checkpointer, checkpoint_dir

  tree = weights.load_pretrained_tree(pretrained)
  workdir = tmp_path / "run"
  config = {
    "model": {"variant": "mu/8"},
    "image_size": 32,
    "batch_size": 64,
    "data": {"sources": {"digits": {"kind": "prepared", "path": "/data/digits", "weight": 1.0}}},
  }
  ckpt = Checkpointer(checkpoint_dir(str(workdir)), async_save=False)
  ckpt.save(1500, {"params": tree["params"], "batch_stats": tree["batch_stats"]}, config=config)
  ckpt.close()
  rows = [
    {"step": 0, "eval/knn_top1": 0.135, "eval/linear_probe_top1": 0.427},
    {"step": 1500, "train/loss": 0.5},
    {"step": 1500, "eval/knn_top1": 0.833, "eval/linear_probe_top1": 0.902},
  ]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step')
  out = tmp_path / "out"
  summary = export.main([f"--input={workdir}", f"--output={out}", "--full"])
  assert "vicmae_full.safetensors" in summary["files"]

  card = (out / "README.md").read_text()
  assert "- steps: 1500" in card and "- global batch: 64" in card
  assert "digits: prepared /data/digits (weight 1.0)" in card
  assert "| eval/knn_top1 | 0.8330 | 1500 |" in card
  assert "| eval/linear_probe_top1 | 0.9020 | 1500 |" in card
  assert 'pretrained_cfg_overlay=dict(file="/path/to/this/folder/model.safetensors")' in card
  assert "embed_dim=64, depth=2, num_heads=4" in card
  config_json = json.loads((out / "config.json").read_text())
  assert config_json["vicmae"]["step"] == 1500
  assert config_json["vicmae"]["eval"]["eval/knn_top1"] == {"value": 0.833, "step": 1500}

  # The whole model under the official names, the encoder part equal to model.safetensors.
  full = load_file(str(out / export.FULL_WEIGHTS))
  encoder = load_file(str(out / export.WEIGHTS))
  entries = official_entries(2, 1, "vicmae")
  assert sorted(full) == sorted(official_order(entries, "vicmae"))
  for name, value in encoder.items():
    np.testing.assert_array_equal(full[name], value)
  assert full["projector.1.num_batches_tracked"].shape == ()
  np.testing.assert_array_equal(
    full["decoder_pred.weight"], np.asarray(tree["params"]["decoder"]["pred"]["kernel"]).T
  )
  np.testing.assert_array_equal(
    full["projector.1.running_var"], np.asarray(tree["batch_stats"]["projector"]["bn1"]["var"])
  )

  with pytest.raises(export.ExportError, match="--output: .* already holds model.safetensors"):
    export.main([f"--input={workdir}", f"--output={out}"])
  with pytest.raises(export.ExportError, match="--image_size: 36 is not a multiple"):
    export.main([f"--input={workdir}", f"--output={tmp_path / 'o2'}", "--image_size=36"])


def test_a_checkpoint_without_its_config_is_refused(pretrained, tmp_path):
  with pytest.raises(export.ExportError, match="--input: .* records no model config"):
    export.main([f"--input={pretrained}", f"--output={tmp_path / 'out'}"])
  with pytest.raises(export.ExportError, match="--input: no such path"):
    export.main([f"--input={tmp_path / 'absent'}", f"--output={tmp_path / 'out'}"])
