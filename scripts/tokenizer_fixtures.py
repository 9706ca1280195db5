#!/usr/bin/env python3
"""The reference tokenizer recipe in Python, used to make the Rust tokenizer's test fixtures.

This script trains undertale's tokenizer exactly as the reference (`undertale.models.tokenizer` /
`undertale.models.item.tokenizer`) does, with the Hugging Face `tokenizers` package, on a small
hand-written corpus of pre-tokenized x86-64 functions, and writes:

- `tests/fixtures/tokenizer_reference.json`: the trained `tokenizer.json`, written by the
  reference's own `tokenizer.save(path)` (pretty JSON);
- `tests/fixtures/tokenizer_expected.json`: the corpus (with how many copies of each function
  the training saw), the training settings, the `tokenizers` version, a list of probe inputs and,
  for each, the Python encoding (`ids`, `attention_mask`, token strings, whether it was
  truncated) and the Python decode as the reference prints it
  (`tokenizer.decode(ids, skip_special_tokens=False).replace("[PAD]", "").strip()`), a few more
  decodes of hand-made id lists, and a second tokenizer trained on a tiny corpus of edge cases
  (`edge`: signed and underscored immediates, Python-only whitespace, special tokens in the
  corpus).

The recipe (SPEC.md, "Tokens and special ids"):

1. Split every text with `str.split()`. A token for which `int(token)` succeeds is an
   *immediate*; every other token (mnemonics, registers, `[`, `]`, `+`, `-`, `*`, size words,
   `rel`, and `[NEXT]` itself) is a *word*. Both are counted in dicts, so they keep the order of
   first appearance.
2. `Tokenizer(BPE(unk_token="[UNK]"))` with the `Whitespace` pre-tokenizer, trained with
   `BpeTrainer(special_tokens=SPECIAL_TOKENS, vocab_size=..., continuing_subword_prefix="__")` on
   the immediates only (each immediate yielded as many times as it was seen).
3. `add_tokens(list(words))` (first-appearance order), then `add_special_tokens(SPECIAL_TOKENS)`.
4. `enable_padding(length=sequence_length)`, `enable_truncation(max_length=sequence_length)`.

Canonical numbering. The `tokenizers` BPE trainer is not reproducible from run to run: it gives the
initial continuing-subword tokens (`__0` .. `__9`, one per character that is seen after the first
character of a word) their ids in the iteration order of a randomly seeded hash map, so two runs on
the same corpus number them differently; and when two candidate merges have the same count, the tie
is broken by those ids, so with ties the merges themselves can differ. The Rust side does the same
(it is the same library). To make both sides deterministic and comparable, this script (and
`InstructionTokenizer::train` in Rust) renumbers that block of ids in code-point order of the
tokens, which is what the trainer produces in a run whose hash order happens to visit the
characters in that order. The corpus and vocab size below are chosen so that no merge depends on a
tie: the script trains `TRIALS` times and fails unless every run, renumbered, is identical, so the
fixture is one tokenizer the reference recipe produces, and Rust's training must reproduce it
exactly.

Regenerate with:

    python3 scripts/tokenizer_fixtures.py            # writes tests/fixtures/
    python3 scripts/tokenizer_fixtures.py --out DIR  # writes DIR/tokenizer_*.json

Requires `tokenizers` (`pip install tokenizers==0.22.2`, the version of the Rust crate the project
uses). The output is deterministic: two runs give identical bytes.
"""

import argparse
import json
from pathlib import Path

try:
    import tokenizers
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.trainers import BpeTrainer
except ImportError as e:  # pragma: no cover
    raise SystemExit(f"{e}: pip install tokenizers==0.22.2") from e

TOKEN_PAD = "[PAD]"
TOKEN_UNKNOWN = "[UNK]"
TOKEN_SEPARATOR = "[SEP]"
TOKEN_CLASSIFY = "[CLS]"
TOKEN_MASK = "[MASK]"
TOKEN_NEXT = "[NEXT]"

SPECIAL_TOKENS = [
    TOKEN_PAD,
    TOKEN_UNKNOWN,
    TOKEN_SEPARATOR,
    TOKEN_CLASSIFY,
    TOKEN_MASK,
    TOKEN_NEXT,
]

PREFIX = "__"
VOCAB_SIZE = 96
SEQUENCE_LENGTH = 64
TRIALS = 24

