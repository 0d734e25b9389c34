#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: mosquitto, a venv with the
# project and its build/dev extras, and the default model in the model cache.
# Re-running is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_rr >/dev/null || missing+=(mosquitto-clients)
# The dashboard's browser test: headless Chromium, driven by Playwright (and chromedriver).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# The shell scripts' lint test (tests/deploy/test_install.py).
command -v shellcheck >/dev/null || missing+=(shellcheck)
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]} with apt-get"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.edge-slm-deps
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing Python packages (torch CPU, onnxruntime-genai, ...)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[build,dev,relay]'
  echo "$want" >"$stamp"
fi

# Built once per recipe version into the per-user model cache, then reused.
.venv/bin/edge-agent models build "${EDGE_SLM_MODEL:-smollm2-135m-instruct}" --install-source
# The skills' embedding stage (23 MB, copied and checked, nothing to build).
.venv/bin/edge-agent models build minilm-l6-v2-int8 --install-source
