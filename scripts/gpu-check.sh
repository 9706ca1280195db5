#!/usr/bin/env bash
# Runs on a GPU machine, from the bundle scripts/gpu-bundle.sh made; needs the CUDA driver and
# toolkit (cuBLASLt, NVRTC, compute-sanitizer) and PyTorch, no Rust, no network. Steps, most
# important first, so that a machine lent for a few minutes answers the important questions first:
#
#   environment      driver, GPU, CUDA toolkit, and whether this machine's glibc can run the bundle
#   runtime-tests    cuBLASLt plans with the bias epilogue, pinned asynchronous downloads, traffic
#   kernel-tests     every kernel against the CPU backend, on the emulator and on this GPU
#   model-tests      the whole model on this GPU against the CPU
#   emulator-twins   the emulator's tensor-core twins against the real instructions
#   memcheck         compute-sanitizer memcheck over the kernel tests
#   racecheck        compute-sanitizer racecheck over the kernel tests
#   cli-demo         the command line's built-in demo on the GPU
#   ceilings         the card's copy bandwidth and bf16 matrix rate (PyTorch)
#   bench-kernels    criterion, every kernel family
#   bench-model      criterion, the whole model
#   compare          ours against PyTorch, PyTorch's `best` without torch.compile
#   compare-compile  the same with `best` compiled by torch.compile
#
# Every step runs under its own timeout (table below) and the summary, $OUT/summary.md, is rewritten
# after every step, so a run cut short by the machine's limit still reports what it finished. Logs:
# $OUT/<step>.log. $OUT defaults to out/ beside this script.
#
#   QUICK=1          a 3-minute run: environment, kernel-tests, model-tests, memcheck over a fast
#                    subset of the kernel tests (QUICK_FILTER), cli-demo and a one-repeat compare
#   ONLY="a b"       just the named steps (environment always runs: it costs a second and decides
#                    whether anything else can run)
#   QUICK_FILTER     test-name filters for memcheck under QUICK=1 (space-separated; empty: all)
#   MODEL_FILTER     test-name filters for model-tests (default: the tests that use a real GPU)
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
BIN="$HERE/bin"
SUMMARY="$OUT/summary.md"
QUICK="${QUICK:-0}"
[ "$QUICK" = 0 ] && QUICK=""
ONLY="${ONLY:-}"
# One test per kernel family, f32 and bf16 paths both represented: memcheck over all of them is the
# slowest correctness step, and this subset touches every kernel.
QUICK_FILTER="${QUICK_FILTER-adamw_matches_the_cpu bf16_head_dim_64_over_more_than_two_tiles
    bf16_backward_odd_lengths bf16_loss_and_gradient_match layernorm_in_bf16_matches_the_cpu_on_bf16_inputs
    linear_in_bf16_matches_the_cpu_on_bf16_inputs linear_gelu_fused_backward_matches
    embedding::bf16_forward_and_backward bf16_masks_are_the_cpus bf16_gather_and_scatter
    softmax_top_k_matches add_add_assign_and_gelu_in_bf16}"
# The emulated-GPU model tests are plain CPU work that every build already runs; on a lent GPU only
# the real-GPU ones are worth its minutes.
MODEL_FILTER="${MODEL_FILTER-real_gpu}"
export HERE OUT BIN

STEPS=(environment runtime-tests kernel-tests model-tests emulator-twins memcheck racecheck cli-demo
    ceilings bench-kernels bench-model compare compare-compile)
QUICK_STEPS=" environment runtime-tests kernel-tests model-tests memcheck cli-demo compare "

