r"""Entry point: `python -m vicmae_jax.main --config=configs/<name>.py[:options] --workdir=DIR`.

Overrides use ml_collections syntax: `--config.batch_size=512 --config.model.mask_ratio=0.75`.
`config.trainer` picks the trainer ("pretrain", "linear_probe", "finetune"). Running the same
command again resumes from the newest complete checkpoint in DIR.

Multi-process runs (TPU pod workers, SLURM, several GPU nodes) are detected from the environment,
or set with --coordinator_address / --num_processes / --process_id.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

# TensorFlow (imported by clu and tensorflow-datasets) is only a helper here: keep its start-up
# chatter off the console unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF computes nothing here; silences its notice

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file, e.g. configs/demo.py or configs/pretrain_k400.py:variant=B/16.",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and logs.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")

TRAINERS = ("pretrain", "linear_probe", "finetune")


def get_trainer(name: str):
  """Imports the trainer lazily so a config error never waits on heavy imports."""
  if name == "pretrain":
    from vicmae_jax.trainers import pretrain

    return pretrain.train
  if name == "linear_probe":
    from vicmae_jax.trainers import linear_probe

    return linear_probe.train
  if name == "finetune":
    from vicmae_jax.trainers import finetune

    return finetune.train
  from vicmae_jax.config_lib import ConfigError, suggest

  raise ConfigError(
    "trainer",
    f"unknown trainer {name!r}{suggest(name, TRAINERS)}; choose one of {', '.join(TRAINERS)}",
  )


def run(config, workdir: str) -> dict:
  """Runs the configured trainer in this process (jax.distributed already initialized)."""
  trainer = get_trainer(config.trainer)
  ensure_demo_data(config)
  return trainer(config, workdir)


def ensure_demo_data(config) -> None:
  """Builds the embedded demo dataset on first use when the config asks for it (`demo_data`).

  Process 0 builds it (idempotent, cached under `demo_data.root`); the others wait.
  """
  if "demo_data" not in config or not config.demo_data.get("enabled", True):
    return
  import jax
  from vicmae_jax.data import demo

  spec = config.demo_data
  root = os.path.expanduser(spec.root)
  if jax.process_index() == 0:
    kwargs = {k: v for k, v in spec.items() if k not in ("root", "enabled")}
    logging.info("Demo dataset: %s", root)
    demo.ensure_demo_dataset(root, **kwargs)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("demo_data_ready")


def _enable_compilation_cache(workdir: str):
  import jax

  cache = os.environ.get(
    "VICMAE_COMPILE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vicmae_jax", "xla")
  )
  try:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except Exception as e:  # the cache only saves time; never fail a run on it
    logging.warning("compilation cache disabled: %s", e)


class _QuietLibraries(py_logging.Filter):
  """Keeps checkpointing/data-library INFO chatter out of the console; warnings still show."""

  _NOISY = ("/orbax/", "/grain/", "/tensorflow/", "/clu/")

  def filter(self, record):
    return record.levelno >= 30 or not any(p in (record.pathname or "") for p in self._NOISY)


def _quiet_library_logs():
  handler = logging.get_absl_handler()
  handler.addFilter(_QuietLibraries())
  py_logging.getLogger().addFilter(_QuietLibraries())


def pin_cpu_threads(config) -> int:
  """Sets the threads XLA's CPU backend splits each op over to `config.cpu_threads` (when the config
  has it and it is > 0); returns the count set, 0 for none. Must run before JAX starts a backend.

  XLA reads the count from the NPROC environment variable, else takes one thread per core it may run
  on. Large reductions (a weight gradient summed over every token of the batch) are split across
  these threads, so their float rounding, and every later step, depend on the count: with it pinned
  a CPU run gives the same numbers on machines with any number of cores.
  """
  threads = int(config.get("cpu_threads", 0) or 0) if "cpu_threads" in config else 0
  if threads > 0:
    os.environ["NPROC"] = str(threads)
  return max(threads, 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  _quiet_library_logs()
  cpu_threads = pin_cpu_threads(FLAGS.config)
  from vicmae_jax import distributed

  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  import jax

  _enable_compilation_cache(FLAGS.workdir)
  logging.info("JAX %s: %s", jax.__version__, distributed.describe())
  if cpu_threads:
    logging.info("XLA CPU threads per op: %d (config.cpu_threads)", cpu_threads)
  config = FLAGS.config
  from vicmae_jax.config_lib import ConfigError

  try:
    summary = run(config, FLAGS.workdir)
  except ConfigError as e:
    _fail(str(e))
  except FileNotFoundError as e:
    _fail(str(e))
  except FloatingPointError as e:
    _fail(str(e))
  logging.info("Done: %s", {k: v for k, v in summary.items() if k != "history"})


def _fail(message: str):
  logging.error("%s", message)
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a misspelled or mistyped override becomes a one-line error, not a traceback."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    key = str(e).strip("\"' ")
    culprits = [
      a
      for a in argv[1:]
      if a.startswith("--config.") and key in a.split("=", 1)[0][len("--config.") :].split(".")
    ]
    where = f" in {' '.join(culprits)}" if culprits else ""
    _fail(
      f"bad config override{where}: unknown field or value {key!r}; check the spelling "
      "against the config file"
    )
  config = FLAGS["config"].value
  if config is None or type(config).__name__ == "_ErrorConfig":
    path = FLAGS["config"].config_filename if FLAGS["config"].present else None
    _fail(
      f"could not load config file {path!r}"
      if path
      else "--config is required, e.g. --config=configs/demo.py"
    )
  if not FLAGS.workdir:
    _fail("--workdir is required")
  return rest


def entry():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  entry()
