r"""Entry point: `python -m vicmae_jax.main --config=configs/<name>.py[:options] --workdir=DIR`.

Overrides use ml_collections syntax: `--config.batch_size=512 --config.model.mask_ratio=0.75`.
`config.trainer` picks the trainer ("pretrain", "linear_probe", "finetune"). Running the same
command again resumes from the newest complete checkpoint in DIR.

Multi-process runs (TPU pod workers, SLURM, several GPU nodes) are detected from the environment,
or set with --coordinator_address / --num_processes / --process_id.

One run per workdir: each process takes `WORKDIR/.lock.p<process index>` (see dirlock.py) before
writing anything; a second run on the same workdir exits at once naming the holder. SIGTERM at
any moment exits 0: in the training loop after saving a checkpoint, before or after it (data
setup, compilation, the final evaluation) at once, since nothing new would be lost.
"""

from __future__ import annotations

import logging as py_logging
import os
import signal
import sys


def _terminate(signum, frame):
  """SIGTERM outside the training loop (whose own handler saves first, then stops): nothing new
  would be lost, so exit 0 at once with one line."""
  workdir = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")), "")
  where = f" in {workdir}" if workdir else ""
  sys.stderr.write(
    f"stopped: SIGTERM outside the training loop; nothing new to save (the newest checkpoint"
    f"{where} is complete, if any). Run the same command again to continue.\n"
  )
  sys.stderr.flush()
  os._exit(0)


if __name__ == "__main__":  # before the heavy imports: a SIGTERM during start-up exits cleanly too
  signal.signal(signal.SIGTERM, _terminate)

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
  """Runs the configured trainer in this process (jax.distributed already initialized).

  Holds the workdir's lock for the whole run (dirlock.LockedError when another run has it).
  """
  import jax
  from vicmae_jax import dirlock

  trainer = get_trainer(config.trainer)
  lock = dirlock.DirLock(workdir, name=f".lock.p{jax.process_index()}", what="workdir")
  with lock:
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
    if not any(p in (record.pathname or "") for p in self._NOISY):
      return True
    if record.levelno < 30:
      return False
    # Their errors are re-raised to us and reported in one line; keep their tracebacks (attached,
    # or formatted into the message) off the console: the first line of the message stays.
    lines = record.getMessage().splitlines()
    record.msg, record.args = (lines[0] if lines else ""), ()
    record.exc_info, record.exc_text = None, None
    return True


def _quiet_library_logs():
  handler = logging.get_absl_handler()
  handler.addFilter(_QuietLibraries())
  py_logging.getLogger().addFilter(_QuietLibraries())
  default_hook = sys.unraisablehook

  def unraisable(info):
    # A failed async save leaves callbacks that fire after their event loop closed; the failure
    # itself is reported once, in one line, so their tracebacks would only bury it.
    if isinstance(info.exc_value, RuntimeError) and "Event loop is closed" in str(info.exc_value):
      return
    default_hook(info)

  sys.unraisablehook = unraisable


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
  from vicmae_jax import host_memory

  host_memory.keep_freed_memory()  # before any thread starts: each keeps its first arena
  cpu_threads = pin_cpu_threads(FLAGS.config)
  from vicmae_jax import distributed

  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  import jax

  _enable_compilation_cache(FLAGS.workdir)
  logging.info("JAX %s: %s", jax.__version__, distributed.describe())
  if cpu_threads:
    logging.info("XLA CPU threads per op: %d (config.cpu_threads)", cpu_threads)
  from vicmae_jax import checkpoint, dirlock
  from vicmae_jax.config_lib import ConfigError
  from vicmae_jax.data.records import DamagedShardError

  try:
    summary = run(FLAGS.config, FLAGS.workdir)
  except (
    ConfigError,
    FileNotFoundError,
    FloatingPointError,
    DamagedShardError,  # a prepared shard or index cut short on disk
    checkpoint.CheckpointError,
    dirlock.LockedError,
  ) as e:
    _fail(str(e))
  logging.info("Done: %s", {k: v for k, v in summary.items() if k != "history"})


def _fail(message: str):
  """One line on stderr (not logged as well: the console would show it twice), exit 2.

  The exit skips interpreter teardown: by now nothing is pending (the loop waited for its saves),
  and a background thread of a failed library (an orbax writer after a full disk, a data worker)
  would otherwise print tracebacks after this line or keep the process alive.
  """
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(2)


def _override_message(argv: list[str], error: Exception) -> str:
  """A rejected `--config.a.b=v` as `--config.a.b: no such field (did you mean a.c?)`."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  specs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  if overrides and specs:
    from vicmae_jax import config_lib

    try:
      base = config_lib.load_config_file(specs[-1])
    except Exception:  # the file itself is broken: the generic message below says so
      base = None
    if base is not None:
      for arg in overrides:
        name = arg.split("=", 1)[0]
        problem = config_lib.unknown_field(base, name[len("--config.") :])
        if problem:
          return f"{name}: {problem}"
  text = str(error.args[0] if getattr(error, "args", None) else error)
  text = text.replace("\\'", "'").replace("\\n", " ").replace("\n", " ").strip("\"' ")
  return f"bad config override: {text}"


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a misspelled or mistyped override becomes a one-line error, not a traceback."""
  try:
    rest = FLAGS(argv)
  except SystemExit as e:  # absl's --help prints the usage, then exits 1: asked for, it is 0
    asked = any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:])
    raise SystemExit(0 if asked else e.code) from None
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    if any(a.startswith("--config.") for a in argv[1:]) and not isinstance(
      e, flags.IllegalFlagValueError
    ):
      _fail(_override_message(argv, e))
    _fail(str(e))
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
  signal.signal(signal.SIGTERM, _terminate)  # the training loop installs its own while it runs
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  entry()
