"""Another run's weights into the classifiers (weights.py): names reported, misfits refused,
learned position embeddings resized."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vicmae_jax import config_lib, weights
from vicmae_jax.models import classifier

from runs import save_params


def _classifier_params(**model):
  cfg = {"variant": "mu/8", **model}
  return nnx.state(
    classifier.build_image_classifier(cfg, num_classes=3, image_size=16, rngs=nnx.Rngs(7)),
    nnx.Param,
  )


def test_loading_reports_names_and_rejects_what_does_not_fit(pretrained, tmp_path):
  source = weights.flatten(weights.load_pretrained_tree(pretrained)["params"])
  params, report = weights.load_image_classifier(
    _classifier_params(), pretrained, scanned=False, grid_size=2
  )
  assert report["missing"] == ["head/bias", "head/kernel", "pos_embed"]
  assert report["unused"] == ["decoder", "projector"] and report["unexpected"] == []
  assert len(report["loaded"]) == len([k for k in source if k.startswith("encoder/")])
  loaded = weights.flat_params(params)
  for name in report["loaded"]:
    np.testing.assert_array_equal(np.asarray(loaded[name]), source[name])

  # Scanned blocks load from the list layout of the checkpoint.
  scanned, _ = weights.load_image_classifier(
    _classifier_params(scan_layers=True), pretrained, scanned=True, grid_size=2
  )
  qkv = np.asarray(weights.flat_params(scanned)["encoder/blocks/attn/qkv/kernel"])
  np.testing.assert_array_equal(qkv[1], source["encoder/blocks/1/attn/qkv/kernel"])

  with pytest.raises(config_lib.ConfigError, match=r"missing in checkpoint.*encoder/blocks/2/"):
    weights.load_image_classifier(
      _classifier_params(depth=3), pretrained, scanned=False, grid_size=2
    )
  with pytest.raises(config_lib.ConfigError, match=r"lacks .*encoder/blocks/1/"):
    weights.load_image_classifier(
      _classifier_params(depth=1), pretrained, scanned=False, grid_size=2
    )
  with pytest.raises(
    config_lib.ConfigError,
    match=r"shape mismatch.*encoder/blocks/0/attn/proj/bias: checkpoint \(64,\) "
    r"vs model \(32,\)",
  ):
    weights.load_image_classifier(
      _classifier_params(embed_dim=32), pretrained, scanned=False, grid_size=2
    )
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(
    config_lib.ConfigError, match="config.init_from: .*holds no usable checkpoint"
  ):
    weights.load_image_classifier(_classifier_params(), str(empty), scanned=False, grid_size=2)
  other = save_params(tmp_path / "other", {"weights": {"kernel": jnp.ones((2, 2))}})
  with pytest.raises(config_lib.ConfigError, match=r"holds no image encoder.*\['weights'\]"):
    weights.load_encoder(_classifier_params()["encoder"], other, scanned=False)


def test_learned_position_embeddings_are_resized_when_loading(tmp_path):
  rng = np.random.default_rng(0)
  ft = _classifier_params()  # grid 2 x 2
  ft["pos_embed"].value = jnp.asarray(rng.normal(size=(1, 5, 64)), jnp.float32)
  workdir = save_params(tmp_path / "finetuned", ft)
  model = classifier.build_image_classifier(
    {"variant": "mu/8"}, num_classes=3, image_size=32, rngs=nnx.Rngs(1)
  )
  params, report = weights.load_image_classifier(
    nnx.state(model, nnx.Param), workdir, scanned=False, grid_size=4
  )
  assert report["missing"] == ["head/bias", "head/kernel"]
  np.testing.assert_allclose(
    np.asarray(params["pos_embed"].value),
    classifier.interpolate_pos_embed(np.asarray(ft["pos_embed"].value), (4, 4)),
    atol=1e-6,
  )
