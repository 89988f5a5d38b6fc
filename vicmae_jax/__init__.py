"""vicmae_jax: ViC-MAE (contrastive masked autoencoders) pretraining and evaluation in JAX/Flax.

Commands (pyproject.toml): vicmae-train (main.py), vicmae-prepare, vicmae-convert, vicmae-export.
Layout, from the entry point down (each module's docstring says its one job):

  main.py           `python -m vicmae_jax.main --config=... --workdir=...`: flags, the workdir lock,
                    one-line errors; dispatches on config.trainer
  trainers/         pretrain.py, linear_probe.py, finetune.py (+ classification.py, their shared
                    core); common.py: sharded state, the resume order, the one training loop
  evaluators/       plug-ins run by the loop (common.py: the protocol and registry; frozen.py: kNN
                    and linear probe of the frozen encoder; attentive.py: the attentive probe;
                    classification.py: top-1 / top-5)
  models/           layers.py, block_stack.py (block stacks; EncoderDims and StackSettings, what
                    every model takes), vit.py (encoder with masking), vicmae.py (encoder, decoder,
                    projector), video.py, classifier.py, attentive.py, variants.py, param_tree.py
  losses.py         norm-pix reconstruction, global NT-Xent, classification targets and mixing
  optim             optimizers, schedules, weight-decay masks, layer-wise decay, LARS
  data/             prepare (videos -> shards; prepare_beam.py on Apache Beam), records (the shard
                    format), sources, sampling, augmentation, grain pipelines (pretraining pairs,
                    clips, classification loaders, cached features) and their worker processes
                    (workers.py), mixup, the embedded demo dataset
  checkpoint.py     the orbax manager: save, restore the newest step that loads, save failures
  weights.py        another run's (or the official code's) weights into each model layout
  convert/          official PyTorch checkpoints <-> ours, torch-free
  export.py         `vicmae-export`: the encoder as safetensors + config + model card for timm / the Hub
  config_lib.py     config schema pieces, validation, option parsing, loading config files
  metrics.py        clu writers, metrics.jsonl, progress, event counts; flops.py: FLOPs and MFU;
                    wandb_writer.py: the optional W&B writer (config.log.wandb)
  sharding.py       mesh and logical-axis rules; distributed.py: multi-process start-up (slurm.py:
                    SLURM's variables)
  dirlock.py        one writer per directory (workdir, prepare output)
"""

__version__ = "0.1.0"
