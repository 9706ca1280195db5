#!/usr/bin/env python3
"""PyTorch reference for undertale's masked language model, used to make the Rust test fixture.

This is a small, self-contained re-implementation of the reference architecture
(`InstructionTraceTransformerEncoderForMaskedLM` from the `undertale` package) written from
shared/SPEC.md. Its modules are named so that `state_dict()` keys are exactly the reference's
parameter names, so the Rust side can load the same tensors by name.

It builds a tiny model in float64, runs it on a fixed padded batch, and writes
`tests/fixtures/tiny_reference.safetensors` holding:

- `param.<key>`   every parameter (the model's state_dict),
- `input.tokens`, `input.mask`, `input.labels` (int64 [3, 16]),
- `output.logits` (float64 [3, 16, 40]) and `output.loss` (float64 [1]),
- `grad.<key>`    the gradient of that loss for every parameter,
- `adamw.<key>`   the parameters after two AdamW steps on the same batch, and
  `adamw.loss_step2`, the loss at the start of the second step,
- `lr.total_{T}.warmup_steps_{W}` the learning rate used at each optimiser step of the
  warmup + cosine schedule, for a few (total, warmup) pairs.

The model configuration is stored as a JSON string under the metadata key `config`.

Regenerate with:

    python3 scripts/reference.py            # writes tests/fixtures/
    python3 scripts/reference.py --out DIR  # writes DIR/tiny_reference.safetensors

Requires torch, numpy and safetensors. The output is deterministic: two runs give identical bytes.
"""

import argparse
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

FIXTURE_NAME = "tiny_reference.safetensors"

CONFIG = {
    "depth": 2,
    "hidden_dimensions": 32,
    "vocab_size": 40,
    "sequence_length": 16,
    "heads": 4,
    "intermediate_dimensions": 64,
    "next_token_id": 5,
    "mask_token_id": 4,
    "dropout": 0.0,
    "eps": 1e-12,
    "lr": 1e-3,
    "warmup": 0.025,
}

# AdamW settings of the reference (torch defaults except weight decay, which torch also
# defaults to 0.01 for AdamW).
ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}

# (total steps, warmup fraction) pairs for the learning-rate schedule fixture. They cover
# warmup_steps of 2, 4, 25, 3 and two cases that floor to 0 (the reference divides by zero there).
SCHEDULES = [(100, 0.025), (40, 0.1), (1000, 0.025), (7, 0.5), (10, 0.0), (3, 0.3)]
SCHEDULE_BASE_LR = 1e-4

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def instruction_argument_indices(tokens: torch.Tensor, next_token_id: int):
    """Instruction and argument position indices for a batch of token rows [B, S].

    An instruction starts at j >= 1 when token[j-1] is [NEXT], so the [NEXT] token itself
    belongs to the instruction before it. Padding just continues the count.
    """
    batch, length = tokens.shape
    start = torch.zeros_like(tokens, dtype=torch.bool)
    start[:, 1:] = tokens[:, :-1] == next_token_id
    instruction = torch.cumsum(start.long(), dim=1)
    positions = torch.arange(length, device=tokens.device).expand(batch, length)
    # Position of the last instruction start at or before j (0 when there is none).
    last_start = torch.cummax(torch.where(start, positions, torch.zeros_like(positions)), dim=1).values
    argument = positions - last_start
    return instruction, argument


class InstructionTracePositionEmbedding(nn.Module):
    def __init__(self, hidden, vocab_size, sequence_length, next_token_id, dropout, eps):
        super().__init__()
        self.sequence_length = sequence_length
        self.next_token_id = next_token_id
        self.token = nn.Embedding(vocab_size, hidden)
        self.instruction = nn.Embedding(sequence_length, hidden)
        self.argument = nn.Embedding(sequence_length, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens):
        # The reference insists on full-length input.
        if tokens.shape[1] != self.sequence_length:
            raise ValueError(f"input length {tokens.shape[1]} != sequence_length {self.sequence_length}")
        instruction, argument = instruction_argument_indices(tokens, self.next_token_id)
        x = self.token(tokens) + self.instruction(instruction) + self.argument(argument)
        return self.dropout(self.norm(x))