# Timeouts in seconds, full run and QUICK=1. A full run must fit in 8 minutes on one H100 and a
# quick one in 3: the step timeouts plus SETUP_S (unpacking, the library search) add up to 470 s
# and 175 s, leaving a few seconds for the tables at the end (--kill-after only adds time for a
# step that ignores SIGTERM). The last step of a run may also use whatever earlier steps left unused
# of the total (see timeout_for): torch.compile's first compile alone can take most of a minute.
# The shares are estimates until measured: each row shows a step's seconds beside its timeout.
SETUP_S=10
declare -A FULL_S=(
    [environment]=15 [runtime-tests]=10 [kernel-tests]=60 [model-tests]=40 [emulator-twins]=15
    [memcheck]=55 [racecheck]=35 [cli-demo]=20 [ceilings]=15 [bench-kernels]=60 [bench-model]=25
    [compare]=60
    [compare-compile]=50
)
declare -A QUICK_S=(
    [environment]=15 [runtime-tests]=10 [kernel-tests]=35 [model-tests]=30 [memcheck]=25
    [cli-demo]=20 [compare]=30
)
if [ -n "$QUICK" ]; then TOTAL_S=180; LAST_STEP=compare; else TOTAL_S=480; LAST_STEP=compare-compile; fi
# Timed repeats of the full comparison: enough for a stable median, few enough to fit its timeout.
COMPARE_REPEATS=10
export COMPARE_REPEATS

START_S=$(date +%s)
BUDGET_S=$SETUP_S
for name in "${STEPS[@]}"; do
    if [ -n "$QUICK" ]; then
        BUDGET_S=$((BUDGET_S + ${QUICK_S[$name]:-0}))
    else
        BUDGET_S=$((BUDGET_S + FULL_S[$name]))
    fi
done
RUN_STATE="starting"
ROWS="$OUT/.summary-rows"
: > "$ROWS"
rm -f "$OUT/environment.md" "$OUT/stop-reason" "$OUT/no-gpu"
touch "$OUT/.started"  # files older than this come from an earlier run into the same $OUT

# ---------------------------------------------------------------------------------------------
# The summary: rewritten whole after every step (header, the environment's facts, one row per step
# so far, and a line saying what is running or how the run ended).

cell() { local s="$1"; s="${s//|/\\|}"; printf '%s' "${s//$'\n'/ }"; }

render() {
    {
        echo "# GPU check"
        echo
        echo "- date: $(date -u -d "@$START_S" +%Y-%m-%dT%H:%MZ 2>/dev/null || date -u +%Y-%m-%dT%H:%MZ)"
        echo "- commit: $(cat "$HERE/COMMIT" 2>/dev/null || echo unknown)"
        echo "- run: ${QUICK:+QUICK=1, }${ONLY:+ONLY=\"$ONLY\", }within $TOTAL_S s (timeouts $BUDGET_S s, setup included)"
        [ -n "${UNKNOWN:-}" ] && echo "- ONLY names unknown steps:$UNKNOWN (steps: ${STEPS[*]})"
        [ -f "$OUT/environment.md" ] && cat "$OUT/environment.md"
        echo
        echo "| step | result | seconds | timeout |"
        echo "|---|---|---:|---:|"
        cat "$ROWS"
        echo
        echo "$RUN_STATE"
        # The comparison tables as soon as they exist (and come from this run).
        table "$OUT/compare/table.md" "Ours against PyTorch (PyTorch's best without torch.compile)"
        table "$OUT/compare-compile/table.md" "Ours against PyTorch's best with torch.compile"
    } > "$SUMMARY.tmp" && mv -f "$SUMMARY.tmp" "$SUMMARY"
}

table() {  # table FILE TITLE
    [ "$1" -nt "$OUT/.started" ] || return 0
    echo
    echo "## $2"
    echo
    cat "$1"
}

row() {  # row STEP RESULT [SECONDS] [TIMEOUT]: a finished (or skipped) step
    printf '| %s | %s | %s | %s |\n' "$1" "$(cell "$2")" "${3:-}" "${4:-}" >> "$ROWS"
    echo "$1: $2"
    render
}

elapsed() { echo $(($(date +%s) - START_S)); }

# ---------------------------------------------------------------------------------------------
# Which steps run, and for how long.

