r"""ViC-MAE pretraining on Kinetics-400 (the paper's K400 run): ViT-L/16, 800 epochs, batch 4096.

Prepare the data once (see README), then:

  python3 -m vicmae_jax.main --config=configs/pretrain_k400.py --workdir=gs://BUCKET/vicmae_k400_l16 \
    --config.data.sources.k400.path=/data/k400/prepared

Options: `configs/pretrain_k400.py:variant=B/16` for ViT-B/16; `:runlocal` shrinks the run to a
few steps of a small model (a smoke test on a laptop with the real data layout).
On TPU/GPU use bfloat16 matmuls (the default here); ViT-L fits with FSDP: `--config.mesh.fsdp=8`.
"""

from vicmae_jax import config_lib
from vicmae_jax.data import pipeline


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, variant="L/16", runlocal=False)
  c = config_lib.pretrain_config()
  c.image_size = 224
  c.model = config_lib.model_config(variant=opts.variant, dtype="bfloat16", mask_ratio=0.5)

  c.data = pipeline.default_data_config()
  c.data.sources.k400 = pipeline.default_source_config(
      kind="prepared", path="/data/kinetics400/prepared", split="train")
  c.data.frame_gap_seconds = 1.06

  c.batch_size = 4096
  c.num_epochs = 800.0
  c.warmup_epochs = 40.0
  c.optim = config_lib.optim_config(base_lr=1.5e-4, weight_decay=0.05, b1=0.9, b2=0.95)
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.keep_every = 20000
  c.log.every_steps = 100
  c.log.image_every_steps = 5000

  if opts.runlocal:
    c.model = config_lib.model_config(variant="mu/8", dtype="float32")
    c.image_size = 64
    c.batch_size = 16
    c.num_epochs = 0.0
    c.num_steps = 20
    c.warmup_epochs = 0.0
    c.warmup_steps = 5
    c.checkpoint.every_steps = 10
    c.log.every_steps = 5
    c.log.image_every_steps = 10
  return c
