#!/usr/bin/env python3
"""One table comparing `maskedlm bench --json` (ours) with `scripts/peer_pytorch.py --json` (PyTorch).

    python3 scripts/compare_table.py OURS.json PEER.json              # plain text
    python3 scripts/compare_table.py OURS.json PEER.json --markdown   # for docs/PERFORMANCE.md

Both files hold `{"implementation", "device", "preset", "results": [{"variant", "metric", "value",
"unit", "batch", "seq", "note"}, ...]}`. Rows are the metrics; columns are every variant of ours and
of the peer, then ratios of ours against the peer's reference-fp32, reference-bf16 and best. Each
ratio pairs the peer column with our variant of the same precision (f32 against reference-fp32; bf16,
where we measured it, against the bf16 ones), and is oriented so that > 1 always means ours is
better: ours / peer for throughputs, peer / ours for latency and memory.

If the card's measured bf16 matrix rate is known (`--bf16-tflops`, or `bf16_matmul_tflops` in our
file) and our training records carry `model_flops_per_token`, an MFU row is added: tokens/s x FLOPs/token / peak FLOP/s.
"""

import argparse
import json
import sys

# (metric, row label, True when higher is better)
METRICS = [
    ("train_tokens_per_s", "training, tokens/s", True),
    ("infer_latency_b1_ms", "inference latency, batch 1, ms", False),
    ("infer_tokens_per_s_b64", "inference throughput, batch 64, tokens/s", True),
    ("peak_memory_mib", "peak memory in training, MiB", False),
    ("lengths_pad512_real_tokens_per_s", "real lengths, padded to sequence length, real tokens/s", True),
    ("lengths_padlongest_real_tokens_per_s", "real lengths, padded to longest, real tokens/s", True),
    ("lengths_eval_real_tokens_per_s", "real lengths, evaluation, real tokens/s", True),
    ("lengths_infer_real_tokens_per_s", "real lengths, inference, real tokens/s", True),
]
PEER_BASELINES = ["reference-fp32", "reference-bf16", "best"]
NOT_MEASURED = "not measured"


def load(path):
    with open(path) as f:
        data = json.load(f)
    data.setdefault("results", [])
    return data


def variants_of(data):
    """Variant names in the order they first appear."""
    seen = []
    for r in data["results"]:
        if r["variant"] not in seen:
            seen.append(r["variant"])
    return seen


def index(data):
    return {(r["variant"], r["metric"]): r for r in data["results"]}


def fmt(value):
    """A figure with about three significant digits, thousands separated."""
    if value is None:
        return NOT_MEASURED
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cell(record):
    if record is None:
        return NOT_MEASURED
    if record.get("value") is None:
        return "failed"
    return fmt(record["value"])


def ours_for(peer_variant, ours_variants):
    """Our variant compared with a peer column: the same precision, falling back to what we have."""
    wanted = ["f32", "bf16"] if peer_variant == "reference-fp32" else ["bf16", "f32"]
    return next((v for v in wanted if v in ours_variants), ours_variants[0] if ours_variants else None)


def ratio(ours_record, peer_record, higher_is_better):
    values = [r.get("value") if r else None for r in (ours_record, peer_record)]
    if None in values or 0 in values:
        return NOT_MEASURED
    ours, peer = values
    return f"{(ours / peer if higher_is_better else peer / ours):.2f}x"


def mfu_row(ours, peer, ours_variants, peer_variants, ratio_columns):
    """MFU of every column, from our FLOPs-per-token figure (the model's, so it holds for the peer
    too) and our measured bf16 matrix rate; None when either is missing."""
    tflops = ours.get("bf16_matmul_tflops")
    ours_index, peer_index = index(ours), index(peer)
    flops = {v: (ours_index.get((v, "train_tokens_per_s")) or {}).get("model_flops_per_token") for v in ours_variants}
    any_flops = next((f for f in flops.values() if f), None)
    if not tflops or not any_flops:
        return None

    def mfu(record, flops_per_token):
        if record is None or record.get("value") is None or not flops_per_token:
            return NOT_MEASURED
        return f"{100 * record['value'] * flops_per_token / (tflops * 1e12):.1f}%"

    cells = [mfu(ours_index.get((v, "train_tokens_per_s")), flops[v] or any_flops) for v in ours_variants]
    cells += [mfu(peer_index.get((v, "train_tokens_per_s")), any_flops) for v in peer_variants]
    cells += [""] * len(ratio_columns)
    return [f"training MFU (% of the measured {tflops:.3g} TFLOP/s bf16)"] + cells


