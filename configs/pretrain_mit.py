r"""ViC-MAE pretraining on Moments in Time: ViT-L/16, batch 4096, 800 epochs.

  python3 -m vicmae_jax.main --config=configs/pretrain_mit.py --workdir=DIR \
    --config.data.sources.mit.path=/data/mit/prepared

Options: `:variant=B/16`, `:runlocal` (a small smoke-test run).
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  return common.paper_pretrain(opts, mit=common.prepared("/data/moments_in_time/prepared"))
