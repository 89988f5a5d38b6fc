"""Data: preparing videos into shards, reading sources, sampling frame pairs, augmenting, grain pipelines.

  records.py    one clip = one msgpack record (JPEG frames + timestamps)
  video_io.py   PyAV probing, fixed-rate reading, seeking to given times
  formats.py    Kinetics / Moments in Time / Something-Something / folder listings
  prepare.py    raw videos -> ArrayRecord shards: the driver, its summary, the CLI
                (python -m vicmae_jax.data.prepare)
  shard_writer.py  one shard: video -> JPEG clip, shard + index + state json, resuming a written one
  shard_files.py  a prepared folder's names: shards, per-writer temporaries, state json, the lock
  shard_check.py  shard sizes and sha256 recorded when written, checking them, --verify
  prepare_workers.py  worker processes that end with their parent (prctl, parent watch), the pool
  demo.py       the self-building moving-digits demo dataset
  sources.py    grain data sources: build_source from the config; names every source kind
  source_base.py  what every source shares: Source, Skipped, SkipLog, decode_image
  video_sources.py  prepared clips (ArrayRecord shards) and raw videos, their clip lengths
  image_sources.py  TFDS image datasets, image folders, npz image arrays
  finetune_augment.py  RandAugment, random erasing, mixup / cutmix for fine-tuning
  sampling.py   frame pairs a set time apart, clip windows; per-example random generators
  image_codec.py  image decoding (libjpeg-turbo, OpenCV, Pillow) and the numpy pixel kernels
  augment_spec.py  the op registry, spec strings ("decode|flip|..."), composing ops into a view
  augment.py    the named image ops and the views built from them (the ViC-MAE two-view recipe)
  data_config.py  the data config: schema, defaults, validation (frame gap vs. clip lengths)
  examples.py   the example makers: pretraining pairs, training clips, evaluation rows
  stream.py     the global stream: epoch orders, each process's rows, worker order, to_global
  pipeline.py   make_pretrain_loader / make_eval_loader / make_clip_loader, build_sources, Loader
  classification.py  labeled loaders for the classification trainers (images, clips, features)

Modules are imported directly (`from vicmae_jax.data import pipeline`) so that importing the package
stays cheap.
"""
