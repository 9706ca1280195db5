#!/usr/bin/env python3
"""Writes a corpus and its tokenized dataset the way the reference's Python pipeline does.

The corpus is the functions of `tests/fixtures/tokenizer_expected.json` (plus a few too long for
the sequence length, so truncation is exercised), written with pandas as `id`, `name`,
`disassembly`. The dataset is that corpus tokenized with `tests/fixtures/tokenizer_reference.json`
(a tokenizer trained by the reference recipe) through the Python `tokenizers` package, with its
padding and truncation, and written with pandas as `id`, `tokens`, `mask` — what the reference's
`tokenize` produces. `tests/cli.rs` runs `maskedlm tokenize` on the same corpus and tokenizer and
requires identical rows.

    pip install tokenizers pandas pyarrow
    python3 scripts/pipeline_fixtures.py

Deterministic: the same files every run.
"""

import json
from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main() -> None:
    expected = json.loads((FIXTURES / "tokenizer_expected.json").read_text())
    functions = list(expected["corpus"])
    # Longer than the 64-token sequence length: the reference truncates them.
    functions.append(" [NEXT] ".join(functions[:4]))
    functions.append(" [NEXT] ".join(["mov rax qword [ rbp - 8 ]"] * 20))
    corpus = pd.DataFrame(
        {
            "id": [f"fixture:{i:#x}" for i in range(len(functions))],
            "name": [f"function_{i}" for i in range(len(functions))],
            "disassembly": functions,
        }
    )
    corpus.to_parquet(FIXTURES / "reference_corpus.parquet", index=False)

    tokenizer = Tokenizer.from_file(str(FIXTURES / "tokenizer_reference.json"))
    encodings = tokenizer.encode_batch(list(corpus["disassembly"]))
    dataset = pd.DataFrame(
        {
            "id": corpus["id"],
            "tokens": [e.ids for e in encodings],
            "mask": [e.attention_mask for e in encodings],
        }
    )
    dataset.to_parquet(FIXTURES / "reference_tokenized.parquet", index=False)
    print(f"{len(corpus)} functions -> reference_corpus.parquet, reference_tokenized.parquet")


if __name__ == "__main__":
    main()
