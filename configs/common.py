r"""Pieces the config files share: each function returns (or fills in) part of a ConfigDict.

This is not a config (it has no `get_config`); the files next to it load it with

  common = config_lib.load_sibling(__file__, "common")

Why here and by path: `--config=configs/x.py` has ml_collections execute the file by its path, and
`configs/` is no package on sys.path, so `import common` would depend on the working directory.
Loading the file next to the config's own `__file__` works from anywhere. The pieces stay in
`configs/` rather than in `vicmae_jax/config_lib.py` because they are recipe values (dataset
paths, the demo's sizes, the paper's hyperparameters), which users read and edit beside the
configs; config_lib keeps the schema, its defaults and its checks. A config copied out of this
folder needs this file next to it. The downstream pieces import the trainer modules inside the
functions, so loading a pretraining config imports no more than it did on its own.
"""

import os

import ml_collections

from vicmae_jax import config_lib
from vicmae_jax.data import pipeline

# --------------------------------------------------------------------------------------------------
# Data sources.


def prepared(path: str, split: str = "train", **fields) -> ml_collections.ConfigDict:
  """Shards written by `python3 -m vicmae_jax.data.prepare` (`<split>-*` in `path`)."""
  return pipeline.default_source_config(kind="prepared", split=split, path=path, **fields)


def imagenet(path: str = "", split: str = "train", **fields) -> ml_collections.ConfigDict:
  """ImageNet-1k from TFDS in array_record format (`path`: its data_dir; "" = the TFDS default)."""
  return pipeline.default_source_config(
    kind="tfds", dataset="imagenet2012", split=split, path=path, **fields
  )


# --------------------------------------------------------------------------------------------------
# Pretraining (configs/pretrain_*.py).


def paper_pretrain(opts: ml_collections.ConfigDict, **sources) -> ml_collections.ConfigDict:
  """config_lib.paper_pretrain_config(opts.variant) reading `sources` (data.sources.<name>, in
  this order); `opts.runlocal` shrinks it to a smoke test (config_lib.shrink_for_local_run)."""
  c = config_lib.paper_pretrain_config(opts.variant)
  c.data = pipeline.default_data_config()
  for name, source in sources.items():
    c.data.sources[name] = source
  if opts.runlocal:
    config_lib.shrink_for_local_run(c)
  return c


def run_length(
  c: ml_collections.ConfigDict,
  *,
  batch: int,
  epochs: float | None = None,
  warmup_epochs: float | None = None,
  steps: int | None = None,
  warmup_steps: int | None = None,
  eval_batch: int | None = None,
  ckpt_every: int | None = None,
  log_every: int | None = None,
) -> ml_collections.ConfigDict:
  """Sets the global batch, the run's and warm-up's length (in epochs, or in steps: then the epoch
  field is zeroed) and the eval batch / checkpoint / log intervals that are given."""
  c.batch_size = batch
  if steps is not None:
    c.num_epochs, c.num_steps = 0.0, steps
  elif epochs is not None:
    c.num_epochs = epochs
  if warmup_steps is not None:
    c.warmup_epochs, c.warmup_steps = 0.0, warmup_steps
  elif warmup_epochs is not None:
    c.warmup_epochs = warmup_epochs
  for value, node, field in (
    (eval_batch, c.get("eval"), "batch_size"),
    (ckpt_every, c.checkpoint, "every_steps"),
    (log_every, c.log, "every_steps"),
  ):
    if value is not None:
      node[field] = value
  return c


# --------------------------------------------------------------------------------------------------
# Linear probe and fine-tuning of a pretrained encoder.


def downstream(
  trainer: str, *, image_size: int, num_classes: int, input_kind: str, **model
) -> ml_collections.ConfigDict:
  """A classification config (`linear_probe` | `finetune`) of a bfloat16 encoder (`model`:
  model_config fields, e.g. variant) on `input_kind` ("image" | "clip") inputs."""
  from vicmae_jax.trainers import classification

  c = classification.classification_config(trainer)
  c.image_size = image_size
  c.num_classes = num_classes
  c.model = config_lib.model_config(dtype="bfloat16", **model)
  c.input_kind = input_kind
  return c


def prepared_sources(c: ml_collections.ConfigDict, name: str, data_dir: str):
  """Trains on the `train-*` shards in `data_dir` and evaluates on its `val-*` ones."""
  c.data.sources[name] = prepared(data_dir, split="train")
  c.eval_data.sources[name] = prepared(data_dir, split="val")


def imagenet_sources(c: ml_collections.ConfigDict, data_dir: str):
  """Trains on ImageNet's training split (random resized crops of scale 0.08-1), evaluates on its
  validation split."""
  c.data.sources.imagenet = imagenet(data_dir, split="train")
  c.data.crop_scale = (0.08, 1.0)
  c.eval_data.sources.imagenet = imagenet(data_dir, split="validation")


def mae_linear_probe(c: ml_collections.ConfigDict, *, pool: str, cache: bool):
  """The MAE linear probe: BatchNorm without affine + Linear head (trunc-normal 0.01) on `pool`
  features (features extracted once if `cache`), LARS (momentum 0.9, trust 0.001) at base lr 0.1
  per 256 without weight decay, batch 16384, 90 epochs with 10 warm-up then cosine."""
  from vicmae_jax.trainers import linear_probe

  c.probe = linear_probe.probe_config(pool=pool, cache_features=cache, head_init_std=0.01)
  c.optim = config_lib.optim_config(
    name="lars",
    base_lr=0.1,
    lr_batch_base=256,
    weight_decay=0.0,
    momentum=0.9,
    trust_coefficient=0.001,
    min_lr=0.0,
    schedule="cosine",
  )
  run_length(c, batch=16384, epochs=90.0, warmup_epochs=10.0)