# How many copies of each function the training corpus holds (the same function turns up in many
# binaries). Without them the 54 functions give so few distinct pair counts that the fifth merge
# already depends on a tie; with them no merge up to a vocab size of 97 does (98 and above do).
COPIES = [
    27, 7, 18, 25, 27, 13, 24, 18, 3, 12, 28, 11, 27, 30, 21, 33, 34, 23, 2, 24, 34, 39, 15, 37, 16,
    15, 19, 34, 23, 32, 8, 33, 21, 15, 3, 40, 14, 9, 21, 8, 33, 35, 1, 29, 38, 34, 38, 24, 15, 7, 8,
    26, 10, 32,
]

# Hand-written functions in the corpus writer's format: one instruction per line, mnemonics,
# registers, brackets, operators, size words and `rel` as tokens of their own, every number a
# non-negative decimal integer (branch targets and RIP-relative addresses absolute, around a
# .text at 0x401000 = 4198400 and a .data at 0x404000 = 4210688).
FUNCTIONS = """
push rbp
mov rbp rsp
mov dword [ rbp - 20 ] edi
mov eax dword [ rbp - 20 ]
add eax 1
pop rbp
ret

push rbp
mov rbp rsp
sub rsp 16
mov qword [ rbp - 8 ] rdi
mov rax qword [ rbp - 8 ]
mov rdi rax
call 4198400
leave
ret

endbr64
xor eax eax
ret

endbr64
push rbx
mov rbx rdi
test rdi rdi
je 4198496
mov rdi qword [ rbx + 8 ]
call 4198528
mov rdi rbx
pop rbx
jmp 4198528
pop rbx
ret

push rbp
mov rbp rsp
mov dword [ rbp - 4 ] 0
jmp 4198448
add dword [ rbp - 4 ] 1
cmp dword [ rbp - 4 ] 9
jle 4198440
mov eax dword [ rbp - 4 ]
pop rbp
ret

sub rsp 8
mov rax qword [ rel 4210688 ]
test rax rax
je 4198418
call rax
add rsp 8
ret

push r12
push rbp
push rbx
mov rbp rdi
mov r12 rsi
mov ebx 0
cmp rbx r12
jae 4198640
movzx eax byte [ rbp + rbx + 0 ]
add rbx 1
jmp 4198620
pop rbx
pop rbp
pop r12
ret

mov eax 4294967295
ret

lea rax [ rel 4210696 ]
ret

push rbp
mov rbp rsp
sub rsp 32
mov qword [ rbp - 24 ] rdi
mov qword [ rbp - 32 ] rsi
mov rax qword [ fs + 40 ]
mov qword [ rbp - 8 ] rax
xor eax eax
mov rdx qword [ rbp - 32 ]
mov rax qword [ rbp - 24 ]
mov rsi rdx
mov rdi rax
call 4199008
mov rdx qword [ rbp - 8 ]
sub rdx qword [ fs + 40 ]
je 4199104
call 4198464
leave
ret

endbr64
mov eax edi
imul eax esi
ret

endbr64
lea eax [ rdi + rsi * 1 ]
ret

endbr64
mov rax rdi
shr rax 63
add rax rdi
sar rax 1
ret

endbr64
cmp edi 255
ja 4199280
mov eax edi
ret
mov eax 255
ret

push r15
push r14
push r13
push r12
push rbp
push rbx
sub rsp 4136
mov rax qword [ fs + 40 ]
mov qword [ rsp + 4120 ] rax
xor eax eax
lea rdi [ rsp + 16 ]
mov edx 4096
xor esi esi
call 4198656
mov rax qword [ rsp + 4120 ]
sub rax qword [ fs + 40 ]
jne 4199488
add rsp 4136
pop rbx
pop rbp
pop r12
pop r13
pop r14
pop r15
ret

endbr64
movsxd rsi esi
lea rax [ rdi + rsi * 8 ]
mov rax qword [ rax ]
ret

endbr64
test esi esi
jle 4199560
lea eax [ rsi - 1 ]
lea rdx [ rdi + rax * 4 + 4 ]
xor eax eax
add eax dword [ rdi ]
add rdi 4
cmp rdi rdx
jne 4199540
ret
xor eax eax
ret

endbr64
movzx eax byte [ rdi ]
test al al
je 4199616
mov rdx rdi
add rdx 1
cmp byte [ rdx ] 0
jne 4199596
sub rdx rdi
mov rax rdx
ret
xor eax eax
ret

endbr64
push rbx
mov ebx edi
mov edi 16
call 4198672
test rax rax
je 4199680
mov dword [ rax ] ebx
mov qword [ rax + 8 ] 0
pop rbx
ret

endbr64
mov rax qword [ rel 4210720 ]
add rax 1
mov qword [ rel 4210720 ] rax
ret

endbr64
movss xmm0 dword [ rdi ]
addss xmm0 dword [ rsi ]
movss dword [ rdx ] xmm0
ret

endbr64
pxor xmm0 xmm0
cvtsi2sd xmm0 edi
mulsd xmm0 qword [ rel 4206600 ]
ret

endbr64
movdqu xmm0 xmmword [ rsi ]
movups xmmword [ rdi ] xmm0
ret

push rbp
mov rbp rsp
mov qword [ rbp - 24 ] rdi
mov qword [ rbp - 8 ] 0
jmp 4199936
add qword [ rbp - 8 ] 1
mov rax qword [ rbp - 24 ]
mov rdx qword [ rbp - 8 ]
movzx eax byte [ rax + rdx ]
test al al
jne 4199920
mov rax qword [ rbp - 8 ]
pop rbp
ret

endbr64
lock add dword [ rdi ] 1
ret

endbr64
mov eax 1
lock xadd dword [ rdi ] eax
add eax 1
ret

endbr64
mov rcx rdx
mov rax rdi
rep movsb
ret

endbr64
mov rcx rdx
movzx eax sil
mov rdx rdi
rep stosb
mov rax rdx
ret

endbr64
cmp rdi rsi
mov rax rsi
cmovbe rax rdi
ret

endbr64
xor eax eax
cmp edi esi
setl al
ret

endbr64
mov eax edi
cdq
idiv esi
mov eax edx
ret

endbr64
mov eax edi
xor edx edx
div esi
ret

endbr64
movabs rax 81985529216486895
xor rax rdi
ret

endbr64
mov rax rdi
and eax 4095
ret

endbr64
add rsp 18446744073709551608
mov edi 1
call 4198704
add rsp 8
ret

push rbp
mov rbp rsp
push rbx
sub rsp 24
mov dword [ rbp - 20 ] edi
cmp dword [ rbp - 20 ] 1
jg 4200320
mov eax 1
jmp 4200368
mov eax dword [ rbp - 20 ]
sub eax 1
mov edi eax
call 4200288
mov ebx eax
mov eax dword [ rbp - 20 ]
sub eax 2
mov edi eax
call 4200288
add eax ebx
mov rbx qword [ rbp - 8 ]
leave
ret

endbr64
lea rdi [ rel 4206592 ]
jmp 4198720

endbr64
sub rsp 8
lea rsi [ rel 4206608 ]
mov edi 2
xor eax eax
call 4198736
mov edi 1
call 4198704

endbr64
mov eax dword [ rdi + 12 ]
shl eax 4
or eax dword [ rdi + 8 ]
ret

endbr64
bswap edi
mov eax edi
ret

endbr64
movzx eax di
rol ax 8
ret

endbr64
mov rax qword [ rdi ]
mov rdx qword [ rdi + 8 ]
mov qword [ rdi ] rdx
mov qword [ rdi + 8 ] rax
ret

endbr64
test edi edi
js 4200512
mov eax edi
ret
mov eax edi
neg eax
ret

nop
nop dword [ rax ]
nop word [ rax + rax + 0 ]
ret

endbr64
push rbp
mov rbp rsp
fld tword [ rbp + 16 ]
fld tword [ rbp + 32 ]
faddp st1 st0
pop rbp
ret

endbr64
vmovdqu ymm0 ymmword [ rsi ]
vpaddd ymm0 ymm0 ymmword [ rdx ]
vmovdqu ymmword [ rdi ] ymm0
vzeroupper
ret

endbr64
mov eax 60
syscall
ret

endbr64
call rel 5
pop rax
ret

endbr64
push rbx
mov rbx rdi
mov rdi qword [ rdi ]
call 4198528
mov qword [ rbx ] 0
pop rbx
ret

endbr64
mov eax dword [ rel 4210728 ]
cmp eax 100
jg 4200800
add eax 1
mov dword [ rel 4210728 ] eax
ret
mov dword [ rel 4210728 ] 0
ret

endbr64
xor eax eax
test rdi rdi
sete al
ret

endbr64
lea rax [ rdi + rdi * 2 ]
shl rax 3
ret

endbr64
sub rsp 24
mov qword [ rsp + 8 ] rdi
lea rdi [ rsp + 8 ]
call 4201024
add rsp 24
ret

endbr64
push rbp
mov rbp rsp
sub rsp 65536
or qword [ rsp ] 0
sub rsp 1024
mov rsp rbp
pop rbp
ret
"""