class AttentionHead(nn.Module):
    def __init__(self, hidden, head_size):
        super().__init__()
        self.q = nn.Linear(hidden, head_size)
        self.k = nn.Linear(hidden, head_size)
        self.v = nn.Linear(hidden, head_size)

    def forward(self, x, mask):
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        # Key-padding mask [B, S] broadcast over query rows; padded query rows are still computed.
        scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        if hidden % heads != 0:
            raise ValueError(f"hidden_dimensions {hidden} is not divisible by heads {heads}")
        self.heads = nn.ModuleList(AttentionHead(hidden, hidden // heads) for _ in range(heads))
        self.output = nn.Linear(hidden, hidden)

    def forward(self, x, mask):
        return self.output(torch.cat([head(x, mask) for head in self.heads], dim=-1))


class FeedForward(nn.Module):
    def __init__(self, hidden, intermediate, dropout):
        super().__init__()
        self.linear1 = nn.Linear(hidden, intermediate)
        self.linear2 = nn.Linear(intermediate, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.linear2(F.gelu(self.linear1(x), approximate="none")))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm layer. Its norms use PyTorch's default eps 1e-5, not the config eps."""

    def __init__(self, hidden, heads, intermediate, dropout):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attention = MultiHeadAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = FeedForward(hidden, intermediate, dropout)

    def forward(self, x, mask):
        x = x + self.attention(self.norm1(x), mask)
        return x + self.ff(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embedding = InstructionTracePositionEmbedding(
            c["hidden_dimensions"], c["vocab_size"], c["sequence_length"],
            c["next_token_id"], c["dropout"], c["eps"],
        )
        self.layers = nn.ModuleList(
            EncoderLayer(c["hidden_dimensions"], c["heads"], c["intermediate_dimensions"], c["dropout"])
            for _ in range(c["depth"])
        )

    def forward(self, tokens, mask):
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x, mask)
        return x  # no final LayerNorm


class MaskedLMHead(nn.Module):
    def __init__(self, hidden, vocab_size, eps):
        super().__init__()
        self.transform = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.decode = nn.Linear(hidden, vocab_size)  # own bias, not tied to the token embedding

    def forward(self, x):
        return self.decode(self.norm(F.gelu(self.transform(x), approximate="none")))


class MaskedLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.encoder = Encoder(c)
        self.head = MaskedLMHead(c["hidden_dimensions"], c["vocab_size"], c["eps"])

    def forward(self, tokens, mask):
        return self.head(self.encoder(tokens, mask))


def mlm_loss(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def expected_parameter_count(c):
    h, v, s, i = c["hidden_dimensions"], c["vocab_size"], c["sequence_length"], c["intermediate_dimensions"]
    embedding = v * h + 2 * s * h + 2 * h
    # q, k, v over all heads together are three H -> H maps; then output, two norms, FF.
    layer = 3 * (h * h + h) + (h * h + h) + 2 * (2 * h) + (i * h + i) + (h * i + h)
    head = (h * h + h) + 2 * h + (v * h + v)
    return embedding + c["depth"] * layer + head


# --------------------------------------------------------------------------------------------
# Fixture inputs
# --------------------------------------------------------------------------------------------


def make_batch(c, generator):
    """A padded batch of 3 rows with [NEXT] and [MASK] tokens and a few labels per row."""
    s, vocab = c["sequence_length"], c["vocab_size"]
    nxt, msk = c["next_token_id"], c["mask_token_id"]
    first_plain = max(nxt, msk) + 1  # ordinary tokens avoid the special ids

    def randint(low, high):  # uniform in [low, high)
        return int(torch.randint(low, high, (1,), generator=generator))

    tokens = torch.zeros(3, s, dtype=torch.int64)  # padding token 0
    mask = torch.zeros(3, s, dtype=torch.int64)
    labels = torch.full((3, s), IGNORE_INDEX, dtype=torch.int64)
    for row, real in enumerate([16, 11, 6]):
        tokens[row, :real] = torch.randint(first_plain, vocab, (real,), generator=generator)
        mask[row, :real] = 1
        # [NEXT] every 2-4 tokens, never at position 0.
        next_positions = []
        pos = randint(2, 5)
        while pos < real:
            next_positions.append(pos)
            pos += randint(2, 5)
        tokens[row, next_positions] = nxt
        # 2-3 [MASK] tokens at positions that are not [NEXT] (keeps the instruction structure).
        others = [p for p in range(real) if p not in next_positions]
        order = torch.randperm(len(others), generator=generator).tolist()
        masked = sorted(others[k] for k in order[: randint(2, 4)])
        tokens[row, masked] = msk
        # Label every [MASK] plus other real positions, 5 in all; padding is never labelled.
        rest = [p for p in range(real) if p not in masked]
        order = torch.randperm(len(rest), generator=generator).tolist()
        labelled = sorted(masked + [rest[k] for k in order[: 5 - len(masked)]])
        labels[row, labelled] = torch.randint(0, vocab, (len(labelled),), generator=generator)
    return tokens, mask, labels


# --------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------


def closed_form_lr(base, total, warmup_steps):
    """SPEC.md's formula for the lr used at each step 0..total-1."""
    w, decay = warmup_steps, total - warmup_steps
    out = []
    for s in range(total):
        if s < w:
            out.append(base * (1.0 / w + (1.0 - 1.0 / w) * s / w))
        else:
            out.append(base * (1.0 + math.cos(math.pi * (s - w) / decay)) / 2.0)
    return out


def torch_scheduler_lr(base, total, warmup_steps):
    """The lr at each step as the reference's SequentialLR(LinearLR, CosineAnnealingLR) gives it."""
    w, decay = warmup_steps, total - warmup_steps
    param = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.AdamW([param], lr=base)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0, total_iters=w),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=decay, eta_min=0),
        ],
        milestones=[w],
    )
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient, so nothing moves; keeps the step-order warning quiet
        with warnings.catch_warnings():
            # SequentialLR passes an epoch to the cosine scheduler at the milestone (deprecated).
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return out


