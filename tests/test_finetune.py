"""Fine-tuning (trainers/finetune.py, trainers/classification.py): exact resume, the inflated video
model, multi-view testing, layer-wise lr, mixup/cutmix batches, config errors.

Runs use configs/demo_finetune*.py at their `tiny` size on the prepared clips of conftest.py and a
pretraining-style checkpoint of a ViC-MAE model (`pretrained`), on 8 fake CPU devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from runs import downstream_config, load_config

from vicmae_jax import config_lib, losses, weights
from vicmae_jax import main as main_lib
from vicmae_jax.data import classification as data_lib
from vicmae_jax.models import video
from vicmae_jax.models import vit
from vicmae_jax.trainers import classification as core
from vicmae_jax.trainers import common
from vicmae_jax.trainers import finetune

NUM_CLASSES = 4  # of the prepared clips (conftest.py)


def _final_params(workdir) -> dict:
  return weights.flatten(weights.load_pretrained_tree(str(workdir))["params"])


@pytest.mark.slow
def test_finetune_resumes_exactly_after_an_interruption(
  prepared, pretrained, tmp_path, monkeypatch
):
  config = downstream_config("demo_finetune.py", prepared, init_from=pretrained)
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


@pytest.mark.slow
def test_video_finetune_inflates_the_encoder_and_tests_several_views(
  prepared, pretrained, tmp_path
):
  config = downstream_config(
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


@pytest.mark.slow
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


@pytest.mark.parametrize("input_kind", ["image", "clip"])
def test_layerwise_lr_of_the_trainer_optimizer_matches_a_hand_computation(prepared, input_kind):
  name = "demo_finetune.py" if input_kind == "image" else "demo_finetune_video.py"
  config = downstream_config(
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


def test_config_errors_name_the_field(prepared, tmp_path):
  config = downstream_config("demo_finetune_video.py", prepared)
  finetune.validate(config)
  config.data.clip_num_frames = 5
  with pytest.raises(
    config_lib.ConfigError, match=r"config.data.clip_num_frames: 5 frames .*video.tubelet_size=2"
  ):
    finetune.validate(config)
  config = downstream_config("demo_finetune.py", prepared)
  config.eval_data.sources.digits.path = str(tmp_path / "nowhere")
  with pytest.raises(
    config_lib.ConfigError, match=r"^config.eval_data.sources.digits.path: not found"
  ):
    finetune.validate(config)
  config = downstream_config("demo_finetune.py", prepared, input_kind="audio")
  with pytest.raises(config_lib.ConfigError, match="config.input_kind: must be one of"):
    finetune.validate(config)
