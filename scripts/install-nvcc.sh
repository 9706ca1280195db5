#!/usr/bin/env bash
# Installs nvcc (no GPU needed) from PyPI into a cached virtual environment and prints the path of
# the nvcc binary. build.rs uses it through `NVCC=...` to compile every kernel to PTX, which proves
# on machines without a GPU that the kernels compile for one.
#   NVCC=$(scripts/install-nvcc.sh) cargo build
set -euo pipefail
PACKAGES=(nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-crt nvidia-cuda-runtime nvidia-cuda-cccl)
VERSION_SPEC="==13.*"  # CUDA 13: sm_80 and sm_90, matching cudarc's cuda-13 bindings
VENV="${MASKEDLM_NVCC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/undertale-maskedlm/nvcc-13}"
find_nvcc() { find "$VENV" -path '*/bin/nvcc' -type f 2>/dev/null | head -n 1; }
if [ -z "$(find_nvcc)" ] || [ ! -f "$VENV/.complete" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    specs=()
    for p in "${PACKAGES[@]}"; do specs+=("$p$VERSION_SPEC"); done
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${specs[@]}" >&2
    touch "$VENV/.complete"
fi
nvcc="$(find_nvcc)"
if [ -z "$nvcc" ]; then
    echo "nvcc was not found in $VENV after installation" >&2
    exit 1
fi
echo "$nvcc"
