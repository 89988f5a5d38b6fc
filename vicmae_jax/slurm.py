"""SLURM's variables, read into the settings of a multi-process run (used by distributed.py).

Inside an `srun` step with more than one task: the process count (`SLURM_STEP_NUM_TASKS` /
`SLURM_NTASKS`), the coordinator (the first host of the node list, port `VICMAE_COORDINATOR_PORT` /
`JAX_COORDINATOR_PORT` or derived from `SLURM_JOB_ID` by jax's own rule), and the GPUs of this
task: every visible one when one task owns the node, else the one at `SLURM_LOCALID` (unless SLURM
already bound one GPU per task).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ENV_COORDINATOR_PORT = "VICMAE_COORDINATOR_PORT"


def first_host(nodelist: str) -> str:
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


def expand_tasks_per_node(spec: str) -> list[int]:
  """'2(x3),1' -> [2, 2, 2, 1] (the SLURM_TASKS_PER_NODE format)."""
  counts = []
  for part in spec.split(","):
    match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if not match:
      raise ValueError(f"cannot read SLURM tasks-per-node {spec!r}")
    counts.extend([int(match.group(1))] * int(match.group(2) or 1))
  return counts


def parse_int(text: str, origin: str) -> int:
  try:
    return int(str(text).strip())
  except ValueError:
    raise ValueError(f"{origin}={text!r} is not an integer") from None


def is_active(env: Mapping[str, str]) -> bool:
  """True inside an srun step of a job with more than one task."""
  if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
    return False
  tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
  return tasks is not None and parse_int(tasks, "SLURM_NTASKS") > 1


def num_processes(env: Mapping[str, str]) -> tuple[int, str]:
  name = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
  return parse_int(env[name], name), name


def coordinator(env: Mapping[str, str]) -> tuple[str, str]:
  for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
    if env.get(name):
      nodelist_name = name
      break
  else:
    raise ValueError(
      "SLURM_NTASKS > 1 but no node list: SLURM_STEP_NODELIST (set by srun) is missing; "
      "start the program with srun, or set VICMAE_COORDINATOR"
    )
  host = first_host(env[nodelist_name])
  for port_name in (ENV_COORDINATOR_PORT, "JAX_COORDINATOR_PORT"):
    if env.get(port_name):
      port = parse_int(env[port_name], port_name)
      return f"{host}:{port}", f"{nodelist_name} + {port_name}"
  # Same rule as jax's SLURM detector: a port in the top 4096 ports, fixed per job.
  port = parse_int(env["SLURM_JOB_ID"], "SLURM_JOB_ID") % 4096 + 65536 - 4096
  return f"{host}:{port}", f"{nodelist_name} + SLURM_JOB_ID"


def tasks_on_this_node(env: Mapping[str, str]) -> int | None:
  spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  node_id = env.get("SLURM_NODEID")
  if spec and node_id is not None:
    counts = expand_tasks_per_node(spec)
    index = parse_int(node_id, "SLURM_NODEID")
    if 0 <= index < len(counts):
      return counts[index]
  tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
  nodes = (
    env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
  )
  if tasks and nodes and parse_int(tasks, "SLURM_NTASKS") == parse_int(nodes, "SLURM_NNODES"):
    return 1
  return None


def local_device_ids(env: Mapping[str, str]) -> tuple[int, ...] | None:
  """GPUs this task should use, or None for every visible one.

  One task on the node owns all its GPUs. With several tasks per node, each takes the GPU at
  index SLURM_LOCALID of the visible ones, unless SLURM already bound one GPU per task
  (`--gpus-per-task=1`), in which case the single visible GPU is the right one.
  """
  tasks_here = tasks_on_this_node(env)
  if tasks_here is None or tasks_here <= 1 or "SLURM_LOCALID" not in env:
    return None
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if len(visible) == 1:
    return None
  return (parse_int(env["SLURM_LOCALID"], "SLURM_LOCALID"),)