def corpus():
    """The fixture corpus: one pre-tokenized text per function, `[NEXT]` between instructions."""

    functions = []
    for block in FUNCTIONS.strip().split("\n\n"):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        functions.append(f" {TOKEN_NEXT} ".join(lines))
    return functions


def is_integer(token):
    """The reference's test: `int(token)` succeeds."""

    try:
        int(token)
        return True
    except ValueError:
        return False


def train(texts, vocab_size, sequence_length):
    """The reference recipe, as `undertale.models.item.tokenizer.train` (plus padding and
    truncation as `undertale.models.tokenizer.train_tokenizer`), without renumbering."""

    tokenizer = Tokenizer(BPE(unk_token=TOKEN_UNKNOWN))
    tokenizer.pre_tokenizer = Whitespace()

    trainer = BpeTrainer(
        special_tokens=SPECIAL_TOKENS,
        vocab_size=vocab_size,
        continuing_subword_prefix=PREFIX,
        show_progress=False,
    )

    tokens, immediates = {}, {}
    for text in texts:
        for token in text.split():
            counts = immediates if is_integer(token) else tokens
            counts[token] = counts.get(token, 0) + 1

    def build_tokenizer_trainer(dictionary):
        for token, count in dictionary.items():
            for _ in range(count):
                yield token

    tokenizer.train_from_iterator(build_tokenizer_trainer(immediates), trainer=trainer)

    tokenizer.add_tokens(list(tokens))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)

    tokenizer.enable_padding(length=sequence_length)
    tokenizer.enable_truncation(max_length=sequence_length)

    return tokenizer