wanted() {  # wanted STEP: named in ONLY, or (without ONLY) part of this run's kind
    if [ -n "$ONLY" ]; then [[ " $ONLY " == *" $1 "* ]]; return; fi
    [ -z "$QUICK" ] || [[ "$QUICK_STEPS" == *" $1 "* ]]
}

timeout_for() {  # timeout_for STEP: its budget; the run's last step also gets what is left over
    local base
    if [ -n "$QUICK" ]; then base="${QUICK_S[$1]:-${FULL_S[$1]}}"; else base="${FULL_S[$1]}"; fi
    if [ "$1" = "$LAST_STEP" ]; then
        local left=$((TOTAL_S - 5 - $(elapsed)))
        [ "$left" -gt "$base" ] && base="$left"
    fi
    echo "$base"
}

# The running step's process group (timeout puts itself and its children in their own), so that a
# signal to this script also ends the step.
CHILD=""
CURRENT=""
on_signal() {
    [ -n "$CHILD" ] && kill -TERM -- "-$CHILD" 2> /dev/null
    [ -n "$CURRENT" ] && row "$CURRENT" "INTERRUPTED after $(($(date +%s) - STEP_START)) s (signal to gpu-check)"
    RUN_STATE="Interrupted after $(elapsed) s."
    render
    exit 130
}
trap on_signal INT TERM

# result STEP EXIT TIMEOUT SECONDS: a step's outcome in a few words, from its exit status and log.
result() {
    local name="$1" rc="$2" limit="$3" secs="$4" log="$OUT/$1.log" r extra
    if [ "$name" = environment ] && [ -f "$OUT/stop-reason" ]; then
        echo "STOP: $(cat "$OUT/stop-reason")"
        return
    fi
    if [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$secs" -ge "$limit" ]; }; then
        r="TIMEOUT after $limit s"
        [ "$rc" -eq 137 ] && r="$r, killed 10 s later (it ignored SIGTERM)"
        # With one test thread libtest names a test before running it, so the last line names the
        # one that hung; for criterion and the rest it is the last thing that happened.
        extra="$(grep -v '^[[:space:]]*$' "$log" 2> /dev/null | tail -n 1 | cut -c 1-120)"
        [ -n "$extra" ] && r="$r (last output: $extra)"
    elif [ "$rc" -eq 0 ]; then
        r="pass"
    else
        r="FAIL (exit $rc)"
    fi
    local tally
    tally="$(grep -E '^test result:' "$log" 2> /dev/null | tail -n 1 |
        sed -E 's/^test result: //; s/; 0 (ignored|measured|filtered out)//g; s/; finished in .*//')"
    if [ -n "$tally" ]; then
        r="$r: $tally"
        # A filter that matches nothing passes; say so rather than let it read as a pass.
        [[ "$tally" == "ok. 0 passed"* ]] && r="NO TESTS RAN (filter matched nothing): $tally"
    fi
    local failed count
    failed="$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" 2> /dev/null)"
    if [ -n "$failed" ]; then
        count=$(wc -l <<< "$failed")
        r="$r; failed: $(head -n 3 <<< "$failed" | paste -sd, - | sed 's/,/, /g')"
        [ "$count" -gt 3 ] && r="$r (+$((count - 3)) more)"
    fi
    # Anything else that failed: its last words (a loader error, a Python traceback's last line).
    if [ "$rc" -ne 0 ] && [ "${r#TIMEOUT}" = "$r" ] && [ -z "$tally" ]; then
        extra="$(grep -v '^[[:space:]]*$' "$log" 2> /dev/null | tail -n 1 | cut -c 1-120)"
        [ -n "$extra" ] && r="$r: $extra"
    fi
    extra="$(grep -E '(ERROR|RACECHECK) SUMMARY' "$log" 2> /dev/null | tail -n 1 | sed 's/^=* *//')"
    [ -n "$extra" ] && r="$r; $extra"
    case "$name" in
        bench-*)
            count=$(grep -cE 'time: +\[' "$log" 2> /dev/null)
            r="$r; ${count:-0} benchmarks measured"
            ;;
    esac
    echo "$r"
}

