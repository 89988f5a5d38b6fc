#!/usr/bin/env bash
# One accelerator check of the whole pretraining path, about 8 minutes on one GPU:
#
#   bash benchmarks/device_check.sh OUTDIR
#
# Writes into OUTDIR one JSON file and one log per section, summary.json (every section's rows and
# its exit status) and summary.txt (the same as text):
#   step_b16      benchmarks/step.py, B/16 batch 256, bf16 matmuls, attention xla/cudnn, activation
#                 dtype float32/bfloat16 (pairs/s, MFU, peak memory, XLA's bytes and FLOPs)
#   step_l16      the same for L/16 batch 128
#   official      benchmarks/compare_official.py (ours against the official PyTorch model in one
#                 process: B/16 on the GPU, each in its own recipe) when torch and timm import and OFFICIAL_REPO names a
#                 clone of the official repository; skipped otherwise (stated in the summary)
#   input         benchmarks/input_pipeline.py, the loader with 1/4/8/16 worker processes where the
#                 script takes --workers, else its default rows
#   throughput    benchmarks/train_throughput.py: step alone, loader alone, the real loop (ratios)
#
# Runs from the working tree with the installed packages and no network. WHEELS=DIR installs the
# wheels in DIR first (pip --no-index), e.g. torch and timm for the official section.
# DEVICE_CHECK_SIZE=tiny runs every section at toy sizes (the CPU fallback the tests run end to
# end); without a GPU, cudnn attention is left out. Each section has its own time limit
# (SECTION_TIMEOUT_S, default below), so one that hangs or runs out of memory does not stop the rest.
set -uo pipefail

OUT="${1:?usage: benchmarks/device_check.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SIZE="${DEVICE_CHECK_SIZE:-full}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 PIP_NO_INDEX=1

if [[ -n "${WHEELS:-}" && -d "${WHEELS}" ]]; then
  "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl \
    >"$OUT/wheels.log" 2>&1 || echo "warning: installing the wheels of $WHEELS failed (see wheels.log)"
fi

PLATFORM="$("$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none)"
ATTN="xla,cudnn"
[[ "$PLATFORM" == "gpu" ]] || ATTN="xla"
WORK="${DEVICE_CHECK_WORKDIR:-$OUT/work}"
mkdir -p "$WORK"

if [[ "$SIZE" == "tiny" ]]; then
  STEP_B16=(--variant=mu/8 --image_size=32 --batch=8 --steps=2 --warmup=1)
  STEP_L16=(--variant=mu/8 --image_size=32 --batch=4 --steps=2 --warmup=1)
  OFFICIAL=(--image_size=32 --batch=4 --embed_dim=64 --depth=2 --decoder_depth=1 --warmup=1
    --steps=1 --repeats=1)
  INPUT=(--num_videos=2 --seconds=0.5 --repeats=1)
  WORKERS="1,2"
  THROUGHPUT=(--variant=mu/8 --image_size=32 --batch=8 --steps=3 --warmup=1 --repeats=1
    --num_videos=2 --loader_seconds=0.5)
  T_STEP=300 T_OFFICIAL=300 T_INPUT=300 T_THROUGHPUT=300
else
  STEP_B16=(--variant=B/16 --batch=256 --steps=5 --warmup=1)
  STEP_L16=(--variant=L/16 --batch=128 --steps=5 --warmup=1)
  # B/16 at 224 px, both sides on the GPU in their own recipes (official: fp16 autocast +
  # GradScaler; ours: bfloat16), batch 128 so that both fit in one process.
  OFFICIAL=(--device=gpu --image_size=224 --patch_size=16 --embed_dim=768 --depth=12 --num_heads=12
    --decoder_embed_dim=512 --decoder_depth=8 --decoder_num_heads=16 --batch=128 --warmup=2
    --steps=3 --repeats=3)
  INPUT=(--seconds=1 --repeats=1)
  WORKERS="1,4,8,16"
  THROUGHPUT=(--variant=B/16 --batch=256 --steps=10 --warmup=2 --repeats=2 --worker_count=16
    --loader_seconds=3)
  T_STEP=130 T_OFFICIAL=150 T_INPUT=60 T_THROUGHPUT=120
fi
T="${SECTION_TIMEOUT_S:-}"

