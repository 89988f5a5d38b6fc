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
from vicmae_jax.data import pipeline


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  c = config_lib.paper_pretrain_config(opts.variant)
  c.data = pipeline.default_data_config()
  video = lambda path, weight: pipeline.default_source_config(
    kind="prepared", path=path, split="train", weight=weight
  )
  c.data.sources.k400 = video("/data/kinetics400/prepared", 0.24)
  c.data.sources.k600 = video("/data/kinetics600/prepared", 0.39)
  c.data.sources.k700 = video("/data/kinetics700/prepared", 0.55)
  c.data.sources.mit = video("/data/moments_in_time/prepared", 0.80)
  c.data.sources.in1k = pipeline.default_source_config(
    kind="tfds", dataset="imagenet2012", path="", split="train", weight=1.28
  )
  if opts.runlocal:
    config_lib.shrink_for_local_run(c)
  return c
