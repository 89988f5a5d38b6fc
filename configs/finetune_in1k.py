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
from vicmae_jax.data import pipeline
from vicmae_jax.trainers import classification
from vicmae_jax.trainers import finetune


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="B/16", data_dir="", image_size=224)
  c = classification.classification_config("finetune")
  c.image_size = opts.image_size
  c.num_classes = 1000
  c.model = config_lib.model_config(variant=opts.variant, dtype="bfloat16", drop_path_rate=0.1)
  c.classifier = finetune.classifier_config(pool="cls", head_init_std=2e-5)
  c.video = finetune.video_config()
  c.input_kind = "image"

  c.data.sources.imagenet = pipeline.default_source_config(
    kind="tfds", dataset="imagenet2012", split="train", path=opts.data_dir
  )
  c.data.crop_scale = (0.08, 1.0)
  c.eval_data.sources.imagenet = pipeline.default_source_config(
    kind="tfds", dataset="imagenet2012", split="validation", path=opts.data_dir
  )

  c.augment = data_lib.augment_config(
    rand_augment_ops=2, magnitude=9.0, magnitude_std=0.5, erase_prob=0.25
  )
  c.mixup = data_lib.mixup_config(
    mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1
  )
  c.optim = config_lib.optim_config(
    name="adamw",
    base_lr=5e-4,
    lr_batch_base=256,
    b1=0.9,
    b2=0.999,
    weight_decay=0.05,
    layer_decay=0.65,
    min_lr=1e-6,
    schedule="cosine",
  )
  c.batch_size = 1024
  c.num_epochs = 100.0
  c.warmup_epochs = 5.0

  c.eval.batch_size = 1024
  c.eval.every_steps = 1251  # every epoch
  c.checkpoint.every_steps = 1251
  c.log.every_steps = 100
  return c
