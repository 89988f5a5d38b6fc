#!/usr/bin/env bash
# Installs the requirements (idempotent) and runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q -r requirements.txt
# One formatter for the whole tree (settings in pyproject.toml).
"$PYTHON" -m ruff format --check --quiet . || { echo "error: files not formatted; run: $PYTHON -m ruff format ." >&2; exit 1; }
export JAX_PLATFORMS=cpu
exec "$PYTHON" -m pytest -q tests "$@"
