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

from vicmae_jax import config_lib
from vicmae_jax.trainers import finetune

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, frames=8, tiny=False)
  # The encoder of configs/demo.py, with stochastic depth.
  c = common.demo_downstream("finetune", drop_path_rate=0.1)
  c.classifier = finetune.classifier_config()
  c.video = finetune.video_config(tubelet_size=2, use_cls=True)

  c.input_kind = "clip"
  c.data.clip_augmentation = "decode|random_resized_crop(interpolation='pil_bicubic')"
  c.data.clip_num_frames = opts.frames
  c.data.clip_stride = max(1, 24 // opts.frames)  # 3 s at 8 fps = 24 stored frames
  c.eval_data.num_temporal_views = 2
  c.eval_data.num_spatial_views = 1

  c.mixup = common.finetune_mixup()
  c.optim = common.finetune_adamw(base_lr=4e-3, layer_decay=0.75)
  common.run_length(
    c, batch=32, epochs=30.0, warmup_epochs=3.0, eval_batch=16, ckpt_every=100, log_every=20
  )

  if opts.tiny:
    common.shrink_demo_downstream(c, drop_path_rate=0.1)
    c.data.clip_num_frames = 4
    c.data.clip_stride = 2
  return c
