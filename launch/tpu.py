r"""Cloud TPU VM slices and pods: create, install, run on every worker, follow logs, delete.

Every subcommand prints the gcloud commands it runs; with --dry_run it only prints them (one
command a line, shell-quoted, ready to paste; lines starting with '#' are notes).

    python -m launch.tpu create --project=P --zone=us-central2-b --name=vicmae-v4 \
        --accelerator_type=v4-32 [--queued --spot]
    python -m launch.tpu setup  --project=P --zone=us-central2-b --name=vicmae-v4
    python -m launch.tpu run    --project=P --zone=us-central2-b --name=vicmae-v4 \
        --config=configs/pretrain_vit_b16_k400.py --workdir=gs://bucket/runs/b16 \
        -- --config.total_epochs=10
    python -m launch.tpu logs   --project=P --zone=us-central2-b --name=vicmae-v4 --workdir=gs://bucket/runs/b16
    python -m launch.tpu stop   ... --workdir=gs://bucket/runs/b16
    python -m launch.tpu delete --project=P --zone=us-central2-b --name=vicmae-v4 [--queued]
    python -m launch.tpu up     (create, setup and run in one go; takes the flags of all three)

`run` starts `python -m vicmae_jax.main` on all workers at once (the program joins the slice's
processes itself, through jax's Cloud TPU detection), detached with setsid/nohup so that the ssh
session can end; output goes to ~/vicmae_logs/<run_name>.log on each worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Software images the Cloud TPU docs name for JAX, by TPU generation (accelerator type prefix).
RUNTIME_VERSIONS = {
  "v6e": "v2-alpha-tpuv6e",
  "v5p": "v2-alpha-tpuv5",
  "v5litepod": "v2-alpha-tpuv5-lite",
  "v5e": "v2-alpha-tpuv5-lite",
  "v4": "tpu-ubuntu2204-base",
  "v3": "tpu-ubuntu2204-base",
  "v2": "tpu-ubuntu2204-base",
}

REMOTE_TARBALL = "/tmp/vicmae_jax.tar.gz"
# Left out of the copy sent to the workers: history, caches, local environments and outputs.
PACK_EXCLUDES = (
  ".git",
  ".cache",
  ".pytest_cache",
  "__pycache__",
  "*.pyc",
  ".venv",
  "venv",
  "workdir*",
  "*.egg-info",
)


@dataclasses.dataclass(frozen=True)
class Step:
  """One thing to do: a command to run, or a note (printed only).

  `until_state`: run `argv` again every `poll_s` seconds until it prints that word (polling a
  queued resource until its TPU is ACTIVE).
  """

  argv: tuple[str, ...] = ()
  note: str = ""
  until_state: str = ""
  poll_s: float = 30.0


def parse_accelerator_type(accelerator_type: str) -> tuple[str, int]:
  """'v5litepod-16' -> ('v5litepod', 16); errors name --accelerator_type."""
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type or "")
  if not match or match.group(1) not in RUNTIME_VERSIONS:
    raise ValueError(
      f"--accelerator_type={accelerator_type!r} is not a TPU type such as v4-32, v5litepod-16, "
      f"v5p-64, v6e-8 (known generations: {', '.join(sorted(RUNTIME_VERSIONS))})"
    )
  return match.group(1), int(match.group(2))


def default_runtime_version(accelerator_type: str) -> str:
  return RUNTIME_VERSIONS[parse_accelerator_type(accelerator_type)[0]]


def num_tpu_hosts(accelerator_type: str) -> int:
  """Worker VMs in a slice. v2/v3/v4/v5p count TensorCores (8 per host); v5e/v6e count chips
  (one host up to 8 chips, 4 chips per host in larger slices)."""
  generation, size = parse_accelerator_type(accelerator_type)
  if generation in ("v5litepod", "v5e", "v6e"):
    return 1 if size <= 8 else size // 4
  return max(1, size // 8)


def _remote_path(path: str) -> str:
  """A path on the worker as shell text: relative paths are under $HOME (ssh commands start there,
  but `cd` moves away), absolute ones stay."""
  if path.startswith("/"):
    return shlex.quote(path)
  return '"$HOME"/' + shlex.quote(path.removeprefix("~/"))


def run_name_for(workdir: str) -> str:
  name = os.path.basename(workdir.rstrip("/"))
  return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "run"


class Tpu:
  """gcloud command lines for one TPU (or queued resource) named `name`."""

  def __init__(self, project: str, zone: str, name: str, queued: bool = False):
    self.project, self.zone, self.name, self.queued = project, zone, name, queued

  def _where(self) -> list[str]:
    return [f"--zone={self.zone}", f"--project={self.project}"]

  def ssh(self, command: str, worker: str = "all") -> tuple[str, ...]:
    return (
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      self.name,
      *self._where(),
      f"--worker={worker}",
      f"--command={command}",
    )

  def scp(self, local: str, remote: str, worker: str = "all") -> tuple[str, ...]:
    return (
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      local,
      f"{self.name}:{remote}",
      *self._where(),
      f"--worker={worker}",
    )

  def create(
    self,
    accelerator_type: str,
    runtime_version: str,
    *,
    spot: bool,
    preemptible: bool,
    reserved: bool,
    valid_until: str | None,
  ) -> list[Step]:
    capacity = (["--spot"] if spot else []) + (["--reserved"] if reserved else [])
    if self.queued:
      if preemptible:
        raise ValueError("--preemptible is not offered for queued resources; use --spot")
      argv = [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "create",
        self.name,
        f"--node-id={self.name}",
        *self._where(),
        f"--accelerator-type={accelerator_type}",
        f"--runtime-version={runtime_version}",
        *capacity,
      ]
      if valid_until:
        argv.append(f"--valid-until-duration={valid_until}")
      describe = (
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "describe",
        self.name,
        *self._where(),
        "--format=value(state.state)",
      )
      return [
        Step(tuple(argv)),
        Step(note="repeat the next command until it prints ACTIVE (FAILED or SUSPENDED stop)"),
        Step(describe, until_state="ACTIVE"),
      ]
    if valid_until:
      raise ValueError("--valid_until applies to queued resources only; add --queued")
    argv = [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      self.name,
      *self._where(),
      f"--accelerator-type={accelerator_type}",
      f"--version={runtime_version}",
      *capacity,
    ]
    if preemptible:
      argv.append("--preemptible")
    return [Step(tuple(argv))]

  def delete(self) -> list[Step]:
    if self.queued:
      # --force also deletes the TPU the queued resource holds.
      return [
        Step(
          (
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            self.name,
            *self._where(),
            "--force",
            "--quiet",
          )
        )
      ]
    return [
      Step(("gcloud", "compute", "tpus", "tpu-vm", "delete", self.name, *self._where(), "--quiet"))
    ]

  def describe(self) -> list[Step]:
    kind = "queued-resources" if self.queued else "tpu-vm"
    return [Step(("gcloud", "compute", "tpus", kind, "describe", self.name, *self._where()))]


def setup_steps(
  tpu: Tpu,
  *,
  repo_dir: str,
  remote_dir: str,
  venv: str,
  python_version: str,
  git_url: str | None,
  git_ref: str,
  extra_packages: Sequence[str],
) -> list[Step]:
  """Copies the code to every worker and installs it into a virtual environment there.

  The TPU images ship an older system Python than the package needs, so `uv` provides Python
  `python_version` in the environment.
  """
  steps = []
  remote = _remote_path(remote_dir)
  if git_url:
    fetch = (
      f"if [ -d {remote}/.git ]; then git -C {remote} fetch --quiet origin; "
      f"else git clone --quiet {shlex.quote(git_url)} {remote}; fi && "
      f"git -C {remote} checkout --quiet {shlex.quote(git_ref)}"
    )
  else:
    tarball = os.path.join(tempfile.gettempdir(), f"vicmae_jax-{tpu.name}.tar.gz")
    pack = [
      "tar",
      "-czf",
      tarball,
      *(f"--exclude={pattern}" for pattern in PACK_EXCLUDES),
      "-C",
      repo_dir,
      ".",
    ]
    steps += [Step(tuple(pack)), Step(tpu.scp(tarball, REMOTE_TARBALL))]
    fetch = f"mkdir -p {remote} && tar -xzf {REMOTE_TARBALL} -C {remote}"
  uv = '"$HOME"/.local/bin/uv'
  venv_python = f"{_remote_path(venv)}/bin/python"
  packages = " ".join(shlex.quote(p) for p in ("jax[tpu]", *extra_packages))
  install = " && ".join(
    [
      fetch,
      # pip --user where the system pip allows it, uv's own installer where it does not (PEP 668).
      '{ [ -x "$HOME"/.local/bin/uv ] || python3 -m pip install --quiet --user uv '
      "|| curl -LsSf https://astral.sh/uv/install.sh | sh; }",
      f"{uv} venv --quiet --allow-existing --python {shlex.quote(python_version)} {_remote_path(venv)}",
      f"cd {remote}",
      f"{uv} pip install --quiet --python {venv_python} -r requirements.txt {packages}",
      f"{venv_python} -c 'import jax, vicmae_jax; print(\"jax\", jax.__version__, \"ready\")'",
    ]
  )
  steps.append(Step(tpu.ssh(install)))
  return steps


def training_args(config: str, workdir: str, overrides: Sequence[str]) -> list[str]:
  """Arguments after the Python interpreter of the command every worker runs."""
  return ["-m", "vicmae_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def _run_files(run_name: str) -> str:
  """Shell text that names a run's log and pid files on a worker ($LOG, $PID_FILE)."""
  base = f'"$HOME"/vicmae_logs/{shlex.quote(run_name)}'
  return f"LOG={base}.log; PID_FILE={base}.pid; "


