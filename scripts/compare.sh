#!/usr/bin/env bash
# Runs our `maskedlm bench` and the PyTorch peer (peer_pytorch.py) on this machine with the same
# shapes, then prints one comparison table (compare_table.py). Usage:
#
#   scripts/compare.sh                                   # defaults below; builds with cargo
#   scripts/compare.sh --device cpu --preset tiny --quick
#   MASKEDLM=bin/maskedlm bash compare.sh --out "$OUT"   # a prebuilt binary (GPU bundle): no cargo
#
# Options, as flags or environment variables:
#   --device DEV          DEVICE          cpu | cuda[:N]; default cuda when nvidia-smi works, else cpu
#   --preset NAME         PRESET          tiny | small | medium; default small on cpu, medium on cuda
#   --threads N           THREADS         CPU threads; default 2
#   --batch N             BATCH           training batch; default 8 on cpu, 32 on cuda
#   --infer-batch N       INFER_BATCH     batch of the inference-throughput metric; default 64
#   --repeats N           REPEATS         timed repeats; default each tool's own
#   --lengths PATH        LENGTHS         real function lengths; default
#                                         benches/data/function_lengths.json when it exists
#   --length-batches N    LENGTH_BATCHES  batches of real lengths; default 8
#   --out DIR             OUTDIR          where ours.json, peer.json, logs and tables go;
#                                         default target/compare
#   --quick                               one repeat each (a smoke test, not a measurement)
#   --markdown            MARKDOWN=1      print the table as GitHub markdown
#                         BF16_TFLOPS     the card's measured bf16 matrix rate: adds an MFU row
#   -- ARGS...                            passed on to peer_pytorch.py (e.g. -- --no-compile)
#
# Without MASKEDLM the binary runs through `cargo run --release --bin maskedlm --`. Both tables
# (table.txt, table.md) are also written to the output folder.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -f "$HERE/../Cargo.toml" ]; then ROOT="$(cd "$HERE/.." && pwd)"; else ROOT="$HERE"; fi

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

if nvidia-smi -L > /dev/null 2>&1; then GPU=1; else GPU=0; fi
DEVICE="${DEVICE:-}"
PRESET="${PRESET:-}"
THREADS="${THREADS:-2}"
BATCH="${BATCH:-}"
INFER_BATCH="${INFER_BATCH:-}"
REPEATS="${REPEATS:-}"
LENGTHS="${LENGTHS:-}"
LENGTH_BATCHES="${LENGTH_BATCHES:-8}"
OUTDIR="${OUTDIR:-target/compare}"
MARKDOWN="${MARKDOWN:-0}"
QUICK=0
PEER_EXTRA=()

while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --preset) PRESET="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --infer-batch) INFER_BATCH="$2"; shift 2 ;;
        --repeats) REPEATS="$2"; shift 2 ;;
        --lengths) LENGTHS="$2"; shift 2 ;;
        --length-batches) LENGTH_BATCHES="$2"; shift 2 ;;
        --out) OUTDIR="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --markdown) MARKDOWN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; PEER_EXTRA=("$@"); break ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$DEVICE" ]; then
    if [ "$GPU" = 1 ]; then DEVICE=cuda; else DEVICE=cpu; fi
fi
# Our bf16 mixed precision runs on a GPU only; the CPU backend computes in f32.
case "$DEVICE" in
    cuda*) PRESET="${PRESET:-medium}"; BATCH="${BATCH:-32}"; PRECISION=all ;;
    *) PRESET="${PRESET:-small}"; BATCH="${BATCH:-8}"; PRECISION=all ;;
esac

# The real-lengths file: as given, or the repository's when it has one.
if [ -z "$LENGTHS" ]; then
    for candidate in "$ROOT/benches/data/function_lengths.json" "$HERE/function_lengths.json"; do
        if [ -f "$candidate" ]; then LENGTHS="$candidate"; break; fi
    done
elif [ ! -f "$LENGTHS" ]; then
    echo "compare.sh: no lengths file $LENGTHS" >&2
    exit 2
fi

# The Python scripts sit beside this one (scripts/ in the repository, the top of a bundle).
find_script() {
    for candidate in "$HERE/$1" "$HERE/scripts/$1"; do
        if [ -f "$candidate" ]; then echo "$candidate"; return; fi
    done
    echo "compare.sh: cannot find $1 beside $0" >&2
    exit 2
}
PEER="$(find_script peer_pytorch.py)"
TABLE="$(find_script compare_table.py)"

if [ -n "${MASKEDLM:-}" ]; then
    OURS=("$MASKEDLM")
else
    OURS=(cargo run --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin maskedlm --)
fi

mkdir -p "$OUTDIR"

COMMON=(--device "$DEVICE" --preset "$PRESET" --threads "$THREADS" --batch "$BATCH")
if [ -n "$INFER_BATCH" ]; then COMMON+=(--infer-batch "$INFER_BATCH"); fi
if [ "$QUICK" = 1 ]; then LENGTH_BATCHES=2; fi  # as peer_pytorch.py --quick, so both draw the same batches
if [ -n "$LENGTHS" ]; then
    COMMON+=(--lengths "$LENGTHS" --length-batches "$LENGTH_BATCHES")
fi
OURS_ARGS=(bench "${COMMON[@]}" --precision "$PRECISION" --json "$OUTDIR/ours.json")
PEER_ARGS=("${COMMON[@]}" --variant all --json "$OUTDIR/peer.json")
if [ -z "$LENGTHS" ]; then
    PEER_ARGS+=(--lengths "")  # no file: skip the real-data case on both sides
fi
if [ "$QUICK" = 1 ]; then
    OURS_ARGS+=(--repeats 1 --warmup 1)
    PEER_ARGS+=(--quick)
elif [ -n "$REPEATS" ]; then
    OURS_ARGS+=(--repeats "$REPEATS")
    PEER_ARGS+=(--repeats "$REPEATS")
fi
PEER_ARGS+=(${PEER_EXTRA[@]+"${PEER_EXTRA[@]}"})

echo "== ours: ${OURS[*]} ${OURS_ARGS[*]}"
"${OURS[@]}" "${OURS_ARGS[@]}" 2>&1 | tee "$OUTDIR/ours.log"
echo
echo "== PyTorch: python3 $PEER ${PEER_ARGS[*]}"
python3 "$PEER" "${PEER_ARGS[@]}" 2>&1 | tee "$OUTDIR/peer.log"
echo

TABLE_ARGS=()
if [ -n "${BF16_TFLOPS:-}" ]; then TABLE_ARGS+=(--bf16-tflops "$BF16_TFLOPS"); fi
python3 "$TABLE" "$OUTDIR/ours.json" "$OUTDIR/peer.json" ${TABLE_ARGS[@]+"${TABLE_ARGS[@]}"} > "$OUTDIR/table.txt"
python3 "$TABLE" "$OUTDIR/ours.json" "$OUTDIR/peer.json" --markdown ${TABLE_ARGS[@]+"${TABLE_ARGS[@]}"} > "$OUTDIR/table.md"
if [ "$MARKDOWN" = 1 ]; then cat "$OUTDIR/table.md"; else cat "$OUTDIR/table.txt"; fi
echo
echo "(ours.json, peer.json, logs and both tables in $OUTDIR)"