def describe(data, name):
    """'PyTorch 2.x on cuda: H100 (preset medium, train batch 32)' from a file's header and records."""
    train = next((r for r in data["results"] if r["metric"] == "train_tokens_per_s"), None)
    parts = [f"preset {data.get('preset', '?')}"]
    if train:
        parts.append(f"train batch {train.get('batch')} x {train.get('seq')}")
    infer = next((r for r in data["results"] if r["metric"] == "infer_tokens_per_s_b64"), None)
    if infer and infer.get("batch") not in (None, 64):
        parts.append(f"inference throughput at batch {infer['batch']}")
    version = f" {data['torch']}" if data.get("torch") else ""
    return f"{name}{version} on {data.get('device', 'unknown device')} ({', '.join(parts)})"


def memory_notes(data, name):
    """What each side's memory figure is (allocator peak or process RSS): one line per variant, or one
    line for all of a side's variants when their notes agree."""
    notes = {r["variant"]: r["note"] for r in data["results"] if r["metric"] == "peak_memory_mib" and r.get("note")}
    if len(set(notes.values())) == 1:
        return [f"peak memory, {name}: {next(iter(notes.values()))}"]
    return [f"peak memory, {name} {variant}: {note}" for variant, note in notes.items()]


def mismatches(ours, peer):
    """Differences in setup that make a row unfair to compare, said out loud."""
    found = []
    if ours.get("preset") != peer.get("preset"):
        found.append(f"presets differ (ours {ours.get('preset')}, peer {peer.get('preset')})")
    if ours.get("device", "").split(":")[0] != peer.get("device", "").split(":")[0]:
        found.append(f"devices differ (ours {ours.get('device')}, peer {peer.get('device')})")
    ours_index, peer_index = index(ours), index(peer)
    for metric, label, _ in METRICS:
        shapes = {(r.get("batch"), r.get("seq")) for (v, m), r in list(ours_index.items()) + list(peer_index.items())
                  if m == metric}
        if len(shapes) > 1:
            found.append(f"{label}: batch x seq differ between records: {sorted(shapes, key=str)}")
    return found


def build(ours, peer):
    ours_variants, peer_variants = variants_of(ours), variants_of(peer)
    ours_index, peer_index = index(ours), index(peer)
    ratio_columns = [(ours_for(p, ours_variants), p) for p in PEER_BASELINES if p in peer_variants]
    header = (["metric"] + [f"ours {v}" for v in ours_variants] + [f"PyTorch {v}" for v in peer_variants]
              + [f"ours {o} vs {p}" for o, p in ratio_columns])
    rows = []
    for metric, label, higher in METRICS:
        row = [f"{label} ({'higher' if higher else 'lower'} is better)"]
        row += [cell(ours_index.get((v, metric))) for v in ours_variants]
        row += [cell(peer_index.get((v, metric))) for v in peer_variants]
        row += [ratio(ours_index.get((o, metric)), peer_index.get((p, metric)), higher) for o, p in ratio_columns]
        rows.append(row)
    extra = mfu_row(ours, peer, ours_variants, peer_variants, ratio_columns)
    if extra:
        rows.append(extra)
    caption = [
        f"Ours: {describe(ours, ours.get('implementation', 'undertale-maskedlm'))}.",
        f"Peer: {describe(peer, 'PyTorch')}.",
        "Ratio columns compare our variant of the same precision with each PyTorch variant, oriented so that "
        "> 1 always means ours is better: ours / PyTorch for throughputs (higher is better), PyTorch / ours "
        "for latency and memory (lower is better).",
    ]
    caption += memory_notes(ours, "ours") + memory_notes(peer, "PyTorch")
    caption += [f"Warning: {m}." for m in mismatches(ours, peer)]
    return header, rows, caption


def render_text(header, rows, caption):
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out + [""] + caption)


def render_markdown(header, rows, caption):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out + [""] + [c + "  " if i < len(caption) - 1 else c for i, c in enumerate(caption)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("ours", help="JSON written by `maskedlm bench --json`")
    parser.add_argument("peer", help="JSON written by `scripts/peer_pytorch.py --json`")
    parser.add_argument("--markdown", action="store_true", help="a GitHub markdown table")
    parser.add_argument("--bf16-tflops", type=float,
                        help="the card's measured bf16 matrix rate (gpu-check.sh measures it), for the MFU row")
    args = parser.parse_args()
    try:
        ours, peer = load(args.ours), load(args.peer)
    except (OSError, json.JSONDecodeError) as error:
        sys.exit(f"compare_table.py: {error}")
    if args.bf16_tflops:
        ours["bf16_matmul_tflops"] = args.bf16_tflops
    header, rows, caption = build(ours, peer)
    print((render_markdown if args.markdown else render_text)(header, rows, caption))


if __name__ == "__main__":
    main()