def run_steps(
  tpu: Tpu,
  *,
  config: str,
  workdir: str,
  overrides: Sequence[str],
  run_name: str,
  remote_dir: str,
  venv: str,
  env: Sequence[str],
) -> list[Step]:
  """Starts the training command on all workers, detached, logging to ~/vicmae_logs/<run_name>.log."""
  command = f"{_remote_path(venv)}/bin/python " + shlex.join(
    training_args(config, workdir, overrides)
  )
  # Unbuffered output, so the log shows progress as it happens.
  variables = [("PYTHONUNBUFFERED", "1"), *(_split_env(e) for e in env)]
  exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in variables)
  script = (
    _run_files(run_name)
    + 'mkdir -p "$HOME"/vicmae_logs && cd '
    + _remote_path(remote_dir)
    + " || exit 1; "
    # A previous run still holding the TPU would make this one fail at start-up.
    'if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then '
    f'echo "{run_name} is still running on $(hostname); stop it first" >&2; exit 1; fi; '
    f'{exports}setsid nohup {command} > "$LOG" 2>&1 < /dev/null & echo $! > "$PID_FILE"; '
    f'echo "started {run_name} on $(hostname), log $LOG"'
  )
  return [Step(tpu.ssh(script))]


def logs_steps(tpu: Tpu, *, run_name: str, worker: str, lines: int, follow: bool) -> list[Step]:
  follow_flag = "-F " if follow else ""
  return [
    Step(tpu.ssh(_run_files(run_name) + f'tail -n {int(lines)} {follow_flag}"$LOG"', worker=worker))
  ]


