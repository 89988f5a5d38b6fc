r"""Fine-tune a pretrained ViC-MAE encoder on ImageNet-1k (the official ViC-MAE / MAE recipe).

  python3 -m vicmae_jax.main --config=configs/finetune_in1k.py:variant=B/16,data_dir=/data/tfds \
      --workdir=/ckpt/ft_in1k --config.init_from=/ckpt/pretrain_k400

`init_from`: a pretraining workdir, a converted official checkpoint, or a fine-tuned classifier
(its learned position embeddings are resized bicubically when the resolution differs).

Recipe (official `scripts/finetune_imagenet_vicmae_*.sh`): cls token of the final norm -> Linear
head (trunc-normal 2e-5); learned position embeddings initialized from the pretrained sin-cos table;
AdamW (0.9, 0.999), weight decay 0.05 (none on biases, norms, tokens, position embeddings),
layer-wise lr decay 0.65, base lr 5e-4 per 256 (lr 2e-3 at batch 1024), 100 epochs with 5 warm-up
then cosine to 1e-6, drop path 0.1; random resized crop (bicubic) + flip, RandAugment (2 ops, m9,
std 0.5), random erasing 0.25 (per-pixel noise), mixup 0.8 / cutmix 1.0 (switch 0.5), label
smoothing 0.1; evaluation: resize 256 + centre crop 224.

Options: variant (S/16, B/16, L/16, H/14), data_dir (TFDS data_dir), image_size (224).
"""

from vicmae_jax import config_lib
from vicmae_jax.data import classification as data_lib
from vicmae_jax.trainers import finetune

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="B/16", data_dir="", image_size=224)
  c = common.downstream(
    "finetune",
    image_size=opts.image_size,
    num_classes=1000,
    input_kind="image",
    variant=opts.variant,
    drop_path_rate=0.1,
  )
  c.classifier = finetune.classifier_config(pool="cls", head_init_std=2e-5)
  c.video = finetune.video_config()
  common.imagenet_sources(c, opts.data_dir)

  c.augment = data_lib.augment_config(
    rand_augment_ops=2, magnitude=9.0, magnitude_std=0.5, erase_prob=0.25
  )
  c.mixup = common.finetune_mixup()
  c.optim = common.finetune_adamw(base_lr=5e-4, layer_decay=0.65)
  common.run_length(
    c, batch=1024, epochs=100.0, warmup_epochs=5.0, eval_batch=1024, ckpt_every=1251, log_every=100
  )
  c.eval.every_steps = 1251  # every epoch
  return c
