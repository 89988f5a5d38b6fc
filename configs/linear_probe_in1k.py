r"""Linear probe of a pretrained ViC-MAE encoder on ImageNet-1k (the MAE protocol).

  python3 -m vicmae_jax.main --config=configs/linear_probe_in1k.py:variant=L/16,data_dir=/data/tfds \
      --workdir=/ckpt/probe_in1k --config.init_from=/ckpt/pretrain_k400

`init_from` is a pretraining workdir (its newest checkpoint) or a checkpoint converted from the
official PyTorch release (`python -m vicmae_jax.convert`); only the encoder is used, frozen.
ImageNet is read from TFDS in array_record format
(`tfds build imagenet2012 --data_dir=/data/tfds --file_format=array_record`).

Recipe (MAE linear probe, as used by ViC-MAE): features = mean of the patch tokens after the final
norm (`pool=cls` for the cls token), BatchNorm without affine (eps 1e-6) + Linear head (trunc-normal
0.01), LARS (momentum 0.9, trust 0.001), base lr 0.1 per 256 (lr 6.4 at batch 16384), weight decay 0,
90 epochs with 10 warm-up then cosine, random resized crop (bicubic) + flip; evaluation: resize to
256 + centre crop 224, top-1 / top-5.

Options: variant (S/16, B/16, L/16, H/14), data_dir (TFDS data_dir; "" = the TFDS default),
head (linear | attentive: a learned query cross-attending to the frozen patch tokens, then Linear;
AdamW base lr 1e-3 per 256, 20 epochs, batch 1024, tokens not cached), pool (mean | cls),
cache (extract features once with the evaluation transform and train the head on
them; much faster, without crop augmentation).
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(
    arg, variant="B/16", data_dir="", pool="mean", cache=False, head="linear"
  )
  c = common.downstream(
    "linear_probe", image_size=224, num_classes=1000, input_kind="image", variant=opts.variant
  )
  common.imagenet_sources(c, opts.data_dir)
  common.mae_linear_probe(c, pool=opts.pool, cache=opts.cache)
  c.probe.head = opts.head  # anything but linear / attentive is refused naming probe.head
  if opts.head == "attentive":
    common.attentive_probe(c, epochs=20.0, batch_size=1024)

  c.eval.batch_size = 1024
  c.eval.every_steps = 780  # about every 10 epochs
  c.checkpoint.every_steps = 500
  c.log.every_steps = 50
  return c