def stop_steps(tpu: Tpu, *, run_name: str) -> list[Step]:
  # The run was started with setsid, so its pid is also its process group: stop the whole group.
  script = _run_files(run_name) + (
    'if [ -f "$PID_FILE" ]; then kill -TERM -- -"$(cat "$PID_FILE")" 2>/dev/null '
    f'&& echo "stopped {run_name} on $(hostname)"; rm -f "$PID_FILE"; fi; true'
  )
  return [Step(tpu.ssh(script))]


def _split_env(text: str) -> tuple[str, str]:
  name, sep, value = text.partition("=")
  if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
    raise ValueError(f"--env={text!r} must look like NAME=VALUE")
  return name, value


# ------------------------------------------------------------------------------------------
# Command line.


def _add_common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--project",
    default=os.environ.get("CLOUDSDK_CORE_PROJECT"),
    help="Google Cloud project (default: $CLOUDSDK_CORE_PROJECT).",
  )
  parser.add_argument(
    "--zone",
    default=os.environ.get("CLOUDSDK_COMPUTE_ZONE"),
    help="zone of the TPU, e.g. us-central2-b (default: $CLOUDSDK_COMPUTE_ZONE).",
  )
  parser.add_argument("--name", help="name of the TPU VM (and of its queued resource).")
  parser.add_argument(
    "--queued",
    action="store_true",
    help="the TPU is (to be) held by a queued resource of the same name.",
  )
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing.")


