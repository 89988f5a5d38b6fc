#!/bin/bash
# Multi-node GPU training without a scheduler: run this on every node, with the same settings
# except NODE_RANK (0 on the node whose address is MASTER_ADDR).
#
#   NODE_RANK=0 NUM_NODES=2 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 \
#     launch/multinode_gpu.sh --config=configs/pretrain_vit_b16_k400.py --workdir=/shared/runs/b16 \
#     [--procs_per_node=1] [--python=python3] [--dry_run] [--config.total_epochs=10 ...]
#
# The variables can also be given as flags: --node_rank, --num_nodes, --master_addr, --master_port.
# One process per node (the default) owns every GPU of the node; --procs_per_node=8 starts one
# process per GPU instead (process id NODE_RANK * 8 + local rank, GPU = local rank).
# Each process gets VICMAE_COORDINATOR, VICMAE_NUM_PROCESSES, VICMAE_PROCESS_ID (and
# VICMAE_LOCAL_DEVICE_IDS with several processes per node), read by vicmae_jax.distributed.
# Install with `pip install -r requirements.txt "jax[cuda12]"`. The workdir must be shared.
# --dry_run (or DRY_RUN=1) prints the commands instead of running them.

set -euo pipefail

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

die() {
  echo "multinode_gpu.sh: error: $*" >&2
  exit 2
}

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }

CONFIG=""
WORKDIR=""
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"
PROCS_PER_NODE=1
NODE_RANK="${NODE_RANK:-}"
NUM_NODES="${NUM_NODES:-}"
MASTER_ADDR="${MASTER_ADDR:-}"
MASTER_PORT="${MASTER_PORT:-29500}"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --config) [[ $# -ge 2 ]] || die "--config needs a value"; CONFIG="$2"; shift ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --workdir) [[ $# -ge 2 ]] || die "--workdir needs a value"; WORKDIR="$2"; shift ;;
    --python=*) PYTHON="${1#*=}" ;;
    --procs_per_node=*) PROCS_PER_NODE="${1#*=}" ;;
    --node_rank=*) NODE_RANK="${1#*=}" ;;
    --num_nodes=*) NUM_NODES="${1#*=}" ;;
    --master_addr=*) MASTER_ADDR="${1#*=}" ;;
    --master_port=*) MASTER_PORT="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --*) EXTRA+=("$1") ;;
    *) die "unexpected argument '$1' (training flags look like --config.key=value)" ;;
  esac
  shift
done

[[ -n "$CONFIG" ]] || die "--config is required (e.g. --config=configs/pretrain_vit_b16_k400.py)"
[[ -n "$WORKDIR" ]] || die "--workdir is required (a directory every node can reach, or gs://...)"
[[ -n "$NUM_NODES" ]] || die "NUM_NODES is not set (or pass --num_nodes)"
[[ -n "$NODE_RANK" ]] || die "NODE_RANK is not set (or pass --node_rank)"
[[ -n "$MASTER_ADDR" ]] || die "MASTER_ADDR is not set (address of the NODE_RANK=0 node, or pass --master_addr)"
is_int "$NUM_NODES" && (( NUM_NODES >= 1 )) || die "NUM_NODES='$NUM_NODES' must be a positive integer"
is_int "$NODE_RANK" || die "NODE_RANK='$NODE_RANK' must be an integer"
(( NODE_RANK < NUM_NODES )) || die "NODE_RANK=$NODE_RANK must be smaller than NUM_NODES=$NUM_NODES"
is_int "$MASTER_PORT" && (( MASTER_PORT >= 1 && MASTER_PORT <= 65535 )) || die "MASTER_PORT='$MASTER_PORT' must be a port number"
is_int "$PROCS_PER_NODE" && (( PROCS_PER_NODE >= 1 )) || die "--procs_per_node='$PROCS_PER_NODE' must be a positive integer"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

NUM_PROCESSES=$(( NUM_NODES * PROCS_PER_NODE ))
TRAIN=("$PYTHON" -m vicmae_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")

command_for() {  # local rank -> the full command (env ... python ...) in the array COMMAND
  local local_rank="$1"
  COMMAND=(env "VICMAE_COORDINATOR=${MASTER_ADDR}:${MASTER_PORT}" "VICMAE_NUM_PROCESSES=$NUM_PROCESSES"
           "VICMAE_PROCESS_ID=$(( NODE_RANK * PROCS_PER_NODE + local_rank ))")
  if (( PROCS_PER_NODE > 1 )); then
    COMMAND+=("VICMAE_LOCAL_DEVICE_IDS=$local_rank")
  fi
  COMMAND+=("${TRAIN[@]}")
}

if [[ "$DRY_RUN" == "1" ]]; then
  echo "cd $(printf '%q' "$(pwd)")"
  for (( rank = 0; rank < PROCS_PER_NODE; rank++ )); do
    command_for "$rank"
    printf '%q ' "${COMMAND[@]}"
    echo
  done
  exit 0
fi

if (( PROCS_PER_NODE == 1 )); then
  command_for 0
  exec "${COMMAND[@]}"
fi

# Several processes: start all, stop the rest as soon as one fails (the job cannot go on without it).
PIDS=()
for (( rank = 0; rank < PROCS_PER_NODE; rank++ )); do
  command_for "$rank"
  "${COMMAND[@]}" &
  PIDS+=("$!")
done
trap 'kill "${PIDS[@]}" 2>/dev/null || true' INT TERM
STATUS=0
for (( remaining = PROCS_PER_NODE; remaining > 0; remaining-- )); do
  if ! wait -n; then
    STATUS=1
    kill "${PIDS[@]}" 2>/dev/null || true
  fi
done
exit "$STATUS"
