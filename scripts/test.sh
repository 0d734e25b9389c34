#!/usr/bin/env bash
# Set up (idempotent), then lint, type-check and run every test against a real
# mosquitto and the real built model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
. .venv/bin/activate
echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy (strict)"
mypy
echo "==> pytest"
pytest "$@"
