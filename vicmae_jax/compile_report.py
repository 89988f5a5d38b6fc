r"""Compile the train step for a config ahead of time and report its memory, before any data is read.

  python3 -m vicmae_jax.compile_report --config=configs/pretrain_k400.py --config.mesh.fsdp=8

Uses the devices of this machine (or fake CPU devices:
XLA_FLAGS=--xla_force_host_platform_device_count=N to check a mesh's sharding on a laptop; the
memory numbers are then those of the CPU compiler). Prints per-device argument/temporary/peak
bytes from XLA's memory analysis, parameter and optimizer sizes, compile time and analytic FLOPs.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("json_out", None, "Also write the report as JSON here.")


def _gib(n):
  return f"{n / 2**30:.3f} GiB"


def main(argv):
  del argv
  from vicmae_jax import config_lib
  from vicmae_jax.trainers import pretrain

  config = FLAGS.config
  if config.trainer != "pretrain":
    raise app.UsageError(f"compile_report supports trainer 'pretrain', got {config.trainer!r}")
  try:
    report = pretrain.compile_report(config)
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for key, value in report.items():
    shown = (
      _gib(value) if key.endswith("bytes_per_device") or key.endswith("bytes_total") else value
    )
    print(f"{key:32s} {shown}")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  app.run(main)
