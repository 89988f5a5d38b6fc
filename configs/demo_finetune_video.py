r"""Demo: fine-tune the demo's pretrained encoder as a space-time ViT on digits-in-motion clips.

  python3 -m vicmae_jax.main --config=configs/demo.py --workdir=/tmp/vicmae_demo        # pretrain first
  python3 -m vicmae_jax.main --config=configs/demo_finetune_video.py --workdir=/tmp/vicmae_demo_ftv \
      --config.init_from=/tmp/vicmae_demo

Without `--config.init_from` the video model starts from a random initialization (the baseline).
The image encoder is inflated to tubelets of 2 frames with a learned temporal embedding and joint
space-time attention (models/video.py); training clips are 8 frames 3 stored frames apart (3 s clips
stored at 8 fps), one crop for the whole clip; evaluation averages the softmax over 2 temporal x
1 spatial views per validation clip and prints top-1 / top-5. A few minutes on 2 cores.

Options (`configs/demo_finetune_video.py:frames=16,tiny`):
  frames   frames per clip (any multiple of the tubelet size, 2)
  tiny     a few steps on a tiny dataset (smoke tests)
"""

import os

import ml_collections

from vicmae_jax import config_lib
from vicmae_jax.data import classification as data_lib
from vicmae_jax.data import pipeline
from vicmae_jax.trainers import classification
from vicmae_jax.trainers import finetune


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, frames=8, tiny=False)
  c = classification.classification_config("finetune")
  c.seed = 0
  c.demo_data = ml_collections.ConfigDict(
    dict(
      root=os.path.join(os.path.expanduser("~"), ".cache", "vicmae_jax", "demo_digits"),
      num_train_clips=400,
      num_val_clips=150,
      frame_size=64,
      enabled=True,
    )
  )
  root = c.demo_data.get_ref("root")

  # The encoder of configs/demo.py (tests keep the two in step), with stochastic depth.
  c.image_size = 48
  c.model = config_lib.model_config(
    variant="mu/8",
    embed_dim=128,
    depth=4,
    num_heads=4,
    decoder_embed_dim=64,
    decoder_depth=2,
    decoder_num_heads=4,
    projector_hidden_dim=256,
    projector_out_dim=64,
    drop_path_rate=0.1,
  )
  c.classifier = finetune.classifier_config()
  c.video = finetune.video_config(tubelet_size=2, use_cls=True)

  c.input_kind = "clip"
  c.data.sources.digits = pipeline.default_source_config(kind="prepared", split="train")
  c.data.sources.digits.path = root + "/prepared"
  c.data.crop_scale = (0.3, 1.0)
  c.data.clip_augmentation = "decode|random_resized_crop(interpolation='pil_bicubic')"
  c.data.clip_num_frames = opts.frames
  c.data.clip_stride = max(1, 24 // opts.frames)  # 3 s at 8 fps = 24 stored frames
  c.data.num_threads = 2
  c.eval_data.sources.digits = pipeline.default_source_config(kind="prepared", split="val")
  c.eval_data.sources.digits.path = root + "/prepared"
  c.eval_data.num_temporal_views = 2
  c.eval_data.num_spatial_views = 1
  c.eval_data.num_threads = 2

  c.mixup = data_lib.mixup_config(
    mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1
  )
  c.optim = config_lib.optim_config(
    name="adamw",
    base_lr=4e-3,
    lr_batch_base=256,
    b1=0.9,
    b2=0.999,
    weight_decay=0.05,
    layer_decay=0.75,
    min_lr=1e-6,
  )
  c.batch_size = 32
  c.num_epochs = 30.0
  c.warmup_epochs = 3.0
  c.eval.batch_size = 16
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 2
  c.log.every_steps = 20

  if opts.tiny:
    c.demo_data.num_train_clips = 24
    c.demo_data.num_val_clips = 12
    c.image_size = 32
    c.model = config_lib.model_config(variant="mu/8", drop_path_rate=0.1)
    c.data.clip_num_frames = 4
    c.data.clip_stride = 2
    c.batch_size = 8
    c.num_epochs = 0.0
    c.num_steps = 4
    c.warmup_epochs = 0.0
    c.warmup_steps = 1
    c.eval.batch_size = 8
    c.checkpoint.every_steps = 2
    c.log.every_steps = 1
  return c
