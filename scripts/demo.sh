#!/usr/bin/env bash
# Set up (idempotent), then run the end-to-end demo: a private mosquitto, a
# local OpenAI-compatible "cloud" LLM (the bigger model), the cloud relay with a
# SQLite log, and the agent with the small on-device model; real requests flow.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The demo's cloud model: built once (about 3 minutes, 7 GB RAM), then cached.
.venv/bin/edge-agent models build qwen2.5-coder-0.5b-instruct --install-source
# A module run from the repository root: the demo imports tests.support.broker.
exec .venv/bin/python -m scripts.demo "$@"
