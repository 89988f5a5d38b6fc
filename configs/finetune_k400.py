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

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(
    arg, variant="B/16", data_dir="/data/k400/prepared_15fps", frames=16, stride=2, image_size=224
  )
  return common.video_finetune(
    opts,
    name="k400",
    num_classes=400,
    flip=True,
    views=(5, 3),
    base_lr=1e-3,
    batch_size=512,
    num_epochs=75.0,
  )
