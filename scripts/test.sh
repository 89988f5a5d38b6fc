#!/usr/bin/env bash
# Installs the requirements (idempotent) and runs the whole test suite on CPU; then the tests of the
# optional extras (apache-beam, wandb) in an environment of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q -r requirements.txt
# One formatter for the whole tree (settings in pyproject.toml).
"$PYTHON" -m ruff format --check --quiet . || { echo "error: files not formatted; run: $PYTHON -m ruff format ." >&2; exit 1; }
export JAX_PLATFORMS=cpu
status=0
"$PYTHON" -m pytest -q tests "$@" || status=$?
# The beam and wandb extras, as pyproject.toml names them. apache-beam caps protobuf (< 7), pillow
# (< 13) and pyarrow (< 26) below what the stack installs, so beside it pip would downgrade them: a
# venv that sees this environment's packages takes only the extras and their pins, and the suite
# above keeps the stack's own versions.
EXTRAS_VENV="${EXTRAS_VENV:-.venv-extras}"
[ -x "$EXTRAS_VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$EXTRAS_VENV"
EXTRAS=$("$PYTHON" -c 'import tomllib; e = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(" ".join(e["beam"] + e["wandb"]))')
# shellcheck disable=SC2086
"$EXTRAS_VENV/bin/python" -m pip install -q $EXTRAS
"$EXTRAS_VENV/bin/python" -m pytest -q tests/test_prepare_beam.py tests/test_wandb.py "$@" || status=$?
exit "$status"
