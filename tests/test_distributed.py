"""Multi-process start-up: setting resolution (pure) and two real CPU processes joining one job."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from vicmae_jax import distributed, slurm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------
# Node lists and task layouts.


@pytest.mark.parametrize(
  "nodelist, first",
  [
    ("node001", "node001"),
    ("node001,node002", "node001"),
    ("gpu[003-016],login1", "gpu003"),
    ("gpu[007,009-011]", "gpu007"),
    ("rack[1-2]-n[03,07-09]", "rack1-n03"),
    ("a100-[12-13]", "a100-12"),
  ],
)
def test_first_slurm_host(nodelist, first):
  assert slurm.first_host(nodelist) == first


@pytest.mark.parametrize("nodelist", ["node001", "gpu[003-016],login1", "gpu[007,009-011]"])
def test_slurm_coordinator_matches_jax_rule(monkeypatch, nodelist):
  """Our SLURM coordinator equals jax's own detector's, so a mixed setup still agrees."""
  slurm_cluster = pytest.importorskip("jax._src.clusters.slurm_cluster")
  env = {
    "SLURM_JOB_ID": "987654",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_STEP_NODELIST": nodelist,
  }
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
  theirs = slurm_cluster.SlurmCluster.get_coordinator_address(
    timeout_secs=None, override_coordinator_port=None
  )
  plan = distributed.resolve_plan(environ=env, query_tpu_metadata=False)
  assert plan.coordinator_address == theirs
  # Hand computation: 987654 - 241 * 4096 = 518, + 61440.
  assert plan.coordinator_address.endswith(":61958")


def test_expand_tasks_per_node():
  assert slurm.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
  assert slurm.expand_tasks_per_node("8") == [8]
  with pytest.raises(ValueError, match="tasks-per-node"):
    slurm.expand_tasks_per_node("2x3")


def test_bad_nodelist_is_reported():
  with pytest.raises(ValueError, match="node list"):
    slurm.first_host("gpu[001-004")


# ------------------------------------------------------------------------------------------
# Resolution of settings.


def test_single_process_when_nothing_is_set():
  assert distributed.resolve_plan(environ={}, query_tpu_metadata=False) is None
  # One process is a single-process run even when spelled out.
  assert distributed.resolve_plan("h:1", 1, 0, environ={}) is None


def test_explicit_arguments():
  plan = distributed.resolve_plan("10.0.0.1:1234", 4, 3, environ={})
  assert plan.source == "arguments"
  assert plan.jax_kwargs() == {
    "coordinator_address": "10.0.0.1:1234",
    "num_processes": 4,
    "process_id": 3,
    "cluster_detection_method": "deactivate",
  }


def test_environment_variables_and_argument_precedence():
  env = {
    "VICMAE_COORDINATOR": "head:5555",
    "VICMAE_NUM_PROCESSES": "3",
    "VICMAE_PROCESS_ID": "2",
    "VICMAE_LOCAL_DEVICE_IDS": "1,3",
  }
  plan = distributed.resolve_plan(environ=env)
  assert (plan.source, plan.coordinator_address, plan.num_processes, plan.process_id) == (
    "environment",
    "head:5555",
    3,
    2,
  )
  assert plan.local_device_ids == (1, 3)
  assert plan.jax_kwargs()["local_device_ids"] == [1, 3]
  assert "cluster_detection_method" not in plan.jax_kwargs()
  # An explicit argument wins over the variable, field by field.
  plan = distributed.resolve_plan(process_id=0, environ=env)
  assert plan.process_id == 0 and plan.origins["process_id"] == "process_id"
  assert plan.origins["num_processes"] == "VICMAE_NUM_PROCESSES"


@pytest.mark.parametrize(
  "env, message",
  [
    (
      {"VICMAE_COORDINATOR": "h:1", "VICMAE_NUM_PROCESSES": "2", "VICMAE_PROCESS_ID": "2"},
      r"VICMAE_PROCESS_ID=2 must be in \[0, 2\) because VICMAE_NUM_PROCESSES=2",
    ),
    (
      {"VICMAE_COORDINATOR": "h:1", "VICMAE_NUM_PROCESSES": "two", "VICMAE_PROCESS_ID": "0"},
      "VICMAE_NUM_PROCESSES='two' is not an integer",
    ),
    (
      {"VICMAE_COORDINATOR": "head", "VICMAE_NUM_PROCESSES": "2", "VICMAE_PROCESS_ID": "0"},
      "VICMAE_COORDINATOR='head' must look like host:port",
    ),
    (
      {"VICMAE_COORDINATOR": "head:99999", "VICMAE_NUM_PROCESSES": "2", "VICMAE_PROCESS_ID": "0"},
      "outside 1..65535",
    ),
    ({"VICMAE_NUM_PROCESSES": "2", "VICMAE_PROCESS_ID": "0"}, "coordinator_address is not set"),
    ({"VICMAE_COORDINATOR": "h:1", "VICMAE_NUM_PROCESSES": "2"}, "process_id is not set"),
    ({"VICMAE_PROCESS_ID": "1"}, "VICMAE_PROCESS_ID is set but the number of processes is not"),
    (
      {"VICMAE_COORDINATOR": "h:1", "VICMAE_NUM_PROCESSES": "0", "VICMAE_PROCESS_ID": "0"},
      "VICMAE_NUM_PROCESSES=0 must be at least 1",
    ),
    (
      {"VICMAE_NUM_PROCESSES": "1", "VICMAE_PROCESS_ID": "1"},
      r"VICMAE_PROCESS_ID=1 must be in \[0, 1\)",
    ),
    (
      {
        "VICMAE_COORDINATOR": "h:1",
        "VICMAE_NUM_PROCESSES": "2",
        "VICMAE_PROCESS_ID": "0",
        "VICMAE_LOCAL_DEVICE_IDS": "0,x",
      },
      "VICMAE_LOCAL_DEVICE_IDS='x' is not an integer",
    ),
  ],
)
def test_inconsistent_settings_name_the_variable(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.resolve_plan(environ=env, query_tpu_metadata=False)


def test_explicit_argument_error_names_the_argument():
  with pytest.raises(ValueError, match=r"process_id=5 must be in \[0, 4\) because num_processes=4"):
    distributed.resolve_plan("h:1", 4, 5, environ={})


SLURM_8_TASKS_2_NODES = {
  "SLURM_JOB_ID": "12345",
  "SLURM_NTASKS": "8",
  "SLURM_PROCID": "5",
  "SLURM_LOCALID": "1",
  "SLURM_NODEID": "1",
  "SLURM_STEP_NODELIST": "gpu[003-004]",
  "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
}


def test_slurm_one_task_per_gpu():
  plan = distributed.resolve_plan(environ=SLURM_8_TASKS_2_NODES, query_tpu_metadata=False)
  # 12345 % 4096 = 57, + 61440 = 61497.
  assert (plan.source, plan.coordinator_address, plan.num_processes, plan.process_id) == (
    "slurm",
    "gpu003:61497",
    8,
    5,
  )
  assert plan.local_device_ids == (1,)
  # SLURM already bound one GPU to this task: use the one visible GPU, not index 1 of one.
  plan = distributed.resolve_plan(environ={**SLURM_8_TASKS_2_NODES, "CUDA_VISIBLE_DEVICES": "5"})
  assert plan.local_device_ids is None
  assert plan.jax_kwargs()["cluster_detection_method"] == "deactivate"


def test_slurm_one_task_per_node_keeps_every_gpu():
  env = {
    "SLURM_JOB_ID": "7",
    "SLURM_NTASKS": "2",
    "SLURM_NNODES": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    "VICMAE_COORDINATOR_PORT": "23456",
  }
  plan = distributed.resolve_plan(environ=env)
  assert plan.coordinator_address == "n1:23456"
  assert plan.local_device_ids is None
  assert plan.jax_kwargs() == {
    "coordinator_address": "n1:23456",
    "num_processes": 2,
    "process_id": 1,
    "cluster_detection_method": "deactivate",
  }


def test_slurm_single_task_and_missing_node_list():
  single = {
    "SLURM_JOB_ID": "7",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_STEP_NODELIST": "n1",
  }
  assert distributed.resolve_plan(environ=single, query_tpu_metadata=False) is None
  no_list = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}
  with pytest.raises(ValueError, match="SLURM_STEP_NODELIST"):
    distributed.resolve_plan(environ=no_list)
  # VICMAE_* settings (as the sbatch script exports them) fill in what SLURM lacks.
  plan = distributed.resolve_plan(environ={**no_list, "VICMAE_COORDINATOR": "n9:4000"})
  assert plan.coordinator_address == "n9:4000" and plan.process_id == 0 and plan.num_processes == 2


def test_cloud_tpu_multihost_uses_jax_detection():
  plan = distributed.resolve_plan(environ={"TPU_WORKER_HOSTNAMES": "t1-w-0,t1-w-1,t1-w-2,t1-w-3"})
  assert plan.source == "cloud_tpu" and plan.auto_detect and plan.jax_kwargs() == {}
  assert distributed.resolve_plan(environ={"TPU_WORKER_HOSTNAMES": "t1-w-0"}) is None
  assert distributed.resolve_plan(environ={"MEGASCALE_NUM_SLICES": "2"}).auto_detect


def test_initialize_single_process_is_a_no_op(monkeypatch):
  for key in list(os.environ):
    if key.startswith(("VICMAE_", "SLURM_", "TPU_", "MEGASCALE_")):
      monkeypatch.delenv(key)
  assert distributed.initialize() is False
  assert not jax.distributed.is_initialized()
  line = distributed.describe()
  assert f"{jax.device_count()} local / {jax.device_count()} global devices" in line
  assert "process 0 of 1" in line and "platform cpu" in line and "distributed runtime off" in line


def test_initialize_rejects_bad_settings_before_starting(monkeypatch):
  monkeypatch.setenv("VICMAE_COORDINATOR", "localhost:1")
  monkeypatch.setenv("VICMAE_NUM_PROCESSES", "2")
  monkeypatch.setenv("VICMAE_PROCESS_ID", "3")
  with pytest.raises(ValueError, match="VICMAE_PROCESS_ID=3"):
    distributed.initialize()
  assert not jax.distributed.is_initialized()


# ------------------------------------------------------------------------------------------
# Two real processes, 2 fake CPU devices each, one global array.

_WORKER = textwrap.dedent(
  """
    import json, sys
    import numpy as np
    from vicmae_jax import distributed

    mode = sys.argv[1]
    if mode == "arguments":
        joined = distributed.initialize(sys.argv[2], 2, int(sys.argv[3]))
    else:
        joined = distributed.initialize()
    import jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    rows_per_process = 4
    first_row = jax.process_index() * rows_per_process
    # Row r of the global [8, 3] array holds 3r, 3r+1, 3r+2: each process gives its own rows.
    local = np.arange(first_row * 3, (first_row + rows_per_process) * 3, dtype=np.float32).reshape(-1, 3)
    global_array = jax.make_array_from_process_local_data(sharding, local, (8, 3))
    row_weights = jnp.arange(8, dtype=jnp.float32)[:, None]
    total = jax.jit(jnp.sum)(global_array)
    weighted = jax.jit(lambda x: jnp.sum(x * row_weights))(global_array)
    print("RESULT " + json.dumps({
        "joined": joined, "process_index": jax.process_index(), "process_count": jax.process_count(),
        "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "total": float(total), "weighted": float(weighted), "describe": distributed.describe(),
    }), flush=True)
    """
)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _clean_env() -> dict:
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("VICMAE_", "SLURM_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR"))
  }
  env.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    PYTHONPATH=REPO_ROOT + os.pathsep + env.get("PYTHONPATH", ""),
  )
  return env


def _run_pair(commands_and_envs, timeout_s=90):
  procs = [
    subprocess.Popen(
      cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for cmd, env in commands_and_envs
  ]
  results = []
  try:
    for proc in procs:
      output, _ = proc.communicate(timeout=timeout_s)
      assert proc.returncode == 0, output[-3000:]
      line = [l for l in output.splitlines() if l.startswith("RESULT ")][-1]
      results.append(json.loads(line[len("RESULT ") :]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return results


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["arguments", "environment", "slurm"])
def test_two_processes_share_one_global_array(mode):
  port = _free_port()
  jobs = []
  for process_id in range(2):
    env = _clean_env()
    args = [sys.executable, "-c", _WORKER, mode]
    if mode == "arguments":
      args += [f"localhost:{port}", str(process_id)]
    elif mode == "environment":
      env.update(
        VICMAE_COORDINATOR=f"localhost:{port}",
        VICMAE_NUM_PROCESSES="2",
        VICMAE_PROCESS_ID=str(process_id),
      )
    else:
      env.update(
        SLURM_JOB_ID="4242",
        SLURM_NTASKS="2",
        SLURM_NNODES="2",
        SLURM_PROCID=str(process_id),
        SLURM_LOCALID="0",
        SLURM_NODEID=str(process_id),
        SLURM_STEP_NODELIST="localhost",
        VICMAE_COORDINATOR_PORT=str(port),
      )
    jobs.append((args, env))
  results = _run_pair(jobs)

  expected = np.arange(24, dtype=np.float64).reshape(8, 3)
  expected_total = expected.sum()  # 276
  expected_weighted = (expected * np.arange(8)[:, None]).sum()
  assert sorted(r["process_index"] for r in results) == [0, 1]
  for result in results:
    assert result["joined"] is True
    assert result["process_count"] == 2
    assert result["global_devices"] == 4 and result["local_devices"] == 2
    assert result["total"] == expected_total == 276
    assert result["weighted"] == expected_weighted
    assert f"process {result['process_index']} of 2" in result["describe"]
    assert "2 local / 4 global devices" in result["describe"]
    assert "distributed runtime on" in result["describe"]
