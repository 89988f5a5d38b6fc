r"""Fine-tune a pretrained ViC-MAE image encoder as a space-time ViT on Kinetics-400.

  python3 -m vicmae_jax.data.prepare --format=kinetics --root=/data/k400/videos \
      --annotations=/data/k400/train.csv --split=train --output=/data/k400/prepared_15fps --fps=15
  (then --annotations=/data/k400/validate.csv --split=val --label_names_from=/data/k400/prepared_15fps/train_meta.json)
  python3 -m vicmae_jax.main --config=configs/finetune_k400.py:variant=L/16,frames=16 \
      --workdir=/ckpt/ft_k400 --config.init_from=/ckpt/pretrain_k400

The 2-D patch embedding is inflated to tubelets of 2 frames, a learned temporal position embedding is
added to the spatial sin-cos one and attention is joint over space and time (models/video.py).
Clips: `frames` frames (8, 16, 32: any multiple of 2), `stride` stored frames apart (16 x 2 at
15 fps spans the 16 x 4 frames at 30 fps of VideoMAE / MAE-ST); one random resized crop + flip per
clip. Testing averages the softmax over 5 temporal x 3 spatial views per video.

Recipe (VideoMAE / MAE-ST fine-tuning at ViT-B scale): AdamW (0.9, 0.999), weight decay 0.05,
layer-wise lr decay 0.75, base lr 1e-3 per 256, 75 epochs with 5 warm-up then cosine to 1e-6, drop
path 0.1, mixup 0.8 / cutmix 1.0, label smoothing 0.1, batch 512. Per-frame RandAugment and random
erasing of clips are not applied (the clip pipeline applies one crop/flip to the whole clip).

Options: variant, data_dir (prepared shards), frames (16), stride (2), image_size (224).
"""

from vicmae_jax import config_lib
from vicmae_jax.data import classification as data_lib
from vicmae_jax.data import pipeline
from vicmae_jax.trainers import classification
from vicmae_jax.trainers import finetune


def get_config(arg=None):
  opts = config_lib.parse_arg(
    arg, variant="B/16", data_dir="/data/k400/prepared_15fps", frames=16, stride=2, image_size=224
  )
  c = classification.classification_config("finetune")
  c.image_size = opts.image_size
  c.num_classes = 400
  c.model = config_lib.model_config(
    variant=opts.variant, dtype="bfloat16", drop_path_rate=0.1, remat="full"
  )
  c.classifier = finetune.classifier_config()
  c.video = finetune.video_config(tubelet_size=2, use_cls=True)
  c.input_kind = "clip"

  c.data.sources.k400 = pipeline.default_source_config(
    kind="prepared", split="train", path=opts.data_dir
  )
  c.data.clip_num_frames = opts.frames
  c.data.clip_stride = opts.stride
  c.data.crop_scale = (0.08, 1.0)
  c.data.clip_augmentation = "decode|random_resized_crop(interpolation='pil_bicubic')|flip"
  c.eval_data.sources.k400 = pipeline.default_source_config(
    kind="prepared", split="val", path=opts.data_dir
  )
  c.eval_data.num_temporal_views = 5
  c.eval_data.num_spatial_views = 3

  c.mixup = data_lib.mixup_config(
    mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1
  )
  c.optim = config_lib.optim_config(
    name="adamw",
    base_lr=1e-3,
    lr_batch_base=256,
    b1=0.9,
    b2=0.999,
    weight_decay=0.05,
    layer_decay=0.75,
    min_lr=1e-6,
    schedule="cosine",
  )
  c.batch_size = 512
  c.num_epochs = 75.0
  c.warmup_epochs = 5.0

  c.eval.batch_size = 64
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 500
  c.log.every_steps = 50
  return c
