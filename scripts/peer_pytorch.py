#!/usr/bin/env python3
"""Times the PyTorch reference architecture on the shapes of `benches/cpu_model.rs`.

The model is `reference.py`'s (per-head q/k/v Linear modules, the reference's layout), fp32,
built from a size preset with a 5000-token vocabulary. It reports the same two figures as the
criterion bench: a forward pass producing logits at every position, and a training step
(forward with logits everywhere, cross-entropy over the ~15% labelled positions, backward, AdamW).

    python3 scripts/peer_pytorch.py --threads 2            # small preset, batch 8 x 512
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

PRESETS = {
    "tiny": dict(depth=2, hidden_dimensions=64, heads=4, intermediate_dimensions=256, sequence_length=128),
    "small": dict(depth=4, hidden_dimensions=256, heads=4, intermediate_dimensions=1024, sequence_length=512),
    "medium": dict(depth=12, hidden_dimensions=768, heads=12, intermediate_dimensions=3072, sequence_length=512),
}


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=PRESETS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = dict(PRESETS[args.preset], vocab_size=args.vocab, next_token_id=5, mask_token_id=4,
                  dropout=0.1, eps=1e-12, lr=1e-4, warmup=0.025)
    model = reference.MaskedLM(config)
    seq = config["sequence_length"]
    tokens = torch.randint(6, args.vocab, (args.batch, seq))
    mask = torch.ones(args.batch, seq, dtype=torch.long)
    labels = torch.full((args.batch, seq), -100)
    chosen = torch.rand(args.batch, seq) < 0.15
    labels[chosen] = tokens[chosen]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def forward():
        model.eval()
        with torch.no_grad():
            model(tokens, mask)

    def train_step():
        model.train()
        optimizer.zero_grad()
        reference.mlm_loss(model(tokens, mask), labels).backward()
        optimizer.step()

    forward_s = timed(forward, args.repeats)
    train_s = timed(train_step, args.repeats)
    n = args.batch * seq
    print(f"torch {torch.__version__}, {args.threads} threads, {args.preset} preset, batch {args.batch} x {seq}, fp32")
    print(f"forward_logits  {forward_s * 1e3:8.1f} ms  {n / forward_s:9.0f} tokens/s")
    print(f"train_step      {train_s * 1e3:8.1f} ms  {n / train_s:9.0f} tokens/s")


if __name__ == "__main__":
    main()