def _add_create(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--accelerator_type", help="e.g. v4-32, v5litepod-16, v5p-64, v6e-8.")
  parser.add_argument(
    "--runtime_version",
    help="TPU software version (default: the one for JAX on this TPU generation).",
  )
  parser.add_argument("--spot", action="store_true", help="Spot capacity (can be reclaimed).")
  parser.add_argument("--preemptible", action="store_true", help="preemptible TPU VM (not queued).")
  parser.add_argument("--reserved", action="store_true", help="use the project's reservation.")
  parser.add_argument(
    "--valid_until", help="queued only: give up waiting after this long, e.g. 6h."
  )


def _add_setup(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--repo_dir", default=REPO_ROOT, help="local checkout to copy (default: this one)."
  )
  parser.add_argument(
    "--git_url", help="clone this repository on the workers instead of copying the local checkout."
  )
  parser.add_argument("--git_ref", default="main", help="branch, tag or commit with --git_url.")
  parser.add_argument(
    "--python_version", default="3.11", help="Python of the workers' environment."
  )
  parser.add_argument(
    "--extra_package",
    action="append",
    default=[],
    help="one more pip requirement to install (repeatable).",
  )


def _add_paths(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--remote_dir",
    default="vicmae_jax",
    help="code directory on the workers (relative to the home directory unless absolute).",
  )
  parser.add_argument("--venv", default="vicmae_venv", help="virtual environment on the workers.")


def _add_run(parser: argparse.ArgumentParser, *, needs_accelerator: bool) -> None:
  parser.add_argument(
    "--config",
    help="config file in the repository, e.g. configs/pretrain.py (optionally with :arguments).",
  )
  parser.add_argument("--workdir", help="output directory: gs://bucket/path for multi-host slices.")
  parser.add_argument(
    "--run_name", help="names the log and pid files (default: last part of workdir)."
  )
  parser.add_argument(
    "--env",
    action="append",
    default=[],
    help="NAME=VALUE exported before the run on every worker (repeatable).",
  )
  if needs_accelerator:
    parser.add_argument(
      "--accelerator_type", help="used to warn about local workdirs on multi-host slices."
    )


def _add_run_name(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", help="the run's workdir (names its log).")
  parser.add_argument("--run_name", help="the run's name (default: last part of --workdir).")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m launch.tpu",
    description=__doc__.split("\n\n")[0],
    epilog="Training flags for vicmae_jax.main go after '--', e.g. -- --config.total_steps=100.",
  )
  commands = parser.add_subparsers(dest="command", required=True)
  for name, help_text in (
    ("create", "create the TPU VM slice (or a queued resource for it)"),
    ("setup", "copy the code to every worker and install it"),
    ("run", "start training on every worker"),
    ("up", "create + setup + run"),
    ("logs", "print or follow a run's log"),
    ("stop", "stop a run on every worker"),
    ("status", "describe the TPU (or queued resource)"),
    ("delete", "delete the TPU (or queued resource)"),
  ):
    sub = commands.add_parser(name, help=help_text)
    sub.set_defaults(subparser=sub)
    _add_common(sub)
    if name in ("create", "up"):
      _add_create(sub)
    if name in ("setup", "up"):
      _add_setup(sub)
    if name in ("setup", "run", "up"):
      _add_paths(sub)
    if name in ("run", "up"):
      _add_run(sub, needs_accelerator=name == "run")
    if name in ("logs", "stop"):
      _add_run_name(sub)
    if name == "logs":
      sub.add_argument("--worker", default="0", help="worker index, list (0,3) or 'all'.")
      sub.add_argument("--lines", type=int, default=100, help="lines of history to print first.")
      sub.add_argument(
        "--no_follow", action="store_true", help="print and return instead of following."
      )
  return parser


def _require(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
  env_hint = {
    "project": " (or set CLOUDSDK_CORE_PROJECT)",
    "zone": " (or set CLOUDSDK_COMPUTE_ZONE)",
  }
  missing = [n for n in names if not getattr(args, n, None)]
  if missing:
    parser.error(
      ", ".join(f"--{n}" + env_hint.get(n, "") for n in missing) + f" required for '{args.command}'"
    )


def plan(argv: Sequence[str]) -> tuple[list[Step], bool]:
  """Parses the command line into (steps to take, dry run); nothing runs. Bad input exits with
  status 2 and a message naming the flag."""
  argv = list(argv)
  overrides: list[str] = []
  if "--" in argv:
    split = argv.index("--")
    argv, overrides = argv[:split], argv[split + 1 :]
  parser = build_parser()
  args = parser.parse_args(argv)
  args.overrides = overrides
  sub = args.subparser
  _require(sub, args, "project", "zone", "name")
  if overrides and args.command not in ("run", "up"):
    sub.error(f"arguments after '--' are training flags; '{args.command}' takes none")
  for flag in overrides:
    if not flag.startswith("--"):
      sub.error(
        f"training flag {flag!r} after '--' must start with '--', e.g. --config.total_steps=100"
      )
  tpu = Tpu(args.project, args.zone, args.name, queued=args.queued)
  steps: list[Step] = []
  try:
    if args.command in ("run", "up"):
      # Checked first, so that `up` finds a typo before it creates anything.
      _require(sub, args, "config", "workdir")
      steps += _run_warnings(args)
    if args.command in ("create", "up"):
      _require(sub, args, "accelerator_type")
      runtime = args.runtime_version or default_runtime_version(args.accelerator_type)
      if args.spot and args.preemptible:
        raise ValueError("choose one of --spot and --preemptible")
      steps += tpu.create(
        args.accelerator_type,
        runtime,
        spot=args.spot,
        preemptible=args.preemptible,
        reserved=args.reserved,
        valid_until=args.valid_until,
      )
    if args.command in ("setup", "up"):
      if not args.git_url and not os.path.isfile(os.path.join(args.repo_dir, "requirements.txt")):
        raise ValueError(
          f"--repo_dir={args.repo_dir!r} has no requirements.txt; is it the checkout?"
        )
      steps += setup_steps(
        tpu,
        repo_dir=args.repo_dir,
        remote_dir=args.remote_dir,
        venv=args.venv,
        python_version=args.python_version,
        git_url=args.git_url,
        git_ref=args.git_ref,
        extra_packages=args.extra_package,
      )
    if args.command in ("run", "up"):
      run_name = args.run_name or run_name_for(args.workdir)
      steps += run_steps(
        tpu,
        config=args.config,
        workdir=args.workdir,
        overrides=overrides,
        run_name=run_name,
        remote_dir=args.remote_dir,
        venv=args.venv,
        env=args.env,
      )
    if args.command in ("logs", "stop"):
      if not (args.run_name or args.workdir):
        sub.error(f"--workdir or --run_name required for '{args.command}'")
      run_name = args.run_name or run_name_for(args.workdir)
      if args.command == "logs":
        steps += logs_steps(
          tpu, run_name=run_name, worker=args.worker, lines=args.lines, follow=not args.no_follow
        )
      else:
        steps += stop_steps(tpu, run_name=run_name)
    if args.command == "status":
      steps += tpu.describe()
    if args.command == "delete":
      steps += tpu.delete()
  except ValueError as error:
    sub.error(str(error))
  return steps, args.dry_run


def _run_warnings(args: argparse.Namespace) -> list[Step]:
  config_file = args.config.split(":", 1)[0]
  if not config_file.endswith(".py"):
    raise ValueError(
      f"--config={args.config!r} must name a .py config file, e.g. configs/pretrain.py"
    )
  notes = []
  local_config = os.path.join(getattr(args, "repo_dir", REPO_ROOT), config_file)
  if not os.path.isabs(config_file) and not os.path.isfile(local_config):
    notes.append(Step(note=f"warning: {config_file} is not in the local checkout"))
  if args.accelerator_type and not args.workdir.startswith("gs://"):
    hosts = num_tpu_hosts(args.accelerator_type)
    if hosts > 1:
      notes.append(
        Step(
          note=f"warning: {args.accelerator_type} has {hosts} workers and --workdir="
          f"{args.workdir} is on each worker's own disk; checkpoints of a multi-host "
          "run need a shared path such as gs://bucket/dir"
        )
      )
  for text in args.env:
    _split_env(text)
  return notes


def execute(steps: Sequence[Step], dry_run: bool) -> int:
  """Prints (dry run) or runs the steps in order; stops at the first failing command."""
  out = sys.stdout
  for step in steps:
    if step.note:
      print(f"# {step.note}", file=out if dry_run else sys.stderr, flush=True)
      continue
    line = shlex.join(step.argv)
    if dry_run:
      print(line, file=out, flush=True)
      continue
    print(f"+ {line}", file=sys.stderr, flush=True)
    if step.until_state:
      _wait_for_state(step)
      continue
    result = subprocess.run(step.argv, check=False)
    if result.returncode != 0:
      print(f"command failed with exit status {result.returncode}: {line}", file=sys.stderr)
      return result.returncode
  return 0


def _wait_for_state(step: Step) -> None:
  while True:
    state = subprocess.run(step.argv, check=True, capture_output=True, text=True).stdout.strip()
    print(f"  state: {state}", file=sys.stderr, flush=True)
    if state == step.until_state:
      return
    if state in ("FAILED", "SUSPENDED"):
      raise SystemExit(
        f"queued resource reached state {state}; see `gcloud compute tpus "
        "queued-resources describe` for the reason"
      )
    time.sleep(step.poll_s)


def main(argv: Sequence[str] | None = None) -> int:
  steps, dry_run = plan(sys.argv[1:] if argv is None else argv)
  return execute(steps, dry_run)


if __name__ == "__main__":
  sys.exit(main())
