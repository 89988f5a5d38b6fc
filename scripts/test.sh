#!/usr/bin/env bash
# Installs the requirements (idempotent) and runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q -r requirements.txt
export JAX_PLATFORMS=cpu
exec "$PYTHON" -m pytest -q tests "$@"
