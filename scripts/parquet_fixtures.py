"""Write the Parquet fixtures that `tests/parquet.rs` reads, the way the reference's Python code does.

The reference builds its datasets from Python objects with pandas / pyarrow defaults, so the files
here are written the same way:

* ``tests/fixtures/parquet_corpus.parquet``: a corpus (``id``, ``name``, ``disassembly``, all
  strings) written by ``pandas.DataFrame.to_parquet`` with its defaults (pyarrow engine, Snappy).
  pandas >= 3 stores the strings as ``large_string``; pandas 2 as ``string``. Both are read.
* ``tests/fixtures/parquet_tokenized/part-0.parquet``: tokenized rows (``id``, ``tokens``,
  ``mask``) plus an extra ``source`` column, from a ``pandas.DataFrame`` of Python lists.
* ``tests/fixtures/parquet_tokenized/part-1.parquet``: more rows, from
  ``pyarrow.Table.from_pylist`` and ``pyarrow.parquet.write_table`` defaults, with an extra
  ``length`` integer column.
* ``tests/fixtures/parquet_expected.json``: the exact rows expected from the corpus and from the
  tokenized directory (``part-0`` rows then ``part-1`` rows), in order.

The script also checks that pyarrow stores ``tokens`` and ``mask`` as ``list<int64>``, the type
the Rust writer (``src/data/parquet.rs``) writes.

Regenerate (from the crate root; needs ``pip install pyarrow pandas``)::

    python3 scripts/parquet_fixtures.py

The output is deterministic apart from the writer version recorded in the Parquet footers.
"""

import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

CORPUS = [
    {"id": "libfoo.so:0x1000", "name": "main", "disassembly": "push rbp [NEXT] mov rbp rsp [NEXT] ret"},
    {"id": "libfoo.so:0x1040", "name": "", "disassembly": "xor eax eax [NEXT] ret"},
    {"id": "libfoo.so:0x1080", "name": "caf\u00e9_\u00fcnicode", "disassembly": "call 4096 [NEXT] add rax 42"},
    {"id": "bar:0x2000", "name": "helper", "disassembly": ""},
]

# (id, tokens, mask, extra) — tokens include the extremes of i32 to check the widening to int64 and
# back; the last row of each part is padded (mask 0).
PART0 = [
    ("a-0", [2, 17, 5, 9, 3], [1, 1, 1, 1, 1]),
    ("a-1", [2, 2147483647, 0, 0, 0], [1, 1, 0, 0, 0]),
    ("a-2", [2, 40, 3, 1, 1], [1, 1, 1, 0, 0]),
]
PART1 = [
    ("b-0", [2, -2147483648, 7, 8, 3], [1, 1, 1, 1, 1]),
    ("b-1", [2, 11, 12, 13, 3], [1, 1, 1, 1, 1]),
]


def main():
    os.makedirs(os.path.join(FIXTURES, "parquet_tokenized"), exist_ok=True)

    pd.DataFrame(CORPUS).to_parquet(os.path.join(FIXTURES, "parquet_corpus.parquet"))

    part0 = pd.DataFrame(
        {
            "id": [r[0] for r in PART0],
            "source": ["libfoo.so"] * len(PART0),
            "tokens": [r[1] for r in PART0],
            "mask": [r[2] for r in PART0],
        }
    )
    part0_path = os.path.join(FIXTURES, "parquet_tokenized", "part-0.parquet")
    part0.to_parquet(part0_path)

    part1 = pa.Table.from_pylist(
        [{"id": i, "tokens": t, "mask": m, "length": sum(m)} for i, t, m in PART1]
    )
    part1_path = os.path.join(FIXTURES, "parquet_tokenized", "part-1.parquet")
    pq.write_table(part1, part1_path)

    # The Rust writer writes list<int64>: check that is what Python writes for int lists.
    for path in (part0_path, part1_path):
        schema = pq.read_schema(path)
        for column in ("tokens", "mask"):
            t = schema.field(column).type
            assert pa.types.is_list(t) and t.value_type == pa.int64(), (path, column, t)

    expected = {
        "corpus": CORPUS,
        "tokenized": [{"id": i, "tokens": t, "mask": m} for i, t, m in PART0 + PART1],
    }
    # Check the files against the expectation with pyarrow itself.
    corpus = pq.read_table(os.path.join(FIXTURES, "parquet_corpus.parquet")).to_pylist()
    assert corpus == expected["corpus"], corpus
    tokenized = [
        {k: row[k] for k in ("id", "tokens", "mask")}
        for path in (part0_path, part1_path)
        for row in pq.read_table(path).to_pylist()
    ]
    assert tokenized == expected["tokenized"], tokenized

    with open(os.path.join(FIXTURES, "parquet_expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
