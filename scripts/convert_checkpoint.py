#!/usr/bin/env python3
"""Converts between a reference Lightning checkpoint (`.ckpt`) and a `maskedlm` checkpoint directory.

A Lightning checkpoint of the reference's `InstructionTraceTransformerEncoderForMaskedLM` holds the
model's parameters under `state_dict` (the names listed in the specification, per-head q/k/v
included) and its constructor arguments under `hyper_parameters`. A `maskedlm` checkpoint
directory holds the same tensors in `model.safetensors` and the same arguments in `config.json`,
so conversion only moves tensors and keys; no value changes. A directory may also hold the
tokenizer the model was trained with (`tokenizer.json`): `to-dir --tokenizer` copies it in, which
makes the directory self-contained; `to-ckpt` leaves it out (a Lightning checkpoint has no place
for it).

    python3 scripts/convert_checkpoint.py to-dir  model.ckpt  CHECKPOINT_DIR [--tokenizer tokenizer.json]
    python3 scripts/convert_checkpoint.py to-ckpt CHECKPOINT_DIR model.ckpt

Needs torch and safetensors.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_KEYS = [
    "depth",
    "hidden_dimensions",
    "vocab_size",
    "sequence_length",
    "heads",
    "intermediate_dimensions",
    "next_token_id",
    "mask_token_id",
    "dropout",
    "eps",
    "lr",
    "warmup",
]
# The reference constructor's defaults for the optional arguments.
DEFAULTS = {"lr": 1e-4, "warmup": 0.025}


def to_dir(ckpt_path: Path, out: Path, tokenizer: Path | None = None) -> None:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        sys.exit(f"{ckpt_path}: not a Lightning checkpoint (no state_dict / hyper_parameters)")
    hp = dict(ckpt["hyper_parameters"])
    missing = [k for k in CONFIG_KEYS if k not in hp and k not in DEFAULTS]
    if missing:
        sys.exit(f"{ckpt_path}: hyper_parameters lack {', '.join(missing)}")
    config = {k: hp.get(k, DEFAULTS.get(k)) for k in CONFIG_KEYS}
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in ckpt["state_dict"].items()}
    # Written beside the destination, then renamed into place, like maskedlm's own checkpoints.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)
    print(f"{ckpt_path} -> {out} ({len(tensors)} tensors)")


def to_ckpt(directory: Path, out: Path) -> None:
    config = json.loads((directory / "config.json").read_text())
    state_dict = load_file(str(directory / "model.safetensors"))
    ckpt = {
        "state_dict": state_dict,
        "hyper_parameters": config,
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "2.0.0",
    }
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out)
    print(f"{directory} -> {out} ({len(state_dict)} tensors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-dir", help="Lightning .ckpt -> checkpoint directory")
    a.add_argument("ckpt", type=Path)
    a.add_argument("directory", type=Path)
    a.add_argument("--tokenizer", type=Path, help="the model's tokenizer.json, copied into the directory")
    b = sub.add_parser("to-ckpt", help="checkpoint directory -> Lightning .ckpt")
    b.add_argument("directory", type=Path)
    b.add_argument("ckpt", type=Path)
    args = parser.parse_args()
    if args.command == "to-dir":
        to_dir(args.ckpt, args.directory, args.tokenizer)
    else:
        to_ckpt(args.directory, args.ckpt)


if __name__ == "__main__":
    main()
