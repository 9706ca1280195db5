#!/usr/bin/env bash
# Runs the CPU backend's reference tests on CPUs this machine is not: an AVX2 + FMA CPU without
# AVX-512 (qemu's Haswell model) and the x86-64 baseline (qemu64, SSE2 only), under qemu's user-mode
# emulation. Every SIMD choice in the crate is made at run time (the `gemm` crate's kernels, the
# elementwise kernels' copies, the bf16 GEMM), so this runs the very binaries `cargo test` built,
# down the paths a host with AVX-512 never takes: the f32 results must still match the reference
# (tests/parity.rs), the library's own kernel tests must pass, and bf16 must be refused with a clear
# error (tests/cpu_bf16.rs).
#
#   scripts/other-cpus.sh            (needs qemu-x86_64: Debian's qemu-user; installed when missing
#                                     and apt-get is available)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-x86_64 > /dev/null; then
    if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
        if ! apt-get install -y -qq qemu-user > /dev/null 2>&1; then
            apt-get update -qq > /dev/null 2>&1 && apt-get install -y -qq qemu-user > /dev/null 2>&1 || true
        fi
    fi
fi
if ! command -v qemu-x86_64 > /dev/null; then
    echo "other-cpus: skipped: no qemu-x86_64 (Debian's qemu-user)"
    exit 0
fi

# The test executables, as cargo built them for `cargo test`.
binaries=$(cargo test --no-run --lib --test parity --test cpu_bf16 --message-format=json 2> /dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        print(msg["executable"])
')
[ -n "$binaries" ] || { echo "other-cpus: no test executables found" >&2; exit 1; }

for cpu in Haswell qemu64; do
    for binary in $binaries; do
        echo "== $(basename "$binary") on a $cpu CPU"
        # The library's tests are filtered to the CPU kernels (the emulator's are slow under qemu).
        filter=()
        case "$(basename "$binary")" in undertale_maskedlm-*) filter=(backend::cpu philox) ;; esac
        # qemu warns of every model feature its translator lacks (TSX, x2APIC, ...): not ours.
        RAYON_NUM_THREADS=2 qemu-x86_64 -cpu "$cpu" "$binary" "${filter[@]}" -q 2>&1 |
            grep -v '^qemu-x86_64: warning: TCG doesn'"'"'t support'
    done
done
