"""Linear probe and fine-tuning end to end through `vicmae_jax.main`, and the pieces they rest on.

Runs use the demo configs at their `tiny` size on a small prepared dataset written here (real
ArrayRecord shards of JPEG clips), a pretraining-style checkpoint of a ViC-MAE model saved with the
project's checkpointer, and 8 fake CPU devices.
"""

import glob
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from vicmae_jax import config_lib
from vicmae_jax import main as main_lib
from vicmae_jax.data import classification as data_lib
from vicmae_jax.data import finetune_augment
from vicmae_jax.data import records
from vicmae_jax.models import vicmae
from vicmae_jax.models import video
from vicmae_jax.models import vit
from vicmae_jax.trainers import classification as core
from vicmae_jax.trainers import common
from vicmae_jax.trainers import finetune
from vicmae_jax import losses, weights

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
  p.name
  for p in (REPO / "configs").glob("*.py")
  if p.name.startswith(("linear_probe_", "finetune_", "demo_linear_probe", "demo_finetune"))
)
NUM_CLASSES = 4


def load_config(name: str, arg: str | None = None):
  return config_lib.load_config_file(str(REPO / "configs" / name) + (f":{arg}" if arg else ""))


# ----------------------------------------------------------------------------------------------
# Data and checkpoints
# ----------------------------------------------------------------------------------------------


def _write_split(out: Path, split: str, num_clips: int, rng: np.random.Generator):
  """Clips of 6 JPEG frames, 40 px: a class-coloured square drifting over noise."""
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(str(out / f"{split}-00000-of-00001.array_record"), "group_size:1")
  colours = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]])
  for index in range(num_clips):
    label = index % NUM_CLASSES
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
        "label_names": [f"class{i}" for i in range(NUM_CLASSES)],
        "fps": 8.0,
        "short_side": 40,
        "skipped": [],
      },
      f,
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp("prepared")
  rng = np.random.default_rng(0)
  _write_split(out, "train", 16, rng)
  _write_split(out, "val", 10, rng)
  return str(out)


def _tiny(name: str, prepared: str, arg: str = "tiny", **overrides):
  config = load_config(name, arg)
  del config["demo_data"]
  for data in (config.data, config.eval_data):
    data.sources.digits.path = prepared
    data.num_threads = 1
  config.checkpoint.async_save = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _final_params(workdir) -> dict:
  return weights.flatten(weights.load_pretrained_tree(str(workdir))["params"])


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_resolves(name):
  assert len(CONFIGS) == 8
  config = load_config(name)
  assert config.trainer in ("linear_probe", "finetune")
  vicmae.resolve_model_config(config.model)
  from vicmae_jax import optim

  optim.resolve_optim_config(config.optim)
  data_lib.validate_augment_config(config.augment)
  data_lib.validate_mixup_config(config.mixup)
  assert (config.input_kind == "clip") == ("k400" in name or "ssv2" in name or "video" in name)
  if name.startswith("demo_"):
    # The downstream demos read the encoder that configs/demo.py pretrains.
    pretrain = load_config("../configs/demo.py")
    for field in ("variant", "embed_dim", "depth", "num_heads", "patch_size"):
      assert config.model[field] == pretrain.model[field], field
    assert config.image_size == pretrain.image_size


def test_paper_recipes_in_the_configs():
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
    k400 = load_config("finetune_k400.py", f"frames={frames}")
    assert k400.data.clip_num_frames == frames == k400.eval_data.clip_num_frames
  assert "flip" not in load_config("finetune_ssv2.py").data.clip_augmentation


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def test_linear_probe_on_cached_features_uses_the_pretrained_encoder(
  prepared, pretrained, tmp_path
):
  config = _tiny("demo_linear_probe.py", prepared, init_from=pretrained)
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
  model = vicmae.build_model({"variant": "mu/8"}, rngs=nnx.Rngs(0))
  loaded = weights.load_pretrained_tree(pretrained)["params"]
  nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, {"encoder": _int_keys(loaded["encoder"])})))
  batch = next(
    iter(
      data_lib.make_eval_loader(config.eval_data, input_kind="image", batch_size=8, image_size=32)
    )
  )
  _, pooled = model.encode(vit.normalize_images(batch["image"]))
  np.testing.assert_allclose(features[:8], np.asarray(pooled), atol=2e-5)
  np.testing.assert_array_equal(labels[:8], batch["label"])


