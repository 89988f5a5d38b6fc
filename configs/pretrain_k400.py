r"""ViC-MAE pretraining on Kinetics-400 (the paper's K400 run): ViT-L/16, 800 epochs, batch 4096.

Prepare the data once (see README), then:

  python3 -m vicmae_jax.main --config=configs/pretrain_k400.py --workdir=gs://BUCKET/vicmae_k400_l16 \
    --config.data.sources.k400.path=/data/k400/prepared

Options: `configs/pretrain_k400.py:variant=B/16` for ViT-B/16; `:runlocal` shrinks the run to a
few steps of a small model (a smoke test on a laptop with the real data layout).
On TPU/GPU use bfloat16 matmuls (the default here); ViT-L fits with FSDP: `--config.mesh.fsdp=8`.
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  c = common.paper_pretrain(opts, k400=common.prepared("/data/kinetics400/prepared"))
  c.data.frame_gap_seconds = 1.06
  return c
