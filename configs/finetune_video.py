r"""Fine-tune a pretrained ViC-MAE image encoder as a space-time ViT on Kinetics-400 or SSv2.

  python3 -m vicmae_jax.data.prepare --format=kinetics --root=/data/k400/videos \
      --annotations=/data/k400/train.csv --split=train --output=/data/k400/prepared_15fps --fps=15
  (then --annotations=/data/k400/validate.csv --split=val --label_names_from=/data/k400/prepared_15fps/train_meta.json)
  python3 -m vicmae_jax.main --config=configs/finetune_video.py:dataset=k400,variant=L/16,frames=16 \
      --workdir=/ckpt/ft_k400 --config.init_from=/ckpt/pretrain_k400

  python3 -m vicmae_jax.data.prepare --format=ssv2 --root=/data/ssv2/videos \
      --annotations=/data/ssv2/train.json --labels=/data/ssv2/labels.json --split=train \
      --output=/data/ssv2/prepared --fps=12
  (then --annotations=/data/ssv2/validation.json --split=val)
  python3 -m vicmae_jax.main --config=configs/finetune_video.py:dataset=ssv2,variant=L/16 \
      --workdir=/ckpt/ft_ssv2 --config.init_from=/ckpt/pretrain_k400

The 2-D patch embedding is inflated to tubelets of 2 frames (with a cls token), a learned temporal
position embedding is added to the spatial sin-cos one and attention is joint over space and time
(models/video.py). Clips: `frames` frames (8, 16, 32: any multiple of 2), `stride` stored frames
apart; one random resized crop (bicubic, scale 0.08-1) per clip, plus a horizontal flip on K400
(SSv2 labels depend on direction, "pushing left to right": no flip). Testing averages the softmax
over temporal x spatial views per video. Per-frame RandAugment and random erasing of clips are not
applied (the clip pipeline applies one crop/flip to the whole clip).

Recipes (VideoMAE / MAE-ST fine-tuning at ViT-B scale): AdamW (0.9, 0.999), weight decay 0.05,
layer-wise lr decay 0.75, 5 warm-up epochs then cosine to 1e-6, drop path 0.1, mixup 0.8 / cutmix
1.0, label smoothing 0.1, full rematerialization; per dataset (the table below):
- k400: 15 fps shards (16 x 2 at 15 fps spans the 16 x 4 frames at 30 fps of VideoMAE / MAE-ST),
  5 x 3 test views, base lr 1e-3 per 256, batch 512, 75 epochs;
- ssv2: 12 fps (SSv2's own rate), 2 x 3 test views, base lr 5e-4 per 256, batch 384, 40 epochs.

Options: dataset (k400 | ssv2), variant, data_dir (prepared shards; default per dataset),
frames (16), stride (2), image_size (224).
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")

# dataset: (data_dir, num_classes, flip, test views (temporal, spatial), base_lr, batch, epochs)
DATASETS = {
  "k400": ("/data/k400/prepared_15fps", 400, True, (5, 3), 1e-3, 512, 75.0),
  # ssv2: no flip (its labels name directions)
  "ssv2": ("/data/ssv2/prepared", 174, False, (2, 3), 5e-4, 384, 40.0),
}
_FIELDS = ("data_dir", "num_classes", "flip", "views", "base_lr", "batch_size", "num_epochs")


def get_config(arg=None):
  opts = config_lib.parse_arg(
    arg, dataset="k400", variant="B/16", data_dir="", frames=16, stride=2, image_size=224
  )
  if opts.dataset not in DATASETS:
    raise ValueError(f"dataset={opts.dataset!r}: choose one of {', '.join(DATASETS)}")
  recipe = dict(zip(_FIELDS, DATASETS[opts.dataset]))
  from vicmae_jax.trainers import finetune

  c = common.downstream(
    "finetune",
    image_size=opts.image_size,
    num_classes=recipe["num_classes"],
    input_kind="clip",
    variant=opts.variant,
    drop_path_rate=0.1,
    remat="full",
  )
  c.classifier = finetune.classifier_config()
  c.video = finetune.video_config(tubelet_size=2, use_cls=True)

  common.prepared_sources(c, opts.dataset, opts.data_dir or recipe["data_dir"])
  c.data.clip_num_frames = opts.frames
  c.data.clip_stride = opts.stride
  c.data.crop_scale = (0.08, 1.0)
  c.data.clip_augmentation = "decode|random_resized_crop(interpolation='pil_bicubic')"
  if recipe["flip"]:
    c.data.clip_augmentation += "|flip"
  c.eval_data.num_temporal_views, c.eval_data.num_spatial_views = recipe["views"]

  c.mixup = common.finetune_mixup()
  c.optim = common.finetune_adamw(recipe["base_lr"], layer_decay=0.75)
  common.run_length(
    c,
    batch=recipe["batch_size"],
    epochs=recipe["num_epochs"],
    warmup_epochs=5.0,
    eval_batch=64,
    ckpt_every=500,
    log_every=50,
  )
  c.eval.every_steps = 0
  return c
