//! One benchmark per kernel family, forward and backward apart, through the `Backend` trait.
//!
//! `cargo bench --bench kernels`. On a machine with a GPU the GPU backend runs in bf16 mixed
//! precision at the `medium` shapes (batch 32, sequence 512, hidden 768, 12 heads of 64,
//! intermediate 3072, a 5000-token vocabulary); elsewhere, or with `MASKEDLM_BENCH_DEVICE=cpu`, the
//! CPU backend runs at the `small` shapes (batch 8, hidden 256, 4 heads, intermediate 1024), in
//! f32, or in bf16 mixed precision with `MASKEDLM_BENCH_PRECISION=bf16` (a CPU with AVX512_BF16).
//!
//! Throughput reads against the card's limits:
//! - memory-bound kernels report bytes/s: the bytes each op must move at least (every input read
//!   once, every output written once), so the figure is a share of the copy bandwidth;
//! - GEMMs and attention report FLOP/s as criterion's "elements/s" (one element = one FLOP).
//!   Attention counts 4 S^2 d per head forward and 10 S^2 d backward (2.5x), FlashAttention's
//!   convention, so the figures compare with its published ones; our backward does 14 S^2 d (it
//!   recomputes the scores in both of its kernels, to stay deterministic without atomics).
//!
//! A GPU measurement queues `iters` calls and synchronises once (`iter_custom`), so launch and
//! allocation costs are included but the host never waits between calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::backend::cuda::GpuBackend;
use undertale_maskedlm::backend::{AdamWStep, Backend, DropoutKey, Param};
use undertale_maskedlm::device::Precision;
use undertale_maskedlm::ops::Weights;
use undertale_maskedlm::ops::sequences::Sequences;
use undertale_maskedlm::{DType, Device, Tensor};

/// The shapes of one preset at one batch.
#[derive(Clone, Copy)]
struct Shapes {
    preset: &'static str,
    batch: usize,
    seq: usize,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    vocab: usize,
    depth: usize,
}

impl Shapes {
    const MEDIUM: Shapes = Shapes {
        preset: "medium",
        batch: 32,
        seq: 512,
        hidden: 768,
        heads: 12,
        intermediate: 3072,
        vocab: 5000,
        depth: 12,
    };
    const SMALL: Shapes = Shapes {
        preset: "small",
        batch: 8,
        seq: 512,
        hidden: 256,
        heads: 4,
        intermediate: 1024,
        vocab: 5000,
        depth: 4,
    };

    fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// The ~15% of positions the collator labels, where the head and the loss run.
    fn labelled(&self) -> usize {
        self.rows() * 15 / 100
    }

    /// Parameters of the whole model, for AdamW's flat buffers: per layer the QKV, output and two
    /// feed-forward layers with biases and two LayerNorms; the embedding tables and the head.
    fn parameters(&self) -> usize {
        let (h, i, v, s) = (self.hidden, self.intermediate, self.vocab, self.seq);
        let layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h;
        self.depth * layer + (v + 2 * s) * h + 2 * h + h * h + h + 2 * h + v * h + v
    }
}

/// The backend under test and its shapes.
struct Target {
    backend: Arc<dyn Backend>,
    shapes: Shapes,
    rng: ChaCha8Rng,
}

impl Target {
    fn detect() -> Target {
        let forced_cpu = std::env::var("MASKEDLM_BENCH_DEVICE").is_ok_and(|d| d == "cpu");
        let rng = ChaCha8Rng::seed_from_u64(0);
        match GpuBackend::cuda(0) {
            Ok(gpu) if !forced_cpu => Target {
                backend: Arc::new(gpu.with_precision(Precision::Bf16)),
                shapes: Shapes::MEDIUM,
                rng,
            },
            _ => {
                // The CPU in f32, or in bf16 with MASKEDLM_BENCH_PRECISION=bf16 (AVX512_BF16).
                let precision = std::env::var("MASKEDLM_BENCH_PRECISION")
                    .map_or(Ok(Precision::F32), |p| p.parse())
                    .expect("MASKEDLM_BENCH_PRECISION is f32 or bf16");
                Target {
                    backend: Device::Cpu
                        .backend_with(precision)
                        .expect("the CPU backend"),
                    shapes: Shapes::SMALL,
                    rng,
                }
            }
        }
    }

