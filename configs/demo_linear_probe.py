r"""Demo: linear probe of the demo's pretrained encoder on the digits-in-motion videos (2 CPU cores).

  python3 -m vicmae_jax.main --config=configs/demo.py --workdir=/tmp/vicmae_demo        # pretrain first
  python3 -m vicmae_jax.main --config=configs/demo_linear_probe.py --workdir=/tmp/vicmae_demo_probe \
      --config.init_from=/tmp/vicmae_demo

Without `--config.init_from` the same probe runs on a randomly initialized encoder (the baseline).
The frozen encoder embeds one frame per clip: with cached features (the default) the middle frame
of every clip through the evaluation transform, once; with `nocache` a random frame and a random
crop at every step. BatchNorm without affine + a Linear head are trained with LARS for 90 epochs and
the top-1 / top-5 accuracy on the middle frames of the validation clips (digits never seen in
training) is printed. About a minute with cached features.

Options (`configs/demo_linear_probe.py:video,nocache`):
  video    probe clips: features averaged over 8 frames of each clip
  head     `linear` (default) or `attentive`: a learned query cross-attends to the frozen patch
           tokens (of every frame with `video`), then a Linear head; AdamW, 30 epochs
  nocache  run the frozen encoder inside every step on augmented crops (slower; the paper's setting)
  tiny     a few steps on a tiny dataset (smoke tests)
"""

from vicmae_jax import config_lib
from vicmae_jax.trainers import linear_probe

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(arg, video=False, nocache=False, tiny=False, head="linear")
  c = common.demo_downstream("linear_probe")
  c.input_kind = "clip" if opts.video else "image"
  c.data.clip_num_frames = 8
  c.data.clip_stride = 3

  c.probe = linear_probe.probe_config(pool="mean", cache_features=not opts.nocache)
  # LARS as in the MAE probe; the paper's lr (0.1 x 16384 / 256 = 6.4) is kept absolute here, since a
  # batch of 64 would scale it down 256 times.
  c.optim = config_lib.optim_config(
    name="lars", lr=6.4, weight_decay=0.0, momentum=0.9, schedule="cosine"
  )
  common.run_length(
    c, batch=64, epochs=90.0, warmup_epochs=10.0, eval_batch=64, ckpt_every=200, log_every=50
  )
  c.probe.head = opts.head  # anything but linear / attentive is refused naming probe.head
  if opts.head == "attentive":
    common.attentive_probe(c, epochs=30.0, batch_size=64, cache=not opts.nocache)
    c.optim.lr = 1e-3  # absolute, as the LARS lr above

  if opts.tiny:
    common.shrink_demo_downstream(c)
  return c