def attentive_probe(
  c: ml_collections.ConfigDict, *, epochs: float, batch_size: int, cache: bool = False
):
  """The attentive probe in place of the linear head: one learned query cross-attending to the
  frozen patch tokens (the encoder's head count) + Linear, AdamW (0.9, 0.999) at base lr 1e-3 per
  256 examples, weight decay 0.01, `batch_size`, `epochs` with a tenth of them warm-up, then cosine
  to 0. Patch tokens are L times the size of pooled features: cache them for small datasets only."""
  c.probe.head = "attentive"
  c.probe.cache_features = cache
  c.optim = config_lib.optim_config(
    name="adamw", base_lr=1e-3, lr_batch_base=256, b1=0.9, b2=0.999, weight_decay=0.01
  )
  run_length(c, batch=int(batch_size), epochs=float(epochs), warmup_epochs=float(epochs) / 10)


def finetune_mixup() -> ml_collections.ConfigDict:
  """Mixup 0.8 / cutmix 1.0 on every batch (switch 0.5), label smoothing 0.1 (MAE fine-tuning)."""
  from vicmae_jax.data import classification as data_lib

  return data_lib.mixup_config(
    mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1
  )


def finetune_adamw(base_lr: float, layer_decay: float) -> ml_collections.ConfigDict:
  """AdamW (0.9, 0.999) of MAE fine-tuning: weight decay 0.05, `base_lr` per 256 examples with
  layer-wise decay `layer_decay`, cosine to 1e-6."""
  return config_lib.optim_config(
    name="adamw",
    base_lr=base_lr,
    lr_batch_base=256,
    b1=0.9,
    b2=0.999,
    weight_decay=0.05,
    layer_decay=layer_decay,
    min_lr=1e-6,
    schedule="cosine",
  )


# --------------------------------------------------------------------------------------------------
# The embedded demo (configs/demo*.py): digits in motion, see vicmae_jax/data/demo.py.

# The demo encoder reads 48 px crops of the 64 px frames.
DEMO_IMAGE_SIZE = 48


def demo_data(**fields) -> ml_collections.ConfigDict:
  """`demo_data`: where the demo dataset is built on first use (main.ensure_demo_data) and its size.

  `fields` adds fields, e.g. `enabled=True` (the downstream demos, which tests switch off).
  """
  return ml_collections.ConfigDict(
    dict(
      root=os.path.join(os.path.expanduser("~"), ".cache", "vicmae_jax", "demo_digits"),
      num_train_clips=400,
      num_val_clips=150,
      frame_size=64,
      **fields,
    )
  )


def demo_model(**overrides) -> ml_collections.ConfigDict:
  """The demo's ViC-MAE: mu/8 widened to 128 x 4 blocks, decoder 64 x 2, projector 256 -> 64."""
  return config_lib.model_config(
    variant="mu/8",
    embed_dim=128,
    depth=4,
    num_heads=4,
    decoder_embed_dim=64,
    decoder_depth=2,
    decoder_num_heads=4,
    projector_hidden_dim=256,
    projector_out_dim=64,
    **overrides,
  )


def demo_source(c: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
  """The prepared shards of the demo clips (`train` | `val`), under `c.demo_data.root`."""
  source = pipeline.default_source_config(kind="prepared", split=split)
  source.path = c.demo_data.get_ref("root") + "/prepared"
  return source


def demo_heldout(c: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
  """The demo's held-out digit images (`train` | `heldout`: digits never seen in the clips)."""
  source = pipeline.default_source_config(kind="npz")
  source.path = c.demo_data.get_ref("root") + f"/{split}_images.npz"
  return source


def demo_downstream(trainer: str, **model_overrides) -> ml_collections.ConfigDict:
  """A classification config (`linear_probe` | `finetune`) on the demo clips with the encoder of
  configs/demo.py: train on the training clips, evaluate on the validation clips (2 threads
  each) at the end of the run, keep the last 2 checkpoints."""
  from vicmae_jax.trainers import classification

  c = classification.classification_config(trainer)
  c.seed = 0
  c.demo_data = demo_data(enabled=True)
  c.image_size = DEMO_IMAGE_SIZE
  c.model = demo_model(**model_overrides)
  c.data.sources.digits = demo_source(c, "train")
  c.data.crop_scale = (0.3, 1.0)  # digits fill a fraction of a 64 px frame
  c.data.num_threads = 2
  c.eval_data.sources.digits = demo_source(c, "val")
  c.eval_data.num_threads = 2
  c.eval.every_steps = 0
  c.checkpoint.keep = 2
  return c


def shrink_demo(c: ml_collections.ConfigDict, **model_overrides) -> ml_collections.ConfigDict:
  """`:tiny` data and model: 24 training and 12 validation clips, 32 px, the plain mu/8 model."""
  c.demo_data.num_train_clips = 24
  c.demo_data.num_val_clips = 12
  c.image_size = 32
  c.model = config_lib.model_config(variant="mu/8", **model_overrides)
  return c


def shrink_demo_downstream(
  c: ml_collections.ConfigDict, **model_overrides
) -> ml_collections.ConfigDict:
  """`:tiny` of a downstream demo: shrink_demo, then 4 steps (1 warm-up) of batch 8."""
  shrink_demo(c, **model_overrides)
  return run_length(c, batch=8, steps=4, warmup_steps=1, eval_batch=8, ckpt_every=2, log_every=1)