    fn bf16(&self) -> bool {
        self.backend.precision() == Precision::Bf16
    }

    fn name(&self) -> String {
        let device = match self.backend.device() {
            Device::Cpu => "cpu",
            _ => "cuda0",
        };
        format!(
            "{device}_{}_{}",
            self.backend.precision(),
            self.shapes.preset
        )
    }

    /// Bytes per activation element.
    fn element(&self) -> usize {
        if self.bf16() { 2 } else { 4 }
    }

    fn random(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect()
    }

    /// An f32 tensor (parameters, gradients, optimiser state).
    fn f32s(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let data = self.random(shape.iter().product(), scale);
        self.backend.upload_f32(shape, &data).expect("upload")
    }

    /// An activation: bf16 in mixed precision, else f32.
    fn activation(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let t = self.f32s(shape, scale);
        if self.bf16() {
            self.backend.cast(&t, DType::BF16).expect("cast to bf16")
        } else {
            t
        }
    }

    /// The weights' copy the GEMMs read: bf16 in mixed precision, else the f32 values themselves.
    fn gemm_copy(&self, params: &Tensor) -> Tensor {
        if self.bf16() {
            self.backend
                .cast(params, DType::BF16)
                .expect("cast to bf16")
        } else {
            params.clone()
        }
    }

    fn ids(&mut self, n: usize, below: usize) -> Vec<i32> {
        (0..n)
            .map(|_| self.rng.random_range(6..below as i32))
            .collect()
    }

    /// Times `op` as described in the file's header.
    fn bench(
        &self,
        group: &mut BenchmarkGroup<WallTime>,
        name: &str,
        throughput: Throughput,
        mut op: impl FnMut(),
    ) {
        group.throughput(throughput);
        let backend = self.backend.clone();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                backend.synchronize().expect("synchronise");
                let start = Instant::now();
                for _ in 0..iters {
                    op();
                }
                backend.synchronize().expect("synchronise");
                start.elapsed()
            })
        });
    }
}

/// Consecutive slots of a flat parameter buffer.
struct Slots {
    len: usize,
}

impl Slots {
    fn take(&mut self, len: usize) -> Param {
        let p = Param {
            offset: self.len,
            len,
        };
        self.len += len;
        p
    }
}

fn flops(n: usize) -> Throughput {
    Throughput::Elements(n as u64)
}

fn bytes(n: usize) -> Throughput {
    Throughput::Bytes(n as u64)
}

