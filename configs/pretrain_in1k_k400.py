r"""ViC-MAE pretraining on ImageNet-1k + Kinetics-400 mixed in one stream (the official script's
mixture): ImageNet images give two augmentations of one image, K400 clips two frames ~1.06 s apart.

  python3 -m vicmae_jax.main --config=configs/pretrain_in1k_k400.py --workdir=DIR \
    --config.data.sources.k400.path=/data/k400/prepared --config.data.sources.in1k.path=~/tensorflow_datasets

ImageNet comes from TFDS in array_record format (`tfds build imagenet2012 --file_format=array_record`).
Sources are drawn in proportion to their weights (default: their sizes, 1.28M : 240k).
Options: `:variant=B/16`, `:runlocal`.
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  return common.paper_pretrain(
    opts,
    in1k=common.imagenet(weight=1.28),
    k400=common.prepared("/data/kinetics400/prepared", weight=0.24),
  )
