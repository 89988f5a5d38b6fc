r"""ViC-MAE pretraining on Moments in Time: ViT-L/16, batch 4096, 800 epochs.

  python3 -m vicmae_jax.main --config=configs/pretrain_mit.py --workdir=DIR \
    --config.data.sources.mit.path=/data/mit/prepared

Options: `:variant=B/16`, `:runlocal` (a small smoke-test run).
"""

from vicmae_jax import config_lib
from vicmae_jax.data import pipeline


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  c = config_lib.paper_pretrain_config(opts.variant)
  c.data = pipeline.default_data_config()
  c.data.sources.mit = pipeline.default_source_config(
    kind="prepared", path="/data/moments_in_time/prepared", split="train"
  )
  if opts.runlocal:
    config_lib.shrink_for_local_run(c)
  return c
