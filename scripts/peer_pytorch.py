#!/usr/bin/env python3
"""PyTorch peer benchmark: the reference model in PyTorch, on the shapes and metrics of `maskedlm bench`.

The point is an honest answer to "how does this crate compare with PyTorch on the same model?", so
PyTorch is measured two ways:

- `reference-fp32` and `reference-bf16`: the model exactly as `reference.py` builds it (per-head q/k/v
  Linear modules, one attention per head, logits at every position), trained with `torch.optim.AdamW`
  as the reference uses it; fp32, or the same under `torch.autocast(bfloat16)`. This is what a user of
  the reference gets.
- `best`: the same function written the way a PyTorch expert would: one fused [3H, H] QKV Linear, one
  `scaled_dot_product_attention` call over all heads (on CUDA flash attention, or memory-efficient
  attention where a key-padding mask is needed),
  bf16 autocast, fused AdamW, `torch.compile` (on CUDA; see --compile), and the LM head applied only
  at the rows that matter (labelled positions for the loss, [MASK] positions for inference). It is
  built from the reference model's weights, and `--check` verifies it computes the same logits, loss
  and gradients.

Metrics, each one JSON record (the schema `maskedlm bench --json` writes too):

- `train_tokens_per_s`: forward, masked-LM cross-entropy over the ~15% labelled positions, backward,
  AdamW step (lr 1e-4, weight decay 0.01), dropout 0.1 active; batch B x seq, every position real.
- `infer_latency_b1_ms`: batch 1 with 15% of positions [MASK]: token tensor on the device to the
  predicted ids at every masked position on the host.
- `infer_tokens_per_s_b64`: the same at batch 64 (`--infer-batch`).
- `peak_memory_mib`: peak memory during the timed training steps (CUDA allocator, or process RSS on CPU).
- with `--lengths FILE` (real function lengths): training on batches of real lengths, padded to 512
  as the reference does, and padded to each batch's longest row; real tokens per second.

Warm-up calls are excluded and every figure is a median. Examples:

    python3 scripts/peer_pytorch.py --device cpu --preset tiny --quick
    python3 scripts/peer_pytorch.py --device cpu --preset small --threads 2 --variant reference-fp32
    python3 scripts/peer_pytorch.py --device cuda --preset medium --json peer.json
    python3 scripts/peer_pytorch.py --check      # best == reference on a tiny padded batch, then exit

Needs only torch; `reference.py` must sit beside this file.
"""

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import platform
import resource
import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent

PRESETS = {
    "tiny": dict(depth=2, hidden_dimensions=64, heads=4, intermediate_dimensions=256, sequence_length=128),
    "small": dict(depth=4, hidden_dimensions=256, heads=4, intermediate_dimensions=1024, sequence_length=512),
    "medium": dict(depth=12, hidden_dimensions=768, heads=12, intermediate_dimensions=3072, sequence_length=512),
}
VARIANTS = ["reference-fp32", "reference-bf16", "best"]

PAD_ID, MASK_ID, NEXT_ID = 0, 4, 5
FIRST_PLAIN_ID = 6  # ordinary tokens avoid the special ids 0..5
IGNORE_INDEX = -100
LR, WEIGHT_DECAY = 1e-4, 0.01  # the reference's AdamW (betas and eps are torch's defaults, as there)
MASK_PROBABILITY = 0.15
DEFAULT_LENGTHS = "benches/data/function_lengths.json"


def import_reference():
    """Imports `reference.py`, the one PyTorch definition of the reference model.

    It imports safetensors at module level to write test fixtures; a GPU machine's PyTorch install
    may lack that package, and the benchmark never touches a safetensors file, so a stand-in that
    refuses to be used takes its place there.
    """
    sys.path.insert(0, str(HERE))
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        def unavailable(*_args, **_kwargs):
            raise RuntimeError("safetensors is not installed")

        package, module = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
        module.load_file = module.save_file = unavailable
        package.torch = module
        sys.modules.update({"safetensors": package, "safetensors.torch": module})
    try:
        import reference
    except ImportError as error:
        sys.exit(f"peer_pytorch.py needs reference.py beside it in {HERE}: {error}")
    return reference


reference = import_reference()


# --------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------


class FlexibleLengthEmbedding(reference.InstructionTracePositionEmbedding):
    """The reference embedding without its insistence on full-length rows.

    The reference raises unless a row is exactly `sequence_length` long, which rules out padding a
    batch only to its longest row. Nothing else in the model depends on the length, so for the
    pad-to-longest measurement the check is lifted (rows may be shorter, never longer).
    """

    def forward(self, tokens):
        if tokens.shape[1] > self.sequence_length:
            raise ValueError(f"input length {tokens.shape[1]} > sequence_length {self.sequence_length}")
        instruction, argument = reference.instruction_argument_indices(tokens, self.next_token_id)
        x = self.token(tokens) + self.instruction(instruction) + self.argument(argument)
        return self.dropout(self.norm(x))