# step NAME COMMAND...: runs it under the step's timeout, logs to $OUT/NAME.log, adds its row.
STEP_START=0
step() {
    local name="$1" limit rc secs res
    shift
    limit="$(timeout_for "$name")"
    CURRENT="$name"
    STEP_START=$(date +%s)
    RUN_STATE="Running: $name (timeout $limit s), started $(elapsed) s into the run."
    render
    echo "== $name (timeout $limit s)"
    # In the background, so that a signal to this script is handled while the step runs.
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 < /dev/null &
    CHILD=$!
    # (wait's stderr: bash's own "Killed" notice for a step that needed SIGKILL, said in its row)
    wait "$CHILD" 2> /dev/null
    rc=$?
    CHILD=""
    CURRENT=""
    secs=$(($(date +%s) - STEP_START))
    res="$(result "$name" "$rc" "$limit" "$secs")"
    row "$name" "$res" "$secs" "$limit"
    return "$rc"
}

skip() {  # skip STEP REASON: a row that says why a wanted step did not run
    row "$1" "skipped: $2"
}

# ---------------------------------------------------------------------------------------------
# Setup: unpack the binaries, find the CUDA libraries and tools.

# A misspelt name in ONLY would otherwise run nothing without a word.
UNKNOWN=""
for name in $ONLY; do
    [[ " ${STEPS[*]} " == *" $name "* ]] || UNKNOWN="$UNKNOWN $name"
done
if [ -n "$UNKNOWN" ]; then
    echo "gpu-check: ONLY names unknown steps:$UNKNOWN (steps: ${STEPS[*]})" >&2
fi
render