def _int_keys(tree):
  if isinstance(tree, dict):
    return {(int(k) if k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
  return tree


def test_linear_probe_on_clips_runs_the_frozen_encoder_in_the_step(prepared, pretrained, tmp_path):
  config = _tiny(
    "demo_linear_probe.py",
    prepared,
    "tiny,video,nocache",
    init_from=pretrained,
    num_steps=2,
    **{"eval_data.num_temporal_views": 2},
  )
  summary = main_lib.run(config, str(tmp_path))
  assert summary["final_step"] == 2 and summary["eval"]["count"] == 10
  # Only the head is trained: the checkpoint holds no encoder.
  assert sorted(_final_params(tmp_path)) == ["head/bias", "head/kernel"]


def test_attentive_probe_on_cached_patch_tokens(prepared, pretrained, tmp_path):
  config = _tiny("demo_linear_probe.py", prepared, "tiny,head=attentive", init_from=pretrained)
  assert config.probe.head == "attentive" and config.optim.name == "adamw"
  summary = main_lib.run(config, str(tmp_path))
  assert summary["final_step"] == 4 and summary["eval"]["count"] == 10
  # The cache holds the checkpoint encoder's patch tokens (cls excluded), flattened per example.
  with np.load(tmp_path / "features" / "eval.npz") as cached:
    features = cached["features"]
  model = vicmae.build_model({"variant": "mu/8"}, rngs=nnx.Rngs(0))
  loaded = weights.load_pretrained_tree(pretrained)["params"]
  nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, {"encoder": _int_keys(loaded["encoder"])})))
  batch = next(
    iter(
      data_lib.make_eval_loader(config.eval_data, input_kind="image", batch_size=8, image_size=32)
    )
  )
  tokens, _ = model.encode(vit.normalize_images(batch["image"]))
  np.testing.assert_allclose(features[:8], np.asarray(tokens[:, 1:]).reshape(8, -1), atol=2e-5)
  params = _final_params(tmp_path)
  assert "queries" in params and "head/kernel" in params
  assert not any(name.startswith("encoder") for name in params)


def test_attentive_probe_on_clips_runs_the_frozen_encoder_in_the_step(
  prepared, pretrained, tmp_path
):
  from vicmae_jax.trainers import linear_probe

  config = _tiny(
    "demo_linear_probe.py",
    prepared,
    "tiny,video,nocache,head=attentive",
    init_from=pretrained,
    num_steps=2,
  )
  summary = main_lib.run(config, str(tmp_path))
  assert summary["final_step"] == 2 and summary["eval"]["count"] == 10
  assert "queries" in _final_params(tmp_path)
  config.probe.head = "attentiv"
  with pytest.raises(config_lib.ConfigError, match="config.probe.head: must be one of"):
    linear_probe.validate(config)


def test_finetune_resumes_exactly_after_an_interruption(
  prepared, pretrained, tmp_path, monkeypatch
):
  config = _tiny("demo_finetune.py", prepared, init_from=pretrained)
  assert (
    config.mixup.mixup_alpha > 0
    and config.augment.rand_augment_ops > 0
    and config.model.drop_path_rate > 0
  )
  straight = main_lib.run(config, str(tmp_path / "straight"))
  assert straight["final_step"] == 4 and straight["eval"]["count"] == 10
  assert straight["init_report"]["missing"] == ["head/bias", "head/kernel", "pos_embed"]

  # A termination signal at step 2 (what `kill` / a preemption sends): save and stop.
  monkeypatch.setattr(common.PreemptionWatcher, "should_stop", lambda self, step: step == 2)
  interrupted = main_lib.run(config, str(tmp_path / "resumed"))
  assert (
    interrupted["stopped_early"] and interrupted["final_step"] == 2 and interrupted["eval"] is None
  )
  monkeypatch.undo()
  resumed = main_lib.run(config, str(tmp_path / "resumed"))
  assert (
    resumed["final_step"] == 4 and resumed["init_report"] is None
  )  # resumed, not re-initialized

  a, b = _final_params(tmp_path / "straight"), _final_params(tmp_path / "resumed")
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert resumed["eval"] == straight["eval"]
  first = weights.flatten(weights.load_pretrained_tree(pretrained)["params"])
  assert not np.array_equal(
    a["encoder/blocks/0/attn/qkv/kernel"], first["encoder/blocks/0/attn/qkv/kernel"]
  )


