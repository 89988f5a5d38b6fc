r"""ViC-MAE pretraining on ImageNet-1k + Kinetics-400 mixed in one stream (the official script's
mixture): ImageNet images give two augmentations of one image, K400 clips two frames ~1.06 s apart.

  python3 -m vicmae_jax.main --config=configs/pretrain_in1k_k400.py --workdir=DIR \
    --config.data.sources.k400.path=/data/k400/prepared --config.data.sources.in1k.path=~/tensorflow_datasets

ImageNet comes from TFDS in array_record format (`tfds build imagenet2012 --file_format=array_record`).
Sources are drawn in proportion to their weights (default: their sizes, 1.28M : 240k).
Options: `:variant=B/16`, `:runlocal`.
"""

from vicmae_jax import config_lib
from vicmae_jax.data import pipeline


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  c = config_lib.pretrain_config()
  c.image_size = 224
  c.model = config_lib.model_config(variant=opts.variant, dtype="bfloat16", mask_ratio=0.5)
  c.data = pipeline.default_data_config()
  c.data.sources.in1k = pipeline.default_source_config(
      kind="tfds", dataset="imagenet2012", path="", split="train", weight=1.28)
  c.data.sources.k400 = pipeline.default_source_config(
      kind="prepared", path="/data/kinetics400/prepared", split="train", weight=0.24)
  c.batch_size = 4096
  c.num_epochs = 800.0
  c.warmup_epochs = 40.0
  c.optim = config_lib.optim_config(base_lr=1.5e-4)
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep_every = 20000
  c.log.every_steps = 100
  c.log.image_every_steps = 5000
  if opts.runlocal:
    c.model = config_lib.model_config(variant="mu/8", dtype="float32")
    c.image_size, c.batch_size = 64, 16
    c.num_epochs, c.num_steps, c.warmup_epochs, c.warmup_steps = 0.0, 20, 0.0, 5
    c.checkpoint.every_steps, c.log.every_steps, c.log.image_every_steps = 10, 5, 10
  return c