# The bundle's binaries come gzipped (gpu-bundle.sh).
for packed in "$BIN"/*.gz; do
    [ -e "$packed" ] || continue
    gunzip -f "$packed" && chmod +x "${packed%.gz}"
done

# cuBLASLt and NVRTC: the toolkit's, or the ones PyTorch's wheels bring (found wherever they are;
# the search is bounded, a large site-packages must not eat the setup's share of the time).
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$dir" ] && export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
done
SITE="$(timeout 5 python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2> /dev/null || true)"
for lib in libcublasLt.so libnvrtc.so; do
    if ! ldconfig -p 2> /dev/null | grep -q "$lib"; then
        # shellcheck disable=SC2086 # SITE is a list of folders
        found="$(timeout 3 find $SITE /usr/local/cuda* -name "$lib*" 2> /dev/null | head -n 1)"
        if [ -n "$found" ]; then
            LD_LIBRARY_PATH="$(dirname "$found"):${LD_LIBRARY_PATH:-}"
            export LD_LIBRARY_PATH
        fi
    fi
done

# The toolkit's own folders, newest first: a toolkit is often installed without its bin/ on PATH.
toolkit_roots() {
    [ -n "${CUDA_HOME:-}" ] && echo "$CUDA_HOME"
    [ -n "${CUDA_PATH:-}" ] && echo "$CUDA_PATH"
    echo /usr/local/cuda
    for dir in /usr/local/cuda-*; do [ -d "$dir" ] && echo "$dir"; done | sort -rV
    return 0
}
find_tool() {  # find_tool NAME [EXTRA_DIR...]: on PATH, else in a toolkit's bin/ (or NAME/)
    command -v "$1" 2> /dev/null && return 0
    local name="$1" dir root
    shift
    for dir in "$@"; do
        [ -x "$dir/$name" ] && { echo "$dir/$name"; return 0; }
    done
    while read -r root; do
        for dir in "$root/bin" "$root/$name"; do
            [ -x "$dir/$name" ] && { echo "$dir/$name"; return 0; }
        done
    done < <(toolkit_roots)
    return 1
}
NVCC_BIN="$(find_tool nvcc || true)"
NVCC_DIRS=()
if [ -n "$NVCC_BIN" ]; then
    NVCC_DIRS+=("$(dirname "$NVCC_BIN")")
    real="$(readlink -f "$NVCC_BIN" 2> /dev/null || true)"
    [ -n "$real" ] && NVCC_DIRS+=("$(dirname "$real")" "$(dirname "$(dirname "$real")")/compute-sanitizer")
fi
SANITIZER="$(find_tool compute-sanitizer ${NVCC_DIRS[@]+"${NVCC_DIRS[@]}"} || true)"
export NVCC_BIN SANITIZER LD_LIBRARY_PATH

# With MASKEDLM_REQUIRE_GPU the tests fail when the GPU cannot be used, instead of passing on the
# emulator alone. Fresh device memory is poisoned (NaN bytes) so unwritten outputs fail, as in the
# emulator; every launch is synchronised so a fault names its kernel.
export MASKEDLM_REQUIRE_GPU=1 MASKEDLM_POISON=1 MASKEDLM_SYNC_LAUNCHES=1

# ---------------------------------------------------------------------------------------------
# 1. environment: runs under its timeout in a child shell, so it is a function exported to one.

environment() {
    local facts="$OUT/environment.md"
    fact() { echo "- $1: $2" >> "$facts"; echo "$1: $2"; }
    newer() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n 1)" = "$1" ]; }

    # glibc first: it needs no GPU and decides whether the binaries can start at all (a bundle
    # built on a newer system fails every step with a loader error otherwise).
    local machine need worst="" too_new="" bin
    machine="$(ldd --version 2> /dev/null | head -n 1 | grep -oE '[0-9]+\.[0-9]+$')"
    [ -z "$machine" ] && machine="$(getconf GNU_LIBC_VERSION 2> /dev/null | awk '{print $2}')"
    for bin in "$BIN"/*; do
        if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then continue; fi
        # objdump reads the versions the binary asks the loader for; without binutils the version
        # names are still plain strings in the binary.
        need="$(objdump -T "$bin" 2> /dev/null | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n 1)"
        [ -z "$need" ] && need="$(grep -aoE 'GLIBC_[0-9]+(\.[0-9]+)*' "$bin" 2> /dev/null | sort -Vu | tail -n 1)"
        echo "glibc: bin/$(basename "$bin") needs ${need:-no versioned glibc symbol}"
        [ -z "$need" ] && continue
        if [ -z "$worst" ] || newer "${need#GLIBC_}" "${worst#GLIBC_}"; then worst="$need"; fi
        if [ -n "$machine" ] && newer "${need#GLIBC_}" "$machine"; then
            too_new="$too_new${too_new:+, }bin/$(basename "$bin") needs $need"
        fi
    done
    if [ -n "$too_new" ]; then
        fact glibc "this machine's glibc $machine is TOO OLD: $too_new"
        echo "this machine's glibc $machine is older than the bundle needs ($too_new):" \
            "rebuild the bundle on a system with glibc $machine or older" > "$OUT/stop-reason"
    else
        fact glibc "machine ${machine:-unknown}, bundle needs up to ${worst:-nothing versioned} (ok)"
    fi

    if command -v nvidia-smi > /dev/null; then
        local gpu driver_cuda
        timeout 10 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
        if gpu="$(timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)" &&
            [ -n "$gpu" ]; then
            fact "GPU, memory, driver" "$gpu"
        else
            fact GPU "nvidia-smi failed: $(head -n 1 <<< "$gpu")"
            echo "nvidia-smi failed" > "$OUT/no-gpu"
        fi
        driver_cuda="$(grep -oE 'CUDA Version: *[0-9.]+' "$OUT/nvidia-smi.txt" | grep -oE '[0-9.]+$')"
        [ -n "$driver_cuda" ] && fact "driver's CUDA" "$driver_cuda"
    else
        fact GPU "none visible (nvidia-smi not found)"
        echo "nvidia-smi not found" > "$OUT/no-gpu"
    fi

    local toolkit="" root
    if [ -n "$NVCC_BIN" ]; then
        toolkit="$(timeout 10 "$NVCC_BIN" --version 2> /dev/null | grep -o 'release.*' | head -n 1) ($NVCC_BIN)"
    fi
    if [ -z "$toolkit" ]; then
        while read -r root; do
            if [ -f "$root/version.json" ]; then
                toolkit="$(grep -m 1 -oE '"version" *: *"[0-9.]+"' "$root/version.json" | grep -oE '[0-9][0-9.]*') ($root, no nvcc)"
            elif [ -f "$root/version.txt" ]; then
                toolkit="$(head -n 1 "$root/version.txt") ($root, no nvcc)"
            fi
            [ -n "$toolkit" ] && break
        done < <(toolkit_roots)
    fi
    fact "CUDA toolkit" "${toolkit:-not found}"
    fact compute-sanitizer "${SANITIZER:-not found on PATH or in the CUDA toolkit folders}"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    if [ -x "$BIN/maskedlm" ]; then
        echo "ldd bin/maskedlm:"
        ldd "$BIN/maskedlm" 2>&1
    fi
    [ ! -f "$OUT/stop-reason" ]
}
export -f environment toolkit_roots

step environment bash -c environment
if [ -f "$OUT/stop-reason" ]; then
    RUN_STATE="Stopped early: $(cat "$OUT/stop-reason")."
    render
    cat "$SUMMARY"
    exit 1
fi
NO_GPU="$(cat "$OUT/no-gpu" 2> /dev/null || true)"

# ---------------------------------------------------------------------------------------------
# 2-7. Correctness: poisoned memory, synchronised launches.

# available STEP BINARY: the step is wanted and its binary is in the bundle (else a row says not).
available() {
    wanted "$1" || return 1
    [ -x "$2" ] && return 0
    skip "$1" "bin/$(basename "$2") not in the bundle"
    return 1
}

# The runtime below the ops, first run on this GPU: bias GEMMs through cached cuBLASLt plans,
# asynchronous downloads into pinned memory, the host-traffic counts.
available runtime-tests "$BIN/test-runtime" && step runtime-tests "$BIN/test-runtime" --nocapture
available kernel-tests "$BIN/test-kernels" && step kernel-tests "$BIN/test-kernels" --test-threads 1
# shellcheck disable=SC2086 # a list of test-name filters
available model-tests "$BIN/test-gpu_model" &&
    step model-tests "$BIN/test-gpu_model" --nocapture --test-threads 1 $MODEL_FILTER
available emulator-twins "$BIN/test-emulator" &&
    step emulator-twins "$BIN/test-emulator" tensor_core_twins --nocapture

# compute-sanitizer over the kernel tests on the GPU (the emulated runs inside are plain CPU code it
# does not slow down); under QUICK=1 memcheck alone, over QUICK_FILTER's subset.
FILTER=""
[ -n "$QUICK" ] && FILTER="$QUICK_FILTER"
for tool in memcheck racecheck; do
    available "$tool" "$BIN/test-kernels" || continue
    if [ -z "$SANITIZER" ]; then
        skip "$tool" "compute-sanitizer not found (PATH, CUDA_HOME, CUDA_PATH, /usr/local/cuda*, nvcc's folder)"
        continue
    fi
    # shellcheck disable=SC2086 # a list of test-name filters
    step "$tool" "$SANITIZER" --tool "$tool" --error-exitcode 9 "$BIN/test-kernels" --test-threads 1 $FILTER
done

available cli-demo "$BIN/maskedlm" && step cli-demo "$BIN/maskedlm" demo --device cuda

# ---------------------------------------------------------------------------------------------
# 8-12. Timings: no poisoning, no synchronisation after every launch. Without a GPU they would
# measure the CPU fallback, or nothing, for minutes: skipped.

unset MASKEDLM_POISON MASKEDLM_SYNC_LAUNCHES

on_gpu() {  # on_gpu STEP: there is a GPU to time on (else a row says not)
    [ -z "$NO_GPU" ] && return 0
    skip "$1" "no GPU ($NO_GPU)"
    return 1
}

# The card's two ceilings, measured once: copy bandwidth and the bf16 matrix rate.
CEILINGS_PY='
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
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
'
wanted ceilings && on_gpu ceilings && step ceilings python3 -c "$CEILINGS_PY"

# Criterion benches: every kernel family at the medium shapes in bf16, and the whole model. The
# kernel bench sets its own times; the model bench's measurement is shortened to fit its timeout.
available bench-kernels "$BIN/bench-kernels" && on_gpu bench-kernels &&
    step bench-kernels "$BIN/bench-kernels" --bench
available bench-model "$BIN/bench-model" && on_gpu bench-model &&
    step bench-model "$BIN/bench-model" --bench --measurement-time 3

# Ours against PyTorch on this card (training, inference, memory, real lengths), with the MFU
# against the bf16 rate measured above. First PyTorch's `best` eager: the comparison that cannot
# be lost to a slow compile.
BF16_TFLOPS=""
if [ "$OUT/ceilings.log" -nt "$OUT/.started" ]; then
    BF16_TFLOPS="$(sed -n 's/^bf16 matmul: \([0-9.]*\) TFLOP\/s$/\1/p' "$OUT/ceilings.log")"
fi
export BF16_TFLOPS
if [ -n "$QUICK" ]; then COMPARE_ARGS=(--quick); else COMPARE_ARGS=(--repeats "$COMPARE_REPEATS"); fi
available compare "$BIN/maskedlm" && on_gpu compare &&
    step compare env MASKEDLM="$BIN/maskedlm" bash "$HERE/compare.sh" --device cuda "${COMPARE_ARGS[@]}" \
    --out "$OUT/compare" -- --no-compile

# Then `best` compiled. Our side has not changed, so only PyTorch's `best` runs again, against the
# eager comparison's ours.json, with compare.sh's CUDA defaults spelled out (compare_table.py warns
# if the shapes still differ); without that file, the whole comparison runs compiled.
compare_compiled() {
    set -euo pipefail
    local dir="$OUT/compare-compile"
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ ! "$OUT/compare/ours.json" -nt "$OUT/.started" ]; then
        MASKEDLM="$BIN/maskedlm" bash "$HERE/compare.sh" --device cuda --repeats "$COMPARE_REPEATS" \
            --out "$dir" -- --compile on
        return
    fi
    local lengths=(--lengths "")
    [ -f "$HERE/function_lengths.json" ] && lengths=(--lengths "$HERE/function_lengths.json" --length-batches 8)
    python3 "$HERE/peer_pytorch.py" --device cuda --preset medium --batch 32 --threads 2 \
        --repeats "$COMPARE_REPEATS" "${lengths[@]}" --variant best --compile on \
        --json "$dir/peer.json" 2>&1 | tee "$dir/peer.log"
    local table=(python3 "$HERE/compare_table.py" "$OUT/compare/ours.json" "$dir/peer.json")
    [ -n "${BF16_TFLOPS:-}" ] && table+=(--bf16-tflops "$BF16_TFLOPS")
    "${table[@]}" > "$dir/table.txt"
    "${table[@]}" --markdown > "$dir/table.md"
    cat "$dir/table.txt"
}
export -f compare_compiled
available compare-compile "$BIN/maskedlm" && on_gpu compare-compile &&
    step compare-compile bash -c compare_compiled

# ---------------------------------------------------------------------------------------------

RUN_STATE="Finished in $(elapsed) s. Logs: one file per step in this folder."
render
cat "$SUMMARY"
