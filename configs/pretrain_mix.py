r"""ViC-MAE pretraining on the paper's largest mixture: K400 + K600 + K700 + Moments in Time +
ImageNet-1k (the run that reaches 87.1 IN1k / 87.8 K400 fine-tuned with ViT-L/16).

  python3 -m vicmae_jax.main --config=configs/pretrain_mix.py --workdir=DIR \
    --config.data.sources.k400.path=... --config.data.sources.k600.path=... \
    --config.data.sources.k700.path=... --config.data.sources.mit.path=... \
    --config.data.sources.in1k.path=~/tensorflow_datasets

Weights default to the datasets' approximate training sizes (in millions of examples), so each
example is seen about once per epoch. Options: `:variant=B/16`, `:runlocal`.
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  return common.paper_pretrain(
    opts,
    k400=common.prepared("/data/kinetics400/prepared", weight=0.24),
    k600=common.prepared("/data/kinetics600/prepared", weight=0.39),
    k700=common.prepared("/data/kinetics700/prepared", weight=0.55),
    mit=common.prepared("/data/moments_in_time/prepared", weight=0.80),
    in1k=common.imagenet(weight=1.28),
  )
