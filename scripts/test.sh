#!/usr/bin/env bash
# Set up (idempotent), then lint, type-check and run every test against a real
# mosquitto and the real built model. Arguments go to pytest, except --full, which
# also runs the long forms (tests marked `slow`: the 2 and 5 minute link cuts, 20 agent
# SIGKILL rounds, 500 requests through a broker SIGKILL, the whole prompt-injection
# corpus, constrained decoding on every installed portfolio model, the int8 mpnet build).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
  if [[ "$arg" == "--full" ]]; then
    export EDGE_SLM_FULL_TESTS=1  # read by tests/conftest.py
  else
    args+=("$arg")
  fi
done
scripts/bootstrap.sh
# shellcheck source=/dev/null
. .venv/bin/activate
echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy (strict)"
mypy
echo "==> pytest"
# The slowest tests, in every run: the budget (30 minutes on 2 cores) is watched here.
pytest --durations=25 ${args[@]+"${args[@]}"}
