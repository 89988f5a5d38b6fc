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
process uses follow the task layout (see `slurm.local_device_ids`).

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

from vicmae_jax import slurm

ENV_COORDINATOR = "VICMAE_COORDINATOR"
ENV_NUM_PROCESSES = "VICMAE_NUM_PROCESSES"
ENV_PROCESS_ID = "VICMAE_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "VICMAE_LOCAL_DEVICE_IDS"
ENV_COORDINATOR_PORT = slurm.ENV_COORDINATOR_PORT

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


def _parse_device_ids(value, origin: str) -> tuple[int, ...]:
  if isinstance(value, int):
    return (value,)
  if isinstance(value, str):
    parts = [p for p in value.replace(" ", "").split(",") if p]
    if not parts:
      raise ValueError(f"{origin}={value!r} lists no device ids")
    return tuple(slurm.parse_int(p, origin) for p in parts)
  return tuple(slurm.parse_int(v, origin) for v in value)


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
    and slurm.parse_int(env["MEGASCALE_NUM_SLICES"], "MEGASCALE_NUM_SLICES") > 1
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

  if slurm.is_active(env):
    tasks, tasks_name = slurm.num_processes(env)
    offer("num_processes", tasks, tasks_name)
    offer("process_id", env["SLURM_PROCID"], "SLURM_PROCID")
    if "coordinator_address" not in values:
      address, origin = slurm.coordinator(env)
      offer("coordinator_address", address, origin)
    offer("local_device_ids", slurm.local_device_ids(env), "SLURM_LOCALID")

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

  count = slurm.parse_int(values["num_processes"], origins["num_processes"])
  if count < 1:
    raise ValueError(f"{origins['num_processes']}={count} must be at least 1")
  index = None
  if "process_id" in values:
    index = slurm.parse_int(values["process_id"], origins["process_id"])
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
    print(slurm.first_host(argv[1]))
    return 0
  print("usage: python -m vicmae_jax.distributed first-host NODELIST", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
