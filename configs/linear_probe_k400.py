r"""Linear probe of a pretrained ViC-MAE encoder on Kinetics-400 clips.

  python3 -m vicmae_jax.data.prepare --format=kinetics --root=/data/k400/videos \
      --annotations=/data/k400/train.csv --split=train --output=/data/k400/prepared --fps=8
  (then --annotations=/data/k400/validate.csv --split=val --label_names_from=/data/k400/prepared/train_meta.json)
  python3 -m vicmae_jax.main --config=configs/linear_probe_k400.py:variant=L/16,data_dir=/data/k400/prepared \
      --workdir=/ckpt/probe_k400 --config.init_from=/ckpt/pretrain_k400

The frozen image encoder embeds each of `frames` frames of a clip (`stride` stored frames apart,
centred for evaluation), the frame features (mean of patch tokens, or cls) are averaged, and the
MAE linear-probe head is trained on them: BatchNorm without affine + Linear, LARS, base lr 0.1 per
256, weight decay 0, 90 epochs, 10 warm-up, batch 16384. Features are extracted once and cached by
default (`cache=false` runs the encoder on random crops in every step instead).

Options: variant, data_dir (prepared shards: `train-*` and `val-*`), frames (8), stride (4),
head (linear | attentive: a learned query cross-attending to the frozen patch tokens, then Linear;
AdamW base lr 1e-3 per 256, 20 epochs, batch 1024, tokens not cached), pool (mean | cls),
cache (true).
"""

from vicmae_jax import config_lib

common = config_lib.load_sibling(__file__, "common")


def get_config(arg=None):
  opts = config_lib.parse_arg(
    arg,
    variant="B/16",
    data_dir="/data/k400/prepared",
    frames=8,
    stride=4,
    pool="mean",
    cache=True,
    head="linear",
  )
  c = common.downstream(
    "linear_probe", image_size=224, num_classes=400, input_kind="clip", variant=opts.variant
  )
  common.prepared_sources(c, "k400", opts.data_dir)
  c.data.clip_num_frames = opts.frames
  c.data.clip_stride = opts.stride
  c.data.clip_augmentation = "decode|random_resized_crop(interpolation='pil_bicubic')|flip"
  c.eval_data.num_temporal_views = 1
  c.eval_data.num_spatial_views = 1
  common.mae_linear_probe(c, pool=opts.pool, cache=opts.cache)
  c.probe.head = opts.head  # anything but linear / attentive is refused naming probe.head
  if opts.head == "attentive":
    common.attentive_probe(c, epochs=20.0, batch_size=1024)

  c.eval.batch_size = 256
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 200
  c.log.every_steps = 10
  return c
