"""Launchers: the exact commands of every TPU subcommand and GPU script (dry runs), the remote
shell scripts run locally in a scratch home directory, and errors for missing or bad arguments."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

import pytest

from launch import tpu
from vicmae_jax import distributed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(REPO_ROOT, "launch", "slurm_gpu.sbatch")
MULTINODE = os.path.join(REPO_ROOT, "launch", "multinode_gpu.sh")

WHERE = ["--project=my-proj", "--zone=us-central2-b", "--name=vicmae-v4"]
WHERE_ARGV = ["--zone=us-central2-b", "--project=my-proj"]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
QUEUED_RESOURCES = ["gcloud", "compute", "tpus", "queued-resources"]


def on_the_tpu(prefix, verb, *flags):
  """The gcloud command `prefix verb` on the test TPU, then `flags`."""
  return [*prefix, verb, "vicmae-v4", *WHERE_ARGV, *flags]


SSH = on_the_tpu(TPU_VM, "ssh")
DELETE = on_the_tpu(TPU_VM, "delete", "--quiet")


@pytest.fixture(autouse=True)
def _no_gcloud_defaults(monkeypatch):
  monkeypatch.delenv("CLOUDSDK_CORE_PROJECT", raising=False)
  monkeypatch.delenv("CLOUDSDK_COMPUTE_ZONE", raising=False)


def dry_run(capsys, *argv):
  """Runs `python -m launch.tpu ARGV --dry_run` in-process; returns (commands, notes)."""
  argv = list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  argv = argv[:split] + ["--dry_run"] + argv[split:]
  assert tpu.main(argv) == 0
  lines = capsys.readouterr().out.splitlines()
  commands = [shlex.split(line) for line in lines if not line.startswith("#")]
  notes = [line for line in lines if line.startswith("#")]
  return commands, notes


def remote_script(command):
  """The shell text an ssh command runs on the workers."""
  (flag,) = [a for a in command if a.startswith("--command=")]
  return flag[len("--command=") :]


def run_remotely(command, env):
  """Runs the shell text of an ssh `command` here, as a worker would."""
  return subprocess.run(
    ["bash", "-c", remote_script(command)], env=env, capture_output=True, text=True, timeout=30
  )


def expect_usage_error(capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    tpu.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Cloud TPU: create / delete / status.


def test_create_tpu_vm(capsys):
  commands, _ = dry_run(capsys, "create", *WHERE, "--accelerator_type=v4-32")
  assert commands == [
    on_the_tpu(TPU_VM, "create", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base")
  ]
  commands, _ = dry_run(
    capsys,
    "create",
    *WHERE,
    "--accelerator_type=v5litepod-8",
    "--preemptible",
    "--runtime_version=v2-alpha-tpuv5-lite",
  )
  assert commands[0][-3:] == [
    "--accelerator-type=v5litepod-8",
    "--version=v2-alpha-tpuv5-lite",
    "--preemptible",
  ]


def test_create_queued_resource_waits_for_active(capsys):
  commands, notes = dry_run(
    capsys, "create", *WHERE, "--accelerator_type=v6e-16", "--queued", "--spot", "--valid_until=6h"
  )
  assert commands == [
    [
      *QUEUED_RESOURCES,
      "create",
      "vicmae-v4",
      "--node-id=vicmae-v4",
      *WHERE_ARGV,
      "--accelerator-type=v6e-16",
      "--runtime-version=v2-alpha-tpuv6e",
      "--spot",
      "--valid-until-duration=6h",
    ],
    on_the_tpu(QUEUED_RESOURCES, "describe", "--format=value(state.state)"),
  ]
  assert any("ACTIVE" in note for note in notes)


def test_delete_and_status(capsys):
  commands, _ = dry_run(capsys, "delete", *WHERE)
  assert commands == [DELETE]
  commands, _ = dry_run(capsys, "delete", *WHERE, "--queued")
  assert commands == [on_the_tpu(QUEUED_RESOURCES, "delete", "--force", "--quiet")]
  commands, _ = dry_run(capsys, "status", *WHERE)
  assert commands == [on_the_tpu(TPU_VM, "describe")]


@pytest.mark.parametrize(
  "accelerator, runtime, hosts",
  [
    ("v2-8", "tpu-ubuntu2204-base", 1),
    ("v3-32", "tpu-ubuntu2204-base", 4),
    ("v4-8", "tpu-ubuntu2204-base", 1),
    ("v4-128", "tpu-ubuntu2204-base", 16),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", 1),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", 4),
    ("v5p-64", "v2-alpha-tpuv5", 8),
    ("v6e-8", "v2-alpha-tpuv6e", 1),
    ("v6e-256", "v2-alpha-tpuv6e", 64),
  ],
)
def test_runtime_versions_and_host_counts(accelerator, runtime, hosts):
  assert tpu.default_runtime_version(accelerator) == runtime
  assert tpu.num_tpu_hosts(accelerator) == hosts


# ------------------------------------------------------------------------------------------
# Cloud TPU: setup.


def test_setup_copies_the_checkout_and_installs_on_every_worker(capsys, monkeypatch, tmp_path):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  commands, _ = dry_run(capsys, "setup", *WHERE)
  pack, copy, install = commands
  tarball = str(tmp_path / "vicmae_jax-vicmae-v4.tar.gz")
  assert pack[:3] == ["tar", "-czf", tarball] and pack[-3:] == ["-C", REPO_ROOT, "."]
  assert copy == [
    *TPU_VM,
    "scp",
    tarball,
    "vicmae-v4:/tmp/vicmae_jax.tar.gz",
    *WHERE_ARGV,
    "--worker=all",
  ]
  assert install[:-1] == [*SSH, "--worker=all"]
  script = remote_script(install)
  assert 'tar -xzf /tmp/vicmae_jax.tar.gz -C "$HOME"/vicmae_jax' in script
  assert "--python 3.11" in script
  assert "-r requirements.txt 'jax[tpu]'" in script

  # The pack command itself, run for real: code and requirements in, history and caches out.
  subprocess.run(pack, check=True, cwd=REPO_ROOT)
  with tarfile.open(tarball) as archive:
    names = set(archive.getnames())
  assert {"./requirements.txt", "./vicmae_jax/distributed.py", "./launch/tpu.py"} <= names
  assert not any(n.startswith("./.git/") or "__pycache__" in n or n.endswith(".pyc") for n in names)


def test_setup_from_git(capsys):
  commands, _ = dry_run(
    capsys,
    "setup",
    *WHERE,
    "--git_url=https://example.com/vicmae_jax.git",
    "--git_ref=v1.0",
    "--python_version=3.12",
    "--extra_package=wandb",
  )
  (install,) = commands
  script = remote_script(install)
  assert "git clone --quiet https://example.com/vicmae_jax.git" in script
  assert "checkout --quiet v1.0" in script
  assert "--python 3.12" in script and "'jax[tpu]' wandb" in script


# ------------------------------------------------------------------------------------------
# Cloud TPU: run, logs, stop.

RUN = ["run", *WHERE, "--config=configs/pretrain.py", "--workdir=gs://bucket/runs/b16"]


def test_run_starts_the_main_command_on_all_workers(capsys):
  commands, _ = dry_run(
    capsys,
    *RUN,
    "--env=XLA_FLAGS=--xla_dump_to=/tmp/dump",
    "--",
    "--config.total_steps=100",
    "--config.model.variant=B/16",
  )
  (command,) = commands
  assert command[:-1] == [*SSH, "--worker=all"]
  script = remote_script(command)
  assert (
    '"$HOME"/vicmae_venv/bin/python -m vicmae_jax.main --config=configs/pretrain.py '
    "--workdir=gs://bucket/runs/b16 --config.total_steps=100 --config.model.variant=B/16"
  ) in script
  assert "export XLA_FLAGS=--xla_dump_to=/tmp/dump;" in script
  assert 'LOG="$HOME"/vicmae_logs/b16.log' in script
  assert "setsid nohup" in script


def test_run_warns_about_local_workdir_on_multihost(capsys):
  _, notes = dry_run(
    capsys,
    "run",
    *WHERE,
    "--config=configs/pretrain.py",
    "--workdir=/tmp/run1",
    "--accelerator_type=v4-32",
  )
  assert any("v4-32 has 4 workers" in n for n in notes)
  _, notes = dry_run(capsys, *RUN, "--accelerator_type=v4-32")
  assert not any("workers" in n for n in notes)


def test_logs_and_stop_commands(capsys):
  commands, _ = dry_run(capsys, "logs", *WHERE, "--workdir=gs://bucket/runs/b16")
  (command,) = commands
  assert command[:-1] == [*SSH, "--worker=0"]
  assert remote_script(command).endswith('tail -n 100 -F "$LOG"')
  commands, _ = dry_run(
    capsys, "logs", *WHERE, "--run_name=b16", "--worker=all", "--lines=5", "--no_follow"
  )
  assert commands[0][-2] == "--worker=all" and remote_script(commands[0]).endswith(
    'tail -n 5 "$LOG"'
  )
  commands, _ = dry_run(capsys, "stop", *WHERE, "--workdir=gs://bucket/runs/b16")
  assert commands[0][-2] == "--worker=all" and "kill -TERM" in remote_script(commands[0])


def _worker_home(tmp_path):
  """A scratch home directory laid out like a worker after `setup`."""
  home = tmp_path / "home"
  (home / "vicmae_venv" / "bin").mkdir(parents=True)
  # A wrapper, not a symlink: a symlink to a virtualenv's python loses the virtualenv.
  python = home / "vicmae_venv" / "bin" / "python"
  python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  python.chmod(0o755)
  os.symlink(REPO_ROOT, home / "vicmae_jax")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("VICMAE_", "SLURM_"))}
  env.update(HOME=str(home), JAX_PLATFORMS="cpu")
  return home, env


def _wait_for(predicate, timeout_s=30.0):
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.1)
  return False


def test_run_logs_stop_scripts_work_on_a_worker(capsys, tmp_path):
  """The remote scripts, run by bash in a scratch home: the run starts detached and logs what the
  real entry point prints; logs prints it; a live run blocks a second start; stop ends it."""
  home, env = _worker_home(tmp_path)
  commands, _ = dry_run(
    capsys, "run", *WHERE, "--config=configs/does_not_exist.py", "--workdir=/tmp/w/run7"
  )
  started = run_remotely(commands[0], env)
  assert started.returncode == 0, started.stderr
  assert "started run7" in started.stdout
  log = home / "vicmae_logs" / "run7.log"
  assert _wait_for(lambda: "does_not_exist.py" in log.read_text())

  commands, _ = dry_run(capsys, "logs", *WHERE, "--run_name=run7", "--no_follow")
  printed = run_remotely(commands[0], env)
  assert printed.returncode == 0 and "could not load config file" in printed.stdout

  # A long-lived process group standing for a run in progress.
  sleeper = subprocess.Popen(["setsid", "sleep", "60"])
  try:
    (home / "vicmae_logs" / "run7.pid").write_text(f"{sleeper.pid}\n")
    commands, _ = dry_run(
      capsys, "run", *WHERE, "--config=configs/does_not_exist.py", "--workdir=/tmp/w/run7"
    )
    blocked = run_remotely(commands[0], env)
    assert blocked.returncode == 1 and "still running" in blocked.stderr
    commands, _ = dry_run(capsys, "stop", *WHERE, "--run_name=run7")
    stopped = run_remotely(commands[0], env)
    assert stopped.returncode == 0 and "stopped run7" in stopped.stdout
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert not (home / "vicmae_logs" / "run7.pid").exists()
  finally:
    if sleeper.poll() is None:
      sleeper.kill()
      sleeper.wait()


def test_up_creates_then_sets_up_then_runs(capsys):
  commands, _ = dry_run(
    capsys,
    "up",
    *WHERE,
    "--accelerator_type=v5litepod-16",
    "--queued",
    "--config=configs/pretrain.py",
    "--workdir=gs://bucket/runs/b16",
  )
  steps = [c[:5] for c in commands]
  assert steps == [
    [*QUEUED_RESOURCES, "create"],
    [*QUEUED_RESOURCES, "describe"],
    ["tar", "-czf", commands[2][2], "--exclude=.git", "--exclude=.cache"],
    [*TPU_VM, "scp"],
    [*TPU_VM, "ssh"],
    [*TPU_VM, "ssh"],
  ]
  assert "uv pip install" in remote_script(commands[4])
  assert "-m vicmae_jax.main --config=configs/pretrain.py" in remote_script(commands[5])


def test_module_entry_point():
  result = subprocess.run(
    [sys.executable, "-m", "launch.tpu", "delete", *WHERE, "--dry_run"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  assert shlex.split(result.stdout) == DELETE


@pytest.mark.parametrize(
  "argv, message",
  [
    (
      ["create", "--zone=z", "--name=n", "--accelerator_type=v4-8"],
      "--project (or set CLOUDSDK_CORE_PROJECT)",
    ),
    (["delete", "--project=p", "--name=n"], "--zone (or set CLOUDSDK_COMPUTE_ZONE)"),
    (["status", "--project=p", "--zone=z"], "--name required for 'status'"),
    (["create", *WHERE], "--accelerator_type required for 'create'"),
    (["create", *WHERE, "--accelerator_type=v9-8"], "--accelerator_type='v9-8' is not a TPU type"),
    (
      ["create", *WHERE, "--accelerator_type=tpu32"],
      "--accelerator_type='tpu32' is not a TPU type",
    ),
    (
      ["create", *WHERE, "--accelerator_type=v4-8", "--spot", "--preemptible"],
      "one of --spot and --preemptible",
    ),
    (["create", *WHERE, "--accelerator_type=v4-8", "--valid_until=1h"], "add --queued"),
    (["create", *WHERE, "--accelerator_type=v4-8", "--queued", "--preemptible"], "use --spot"),
    (["run", *WHERE, "--workdir=gs://b/r"], "--config required for 'run'"),
    (["run", *WHERE, "--config=configs/pretrain.py"], "--workdir required for 'run'"),
    (
      ["run", *WHERE, "--config=configs/pretrain", "--workdir=gs://b/r"],
      "must name a .py config file",
    ),
    ([*RUN, "--env=1BAD=x"], "--env='1BAD=x' must look like NAME=VALUE"),
    ([*RUN, "--", "config.total_steps=1"], "must start with '--'"),
    (["delete", *WHERE, "--", "--config.x=1"], "'delete' takes none"),
    (["logs", *WHERE], "--workdir or --run_name required for 'logs'"),
    (["setup", *WHERE, "--repo_dir=/nonexistent"], "has no requirements.txt"),
    (["up", *WHERE, "--accelerator_type=v4-8", "--workdir=gs://b/r"], "--config required for 'up'"),
    ([], "required: command"),
  ],
)
def test_tpu_errors(capsys, argv, message):
  expect_usage_error(capsys, argv, message)


# ------------------------------------------------------------------------------------------
# SLURM.


def _script_env(**extra):
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("VICMAE_", "SLURM_", "NODE_RANK", "NUM_NODES", "MASTER_", "DRY_RUN"))
  }
  env.update(extra)
  return env


def _run_script(path, args, env, cwd=None):
  return subprocess.run(
    ["bash", path, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
  )


SLURM_JOB = dict(
  SLURM_JOB_ID="12345",
  SLURM_JOB_NODELIST="gpu[003-004]",
  SLURM_NTASKS="16",
  SLURM_SUBMIT_DIR=REPO_ROOT,
)


@pytest.fixture
def no_scontrol():
  if shutil.which("scontrol"):
    pytest.skip("a real scontrol would answer for these made-up SLURM jobs")


def test_sbatch_dry_run_prints_env_and_srun(no_scontrol, tmp_path):
  result = _run_script(
    SBATCH,
    ["--config=configs/pretrain.py", "--workdir=/shared/my runs/b16", "--config.total_steps=100"],
    _script_env(DRY_RUN="1", **SLURM_JOB),
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr
  cd, coordinator, count, srun = [shlex.split(line) for line in result.stdout.splitlines()]
  assert cd == ["cd", REPO_ROOT]
  # 12345 % 4096 = 57, + 61440 = 61497: the port jax's own SLURM detection would pick.
  assert coordinator == ["export", "VICMAE_COORDINATOR=gpu003:61497"]
  assert count == ["export", "VICMAE_NUM_PROCESSES=16"]
  assert srun == [
    "srun",
    "--kill-on-bad-exit=1",
    "python3",
    "-m",
    "vicmae_jax.main",
    "--config=configs/pretrain.py",
    "--workdir=/shared/my runs/b16",
    "--config.total_steps=100",
  ]

  # Each srun task (one per GPU: 8 per node) adds its own SLURM_* variables; the start-up code
  # turns them and the exported ones into this task's settings.
  task_env = {
    "VICMAE_COORDINATOR": "gpu003:61497",
    "VICMAE_NUM_PROCESSES": "16",
    **SLURM_JOB,
    "SLURM_PROCID": "13",
    "SLURM_LOCALID": "5",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NODELIST": "gpu[003-004]",
    "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
  }
  plan = distributed.resolve_plan(environ=task_env)
  assert (plan.coordinator_address, plan.num_processes, plan.process_id, plan.local_device_ids) == (
    "gpu003:61497",
    16,
    13,
    (5,),
  )


def test_sbatch_flags_port_and_python(no_scontrol):
  result = _run_script(
    SBATCH,
    [
      "--config",
      "configs/pretrain.py",
      "--workdir",
      "gs://b/r",
      "--dry_run",
      f"--python={sys.executable}",
    ],
    _script_env(VICMAE_COORDINATOR_PORT="23456", **SLURM_JOB),
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[1] == "export VICMAE_COORDINATOR=gpu003:23456"
  assert shlex.split(lines[3])[2:5] == [sys.executable, "-m", "vicmae_jax.main"]
  # The interpreter also reads the node list (no scontrol here): a broken one is reported.
  result = _run_script(
    SBATCH,
    [
      "--config=configs/pretrain.py",
      "--workdir=gs://b/r",
      "--dry_run",
      "--python=/nonexistent/python",
    ],
    _script_env(**SLURM_JOB),
  )
  assert result.returncode == 2 and "cannot read the first node of 'gpu[003-004]'" in result.stderr


@pytest.mark.parametrize(
  "args, env, message",
  [
    (["--workdir=/w"], SLURM_JOB, "--config is required"),
    (["--config=configs/pretrain.py"], SLURM_JOB, "--workdir is required"),
    (
      ["--config=configs/pretrain.py", "--workdir=/w"],
      {},
      "SLURM_JOB_ID is not set: submit this script with sbatch",
    ),
    (
      ["--config=configs/pretrain.py", "--workdir=/w"],
      {**SLURM_JOB, "SLURM_NTASKS": ""},
      "SLURM_NTASKS is not set",
    ),
    (
      ["--config=configs/pretrain.py", "--workdir=/w", "stray"],
      SLURM_JOB,
      "unexpected argument 'stray'",
    ),
    (
      ["--config=configs/pretrain.py", "--workdir=/w"],
      {**SLURM_JOB, "SLURM_SUBMIT_DIR": "/"},
      "is not the repository root",
    ),
  ],
)
def test_sbatch_errors(args, env, message):
  result = _run_script(SBATCH, args, _script_env(DRY_RUN="1", **env))
  assert result.returncode == 2
  assert message in result.stderr


# ------------------------------------------------------------------------------------------
# Plain multi-node GPU.


def test_multinode_one_process_per_node():
  result = _run_script(
    MULTINODE,
    [
      "--config=configs/pretrain.py",
      "--workdir=/shared/runs/b16",
      "--dry_run",
      "--config.total_steps=100",
    ],
    _script_env(NODE_RANK="1", NUM_NODES="2", MASTER_ADDR="10.0.0.1", MASTER_PORT="12355"),
  )
  assert result.returncode == 0, result.stderr
  cd, command = [shlex.split(line) for line in result.stdout.splitlines()]
  assert cd == ["cd", REPO_ROOT]
  assert command == [
    "env",
    "VICMAE_COORDINATOR=10.0.0.1:12355",
    "VICMAE_NUM_PROCESSES=2",
    "VICMAE_PROCESS_ID=1",
    "python3",
    "-m",
    "vicmae_jax.main",
    "--config=configs/pretrain.py",
    "--workdir=/shared/runs/b16",
    "--config.total_steps=100",
  ]
  env = dict(a.split("=", 1) for a in command[1:4])
  plan = distributed.resolve_plan(environ=env)
  assert (plan.source, plan.coordinator_address, plan.num_processes, plan.process_id) == (
    "environment",
    "10.0.0.1:12355",
    2,
    1,
  )


def test_multinode_one_process_per_gpu_with_flags():
  result = _run_script(
    MULTINODE,
    [
      "--config=configs/pretrain.py",
      "--workdir=gs://b/r",
      "--procs_per_node=4",
      "--node_rank=1",
      "--num_nodes=3",
      "--master_addr=head",
      "--python=/venv/python",
    ],
    _script_env(DRY_RUN="1"),
  )
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.splitlines()[1:]]
  assert len(commands) == 4
  for local_rank, command in enumerate(commands):
    assert command[:5] == [
      "env",
      "VICMAE_COORDINATOR=head:29500",
      "VICMAE_NUM_PROCESSES=12",
      f"VICMAE_PROCESS_ID={4 + local_rank}",
      f"VICMAE_LOCAL_DEVICE_IDS={local_rank}",
    ]
    assert command[5:] == [
      "/venv/python",
      "-m",
      "vicmae_jax.main",
      "--config=configs/pretrain.py",
      "--workdir=gs://b/r",
    ]
    plan = distributed.resolve_plan(environ=dict(a.split("=", 1) for a in command[1:5]))
    assert plan.process_id == 4 + local_rank and plan.local_device_ids == (local_rank,)


def test_multinode_failure_of_one_process_fails_the_node(tmp_path):
  """Real run, two processes per node, through the real entry point: a config that does not exist
  makes one exit with an error, the script stops the other and reports the failure instead of
  hanging."""
  result = _run_script(
    MULTINODE,
    [
      "--config=configs/does_not_exist.py",
      f"--workdir={tmp_path}/run",
      "--procs_per_node=2",
      f"--python={sys.executable}",
    ],
    _script_env(NODE_RANK="0", NUM_NODES="1", MASTER_ADDR="localhost", JAX_PLATFORMS="cpu"),
  )
  assert result.returncode != 0
  # The first process to fail makes the script stop the other: that one has either reached the
  # same error already or ends on the SIGTERM with its own one line.
  failed = result.stderr.count("error: could not load config file")
  stopped = result.stderr.count("stopped: SIGTERM outside the training loop")
  assert failed >= 1 and failed + stopped == 2, result.stderr[-2000:]


@pytest.mark.parametrize(
  "env, args, message",
  [
    (dict(NUM_NODES="2", MASTER_ADDR="h"), [], "NODE_RANK is not set"),
    (dict(NODE_RANK="0", MASTER_ADDR="h"), [], "NUM_NODES is not set"),
    (dict(NODE_RANK="0", NUM_NODES="2"), [], "MASTER_ADDR is not set"),
    (
      dict(NODE_RANK="2", NUM_NODES="2", MASTER_ADDR="h"),
      [],
      "NODE_RANK=2 must be smaller than NUM_NODES=2",
    ),
    (dict(NODE_RANK="x", NUM_NODES="2", MASTER_ADDR="h"), [], "NODE_RANK='x' must be an integer"),
    (
      dict(NODE_RANK="0", NUM_NODES="2", MASTER_ADDR="h", MASTER_PORT="70000"),
      [],
      "MASTER_PORT='70000'",
    ),
    (
      dict(NODE_RANK="0", NUM_NODES="2", MASTER_ADDR="h"),
      ["--procs_per_node=0"],
      "--procs_per_node='0'",
    ),
  ],
)
def test_multinode_errors(env, args, message):
  result = _run_script(
    MULTINODE,
    ["--config=configs/pretrain.py", "--workdir=/w", "--dry_run", *args],
    _script_env(**env),
  )
  assert result.returncode == 2
  assert message in result.stderr


def test_multinode_requires_config_and_workdir():
  env = _script_env(NODE_RANK="0", NUM_NODES="1", MASTER_ADDR="h")
  assert "--config is required" in _run_script(MULTINODE, ["--workdir=/w", "--dry_run"], env).stderr
  assert (
    "--workdir is required" in _run_script(MULTINODE, ["--config=c.py", "--dry_run"], env).stderr
  )


def test_scripts_are_valid_bash():
  for path in (SBATCH, MULTINODE):
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    assert os.access(path, os.X_OK)
    with open(path) as script:
      assert re.match(r"#!/bin/bash\n", script.read())