def schedule_tensors():
    tensors, discrepancies = {}, []
    for total, fraction in SCHEDULES:
        w = int(fraction * total)  # the reference truncates, as floor for these positive values
        if w == 0:
            # The reference divides by zero here; the Rust side uses cosine decay with no warmup.
            values = [SCHEDULE_BASE_LR * (1.0 + math.cos(math.pi * s / total)) / 2.0 for s in range(total)]
        else:
            values = torch_scheduler_lr(SCHEDULE_BASE_LR, total, w)
            closed = closed_form_lr(SCHEDULE_BASE_LR, total, w)
            for s, (a, b) in enumerate(zip(values, closed)):
                if abs(a - b) > 1e-12 * max(abs(a), abs(b)):
                    discrepancies.append(f"total={total} w={w} step={s}: torch {a!r} closed form {b!r}")
        tensors[f"lr.total_{total}.warmup_steps_{w}"] = torch.tensor(values, dtype=torch.float64)
    return tensors, discrepancies


# --------------------------------------------------------------------------------------------
# Fixture
# --------------------------------------------------------------------------------------------


def build_fixture():
    c = CONFIG
    torch.manual_seed(0)

    # Check the index rule on SPEC.md's example: `foo bar baz [NEXT] blah`.
    ins, arg = instruction_argument_indices(torch.tensor([[10, 11, 12, c["next_token_id"], 13]]), c["next_token_id"])
    assert ins.tolist() == [[0, 0, 0, 0, 1]] and arg.tolist() == [[0, 1, 2, 3, 0]], (ins, arg)

    model = MaskedLM(c).double()
    model.eval()  # dropout off (it is 0.0 anyway)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected_parameter_count(c), (n_params, expected_parameter_count(c))

    # PyTorch's LayerNorm init (weight 1, bias 0) would leave their gradients degenerate in
    # places; perturb them so the fixture tests the LayerNorm backward properly.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))

    # Inputs come from their own generator so they don't depend on the model's RNG use.
    tokens, mask, labels = make_batch(c, torch.Generator().manual_seed(1))

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = {f"param.{k}": v for k, v in state.items()}
    tensors.update({"input.tokens": tokens, "input.mask": mask, "input.labels": labels})

    # Forward, loss and gradients.
    logits = model(tokens, mask)
    loss = mlm_loss(logits, labels)
    # Cross-check cross_entropy with an explicit log-softmax over the labelled positions.
    picked = labels != IGNORE_INDEX
    manual = -torch.log_softmax(logits[picked], dim=-1).gather(1, labels[picked][:, None]).mean()
    assert torch.allclose(loss, manual, rtol=1e-13, atol=0), (loss, manual)
    model.zero_grad()
    loss.backward()
    tensors["output.logits"] = logits.detach().clone()
    tensors["output.loss"] = loss.detach().reshape(1).clone()
    named = dict(model.named_parameters())
    assert set(named) == set(state), "state_dict holds something other than parameters"
    tensors.update({f"grad.{k}": named[k].grad.detach().clone() for k in state})

    # Two AdamW steps from the initial parameters, recomputing loss and gradient each step.
    adam_model = MaskedLM(c).double()
    adam_model.load_state_dict(state)
    adam_model.eval()
    # foreach=False: the plain per-tensor update, which is the formula SPEC.md writes out.
    opt = torch.optim.AdamW(adam_model.parameters(), lr=c["lr"], foreach=False, **ADAMW)
    step_losses = []
    for _ in range(2):
        opt.zero_grad()
        step_loss = mlm_loss(adam_model(tokens, mask), labels)
        step_losses.append(step_loss.detach())
        step_loss.backward()
        opt.step()
    assert step_losses[0].item() == loss.item()
    tensors.update({f"adamw.{k}": v.detach().clone() for k, v in adam_model.state_dict().items()})
    tensors["adamw.loss_step2"] = step_losses[1].reshape(1).clone()

    lr_tensors, discrepancies = schedule_tensors()
    tensors.update(lr_tensors)
    return tensors, discrepancies


def main():
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=repo_root / "tests" / "fixtures",
                        help="output directory (default: tests/fixtures in the repository)")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    tensors, discrepancies = build_fixture()
    tensors = {k: v.contiguous() for k, v in tensors.items()}

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / FIXTURE_NAME
    save_file(tensors, str(path), metadata={"config": json.dumps(CONFIG, sort_keys=True)})

    # Read it back to make sure what is on disk is what was computed.
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k

    print(f"wrote {path} ({path.stat().st_size} bytes, {len(tensors)} tensors)")
    for k in sorted(tensors):
        print(f"  {k:60s} {str(tensors[k].dtype):14s} {list(tensors[k].shape)}")
    print(f"loss {tensors['output.loss'].item()!r}")
    print(f"loss at AdamW step 2 {tensors['adamw.loss_step2'].item()!r}")
    for line in discrepancies:
        print(f"DISCREPANCY {line}")
    if not discrepancies:
        print("lr schedule: torch schedulers agree with the closed form to 1e-12 relative")


if __name__ == "__main__":
    main()
