"""benchmarks/ablations.py: the summary, the variants' configs, and one tiny run that resumes."""

import ast
import json
import os
import sys

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from runs import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import ablations  # noqa: E402


def _literal(text):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a plain string such as cls


def _result(variant, seed, final, init=None):
  return {"variant": variant, "seed": seed, "final": final, "init": init or {}}


def test_summary_mean_and_spread_over_seeds():
  results = [
    _result("vicmae", 0, {"knn": 0.8, "linear_probe": 0.9}, {"knn": 0.1, "linear_probe": 0.4}),
    _result("vicmae", 1, {"knn": 0.6, "linear_probe": 0.7}, {"knn": 0.3, "linear_probe": 0.4}),
    _result("gap_0", 0, {"knn": 0.2, "linear_probe": 0.3}),
  ]
  rows = {r["variant"]: r for r in ablations.summarize(results)}
  assert list(rows) == ["random_init", "vicmae", "gap_0"]
  assert rows["vicmae"]["knn_mean"] == pytest.approx(70.0)
  assert rows["vicmae"]["knn_std"] == pytest.approx(10.0)
  assert rows["random_init"]["knn_mean"] == pytest.approx(20.0)
  assert rows["random_init"]["linear_probe_std"] == pytest.approx(0.0)
  assert rows["gap_0"]["seeds"] == 1 and np.isnan(rows["gap_0"]["attentive_probe_mean"])
  assert "| vicmae |" in ablations.table(list(rows.values()))


def test_every_variant_resolves_to_a_valid_config():
  from vicmae_jax import config_lib
  from vicmae_jax.trainers import pretrain

  for name, (_, overrides) in ablations.VARIANTS.items():
    config = config_lib.load_config_file(str(REPO / "configs" / "demo.py"))
    for key, value in overrides.items():
      # What the command line refuses (a field the config does not have) fails the run.
      assert config_lib.unknown_field(config, key) is None, (name, key)
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = _literal(value)
    pretrain.validate(config, check_data=False)
  aug = _literal(ablations.VARIANTS["no_colour"][1]["data.view_augmentations"])
  assert not any(op in a for a in aug for op in ("color_jitter", "grayscale", "solarize"))
  aug = _literal(ablations.VARIANTS["no_spatial"][1]["data.view_augmentations"])
  assert all("random_resized_crop" not in a and "|resize|" in a for a in aug)


@pytest.mark.slow
def test_cls_contrast_pool_feeds_the_cls_token():
  from vicmae_jax.models import vicmae, vit

  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 16, 16, 3)), jnp.float32)
  out = {}
  for pool in ("mean", "cls"):
    model = vicmae.build_model({"variant": "mu/8", "contrast_pool": pool}, rngs=nnx.Rngs(0))
    noise = jnp.asarray(np.random.default_rng(1).random((2, 2, 4)), jnp.float32)
    encoded = model.encoder(images.reshape(4, 16, 16, 3), mask_ratio=0.5, noise=noise.reshape(4, 4))
    out[pool] = model(images, mask_ratio=0.5, noise=noise, train=False)["pooled"]
    want = vit.pool_tokens(encoded["tokens"], pool).reshape(2, 2, -1)
    np.testing.assert_allclose(out[pool], want, atol=1e-6)
  assert not np.allclose(out["mean"], out["cls"])
  with pytest.raises(ValueError, match="model.contrast_pool"):
    vicmae.build_model({"variant": "mu/8", "contrast_pool": "max"}, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_tiny_run_writes_its_json_and_plots_and_is_not_rerun(demo_root, tmp_path, capsys):
  out = str(tmp_path / "ablations")
  args = ["--out", out, "--tiny", "--variants=vicmae", "--seeds=0", f"--demo_root={demo_root}"]
  assert ablations.main(args) == 0
  with open(os.path.join(out, "vicmae_s0.json")) as f:
    result = json.load(f)
  assert result["final_step"] == 6 and set(result["final"]) == set(ablations.METRICS)
  # The JSON's numbers are the run's own logged evaluations at its last step and at step 0.
  metrics = tmp_path / "ablations" / "runs" / "vicmae_s0" / "metrics.jsonl"
  logged = [json.loads(line) for line in metrics.read_text().splitlines()]
  last = [r for r in logged if r["step"] == 6 and "eval/knn_top1" in r][-1]
  first = [r for r in logged if r["step"] == 0 and "eval/knn_top1" in r][-1]
  assert result["final"]["knn"] == last["eval/knn_top1"]
  assert result["init"]["linear_probe"] == first["eval/linear_probe_top1"]
  table = (tmp_path / "ablations" / "ablations.md").read_text()
  assert "| random_init |" in table and "| vicmae |" in table
  for png in ("ablations.png", "curves.png"):
    assert (tmp_path / "ablations" / png).read_bytes()[:4] == b"\x89PNG"
  scalars = ablations.read_scalars(str(metrics.parent))
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
  assert "train/health/z_rank" in scalars

  # Again: the finished run is skipped (its workdir untouched), the summary is written anew.
  capsys.readouterr()
  before = metrics.stat().st_mtime_ns, metrics.stat().st_size
  assert ablations.main(args) == 0
  assert "vicmae_s0: done before, not run again" in capsys.readouterr().out
  assert (metrics.stat().st_mtime_ns, metrics.stat().st_size) == before

  # A variant that fails (here: a field the config lacks) is reported; the others still count.
  ablations.VARIANTS["broken"] = ("a field that does not exist", {"model.no_such_field": "1"})
  try:
    broken = ["--out", out, "--tiny", "--variants=broken,vicmae", "--seeds=0"]
    assert ablations.main(broken + [f"--demo_root={demo_root}"]) == 1
  finally:
    del ablations.VARIANTS["broken"]
  printed = capsys.readouterr().out
  assert "FAILED broken_s0 failed (2)" in printed and "no_such_field" in printed
  assert "vicmae_s0: done before, not run again" in printed
  assert "failed (no JSON written, run again to retry): broken_s0" in printed
  assert not os.path.exists(os.path.join(out, "broken_s0.json"))