def allow_short_rows(model):
    """Lets a reference model take rows shorter than sequence_length (same weights, same math)."""
    model.encoder.embedding.__class__ = FlexibleLengthEmbedding
    return model


class FusedQKVAttention(nn.Module):
    """All heads at once: one [3H, H] projection and one scaled_dot_product_attention call.

    The weight's rows are every head's q, then every head's k, then every head's v, so head n's
    query is features n*d .. (n+1)*d of the first H outputs, exactly the reference's concatenation.
    """

    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.output = nn.Linear(hidden, hidden)

    def forward(self, x, attn_mask):
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.output(y.transpose(1, 2).reshape(b, s, h))


class BestEncoderLayer(nn.Module):
    def __init__(self, hidden, heads, intermediate, dropout):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)  # eps 1e-5, as the reference's layer norms
        self.attention = FusedQKVAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = reference.FeedForward(hidden, intermediate, dropout)

    def forward(self, x, attn_mask):
        x = x + self.attention(self.norm1(x), attn_mask)
        return x + self.ff(self.norm2(x))


class BestEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embedding = FlexibleLengthEmbedding(
            c["hidden_dimensions"], c["vocab_size"], c["sequence_length"],
            c["next_token_id"], c["dropout"], c["eps"],
        )
        self.layers = nn.ModuleList(
            BestEncoderLayer(c["hidden_dimensions"], c["heads"], c["intermediate_dimensions"], c["dropout"])
            for _ in range(c["depth"])
        )

    def forward(self, tokens, key_mask):
        """`key_mask` is None when the caller knows no row has padding, which lets SDPA use a
        mask-free kernel (flash attention); otherwise a [B, S] 0/1 key-padding mask."""
        attn_mask = None if key_mask is None else (key_mask != 0)[:, None, None, :]
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


class BestMaskedLM(nn.Module):
    """The reference function with a fused-QKV layout and the head applied only where it is needed."""

    def __init__(self, c):
        super().__init__()
        self.encoder = BestEncoder(c)
        self.head = reference.MaskedLMHead(c["hidden_dimensions"], c["vocab_size"], c["eps"])

    def forward(self, tokens, key_mask):
        """Logits at every position, as the reference's forward (used by the self-check)."""
        return self.head(self.encoder(tokens, key_mask))

    def loss(self, tokens, key_mask, label_index, label_values):
        """The reference loss: mean cross-entropy over the labelled positions, whose flat indices
        the host knows from the collator; only those rows go through the head."""
        rows = self.encoder(tokens, key_mask).flatten(0, 1).index_select(0, label_index)
        return F.cross_entropy(self.head(rows), label_values)

    def predict(self, tokens, key_mask, index):
        """Argmax token id at the flat positions `index` (the [MASK] positions)."""
        rows = self.encoder(tokens, key_mask).flatten(0, 1).index_select(0, index)
        return self.head(rows).argmax(-1)

    @classmethod
    def from_reference(cls, ref, c):
        """A best model holding a reference model's weights: per-head q/k/v concatenated into qkv."""
        model = cls(c)
        state = {k: v for k, v in ref.state_dict().items() if ".attention.heads." not in k}
        for index, layer in enumerate(ref.encoder.layers):
            heads = layer.attention.heads
            for kind in ("weight", "bias"):
                parts = [getattr(getattr(head, proj), kind) for proj in "qkv" for head in heads]
                state[f"encoder.layers.{index}.attention.qkv.{kind}"] = torch.cat(parts, 0).detach().clone()
        model.load_state_dict(state)  # strict: every parameter mapped, nothing left over
        return model.to(next(ref.parameters()).device)


def qkv_gradient_of_reference(ref_layer):
    """The reference layer's per-head q/k/v gradients laid out like the fused qkv weight and bias."""
    heads = ref_layer.attention.heads
    return {kind: torch.cat([getattr(getattr(h, p), kind).grad for p in "qkv" for h in heads], 0)
            for kind in ("weight", "bias")}


# --------------------------------------------------------------------------------------------
# Self-check: best == reference
# --------------------------------------------------------------------------------------------