def test_video_finetune_inflates_the_encoder_and_tests_several_views(
  prepared, pretrained, tmp_path
):
  config = _tiny(
    "demo_finetune_video.py",
    prepared,
    init_from=pretrained,
    num_steps=2,
    **{"eval_data.num_temporal_views": 2, "eval_data.num_spatial_views": 2},
  )
  summary = main_lib.run(config, str(tmp_path))
  assert summary["final_step"] == 2 and summary["eval"]["count"] == 10
  report = summary["init_report"]
  assert report["inflated"] == ["patch_embed/kernel"]
  assert sorted(report["missing"]) == [
    "fc_norm/bias",
    "fc_norm/scale",
    "head/bias",
    "head/kernel",
    "temporal_pos_embed",
  ]


def test_command_line_prints_accuracy_and_rejects_an_empty_init_from(
  prepared, pretrained, tmp_path
):
  env = dict(
    os.environ,
    PYTHONPATH=str(REPO),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    VICMAE_COMPILE_CACHE=os.environ.get("VICMAE_TEST_COMPILE_CACHE", ""),
  )
  common_args = [
    sys.executable,
    "-m",
    "vicmae_jax.main",
    "--config=configs/demo_linear_probe.py:tiny",
    f"--config.demo_data.root={tmp_path / 'unused_demo'}",
    "--config.demo_data.enabled=false",
    f"--config.data.sources.digits.path={prepared}",
    f"--config.eval_data.sources.digits.path={prepared}",
  ]
  empty = tmp_path / "empty"
  empty.mkdir()
  bad = subprocess.run(
    common_args + [f"--workdir={tmp_path / 'bad'}", f"--config.init_from={empty}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 2
  assert "config.init_from" in bad.stderr and "holds no usable checkpoint" in bad.stderr
  good = subprocess.run(
    common_args + [f"--workdir={tmp_path / 'good'}", f"--config.init_from={pretrained}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert good.returncode == 0, good.stderr[-3000:]
  assert "linear_probe: top-1" in good.stdout and "(10 examples, step 4)" in good.stdout


# ----------------------------------------------------------------------------------------------
# Pieces: layer-wise lr, mixing, multi-view averaging
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_kind", ["image", "clip"])
def test_layerwise_lr_of_the_trainer_optimizer_matches_a_hand_computation(prepared, input_kind):
  name = "demo_finetune.py" if input_kind == "image" else "demo_finetune_video.py"
  config = _tiny(
    name,
    prepared,
    **{
      "optim.layer_decay": 0.65,
      "optim.weight_decay": 0.05,
      "optim.base_lr": 1e-3,
      "batch_size": 64,
    },
  )
  params = nnx.state(finetune.build_model_fn(config, NUM_CLASSES)(), nnx.Param)
  tx, lr_fn = core.make_optimizer(config, params, config_lib.Durations(10, 0, 10))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  peak = 1e-3 * 64 / 256
  assert float(lr_fn(0)) == pytest.approx(peak)
  depth = 2  # mu/8
  checked = set()
  for name, update in weights.flat_params(updates).items():
    parts = name.split("/")
    if any(p in ("patch_embed", "cls_token", "pos_embed", "temporal_pos_embed") for p in parts):
      layer = 0
    elif "blocks" in parts:
      layer = int(parts[parts.index("blocks") + 1]) + 1
    else:  # final norm, fc_norm, head
      layer = depth + 1
    value = np.asarray(weights.flat_params(params)[name])
    decayed = value.ndim >= 2 and not any(
      p in ("cls_token", "pos_embed", "temporal_pos_embed") for p in parts
    )
    adam = 0.5 / (0.5 + 1e-8)  # first Adam step on a constant gradient
    expected = -peak * 0.65 ** (depth + 1 - layer) * (adam + (0.05 * value if decayed else 0.0))
    np.testing.assert_allclose(np.asarray(update), expected, rtol=2e-5, atol=1e-12, err_msg=name)
    checked.add(layer)
  assert checked == {0, 1, 2, 3}


def test_mixup_and_cutmix_label_mass_in_the_trainer_batches(tmp_path):
  # Constant images per class: pixel values tell which sample each pixel came from.
  values = np.array([20, 90, 160, 230])
  labels = np.tile(np.arange(4), 6)
  images = np.broadcast_to(values[labels][:, None, None, None], (24, 24, 24, 3)).astype(np.uint8)
  np.savez(tmp_path / "const.npz", images=images, labels=labels)
  config = load_config("demo_finetune.py", "tiny")
  config.data.sources = {"const": {"kind": "npz", "path": str(tmp_path / "const.npz")}}
  config.data.num_threads = 1
  config.augment.rand_augment_ops = 0
  config.augment.erase_prob = 0.0
  smoothing, k = float(config.mixup.label_smoothing), 4
  task = finetune.build_task(config, k)
  assert task.mixing and task.batch_keys() == ("image", "label", "mix_lam", "mix_box")
  loader = data_lib.make_train_loader(
    config.data,
    input_kind="image",
    global_batch_size=8,
    image_size=16,
    seed=0,
    augment_cfg=config.augment,
    mixup_cfg=config.mixup,
  )
  mix = jax.jit(
    lambda x, y, lam, box: losses.mix_batch(x, y, lam, box, num_classes=k, smoothing=smoothing)
  )
  kinds = set()
  for batch, _ in zip(iter(loader), range(12)):
    mixed, targets = (
      np.asarray(a) for a in mix(batch["image"], batch["label"], batch["mix_lam"], batch["mix_box"])
    )
    lam = float(batch["mix_lam"][0])
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    partner = batch["label"][::-1]
    own = values[batch["label"]].astype(np.float64)
    other = values[partner].astype(np.float64)
    for i in range(8):
      on_label = np.zeros(k)
      on_label[batch["label"][i]] += lam
      on_label[partner[i]] += 1 - lam
      np.testing.assert_allclose(targets[i], on_label * (1 - smoothing) + smoothing / k, atol=1e-6)
      if batch["mix_box"][0].any():
        kinds.add("cutmix")
        if own[i] != other[i]:
          from_partner = np.mean(mixed[i] == other[i])
          assert from_partner == pytest.approx(1 - lam, abs=1e-6)
      else:
        kinds.add("mixup")
        np.testing.assert_allclose(mixed[i], lam * own[i] + (1 - lam) * other[i], rtol=1e-5)
  assert kinds == {"mixup", "cutmix"}


def test_device_mixing_equals_the_host_reference():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, size=(6, 3, 12, 10, 3)).astype(np.uint8)  # clips: every frame alike
  labels = rng.integers(0, 5, size=6)
  for seed in range(6):
    params = finetune_augment.sample_mix(np.random.default_rng(seed), 12, 10)
    ref_x, ref_t, ref_params = finetune_augment.mixup_cutmix(
      images, labels, np.random.default_rng(seed), num_classes=5, label_smoothing=0.1
    )
    assert ref_params == params
    box = np.tile(np.asarray(params.box if params.use_cutmix else (0, 0, 0, 0), np.int32), (6, 1))
    x, t = losses.mix_batch(
      jnp.asarray(images),
      jnp.asarray(labels),
      jnp.full((6,), params.lam, jnp.float32),
      jnp.asarray(box),
      num_classes=5,
      smoothing=0.1,
    )
    np.testing.assert_allclose(np.asarray(x), ref_x, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(np.asarray(t), ref_t, atol=1e-6)
  # Two host blocks: partners never cross a block.
  x = jnp.arange(8.0).reshape(8, 1, 1, 1, 1) * jnp.ones((8, 1, 2, 2, 1))
  np.testing.assert_array_equal(
    np.asarray(losses.partner_rows(x, 2))[:, 0, 0, 0, 0], [3, 2, 1, 0, 7, 6, 5, 4]
  )


def test_multi_view_score_is_the_mean_of_per_view_softmax():
  model = video.build_video_model(
    {"variant": "mu/8"}, num_classes=6, num_frames=2, rngs=nnx.Rngs(0)
  )
  # A head with visible weights, so the views' predictions differ.
  model.head.kernel[...] = jax.random.normal(jax.random.key(1), model.head.kernel[...].shape)
  graphdef, params, batch_stats, rest = common.split_model(model)
  task = core.Task(
    "video", 5, logits=lambda m, _, x, key, train: m(x, key=key, train=train), num_classes=6
  )
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  eval_step = core.make_eval_step(task, graphdef, rest, None, mesh)
  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, size=(5, 3, 2, 16, 16, 3)).astype(np.uint8)  # [B, V, T, S, S, 3]
  labels = rng.integers(0, 6, size=5).astype(np.int32)
  valid = np.array([True, True, True, True, False])
  scores = jax.jit(
    lambda p, x: jax.nn.softmax(
      nnx.merge(graphdef, p, batch_stats, rest)(vit.normalize_images(x)), -1
    )
  )
  per_view = [np.asarray(scores(params, clips[:, v])) for v in range(3)]
  mean = np.mean(per_view, axis=0)
  ours = jax.jit(
    lambda p, x: core.view_averaged_probs(
      nnx.merge(graphdef, p, batch_stats, rest), x, 5, normalize=True
    )
  )(params, clips)
  np.testing.assert_allclose(np.asarray(ours), mean, atol=1e-6)
  top1, top5, count = eval_step(
    params, batch_stats, {}, jnp.asarray(clips), jnp.asarray(labels), jnp.asarray(valid)
  )
  rank = np.argsort(-mean, axis=1)
  assert float(count) == 4
  assert float(top1) == np.sum((rank[:, 0] == labels) & valid)
  assert float(top5) == np.sum(np.any(rank[:, :5] == labels[:, None], axis=1) & valid)
  assert not np.allclose(per_view[0], per_view[1], atol=1e-3)  # the views really differ


def test_config_errors_name_the_field(prepared, tmp_path):
  from vicmae_jax.trainers import linear_probe

  config = _tiny("demo_finetune_video.py", prepared)
  finetune.validate(config)
  config.data.clip_num_frames = 5
  with pytest.raises(
    config_lib.ConfigError, match=r"config.data.clip_num_frames: 5 frames .*video.tubelet_size=2"
  ):
    finetune.validate(config)
  config = _tiny("demo_finetune.py", prepared)
  config.eval_data.sources.digits.path = str(tmp_path / "nowhere")
  with pytest.raises(
    config_lib.ConfigError, match=r"^config.eval_data.sources.digits.path: not found"
  ):
    finetune.validate(config)
  config = _tiny("demo_finetune.py", prepared, input_kind="audio")
  with pytest.raises(config_lib.ConfigError, match="config.input_kind: must be one of"):
    finetune.validate(config)
  config = _tiny("demo_linear_probe.py", prepared, **{"mixup.cutmix_alpha": 1.0})
  with pytest.raises(
    config_lib.ConfigError, match="config.mixup: the linear probe trains without mixup"
  ):
    linear_probe.validate(config)
  config = _tiny("demo_linear_probe.py", prepared, **{"eval.batch_size": 12})
  with pytest.raises(
    config_lib.ConfigError,
    match="config.eval.batch_size: 12 is not a positive multiple of the data-parallel size 8",
  ):
    linear_probe.validate(config)
