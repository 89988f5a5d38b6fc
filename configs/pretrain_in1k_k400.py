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
  c = config_lib.paper_pretrain_config(opts.variant)
  c.data = pipeline.default_data_config()
  c.data.sources.in1k = pipeline.default_source_config(
    kind="tfds", dataset="imagenet2012", path="", split="train", weight=1.28
  )
  c.data.sources.k400 = pipeline.default_source_config(
    kind="prepared", path="/data/kinetics400/prepared", split="train", weight=0.24
  )
  if opts.runlocal:
    config_lib.shrink_for_local_run(c)
  return c
