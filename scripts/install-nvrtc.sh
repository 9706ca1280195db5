#!/usr/bin/env bash
# Installs NVRTC (no GPU needed) from PyPI into a cached virtual environment, with the CUDA headers
# the kernels include (cuda_bf16.h and the CCCL headers it needs), and prints the toolkit root that
# holds them: include/ and lib/ (libnvrtc.so). The runtime compiles the kernels with NVRTC when a
# build had no nvcc; tests/nvrtc.rs compiles every kernel file that way, to prove it still works:
#   root=$(scripts/install-nvrtc.sh)
#   CUDA_HOME=$root LD_LIBRARY_PATH=$root/lib MASKEDLM_REQUIRE_NVRTC=1 cargo test --test nvrtc
set -euo pipefail
# The same CUDA release as scripts/install-nvcc.sh, the oldest the crate supports.
PACKAGES=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85)
VENV="${MASKEDLM_NVRTC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/undertale-maskedlm/nvrtc-13.0}"
find_root() {
    find "$VENV" -name 'libnvrtc.so*' -path '*/lib/*' 2>/dev/null | head -n 1 | xargs -r dirname | xargs -r dirname
}
if [ -z "$(find_root)" ] || [ ! -f "$VENV/.complete" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
    touch "$VENV/.complete"
fi
root="$(find_root)"
if [ -z "$root" ] || [ ! -f "$root/include/cuda_bf16.h" ]; then
    echo "NVRTC or the CUDA headers were not found in $VENV after installation" >&2
    exit 1
fi
echo "$root"