def canonical(tokenizer):
    """Renumbers the trainer's initial continuing-subword tokens in code-point order.

    Those are the model tokens that are neither special, nor a single character (the alphabet),
    nor the result of a merge; the trainer gives them one contiguous block of ids, in hash order.
    Returns the renumbered tokenizer (loaded back from its JSON, so it is exactly what the file
    holds).
    """

    data = json.loads(tokenizer.to_str())
    model = data["model"]
    vocab = model["vocab"]
    merged = set()
    for a, b in model["merges"]:
        merged.add(a + (b[len(PREFIX) :] if b.startswith(PREFIX) else b))
    block = [
        t
        for t in vocab
        if t not in SPECIAL_TOKENS and len(t) != 1 and t not in merged
    ]
    ids = sorted(vocab[t] for t in block)
    if ids and ids != list(range(ids[0], ids[0] + len(ids))):
        raise SystemExit(f"continuing-subword block is not contiguous: {ids}")
    for token, id in zip(sorted(block), ids):
        vocab[token] = id
    model["vocab"] = dict(sorted(vocab.items(), key=lambda item: item[1]))
    return Tokenizer.from_str(json.dumps(data))


def decode(tokenizer, ids):
    """As the reference prints a decode: special tokens kept, `[PAD]` text removed, stripped."""

    return tokenizer.decode(ids, skip_special_tokens=False).replace(TOKEN_PAD, "").strip()


def probes(texts):
    """Inputs whose encodings the Rust side must reproduce."""

    long = f" {TOKEN_NEXT} ".join(texts[1].split(f" {TOKEN_NEXT} ") * 6)
    return [
        texts[0],
        texts[1],
        texts[13],
        "push rbp [NEXT] mov rbp rsp [NEXT] mov eax 4096 [NEXT] ret",
        "mov eax 4198400 [NEXT] call 4198528 [NEXT] ret",
        # Integers never seen in training, small and large, with leading zeros.
        "mov eax 7 [NEXT] mov rax 123456789012345 [NEXT] add rsp 0009 [NEXT] ret",
        "mov eax 3735928559",
        # Masked positions, as the collator and inference write them.
        "push rbp [NEXT] [MASK] rbp rsp [NEXT] mov eax [MASK] [NEXT] ret",
        "[MASK] [MASK] [MASK]",
        # Every special token written in the text.
        "[PAD] [UNK] [SEP] [CLS] [MASK] [NEXT]",
        # Unknown words: unseen mnemonics and registers, and words that contain known tokens
        # (added tokens are matched inside words, before pre-tokenization: `ax` in `rax`, ...).
        "vfmadd231ps zmm1 zmm2 zmm3 [NEXT] ret",
        "mov r11d eax [NEXT] mov rax r11",
        "raxeax ax rax xax eaxx [NEXT] movss movsxd movs",
        "mov eax4096 [NEXT] mov rax-8 [NEXT] lea rdi [rsp+16]",
        # Signs: `int()` accepts them, so the reference trains on `-16`/`+16` as immediates,
        # but the Whitespace pre-tokenizer splits the sign off.
        "add rsp -16 [NEXT] sub rsp +16 [NEXT] mov eax 1_000",
        "pushrbp [NEXT] MOV RAX RBX [NEXT] mov\trax\nrbx",
        "",
        "   ",
        long,
        " ".join(["4198400"] * 70),
    ]


