#!/usr/bin/env python3
"""Loads a checkpoint directory written by `maskedlm` into the PyTorch reference architecture.

The model is built from the checkpoint's `config.json` with the modules of `reference.py`
(per-head q/k/v Linear layers, the reference's state_dict names), the weights are loaded from
`model.safetensors` with `load_state_dict(strict=True)`, and the logits for the given token ids
are printed as JSON, so a caller can compare them with the Rust model's.

    python3 scripts/load_in_pytorch.py CHECKPOINT_DIR 6 7 5 8 4 9
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("tokens", type=int, nargs="+", help="one sequence of token ids")
    args = parser.parse_args()

    config = json.loads((args.checkpoint / "config.json").read_text())
    model = reference.MaskedLM(config).eval()
    # strict=True: every name must match in both directions, with identical shapes.
    model.load_state_dict(load_file(str(args.checkpoint / "model.safetensors")), strict=True)

    tokens = torch.tensor([args.tokens])
    # The reference requires full-length input, so pad with [PAD] = 0 and mask the padding out.
    length = config["sequence_length"]
    padded = torch.zeros(1, length, dtype=torch.long)
    padded[0, : tokens.shape[1]] = tokens
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[0, : tokens.shape[1]] = 1
    with torch.no_grad():
        logits = model(padded, mask)[0, : tokens.shape[1]]
    json.dump({"logits": logits.tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