def self_check(device, tolerance=1e-4):
    """`best` in fp32, not compiled, against the reference model on reference.py's tiny padded batch:
    logits (with and without padding), loss, every gradient and the inferred ids. Returns the list of
    failures (empty when all agree) after printing one line per comparison."""
    c = dict(reference.CONFIG, dropout=0.0)
    torch.manual_seed(0)
    ref = reference.MaskedLM(c).to(device).eval()
    best = BestMaskedLM.from_reference(ref, c).eval()
    tokens, mask, labels = (t.to(device) for t in reference.make_batch(c, torch.Generator().manual_seed(1)))
    failures = []

    def compare(name, a, b):
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        ok = a.shape == b.shape and diff <= tolerance
        print(f"  check {name:36s} max |difference| {diff:.2e}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(name)

    with torch.no_grad():
        compare("logits, padded batch", best(tokens, mask), ref(tokens, mask))
        full = torch.ones_like(mask)
        compare("logits, no padding (mask-free SDPA)", best(tokens, None), ref(tokens, full))
        selected = tokens.reshape(-1) == c["mask_token_id"]
        index = selected.nonzero().squeeze(1)
        predicted = best.predict(tokens, mask, index)
        expected = ref(tokens, mask).argmax(-1).reshape(-1)[selected]
        compare("inferred ids at [MASK]", predicted, expected)

    ref_loss = reference.mlm_loss(ref(tokens, mask), labels)
    ref_loss.backward()
    flat = labels.reshape(-1)
    label_index = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    best_loss = best.loss(tokens, mask, label_index, flat[label_index])
    best_loss.backward()
    compare("loss", best_loss.reshape(1), ref_loss.reshape(1))
    ref_params = dict(ref.named_parameters())
    worst = 0.0
    for name, param in best.named_parameters():
        if ".attention.qkv." in name:
            layer = int(name.split(".")[2])
            expected = qkv_gradient_of_reference(ref.encoder.layers[layer])[name.rsplit(".", 1)[1]]
        else:
            expected = ref_params[name].grad
        worst = max(worst, (param.grad.double() - expected.double()).abs().max().item())
    ok = worst <= tolerance
    print(f"  check {'every gradient':36s} max |difference| {worst:.2e}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append("gradients")
    return failures


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch on the device, with what each model variant needs precomputed on the host (as a
    data loader would): the key mask, the labels, and the flat indices of the labelled positions."""
    tokens: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    label_index: torch.Tensor
    label_values: torch.Tensor
    has_padding: bool
    real_tokens: int

    @property
    def positions(self):
        return self.tokens.numel()


def random_rows(lengths, width, vocab, generator):
    """Rows of random ordinary tokens with [NEXT] about every 4th position, then padding (id 0)."""
    tokens = torch.full((len(lengths), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.randint(FIRST_PLAIN_ID, vocab, (n,), generator=generator)
        nexts = torch.rand(n, generator=generator) < 0.25
        nexts[0] = False
        tokens[row, :n][nexts] = NEXT_ID
        mask[row, :n] = 1
    return tokens, mask


def collate(tokens, mask, vocab, generator):
    """MaskedLMCollator (SPEC.md): 15% of real positions become labels; of those 80% -> [MASK],
    10% -> a random id, 10% unchanged."""
    candidate = (torch.rand(tokens.shape, generator=generator) < MASK_PROBABILITY) & (mask == 1)
    labels = torch.where(candidate, tokens, torch.full_like(tokens, IGNORE_INDEX))
    d = torch.rand(tokens.shape, generator=generator)
    random_ids = torch.randint(0, vocab, tokens.shape, generator=generator)
    out = torch.where(candidate & (d < 0.8), torch.full_like(tokens, MASK_ID), tokens)
    out = torch.where(candidate & (d >= 0.8) & (d < 0.9), random_ids, out)
    return out, labels


def to_batch(tokens, mask, labels, device):
    flat = labels.reshape(-1)
    label_index = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    return Batch(
        tokens=tokens.to(device), mask=mask.to(device), labels=labels.to(device),
        label_index=label_index.to(device), label_values=flat[label_index].to(device),
        has_padding=bool((mask == 0).any()), real_tokens=int(mask.sum()),
    )


def training_batch(batch, seq, vocab, device, seed):
    tokens, mask = random_rows([seq] * batch, seq, vocab, torch.Generator().manual_seed(seed))
    tokens, labels = collate(tokens, mask, vocab, torch.Generator().manual_seed(seed + 1))
    return to_batch(tokens, mask, labels, device)


def inference_tokens(batch, seq, vocab, device, seed):
    """Full rows with round(15%) of each row's positions set to [MASK]."""
    generator = torch.Generator().manual_seed(seed)
    tokens, mask = random_rows([seq] * batch, seq, vocab, generator)
    per_row = round(MASK_PROBABILITY * seq)
    for row in range(batch):
        tokens[row, torch.randperm(seq, generator=generator)[:per_row]] = MASK_ID
    return tokens.to(device), mask.to(device)


def load_lengths(path):
    with open(path) as f:
        data = json.load(f)
    lengths = data["lengths"] if isinstance(data, dict) else data
    source = data.get("source", str(path)) if isinstance(data, dict) else str(path)
    return [int(n) for n in lengths], source


def real_length_batches(lengths, batch, count, seq, vocab, device):
    """`count` batches of `batch` lengths, each built twice from the same rows: padded to seq (as the
    reference pads) and cut to the batch's longest row. Batch i takes the lengths at
    i * batch .. (i + 1) * batch of the file, whose order is already a random sample: the rule
    `maskedlm bench` follows, so both sides train on the same lengths."""
    if len(lengths) < batch:
        raise SystemExit(f"peer_pytorch.py: {len(lengths)} lengths do not fill one batch of {batch}")
    generator = torch.Generator().manual_seed(1234)
    padded, longest = [], []
    for i in range(min(count, len(lengths) // batch)):
        drawn = [min(max(n, 1), seq) for n in lengths[i * batch:(i + 1) * batch]]
        tokens, mask = random_rows(drawn, seq, vocab, generator)
        tokens, labels = collate(tokens, mask, vocab, generator)
        padded.append(to_batch(tokens, mask, labels, device))
        width = max(drawn)
        longest.append(to_batch(tokens[:, :width].contiguous(), mask[:, :width].contiguous(),
                                labels[:, :width].contiguous(), device))
    return padded, longest


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, warmup, repeats):
    """Median wall time of `fn` over `repeats` calls after `warmup` untimed ones; the device is
    synchronised before and after each timed call so queued GPU work is counted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def release_host_memory():
    """Frees what Python and the C allocator hold, so one variant's leftovers don't count as the
    next one's resident memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resident_mib():
    """The process's current resident set, MiB (0 where /proc is unavailable)."""
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Peak memory over a region: CUDA's allocator peak, or the process's peak resident set on CPU.

    On Linux the resident-set high-water mark can be reset (`/proc/self/clear_refs`), after which
    `getrusage(RUSAGE_SELF).ru_maxrss` reports the peak since the reset; where that is not allowed the
    figure is the peak since the process started and says so.
    """

    def __init__(self, device):
        self.device = device
        self.note = ""

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.note = "cuda: torch.cuda.max_memory_allocated() over the timed training steps"
            return
        release_host_memory()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.note = ("cpu: peak resident set of the whole process over the timed training steps "
                         "(ru_maxrss after resetting the high-water mark; includes Python and libraries: "
                         f"{resident_mib():,.0f} MiB were resident as the steps began)")
        except OSError:
            self.note = ("cpu: peak resident set of the whole process since it started (ru_maxrss; "
                         "the high-water mark could not be reset, so earlier variants count too)")

    def mib(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _AttentionOpRecorder(TorchDispatchMode):
    """Records the names of the attention ops that reach the dispatcher (the backend-specific
    ones: `aten.scaled_dot_product_attention` itself decomposes before it gets here)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if "attention" in name:
            self.names.add(name)
        return func(*args, **(kwargs or {}))


def observed_attention_ops(fn):
    """The attention kernels one eager call of `fn` runs. (A dispatch mode rather than the profiler,
    which leaves the process measurably slower on some machines.)"""
    recorder = _AttentionOpRecorder()
    with recorder:
        fn()
    return ", ".join(sorted(recorder.names)) or "none seen"


# --------------------------------------------------------------------------------------------
# SDPA backend and compile for `best`
# --------------------------------------------------------------------------------------------


class AttentionBackends:
    """On CUDA, which scaled_dot_product_attention backend `best` forces: for batches without padding
    (no mask) flash attention, and for padded batches, where flash takes no arbitrary key mask,
    memory-efficient attention; each falls back to the next candidate (cuDNN last: its kernels are
    the least tried under torch.compile) if it fails. Every candidate is probed once, forward and
    backward in bf16 at the real shape, and all the probe timings are reported so that a faster
    backend left unused is visible. On the CPU PyTorch's own choice is kept (the kernel that ran is
    reported with the results)."""

    PREFERENCE = {False: ["flash", "efficient", "cudnn"], True: ["efficient", "cudnn"]}

    def __init__(self, device, batch, heads, seq, head_dim):
        self.device = device
        self.choice = {False: None, True: None}
        self.report = {False: "PyTorch's default selection", True: "PyTorch's default selection"}
        if device.type != "cuda":
            return
        try:
            from torch.nn.attention import SDPBackend
        except ImportError:
            self.report = {k: "PyTorch's default selection (no torch.nn.attention)" for k in self.choice}
            return
        names = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
        backends = {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}
        for masked, order in self.PREFERENCE.items():
            timings = {name: self._probe(backends[name], masked, batch, heads, seq, head_dim)
                       for name in order if name in backends}
            described = ", ".join(f"{k} {t * 1e3:.2f} ms" if isinstance(t, float) else f"{k} failed ({t})"
                                  for k, t in timings.items())
            winner = next((k for k, t in timings.items() if isinstance(t, float)), None)
            if winner:
                self.choice[masked] = backends[winner]
                self.report[masked] = f"{winner} (probe, fwd+bwd of one layer's attention: {described})"
            else:
                self.report[masked] = f"PyTorch's default selection (no forced backend worked: {described})"

    def _probe(self, backend, masked, batch, heads, seq, head_dim):
        from torch.nn.attention import sdpa_kernel
        try:
            shape = (batch, heads, seq, head_dim)
            q, k, v = (torch.randn(shape, device=self.device, dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            mask = None
            if masked:
                mask = torch.ones(batch, 1, 1, seq, dtype=torch.bool, device=self.device)
                mask[::2, ..., seq // 3:] = False
            grad = torch.randn(shape, device=self.device, dtype=torch.bfloat16)

            def run():
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)

            return median_seconds(run, self.device, warmup=2, repeats=5)
        except RuntimeError as error:
            return str(error).splitlines()[0][:80]
        finally:
            torch.cuda.empty_cache()

    def context(self, masked):
        if self.choice[masked] is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel
        return sdpa_kernel(self.choice[masked])


class CompiledOrEager:
    """`torch.compile(fn)`, falling back to `fn` itself with a warning if compiling fails.

    Compilation happens lazily at a call (and again for a new shape), so that is where failures
    surface, for example when there is no C++ compiler for the CPU backend.
    """

    def __init__(self, fn, enabled, mode, label):
        self.eager, self.label = fn, label
        self.compiled = torch.compile(fn, mode=mode) if enabled else None
        self.status = f"torch.compile (mode {mode})" if enabled else "eager (--compile off)"

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:  # noqa: BLE001 - any compile failure means: run eagerly
                message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
                print(f"WARNING: torch.compile failed for {self.label} ({type(error).__name__}: {message}); "
                      "running it eagerly", file=sys.stderr, flush=True)
                self.compiled = None
                self.status = f"eager (torch.compile failed: {type(error).__name__})"
        return self.eager(*args)


def configure_compile():
    """Room for every graph the benchmark needs (train/eval, masked or not, several shapes)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))


def fused_adamw(params):
    """AdamW with the reference's settings in its fastest form: fused (one kernel), or foreach."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True), "foreach"


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    model: nn.Module
    train_step: object  # Batch -> None
    infer: object  # (tokens, mask, has_padding) -> host tensor of ids at the [MASK] positions
    evaluate: object  # Batch -> float: the masked-LM loss, no gradient (validation)
    notes: dict = field(default_factory=dict)
    attention_probe: object = None  # (Batch) -> str: the attention kernels one step runs


def autocast(device, enabled):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def reference_variant(name, base, device, bf16):
    """The reference model and optimiser as the reference uses them (optionally under bf16 autocast)."""
    model = allow_short_rows(copy.deepcopy(base)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def train_step(b):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = reference.mlm_loss(model(b.tokens, b.mask), b.labels)
        loss.backward()
        optimizer.step()

    def infer(tokens, mask, has_padding):
        with torch.inference_mode(), autocast(device, bf16):
            logits = model(tokens, mask)  # logits at every position, as the reference's infer
            ids = logits.argmax(-1)[tokens == MASK_ID]
        return ids.cpu()

    def evaluate(b):
        with torch.inference_mode(), autocast(device, bf16):
            return reference.mlm_loss(model(b.tokens, b.mask), b.labels).item()

    precision = "bf16 autocast" if bf16 else "fp32 (default matmul precision, no TF32)"
    notes = {
        "model": "reference.py: per-head q/k/v Linear, one attention per head, logits at every position",
        "precision": precision,
        "optimizer": "torch.optim.AdamW defaults (%s)" % ("foreach" if device.type == "cuda" else "for-loop"),
    }
    return Variant(name, model, train_step, infer, evaluate, notes)


def best_variant(base, config, device, args, backends):
    """Fused QKV, one SDPA call, bf16 autocast, fused AdamW, torch.compile, head only where needed."""
    model = BestMaskedLM.from_reference(base, config).to(device)
    optimizer, optimizer_kind = fused_adamw(model.parameters())
    loss_fn = CompiledOrEager(model.loss, args.compile, args.compile_mode, "best loss")
    predict_fn = CompiledOrEager(model.predict, args.compile, args.compile_mode, "best predict")

    def train_step(b):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, True), backends.context(b.has_padding):
            loss = loss_fn(b.tokens, b.mask if b.has_padding else None, b.label_index, b.label_values)
        loss.backward()
        optimizer.step()

    def infer(tokens, mask, has_padding):
        with torch.inference_mode(), autocast(device, True), backends.context(has_padding):
            index = (tokens.reshape(-1) == MASK_ID).nonzero().squeeze(1)
            ids = predict_fn(tokens, mask if has_padding else None, index)
        return ids.cpu()

    def evaluate(b):
        with torch.inference_mode(), autocast(device, True), backends.context(b.has_padding):
            return model.loss(b.tokens, b.mask if b.has_padding else None, b.label_index,
                              b.label_values).item()

    def attention_probe(b):
        """One eager forward of the loss with the same precision and backend choice as the step."""
        def forward():
            with autocast(device, True), backends.context(b.has_padding):
                model.loss(b.tokens, b.mask if b.has_padding else None, b.label_index, b.label_values)
        return observed_attention_ops(forward)

    notes = {
        "model": "fused QKV, one SDPA call over all heads, LM head only at labelled / [MASK] rows",
        "precision": "bf16 autocast",
        "optimizer": f"torch.optim.AdamW ({optimizer_kind})",
        "sdpa_unpadded": backends.report[False],
        "sdpa_padded": backends.report[True],
    }
    variant = Variant("best", model, train_step, infer, evaluate, notes, attention_probe)
    variant.compile_status = lambda: f"loss: {loss_fn.status}; predict: {predict_fn.status}"
    return variant


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def is_out_of_memory(error):
    return isinstance(error, OutOfMemoryError) or "out of memory" in str(error).lower()


def run_variant(variant, inputs, args, device, seq):
    """All metrics of one variant, as records. A metric that fails (out of memory, say) is recorded
    with value null and the reason, and the others still run."""
    records = []

    def record(metric, value, unit, batch, note):
        records.append({"variant": variant.name, "metric": metric, "value": value, "unit": unit,
                        "batch": batch, "seq": seq, "note": note})
        shown = "failed" if value is None else f"{value:,.1f} {unit}"
        print(f"  {metric:38s} {shown:>22s}   {note}", flush=True)

    def attempt(metric, unit, batch, measure):
        try:
            measure()
        except (RuntimeError, OutOfMemoryError) as error:
            if not is_out_of_memory(error) and not args.keep_going:
                raise
            reason = "out of memory" if is_out_of_memory(error) else f"{type(error).__name__}: {error}"
            record(metric, None, unit, batch, f"failed: {reason.splitlines()[0][:200]}")
            release_host_memory()

    train = inputs["train"]

    def measure_train():
        variant.model.train()
        peak = PeakMemory(device)
        for _ in range(args.warmup):
            variant.train_step(train)
        peak.start()
        seconds = median_seconds(lambda: variant.train_step(train), device, 0, args.repeats)
        peak_mib = peak.mib()
        note = (f"median of {args.repeats} steps; {train.label_index.numel()} labelled positions; "
                "dropout 0.1 active")
        if variant.attention_probe is not None:
            note += f"; attention ran: {variant.attention_probe(train)}"
        record("train_tokens_per_s", train.positions / seconds, "tokens/s", args.batch, note)
        record("peak_memory_mib", peak_mib, "MiB", args.batch, peak.note)

    attempt("train_tokens_per_s", "tokens/s", args.batch, measure_train)

    def measure_infer(metric, tokens, mask):
        variant.model.eval()
        seconds = median_seconds(lambda: variant.infer(tokens, mask, False), device, args.warmup, args.repeats)
        masked = int((tokens == MASK_ID).sum())
        note = f"median of {args.repeats}; {masked} [MASK] positions; ids copied to the host"
        if metric.startswith("infer_latency"):
            record(metric, seconds * 1e3, "ms", tokens.shape[0], note)
        else:
            record(metric, tokens.numel() / seconds, "tokens/s", tokens.shape[0], note)

    attempt("infer_latency_b1_ms", "ms", 1, lambda: measure_infer("infer_latency_b1_ms", *inputs["infer_b1"]))
    attempt("infer_tokens_per_s_b64", "tokens/s", args.infer_batch,
            lambda: measure_infer("infer_tokens_per_s_b64", *inputs["infer_bn"]))

    if inputs.get("lengths_pad512"):
        for metric, batches, how in (
            ("lengths_pad512_real_tokens_per_s", inputs["lengths_pad512"], f"every row padded to {seq}"),
            ("lengths_padlongest_real_tokens_per_s", inputs["lengths_padlongest"], "padded to each batch's longest row"),
        ):
            def measure_lengths(metric=metric, batches=batches, how=how):
                variant.model.train()
                if args.warmup:
                    for b in batches:  # one untimed pass: every shape seen (and compiled) once
                        variant.train_step(b)
                per_batch = [[] for _ in batches]
                for _ in range(args.length_repeats):
                    for i, b in enumerate(batches):
                        synchronize(device)
                        start = time.perf_counter()
                        variant.train_step(b)
                        synchronize(device)
                        per_batch[i].append(time.perf_counter() - start)
                seconds = sum(statistics.median(t) for t in per_batch)
                real = sum(b.real_tokens for b in batches)
                positions = sum(b.positions for b in batches)
                note = (f"{how}; {len(batches)} batches, {real:,} real tokens in {positions:,} positions "
                        f"({100 * real / positions:.1f}%); per-batch median of {args.length_repeats}; "
                        f"source: {inputs['lengths_source']}")
                if variant.name.startswith("reference") and "longest" in metric:
                    note += "; reference model with its full-length input check lifted"
                record(metric, real / seconds, "tokens/s", args.batch, note)

            attempt(metric, "tokens/s", args.batch, measure_lengths)

        # Validation and inference over the same real-length rows, padded to seq as the reference
        # pads them: the loss without a gradient, and every [MASK] of the collated rows filled.
        batches = inputs["lengths_pad512"]
        real = sum(b.real_tokens for b in batches)
        for metric, run in (
            ("lengths_eval_real_tokens_per_s", lambda b: variant.evaluate(b)),
            ("lengths_infer_real_tokens_per_s", lambda b: variant.infer(b.tokens, b.mask, True)),
        ):
            def measure_pass(metric=metric, run=run):
                variant.model.eval()
                seconds = median_seconds(lambda: [run(b) for b in batches], device, args.warmup,
                                         args.length_repeats)
                note = (f"every row padded to {seq}; {len(batches)} batches, {real:,} real tokens; "
                        f"median of {args.length_repeats} passes")
                record(metric, real / seconds, "tokens/s", args.batch, note)

            attempt(metric, "tokens/s", args.batch, measure_pass)
    return records


def device_description(device, threads):
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu: {model} ({threads} threads)"


def resolve_lengths(path):
    """The lengths file as given, else relative to the repository this script is in, else beside it."""
    if not path:
        return None
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates += [HERE.parent / path, HERE / Path(path).name]
    return next((p for p in candidates if p.is_file()), None)


def print_summary(results, variants):
    metrics = []
    for r in results:
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
    table = {(r["variant"], r["metric"]): r for r in results}
    width = max(14, *(len(v) for v in variants))
    print("\nsummary (higher is better except latency and memory)")
    print(f"  {'metric':38s}" + "".join(f"{v:>{width + 2}s}" for v in variants))
    for metric in metrics:
        cells = []
        for v in variants:
            r = table.get((v, metric))
            cells.append("not measured" if r is None or r["value"] is None else f"{r['value']:,.1f}")
        unit = next(r["unit"] for r in results if r["metric"] == metric)
        print(f"  {metric + ' (' + unit + ')':38s}" + "".join(f"{c:>{width + 2}s}" for c in cells))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--preset", default=None, choices=PRESETS,
                        help="model size (default: small on CPU, medium on CUDA)")
    parser.add_argument("--variant", action="append", choices=VARIANTS + ["all"],
                        help="repeatable; default all")
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 8 on CPU, 32 on CUDA)")
    parser.add_argument("--infer-batch", type=int, default=64, help="batch of the inference throughput metric")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per metric (default 5 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2 CPU, 3 CUDA)")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS,
                        help="JSON of real function lengths; '' to skip the real-data case")
    parser.add_argument("--length-batches", type=int, default=8)
    parser.add_argument("--length-repeats", type=int, default=None,
                        help="timed passes over the real-length batches (default 1 CPU, 3 CUDA)")
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 warm-up, 1 repeat, 2 real-length batches")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile for best; auto: on for CUDA, off on the CPU, where the compiled "
                             "kernels were measured running on one thread and slower than eager")
    parser.add_argument("--no-compile", dest="compile", action="store_const", const="off",
                        help="the same as --compile off")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode for best (default, reduce-overhead, max-autotune, ...)")
    parser.add_argument("--keep-going", action="store_true",
                        help="record any failing metric as failed and go on (out-of-memory always does)")
    parser.add_argument("--check", action="store_true", help="only check best against reference, then exit")
    args = parser.parse_args()

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    args.preset = args.preset or ("medium" if cuda else "small")
    args.batch = args.batch or (32 if cuda else 8)
    args.repeats = args.repeats or (20 if cuda else 5)
    args.warmup = (3 if cuda else 2) if args.warmup is None else args.warmup
    args.length_repeats = args.length_repeats or (3 if cuda else 1)
    if args.quick:
        args.repeats, args.warmup, args.length_repeats = 1, 1, 1
        args.length_batches = min(args.length_batches, 2)
    if args.compile == "auto":
        args.compile = "on" if cuda else "off"
        if not cuda:
            print("best runs eagerly on the CPU (--compile auto): there torch.compile's kernels ran on one "
                  "thread and were slower than eager; --compile on to measure it compiled", flush=True)
    args.compile = args.compile == "on"
    variants = args.variant or ["all"]
    args.variants = VARIANTS if "all" in variants else [v for v in VARIANTS if v in variants]
    return args


def main():
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch.cuda.is_available() is false")
    torch.set_num_threads(args.threads)

    print(f"self-check: best (fp32, eager) against reference on {device}", flush=True)
    failures = self_check(device)
    if args.check or failures:
        print("self-check " + ("FAILED: " + ", ".join(failures) if failures else "passed"))
        sys.exit(1 if failures else 0)

    configure_compile()
    config = dict(PRESETS[args.preset], vocab_size=args.vocab, next_token_id=NEXT_ID, mask_token_id=MASK_ID,
                  dropout=0.1, eps=1e-12, lr=LR, warmup=0.025)
    seq = config["sequence_length"]
    torch.manual_seed(0)
    base = reference.MaskedLM(config)  # every variant starts from these weights

    inputs = {
        "train": training_batch(args.batch, seq, args.vocab, device, seed=10),
        "infer_b1": inference_tokens(1, seq, args.vocab, device, seed=20),
        "infer_bn": inference_tokens(args.infer_batch, seq, args.vocab, device, seed=30),
    }
    lengths_path = resolve_lengths(args.lengths)
    if lengths_path:
        lengths, source = load_lengths(lengths_path)
        inputs["lengths_pad512"], inputs["lengths_padlongest"] = real_length_batches(
            lengths, args.batch, args.length_batches, seq, args.vocab, device)
        inputs["lengths_source"] = source
    elif args.lengths:
        print(f"real-data case skipped: no file {args.lengths}")

    described = device_description(device, args.threads)
    parameters = sum(p.numel() for p in base.parameters())
    print(f"torch {torch.__version__}; {described}; preset {args.preset} "
          f"(depth {config['depth']}, hidden {config['hidden_dimensions']}, heads {config['heads']}, "
          f"intermediate {config['intermediate_dimensions']}, seq {seq}, vocab {args.vocab}, "
          f"{parameters / 1e6:.2f}M parameters); train batch {args.batch}, infer batch {args.infer_batch}; "
          f"warm-up {args.warmup}, repeats {args.repeats}", flush=True)

    backends = None
    results, variant_notes = [], {}
    for name in args.variants:
        print(f"\n{name}", flush=True)
        if name == "best":
            if backends is None:
                backends = AttentionBackends(device, args.batch, config["heads"], seq,
                                             config["hidden_dimensions"] // config["heads"])
            variant = best_variant(base, config, device, args, backends)
        else:
            variant = reference_variant(name, base, device, bf16=name.endswith("bf16"))
        for key, value in variant.notes.items():
            print(f"  {key}: {value}")
        results += run_variant(variant, inputs, args, device, seq)
        notes = dict(variant.notes)
        if hasattr(variant, "compile_status"):
            notes["compile"] = variant.compile_status()
            print(f"  compile: {notes['compile']}")
        variant_notes[name] = notes
        del variant
        release_host_memory()

    print_summary(results, args.variants)
    if args.json:
        report = {
            "implementation": "pytorch",
            "torch": torch.__version__,
            "device": described,
            "preset": args.preset,
            "config": config,
            "threads": args.threads,
            "variants": variant_notes,
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