def encoding_record(tokenizer, text):
    encoding = tokenizer.encode(text)
    return {
        "text": text,
        "ids": encoding.ids,
        "attention_mask": encoding.attention_mask,
        "tokens": encoding.tokens,
        "truncated": len(encoding.overflowing) > 0,
        "decoded": decode(tokenizer, encoding.ids),
    }


# A second, tiny training corpus for the edge cases of the recipe: signed and underscored
# immediates (`int()` accepts them; the pre-tokenizer splits the sign off, so `-` is both a BPE
# token and a word), Python-only whitespace (`\x1c` and the ideographic space split in
# `str.split()`), and special tokens written in the corpus. Small enough to be tie-free.
EDGE_CORPUS = [
    "add rsp -16 [NEXT] sub rsp +8 [NEXT] mov eax 1_000 [NEXT] ret",
    "mov rax qword [ rbp - 8 ] [NEXT] mov\x1ceax 42\u3000[NEXT] ret",
    "lea rdi [ rel 4210688 ] [NEXT] mov ecx -1 [NEXT] [MASK] rax [NEXT] add rsp 16",
]
EDGE_VOCAB_SIZE = 25
EDGE_SEQUENCE_LENGTH = 16


def reproducible(texts, vocab_size, sequence_length):
    """Trains `TRIALS + 1` times; the canonical tokenizer, or an error if the runs disagree."""

    tokenizer = canonical(train(texts, vocab_size, sequence_length))
    reference = tokenizer.to_str(pretty=True)
    for trial in range(TRIALS):
        again = canonical(train(texts, vocab_size, sequence_length)).to_str(pretty=True)
        if again != reference:
            raise SystemExit(
                f"training is not reproducible (trial {trial}, vocab size {vocab_size}): some "
                "merge depends on a tie; change the corpus or the vocab size"
            )
    return tokenizer


def dumps(value, indent=0):
    """JSON with short lists of scalars on one line, so the fixture stays readable and small."""

    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(value, dict):
        items = [
            f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"
    if isinstance(value, list) and any(
        isinstance(v, (dict, list)) or (isinstance(v, str) and len(v) > 20) for v in value
    ):
        items = [f"{inner}{dumps(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        default=Path(__file__).resolve().parent.parent / "tests" / "fixtures",
        type=Path,
        help="output directory (default: tests/fixtures)",
    )
    arguments = parser.parse_args()

    texts = corpus()
    assert len(COPIES) == len(texts), (len(COPIES), len(texts))
    training = [text for text, copies in zip(texts, COPIES) for _ in range(copies)]

    tokenizer = reproducible(training, VOCAB_SIZE, SEQUENCE_LENGTH)
    edge = reproducible(EDGE_CORPUS, EDGE_VOCAB_SIZE, EDGE_SEQUENCE_LENGTH)

    # Special tokens first, as the reference's trainer puts them.
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, token
        assert edge.token_to_id(token) == i, token

    expected = {
        "tokenizers_version": tokenizers.__version__,
        "vocab_size": VOCAB_SIZE,
        "sequence_length": SEQUENCE_LENGTH,
        "total_vocab_size": tokenizer.get_vocab_size(),
        # The training corpus is each text repeated `copies` times, in this order.
        "corpus": texts,
        "copies": COPIES,
        "probes": [encoding_record(tokenizer, text) for text in probes(texts)],
        # Decodes of hand-made id lists, including [PAD] between other tokens.
        "decodes": [
            {"ids": ids, "decoded": decode(tokenizer, ids)}
            for ids in [
                [],
                [0, 0, 0],
                [3, 5, 0, 4, 0, 2],
                list(range(tokenizer.get_vocab_size())),
            ]
        ],
        "edge": {
            "corpus": EDGE_CORPUS,
            "vocab_size": EDGE_VOCAB_SIZE,
            "sequence_length": EDGE_SEQUENCE_LENGTH,
            "tokenizer": json.loads(edge.to_str()),
        },
    }

    arguments.out.mkdir(parents=True, exist_ok=True)
    # Written by the reference's own `save` (pretty JSON).
    tokenizer.save(str(arguments.out / "tokenizer_reference.json"))
    (arguments.out / "tokenizer_expected.json").write_text(dumps(expected) + "\n")
    print(
        f"wrote {arguments.out}/tokenizer_reference.json "
        f"({tokenizer.get_vocab_size()} tokens) and tokenizer_expected.json "
        f"({len(expected['probes'])} probes) with tokenizers {tokenizers.__version__}"
    )


if __name__ == "__main__":
    main()