fn kernels(c: &mut Criterion) {
    let mut t = Target::detect();
    let mut group = c.benchmark_group(t.name());
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let s = t.shapes;
    let (rows, h, e) = (s.rows(), s.hidden, t.element());
    let backend = t.backend.clone();

    // ---- embedding: three gathers, summed ----
    let mut slots = Slots { len: 0 };
    let tables = [
        slots.take(s.vocab * h),
        slots.take(s.seq * h),
        slots.take(s.seq * h),
    ];
    let params = t.f32s(&[slots.len], 0.5);
    let mut tokens = t.ids(rows, s.vocab);
    for j in (0..rows).step_by(7) {
        tokens[j] = 5; // [NEXT] every seventh token
    }
    let tokens = backend.upload_i32(&[rows], &tokens).unwrap();
    // Every row a whole sequence: the padded batch with no padding.
    let full = Sequences::new(backend.as_ref(), &vec![s.seq; s.batch], None, None).unwrap();
    let [tok, ins, arg] = tables;
    t.bench(
        &mut group,
        "embedding_forward",
        bytes(rows * (3 * 4 * h + e * h)),
        || {
            backend
                .embedding_forward(&tokens, &full, 5, &params, tok, ins, arg, h)
                .unwrap();
        },
    );
    let dout = t.activation(&[rows, h], 1.0);
    let mut grads = t.f32s(&[slots.len], 1.0);
    t.bench(
        &mut group,
        "embedding_backward",
        bytes(rows * (e * h + 3 * 4 * h)),
        || {
            backend
                .embedding_backward(&dout, &tokens, &full, 5, &mut grads, tok, ins, arg)
                .unwrap();
        },
    );

    // ---- LayerNorm, with the residual add before it ----
    let mut slots = Slots { len: 0 };
    let (w, b) = (slots.take(h), slots.take(h));
    let params = t.f32s(&[slots.len], 1.0);
    let mut grads = t.f32s(&[slots.len], 1.0);
    let (x, residual) = (t.activation(&[rows, h], 1.0), t.activation(&[rows, h], 1.0));
    t.bench(
        &mut group,
        "add_layernorm_forward",
        bytes(rows * (3 * e * h + 8)),
        || {
            backend
                .add_layernorm_forward(&x, &residual, &params, w, b, 1e-12)
                .unwrap();
        },
    );
    let saved = backend.layernorm_forward(&x, &params, w, b, 1e-12).unwrap();
    let dy = t.activation(&[rows, h], 1.0);
    t.bench(
        &mut group,
        "layernorm_backward",
        bytes(rows * (3 * e * h + 8)),
        || {
            backend
                .layernorm_backward(&dy, &x, &saved.mean, &saved.rstd, &params, &mut grads, w, b)
                .unwrap();
        },
    );

    // ---- linear: the QKV projection (GEMM + bias) ----
    let mut slots = Slots { len: 0 };
    let (w, b) = (slots.take(3 * h * h), slots.take(3 * h));
    let params = t.f32s(&[slots.len], 0.05);
    let copy = t.gemm_copy(&params);
    let weights = Weights::mixed(&params, &copy);
    let mut grads = t.f32s(&[slots.len], 1.0);
    t.bench(
        &mut group,
        "linear_qkv_forward",
        flops(2 * rows * h * 3 * h),
        || {
            backend.linear_forward(&x, weights, w, b, 3 * h).unwrap();
        },
    );
    let dqkv = t.activation(&[rows, 3 * h], 1.0);
    t.bench(
        &mut group,
        "linear_qkv_backward",
        flops(4 * rows * h * 3 * h),
        || {
            backend
                .linear_backward(&dqkv, &x, weights, &mut grads, w, b)
                .unwrap();
        },
    );

    // ---- the feed-forward block's first layer: GEMM, bias and GELU fused ----
    let mut slots = Slots { len: 0 };
    let (w, b) = (slots.take(s.intermediate * h), slots.take(s.intermediate));
    let params = t.f32s(&[slots.len], 0.05);
    let copy = t.gemm_copy(&params);
    let weights = Weights::mixed(&params, &copy);
    let mut grads = t.f32s(&[slots.len], 1.0);
    let ff = 2 * rows * h * s.intermediate;
    t.bench(&mut group, "linear_gelu_forward", flops(ff), || {
        backend
            .linear_gelu_forward(&x, weights, w, b, s.intermediate)
            .unwrap();
    });
    let (z, _) = backend
        .linear_gelu_forward(&x, weights, w, b, s.intermediate)
        .unwrap();
    let dy_ff = t.activation(&[rows, s.intermediate], 1.0);
    t.bench(&mut group, "linear_gelu_backward", flops(2 * ff), || {
        backend
            .linear_gelu_backward(&dy_ff, &x, &z, weights, &mut grads, w, b)
            .unwrap();
    });

    // ---- GELU alone: one read, one write (two reads backward) ----
    let gelu_bytes = rows * s.intermediate * e;
    t.bench(&mut group, "gelu_forward", bytes(2 * gelu_bytes), || {
        backend.gelu_forward(&z).unwrap();
    });
    t.bench(&mut group, "gelu_backward", bytes(3 * gelu_bytes), || {
        backend.gelu_backward(&dy_ff, &z).unwrap();
    });

    // ---- fused attention, every key real ----
    let qkv = t.activation(&[rows, 3 * h], 1.0);
    let per_head = s.seq * s.seq * (h / s.heads);
    let attention = s.batch * s.heads * per_head;
    t.bench(
        &mut group,
        "attention_forward",
        flops(4 * attention),
        || {
            backend.attention_forward(&qkv, &full, s.heads).unwrap();
        },
    );
    let saved = backend.attention_forward(&qkv, &full, s.heads).unwrap();
    let dout = t.activation(&[rows, h], 1.0);
    t.bench(
        &mut group,
        "attention_backward",
        flops(10 * attention),
        || {
            backend
                .attention_backward(&dout, &qkv, &full, &saved.out, &saved.lse, s.heads)
                .unwrap();
        },
    );

    // ---- fused attention over packed sequences of unequal lengths ----
    // Real lengths from a quarter of `seq` to all of it, as a tokenized batch has: the grid covers
    // only their tiles, the longest first.
    let lengths: Vec<usize> = (0..s.batch)
        .map(|b| (s.seq / 4 + b * 37 % (s.seq - s.seq / 4).max(1)).clamp(1, s.seq))
        .collect();
    let packed_rows: usize = lengths.iter().sum();
    let packed = Sequences::new(backend.as_ref(), &lengths, None, None).unwrap();
    let packed_qkv = t.activation(&[packed_rows, 3 * h], 1.0);
    let packed_work: usize = lengths.iter().map(|l| l * l * h).sum();
    t.bench(
        &mut group,
        "attention_forward_packed",
        flops(4 * packed_work),
        || {
            backend
                .attention_forward(&packed_qkv, &packed, s.heads)
                .unwrap();
        },
    );
    let packed_saved = backend
        .attention_forward(&packed_qkv, &packed, s.heads)
        .unwrap();
    let packed_dout = t.activation(&[packed_rows, h], 1.0);
    t.bench(
        &mut group,
        "attention_backward_packed",
        flops(10 * packed_work),
        || {
            backend
                .attention_backward(
                    &packed_dout,
                    &packed_qkv,
                    &packed,
                    &packed_saved.out,
                    &packed_saved.lse,
                    s.heads,
                )
                .unwrap();
        },
    );

    // ---- dropout fused into the residual add ----
    let key = DropoutKey {
        p: 0.1,
        seed: 1,
        step: 1,
        site: 3,
    };
    t.bench(
        &mut group,
        "dropout_add_forward",
        bytes(3 * rows * h * e),
        || {
            backend
                .dropout_add_forward(&residual, &x, key, None)
                .unwrap();
        },
    );
    t.bench(
        &mut group,
        "dropout_backward",
        bytes(2 * rows * h * e),
        || {
            backend.dropout_backward(&dy, key, None).unwrap();
        },
    );

    // ---- softmax cross-entropy over the labelled rows, gradient over the logits ----
    let labelled = s.labelled();
    let logits = t.activation(&[labelled, s.vocab], 4.0);
    let labels = t.ids(labelled, s.vocab);
    let labels = backend.upload_i32(&[labelled], &labels).unwrap();
    let logits_bytes = labelled * s.vocab * e;
    // The op takes the logits by value and hands the same buffer back as the gradient: the next
    // call runs on that (finite values all the same), so no call pays for a copy.
    let mut buffer = Some(logits.clone());
    t.bench(
        &mut group,
        "cross_entropy_in_place",
        bytes(2 * logits_bytes),
        || {
            let out = backend
                .cross_entropy_in_place(buffer.take().expect("the buffer"), &labels)
                .unwrap();
            buffer = out.dlogits;
        },
    );

    // ---- infer's top 5 over the masked positions ----
    t.bench(&mut group, "softmax_top5", bytes(logits_bytes), || {
        backend.softmax_top_k(&logits, 5).unwrap();
    });

    // ---- AdamW over the whole model's flat buffers ----
    let n = s.parameters();
    let mut p = t.f32s(&[n], 0.5);
    let g = t.f32s(&[n], 1.0);
    let mut m = t.f32s(&[n], 0.1);
    let mut v = backend.zeros_f32(&[n]).unwrap();
    // On the GPU the GEMMs' bf16 copy of the weights exists, and AdamW rewrites it in its pass.
    let mut copy = t.bf16().then(|| t.backend.cast(&p, DType::BF16).unwrap());
    let mut step = 0;
    // Reads p, g, m, v and writes p, m, v (f32), and on the GPU the bf16 copy of p.
    let adamw_bytes = n * (7 * 4 + if t.bf16() { 2 } else { 0 });
    t.bench(&mut group, "adamw_step", bytes(adamw_bytes), || {
        step += 1;
        let adamw = AdamWStep {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            t: step,
        };
        backend
            .adamw_step_guarded(&mut p, copy.as_mut(), &g, &mut m, &mut v, adamw, None)
            .unwrap();
    });
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
