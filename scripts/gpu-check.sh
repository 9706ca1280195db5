#!/usr/bin/env bash
# Runs on a GPU machine, from the bundle scripts/gpu-bundle.sh made: every GPU test,
# compute-sanitizer (memcheck and racecheck) over the kernel tests, the benches, and the comparison
# with PyTorch. Writes logs and a summary table (summary.md) to $OUT (default: out/ beside this
# script). Needs the CUDA toolkit (driver, cuBLASLt, compute-sanitizer); no Rust, no network.
# ONLY="ceilings kernel-tests ..." runs just the named steps (a step's name is its log's name:
# ceilings, emulator-twins, runtime-tests, kernel-tests, model-tests, memcheck, racecheck, cli-demo,
# bench-kernels, bench-model, compare), to fit a machine lent for a limited time.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
BIN="$HERE/bin"
SUMMARY="$OUT/summary.md"

# The bundle's binaries come gzipped (gpu-bundle.sh).
for packed in "$BIN"/*.gz; do
    [ -e "$packed" ] || continue
    gunzip -f "$packed" && chmod +x "${packed%.gz}"
done

# cuBLASLt and NVRTC: the toolkit's, or the ones PyTorch's wheels bring (found wherever they are).
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$dir" ] && export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
done
SITE="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)"
for lib in libcublasLt.so libnvrtc.so; do
    if ! ldconfig -p 2>/dev/null | grep -q "$lib"; then
        found="$(find $SITE /usr/local/cuda* -name "$lib*" 2>/dev/null | head -n 1)"
        [ -n "$found" ] && export LD_LIBRARY_PATH="$(dirname "$found"):${LD_LIBRARY_PATH:-}"
    fi
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" > "$OUT/environment.txt"
# Fresh device memory is poisoned (NaN bytes) so unwritten outputs fail, as in the emulator; every
# launch is synchronised so a fault names its kernel.
export MASKEDLM_POISON=1 MASKEDLM_SYNC_LAUNCHES=1

{
    echo "# GPU check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- commit: $(cat "$HERE/COMMIT" 2>/dev/null || echo unknown)"
    echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"
    echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---:|"
} > "$SUMMARY"

step() {  # step NAME COMMAND...: runs it, logs to $OUT/NAME.log, adds a row to the summary
    local name="$1"
    shift
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
    local start end status
    start=$(date +%s.%N)
    "$@" > "$OUT/$name.log" 2>&1
    status=$?
    end=$(date +%s.%N)
    local result="pass"
    [ $status -ne 0 ] && result="FAIL (exit $status)"
    local tally
    tally="$(grep -E '^test result:' "$OUT/$name.log" | tail -1 | sed 's/test result: //')"
    [ -n "$tally" ] && result="$result: $tally"
    printf "| %s | %s | %s |\n" "$name" "$result" "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')" >> "$SUMMARY"
    echo "$name: $result"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

# The card's two ceilings, measured once: copy bandwidth and the bf16 matrix rate.
step ceilings python3 - <<'PY'
import torch
x = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20): y.copy_(x)
end.record(); torch.cuda.synchronize()
seconds = start.elapsed_time(end) / 1e3 / 20
print(f"copy bandwidth: {2 * x.numel() * 4 / seconds / 1e12:.2f} TB/s (read + write)")
a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
for _ in range(3): a @ b
start.record()
for _ in range(10): a @ b
end.record(); torch.cuda.synchronize()
seconds = start.elapsed_time(end) / 1e3 / 10
print(f"bf16 matmul: {2 * 8192**3 / seconds / 1e12:.0f} TFLOP/s")
PY

# The emulator's tensor-core twins against the real instructions.
[ -x "$BIN/test-emulator" ] && step emulator-twins "$BIN/test-emulator" tensor_core_twins --nocapture
# The runtime below the ops: bias GEMMs through cached cuBLASLt plans, asynchronous downloads,
# the host-traffic counts.
[ -x "$BIN/test-runtime" ] && step runtime-tests "$BIN/test-runtime" --nocapture
# Every kernel against the CPU backend, on the emulator and on this GPU; the whole model.
[ -x "$BIN/test-kernels" ] && step kernel-tests "$BIN/test-kernels" --test-threads 1
[ -x "$BIN/test-gpu_model" ] && step model-tests "$BIN/test-gpu_model" --nocapture --test-threads 1

# compute-sanitizer over the kernel tests on the GPU (the emulated runs inside are plain CPU code).
if command -v compute-sanitizer > /dev/null && [ -x "$BIN/test-kernels" ]; then
    step memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/test-kernels" --test-threads 1
    step racecheck compute-sanitizer --tool racecheck --error-exitcode 9 "$BIN/test-kernels" --test-threads 1
fi

# The command line on the GPU: the built-in demo trains and fills masks.
step cli-demo "$BIN/maskedlm" demo --device cuda

# Timings from here on: no poisoning, no synchronisation after every launch.
unset MASKEDLM_POISON MASKEDLM_SYNC_LAUNCHES

# Criterion benches: every kernel family at the medium shapes in bf16, and the whole model.
for bench in "$BIN"/bench-*; do
    [ -x "$bench" ] && step "$(basename "$bench")" "$bench" --bench
done

# Ours against PyTorch on this card (training, inference, memory, real lengths), with the MFU
# against the bf16 rate measured above.
BF16_TFLOPS="$(sed -n 's/^bf16 matmul: \([0-9.]*\) TFLOP\/s$/\1/p' "$OUT/ceilings.log" 2>/dev/null)"
export BF16_TFLOPS
step compare env MASKEDLM="$BIN/maskedlm" bash "$HERE/compare.sh" --device cuda --out "$OUT/compare"

if [ -f "$OUT/compare/table.md" ]; then
    { echo; echo "## Ours against PyTorch"; echo; cat "$OUT/compare/table.md"; } >> "$SUMMARY"
fi
echo >> "$SUMMARY"
echo "Logs: one file per step in this folder." >> "$SUMMARY"
cat "$SUMMARY"
