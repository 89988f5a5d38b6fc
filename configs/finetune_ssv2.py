r"""Fine-tune a pretrained ViC-MAE image encoder as a space-time ViT on Something-Something v2.

  python3 -m vicmae_jax.data.prepare --format=ssv2 --root=/data/ssv2/videos \
      --annotations=/data/ssv2/train.json --labels=/data/ssv2/labels.json --split=train \
      --output=/data/ssv2/prepared --fps=12
  (then --annotations=/data/ssv2/validation.json --split=val)
  python3 -m vicmae_jax.main --config=configs/finetune_ssv2.py:variant=L/16 \
      --workdir=/ckpt/ft_ssv2 --config.init_from=/ckpt/pretrain_k400

Same model as configs/finetune_k400.py (tubelets of 2 frames, learned temporal embedding, joint
space-time attention). SSv2 labels depend on direction ("pushing left to right"), so training
uses no horizontal flip. Clips: `frames` frames `stride` stored frames apart (12 fps: SSv2's own
rate); testing averages the softmax over 2 temporal x 3 spatial views.

Recipe (VideoMAE SSv2 fine-tuning at ViT-B scale): AdamW (0.9, 0.999), weight decay 0.05, layer-wise
lr decay 0.75, base lr 5e-4 per 256, 40 epochs with 5 warm-up then cosine to 1e-6, drop path 0.1,
mixup 0.8 / cutmix 1.0, label smoothing 0.1, batch 384.

Options: variant, data_dir (prepared shards), frames (16), stride (2), image_size (224).
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(
    arg, variant="B/16", data_dir="/data/ssv2/prepared", frames=16, stride=2, image_size=224
  )
  return common.video_finetune(
    opts,
    name="ssv2",
    num_classes=174,
    flip=False,  # labels depend on direction
    views=(2, 3),
    base_lr=5e-4,
    batch_size=384,
    num_epochs=40.0,
  )
