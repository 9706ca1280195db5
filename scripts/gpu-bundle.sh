#!/usr/bin/env bash
# Builds everything a GPU check needs and puts it in gpu-bundle/ (git-ignored), small enough to ship
# to a GPU machine that has the CUDA toolkit and PyTorch but no Rust and no network:
#   scripts/gpu-bundle.sh            # here
#   bash gpu-bundle/gpu-check.sh     # there; results under $OUT (default gpu-bundle/out)
# The kernels are compiled to fatbins by nvcc (installed from PyPI if needed) and embedded in every
# binary. Test binaries are release builds, stripped and gzipped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BUNDLE="$ROOT/gpu-bundle"
NVCC="${NVCC:-$(scripts/install-nvcc.sh)}"
export NVCC MASKEDLM_REQUIRE_NVCC=1

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin"

# Test and bench binaries, found from cargo's JSON messages.
artifacts() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["target"]["kind"][0], m["executable"])
'
}
cargo build --release --bin maskedlm
cp target/release/maskedlm "$BUNDLE/bin/maskedlm"
cargo test --release --no-run --test kernels --test gpu_model --test emulator --test runtime --message-format=json 2>/dev/null |
    artifacts | while read -r name kind path; do
        if [ "$kind" = test ]; then cp "$path" "$BUNDLE/bin/test-$name"; fi
    done
cargo bench --no-run --message-format=json 2>/dev/null | artifacts | while read -r name kind path; do
    if [ "$kind" = bench ]; then cp "$path" "$BUNDLE/bin/bench-$name"; fi
done
# gpu-check.sh reports a missing binary as a skipped step; better to find out here, before a GPU
# machine's minutes are spent on a bundle without it.
for expected in maskedlm test-kernels test-gpu_model test-emulator test-runtime bench-kernels bench-model; do
    if [ ! -x "$BUNDLE/bin/$expected" ]; then
        echo "gpu-bundle.sh: bin/$expected was not built" >&2
        exit 1
    fi
done
strip "$BUNDLE"/bin/*
# The binaries run only where glibc is at least as new as the newest version they link against (the
# build machine's, at most); gpu-check.sh checks it first thing, this says which machines qualify.
GLIBC_NEED="$(for bin in "$BUNDLE"/bin/*; do objdump -T "$bin" 2> /dev/null | grep -o 'GLIBC_[0-9.]*' || true; done |
    sort -Vu | tail -n 1)"
echo "the binaries need glibc ${GLIBC_NEED#GLIBC_} or newer on the GPU machine"
# Compressed to stay well inside what a GPU machine is sent (64 MiB for everything); gpu-check.sh
# unpacks them where it runs.
gzip -9 "$BUNDLE"/bin/*

cp scripts/gpu-check.sh "$BUNDLE/gpu-check.sh"
# The side-by-side comparison with PyTorch: our binary against the peer, on the same card.
cp scripts/compare.sh scripts/compare_table.py scripts/peer_pytorch.py scripts/reference.py "$BUNDLE/"
cp benches/data/function_lengths.json "$BUNDLE/"
git rev-parse HEAD > "$BUNDLE/COMMIT" 2>/dev/null || true
du -sh "$BUNDLE"
ls -la "$BUNDLE/bin"