declare -A STATUS
run() {  # run NAME TIMEOUT CMD...: output in NAME.log, exit status in STATUS[NAME]
  local name="$1" limit="${T:-$2}"
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  STATUS[$name]=$?
  echo "   exit ${STATUS[$name]} after $((SECONDS - start)) s"
}

STEP_COMMON=(--dtype=bfloat16 --activation_dtype=float32,bfloat16 --attention_impl="$ATTN")
run step_b16 "$((2 * T_STEP))" "$PYTHON" benchmarks/step.py "${STEP_B16[@]}" "${STEP_COMMON[@]}" \
  --json_out="$OUT/step_b16.json"
run step_l16 "$T_STEP" "$PYTHON" benchmarks/step.py "${STEP_L16[@]}" --dtype=bfloat16 \
  --activation_dtype=bfloat16 --attention_impl="$ATTN" --json_out="$OUT/step_l16.json"

if [[ -n "${OFFICIAL_REPO:-}" && -d "${OFFICIAL_REPO}" ]] && "$PYTHON" -c 'import torch, timm' 2>/dev/null; then
  run official "$T_OFFICIAL" "$PYTHON" benchmarks/compare_official.py \
    --official_repo="$OFFICIAL_REPO" "${OFFICIAL[@]}" --json_out="$OUT/official.json"
else
  STATUS[official]=skipped
  echo "official comparison skipped: needs torch and timm installed and OFFICIAL_REPO=<clone>" \
    >"$OUT/official.log"
fi

if "$PYTHON" benchmarks/input_pipeline.py --help 2>/dev/null | grep -q -- "--workers"; then
  INPUT+=(--workers="$WORKERS")
fi
run input "$T_INPUT" "$PYTHON" benchmarks/input_pipeline.py --workdir="$WORK/input" "${INPUT[@]}" \
  --json_out="$OUT/input.json"
run throughput "$T_THROUGHPUT" "$PYTHON" benchmarks/train_throughput.py "${THROUGHPUT[@]}" \
  --dtype=bfloat16 --activation_dtype=bfloat16 --workdir="$WORK/throughput" \
  --json_out="$OUT/throughput.json"

STATUS_JSON="{"
for name in step_b16 step_l16 official input throughput; do
  STATUS_JSON+="\"$name\": \"${STATUS[$name]:-not run}\","
done
STATUS_JSON="${STATUS_JSON%,}}"
"$PYTHON" - "$OUT" "$SIZE" "$PLATFORM" "$STATUS_JSON" <<'EOF'
import json, os, sys

out, size, platform, status = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
summary = {"size": size, "platform": platform, "status": status, "sections": {}}
lines = [f"device check ({size} sizes, {platform})"]
for name in status:
  path = os.path.join(out, f"{name}.json")
  data = None
  if os.path.isfile(path):
    with open(path) as f:
      data = json.load(f)
  summary["sections"][name] = data
  lines.append(f"\n[{name}] exit {status[name]}")
  if name.startswith("step") and data:
    for r in data:
      if "error" in r:
        lines.append(f"  {r.get('variant')} batch {r.get('batch')}: {r['error']}")
        continue
      mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
      lines.append(
        f"  {r['variant']} batch {r['batch']} act {r['activation_dtype']} attn {r['attention_impl']}:"
        f" {r['pairs_per_s']:.1f} pairs/s, MFU {mfu}, {r['peak_mem_gib']:.1f} GiB,"
        f" XLA {r['xla_bytes_per_step'] / 1e9:.1f} GB/step"
      )
  elif name == "throughput" and data:
    for row, value in data["ratios"].items():
      lines.append(f"  {row}: {value:.3f}")
    lines.append(f"  loop overhead: {data['loop_overhead']:+.1%} of step time")
  elif data is not None:
    lines.append("  " + json.dumps(data.get("ratios", data) if isinstance(data, dict) else data)[:2000])
  else:
    log = os.path.join(out, f"{name}.log")
    if os.path.isfile(log):
      with open(log) as f:
        tail = f.read().strip().splitlines()[-3:]
      lines.extend("  " + t for t in tail)
with open(os.path.join(out, "summary.json"), "w") as f:
  json.dump(summary, f, indent=2)
with open(os.path.join(out, "summary.txt"), "w") as f:
  f.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
