#!/usr/bin/env bash
# Installs nvcc (no GPU needed) from PyPI into a cached virtual environment and prints the path of
# the nvcc binary. build.rs uses it through `NVCC=...` to compile every kernel to PTX, which proves
# on machines without a GPU that the kernels compile for one.
#   NVCC=$(scripts/install-nvcc.sh) cargo build
set -euo pipefail
# CUDA 13.0 exactly: a driver rejects PTX written by a newer nvcc than itself, and 13.0 PTX loads
# on every driver from the 580 series on.
PACKAGES=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85)
VENV="${MASKEDLM_NVCC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/undertale-maskedlm/nvcc-13.0}"
find_nvcc() { find "$VENV" -path '*/bin/nvcc' -type f 2>/dev/null | head -n 1; }
if [ -z "$(find_nvcc)" ] || [ ! -f "$VENV/.complete" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
    touch "$VENV/.complete"
fi
nvcc="$(find_nvcc)"
if [ -z "$nvcc" ]; then
    echo "nvcc was not found in $VENV after installation" >&2
    exit 1
fi
echo "$nvcc"
