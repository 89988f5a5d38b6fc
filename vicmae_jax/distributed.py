"""Multi-process JAX start-up for TPU pods, SLURM clusters and plain multi-node GPU jobs.

`initialize` is called once, early in `vicmae_jax.main`, before anything touches a jax backend. It
decides whether this run is one of several processes and, if so, calls `jax.distributed.initialize`.
Each setting is taken from the first place that has it:

1. explicit arguments (the `--coordinator_address`, `--num_processes`, `--process_id` flags);
2. the variables set by `launch/multinode_gpu.sh` and `launch/slurm_gpu.sbatch`:
   `VICMAE_COORDINATOR` (host:port), `VICMAE_NUM_PROCESSES`, `VICMAE_PROCESS_ID`,
   `VICMAE_LOCAL_DEVICE_IDS` (comma separated, optional);
3. SLURM, inside an `srun` step with more than one task: `SLURM_NTASKS`, `SLURM_PROCID`, the first
   host of `SLURM_STEP_NODELIST`, port `VICMAE_COORDINATOR_PORT` / `JAX_COORDINATOR_PORT` or one
   derived from `SLURM_JOB_ID` (the same rule jax uses, so both agree);
4. a multi-host Cloud TPU slice: jax's own cluster detection (VM metadata, `TPU_WORKER_HOSTNAMES`).

Why not jax's SLURM detector: it pins every process to the single GPU numbered `SLURM_LOCALID`,
which leaves 7 of 8 GPUs idle when one task per node owns the whole node, and picks the wrong GPU
when SLURM has already bound one GPU per task through `CUDA_VISIBLE_DEVICES`. Here the GPUs a
process uses follow the task layout (see `_slurm_local_device_ids`).

A run that finds no multi-process setting stays single-process and `initialize` returns False.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import urllib.request
from collections.abc import Mapping, Sequence

import jax

ENV_COORDINATOR = "VICMAE_COORDINATOR"
ENV_NUM_PROCESSES = "VICMAE_NUM_PROCESSES"
ENV_PROCESS_ID = "VICMAE_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "VICMAE_LOCAL_DEVICE_IDS"
ENV_COORDINATOR_PORT = "VICMAE_COORDINATOR_PORT"

_TPU_METADATA_URL = (
  "http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"
)


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
  """How this process joins a multi-process job.

  `origins` maps each setting to where it came from (an argument or variable name), so start-up
  logs and errors can point at the place to fix. With `auto_detect`, jax finds every setting
  itself (Cloud TPU) and the value fields are None.
  """

  source: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  auto_detect: bool = False
  origins: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def jax_kwargs(self) -> dict:
    """Keyword arguments for `jax.distributed.initialize`."""
    if self.auto_detect:
      return {}
    kwargs = {
      "coordinator_address": self.coordinator_address,
      "num_processes": self.num_processes,
      "process_id": self.process_id,
    }
    if self.local_device_ids is not None:
      kwargs["local_device_ids"] = list(self.local_device_ids)
    else:
      # Every setting is known; without this jax's own cluster detection would still run to
      # fill `local_device_ids` and, under SLURM, hide all but one GPU of the node.
      kwargs["cluster_detection_method"] = "deactivate"
    return kwargs


# --------------------------------------------------------------------------------------------
# Parsing helpers (pure, shared with the launch scripts).


def parse_coordinator(address: str, origin: str) -> tuple[str, int]:
  """Splits "host:port" (or "[ipv6]:port") and checks the port; errors name `origin`."""
  match = re.fullmatch(r"(\[[^\]]+\]|[^:\s]+):(\d+)", address.strip())
  if not match:
    raise ValueError(f"{origin}={address!r} must look like host:port, e.g. 10.0.0.1:12355")
  port = int(match.group(2))
  if not 0 < port < 65536:
    raise ValueError(f"{origin}={address!r}: port {port} is outside 1..65535")
  return match.group(1), port


def first_slurm_host(nodelist: str) -> str:
  """First host name of a SLURM node list.

  Handles 'node001', 'node001,node002', 'node[001-016],gpu7', 'rack[1-2]-n[03,07-09]'
  (every bracket group takes its first entry: 'rack1-n03').
  """
  nodelist = nodelist.strip()
  if not nodelist:
    raise ValueError("SLURM node list is empty")
  host, depth, group = [], 0, []
  for char in nodelist:
    if char == "[":
      depth += 1
      group = []
    elif char == "]":
      depth -= 1
      first = "".join(group).split(",")[0].split("-")[0]
      host.append(first)
    elif depth > 0:
      group.append(char)
    elif char == ",":
      break
    else:
      host.append(char)
  if depth != 0 or not host:
    raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
  return "".join(host)


def expand_slurm_tasks_per_node(spec: str) -> list[int]:
  """'2(x3),1' -> [2, 2, 2, 1] (the SLURM_TASKS_PER_NODE format)."""
  counts = []
  for part in spec.split(","):
    match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if not match:
      raise ValueError(f"cannot read SLURM tasks-per-node {spec!r}")
    counts.extend([int(match.group(1))] * int(match.group(2) or 1))
  return counts


def _parse_int(text: str, origin: str) -> int:
  try:
    return int(str(text).strip())
  except ValueError:
    raise ValueError(f"{origin}={text!r} is not an integer") from None


def _parse_device_ids(value, origin: str) -> tuple[int, ...]:
  if isinstance(value, int):
    return (value,)
  if isinstance(value, str):
    parts = [p for p in value.replace(" ", "").split(",") if p]
    if not parts:
      raise ValueError(f"{origin}={value!r} lists no device ids")
    return tuple(_parse_int(p, origin) for p in parts)
  return tuple(_parse_int(v, origin) for v in value)


# --------------------------------------------------------------------------------------------
# SLURM.


def _slurm_active(env: Mapping[str, str]) -> bool:
  """True inside an srun step of a job with more than one task."""
  if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
    return False
  tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
  return tasks is not None and _parse_int(tasks, "SLURM_NTASKS") > 1


def _slurm_num_processes(env: Mapping[str, str]) -> tuple[int, str]:
  name = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
  return _parse_int(env[name], name), name


def _slurm_coordinator(env: Mapping[str, str]) -> tuple[str, str]:
  for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
    if env.get(name):
      nodelist_name = name
      break
  else:
    raise ValueError(
      "SLURM_NTASKS > 1 but no node list: SLURM_STEP_NODELIST (set by srun) is missing; "
      "start the program with srun, or set VICMAE_COORDINATOR"
    )
  host = first_slurm_host(env[nodelist_name])
  for port_name in (ENV_COORDINATOR_PORT, "JAX_COORDINATOR_PORT"):
    if env.get(port_name):
      port = _parse_int(env[port_name], port_name)
      return f"{host}:{port}", f"{nodelist_name} + {port_name}"
  # Same rule as jax's SLURM detector: a port in the top 4096 ports, fixed per job.
  port = _parse_int(env["SLURM_JOB_ID"], "SLURM_JOB_ID") % 4096 + 65536 - 4096
  return f"{host}:{port}", f"{nodelist_name} + SLURM_JOB_ID"


def _slurm_tasks_on_this_node(env: Mapping[str, str]) -> int | None:
  spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  node_id = env.get("SLURM_NODEID")
  if spec and node_id is not None:
    counts = expand_slurm_tasks_per_node(spec)
    index = _parse_int(node_id, "SLURM_NODEID")
    if 0 <= index < len(counts):
      return counts[index]
  tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
  nodes = (
    env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
  )
  if tasks and nodes and _parse_int(tasks, "SLURM_NTASKS") == _parse_int(nodes, "SLURM_NNODES"):
    return 1
  return None


def _slurm_local_device_ids(env: Mapping[str, str]) -> tuple[int, ...] | None:
  """GPUs this task should use, or None for every visible one.

  One task on the node owns all its GPUs. With several tasks per node, each takes the GPU at
  index SLURM_LOCALID of the visible ones, unless SLURM already bound one GPU per task
  (`--gpus-per-task=1`), in which case the single visible GPU is the right one.
  """
  tasks_here = _slurm_tasks_on_this_node(env)
  if tasks_here is None or tasks_here <= 1 or "SLURM_LOCALID" not in env:
    return None
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if len(visible) == 1:
    return None
  return (_parse_int(env["SLURM_LOCALID"], "SLURM_LOCALID"),)


# --------------------------------------------------------------------------------------------
# Cloud TPU.


def _on_cloud_tpu_vm() -> bool:
  # jax sets this flag at import when libtpu and TPU chips are present; reading it avoids
  # probing PCI devices a second time.
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top

    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))
  except ImportError:
    return False


def _tpu_hosts_from_metadata(timeout_s: float = 5.0) -> int | None:
  request = urllib.request.Request(_TPU_METADATA_URL, headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      endpoints = response.read().decode().strip()
  except OSError as error:
    logging.warning("Cloud TPU metadata server not reachable (%s); assuming one host", error)
    return None
  return len([e for e in endpoints.split(",") if e])


def cloud_tpu_multihost(env: Mapping[str, str], *, query_metadata: bool = True) -> bool:
  """True on a Cloud TPU slice with more than one host (one process per host)."""
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  if hosts:
    return len([h for h in hosts.split(",") if h.strip()]) > 1
  if (
    env.get("MEGASCALE_NUM_SLICES")
    and _parse_int(env["MEGASCALE_NUM_SLICES"], "MEGASCALE_NUM_SLICES") > 1
  ):
    return True
  if not query_metadata or env.get("TPU_SKIP_MDS_QUERY") or not _on_cloud_tpu_vm():
    return False
  num_hosts = _tpu_hosts_from_metadata()
  return num_hosts is not None and num_hosts > 1


# --------------------------------------------------------------------------------------------
# Resolution and start-up.


def resolve_plan(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: int | Sequence[int] | str | None = None,
  *,
  environ: Mapping[str, str] | None = None,
  query_tpu_metadata: bool = True,
) -> DistributedPlan | None:
  """Works out how to join a multi-process job; None for a single-process run.

  Raises ValueError, naming the argument or variable, for settings that contradict each other.
  """
  env = os.environ if environ is None else environ
  values: dict[str, object] = {}
  origins: dict[str, str] = {}

  def offer(field: str, value, origin: str) -> None:
    if field not in values and value is not None and value != "":
      values[field] = value
      origins[field] = origin

  offer("coordinator_address", coordinator_address, "coordinator_address")
  offer("num_processes", num_processes, "num_processes")
  offer("process_id", process_id, "process_id")
  offer("local_device_ids", local_device_ids, "local_device_ids")
  offer("coordinator_address", env.get(ENV_COORDINATOR), ENV_COORDINATOR)
  offer("num_processes", env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
  offer("process_id", env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
  offer("local_device_ids", env.get(ENV_LOCAL_DEVICE_IDS), ENV_LOCAL_DEVICE_IDS)

  if _slurm_active(env):
    tasks, tasks_name = _slurm_num_processes(env)
    offer("num_processes", tasks, tasks_name)
    offer("process_id", env["SLURM_PROCID"], "SLURM_PROCID")
    if "coordinator_address" not in values:
      address, origin = _slurm_coordinator(env)
      offer("coordinator_address", address, origin)
    offer("local_device_ids", _slurm_local_device_ids(env), "SLURM_LOCALID")

  if "num_processes" not in values:
    for field in ("coordinator_address", "process_id"):
      if field in values:
        raise ValueError(
          f"{origins[field]} is set but the number of processes is not: pass "
          f"--num_processes or set {ENV_NUM_PROCESSES}"
        )
    if cloud_tpu_multihost(env, query_metadata=query_tpu_metadata):
      return DistributedPlan(source="cloud_tpu", auto_detect=True)
    return None

  count = _parse_int(values["num_processes"], origins["num_processes"])
  if count < 1:
    raise ValueError(f"{origins['num_processes']}={count} must be at least 1")
  index = None
  if "process_id" in values:
    index = _parse_int(values["process_id"], origins["process_id"])
    if not 0 <= index < count:
      raise ValueError(
        f"{origins['process_id']}={index} must be in [0, {count}) because "
        f"{origins['num_processes']}={count}"
      )
  if count == 1:
    return None
  for field, hint in (("coordinator_address", ENV_COORDINATOR), ("process_id", ENV_PROCESS_ID)):
    if field not in values:
      raise ValueError(
        f"{origins['num_processes']}={count} but {field} is not set: pass --{field} or set {hint}"
      )
  address = str(values["coordinator_address"]).strip()
  parse_coordinator(address, origins["coordinator_address"])
  device_ids = None
  if "local_device_ids" in values:
    device_ids = _parse_device_ids(values["local_device_ids"], origins["local_device_ids"])
    if any(d < 0 for d in device_ids):
      raise ValueError(f"{origins['local_device_ids']}={device_ids} has a negative device id")
  sources = {o.split(" ")[0] for o in origins.values()}
  if any(o.startswith("SLURM") for o in sources):
    source = "slurm"
  elif any(o.startswith("VICMAE_") for o in sources):
    source = "environment"
  else:
    source = "arguments"
  return DistributedPlan(
    source=source,
    coordinator_address=address,
    num_processes=count,
    process_id=index,
    local_device_ids=device_ids,
    origins=dict(origins),
  )


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: int | Sequence[int] | None = None,
  *,
  initialization_timeout: int = 300,
) -> bool:
  """Starts jax's distributed runtime when this run is one of several processes.

  Must run before any jax computation or device query. Returns True when this process is part
  of a multi-process job (also when an earlier call already joined it), False for a single
  process, where nothing is done.
  """
  if jax.distributed.is_initialized():
    return True
  plan = resolve_plan(coordinator_address, num_processes, process_id, local_device_ids)
  if plan is None:
    return False
  if plan.auto_detect:
    logging.info("Joining a multi-host Cloud TPU job (settings found by jax).")
  else:
    logging.info(
      "Joining a %d-process job as process %d, coordinator %s (%s).",
      plan.num_processes,
      plan.process_id,
      plan.coordinator_address,
      ", ".join(f"{k} from {v}" for k, v in plan.origins.items()),
    )
  jax.distributed.initialize(initialization_timeout=initialization_timeout, **plan.jax_kwargs())
  return True


def describe() -> str:
  """One line for the start-up log: process index/count, devices, platform."""
  devices = jax.local_devices()
  kind = devices[0].device_kind if devices else "none"
  return (
    f"process {jax.process_index()} of {jax.process_count()}; "
    f"{jax.local_device_count()} local / {jax.device_count()} global devices; "
    f"platform {jax.default_backend()} ({kind}); "
    f"distributed runtime {'on' if jax.distributed.is_initialized() else 'off'}"
  )


def _main(argv: Sequence[str]) -> int:
  """`python -m vicmae_jax.distributed first-host NODELIST` for the SLURM script."""
  if len(argv) == 2 and argv[0] == "first-host":
    print(first_slurm_host(argv[1]))
    return 0
  print("usage: python -m vicmae_jax.distributed first-host NODELIST", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
