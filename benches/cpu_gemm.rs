//! CPU GEMM throughput against the machine's own arithmetic peak.
//!
//! `RAYON_NUM_THREADS=<threads> cargo bench --bench cpu_gemm`. Two groups, both reporting FLOP/s
//! as criterion's "elements/s" (one element = one FLOP):
//! - `peak`: independent chains of `vfmadd` (f32: 16 lanes x 2 = 32 FLOP per zmm instruction) and
//!   of `vdpbf16ps` (32 bf16 pairs x 2 = 64 FLOP per zmm instruction), on one thread and on every
//!   thread of the rayon pool: the ceiling each GEMM reads against.
//! - `gemm`: the f32 `matmul` and both bf16 kernels at the `small` model's shapes (batch 8 x 512
//!   tokens = 4096 rows, hidden 256, intermediate 1024, a 5000-token vocabulary; the head decodes
//!   614 masked rows), laid out as the linear layers lay them out (weights `[out, in]`, read
//!   transposed), 2 m n k FLOP each.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::backend::cpu::gemm::{MatLayout, matmul};
use undertale_maskedlm::backend::cpu::gemm_bf16::{Bf16Gemm, matmul_bf16};

/// Independent accumulators per peak loop: enough to cover the latency of either instruction
/// (4-6 cycles) at two issues per cycle, few enough to stay in registers with the operands.
const CHAINS: usize = 16;
/// Loop trips per peak call: ~5 ms of work, so waking the pool (`rayon::broadcast`) costs <1%.
const TRIPS: usize = 1 << 20;

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    use super::{CHAINS, TRIPS};

    /// `TRIPS x CHAINS` f32 FMAs on zmm registers; returns a sum so nothing is dead.
    ///
    /// # Safety
    /// The CPU has avx512f.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma(x: f32) -> f32 {
        let (a, b) = (_mm512_set1_ps(x), _mm512_set1_ps(1.0 - x));
        let mut acc = [_mm512_set1_ps(x); CHAINS];
        for _ in 0..TRIPS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let total = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
        _mm512_reduce_add_ps(total)
    }

    /// `TRIPS x CHAINS` `vdpbf16ps` on zmm registers; returns a sum so nothing is dead.
    ///
    /// # Safety
    /// The CPU has avx512f and avx512bf16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(x: f32) -> f32 {
        let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(x), _mm512_set1_ps(1.0 - x));
        let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(x));
        let mut acc = [_mm512_set1_ps(x); CHAINS];
        for _ in 0..TRIPS {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        let total = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
        _mm512_reduce_add_ps(total)
    }
}

fn peaks(c: &mut Criterion) {
    let mut group = c.benchmark_group("peak");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    let threads = rayon::current_num_threads();
    let per_call = (TRIPS * CHAINS) as u64;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY (both closures): avx512f detected just above.
            let fma = || unsafe { peak::fma(black_box(0.25)) };
            group.throughput(Throughput::Elements(per_call * 32));
            group.bench_function("f32_fma_1_thread", |bn| bn.iter(|| black_box(fma())));
            group.throughput(Throughput::Elements(per_call * 32 * threads as u64));
            group.bench_function(format!("f32_fma_{threads}_threads"), |bn| {
                bn.iter(|| black_box(rayon::broadcast(|_| fma())))
            });
        }
        if Bf16Gemm::Avx512Bf16.available() {
            // SAFETY (both closures): `available` checked avx512f and avx512bf16.
            let dp = || unsafe { peak::dpbf16(black_box(0.25)) };
            group.throughput(Throughput::Elements(per_call * 64));
            group.bench_function("bf16_dp_1_thread", |bn| bn.iter(|| black_box(dp())));
            group.throughput(Throughput::Elements(per_call * 64 * threads as u64));
            group.bench_function(format!("bf16_dp_{threads}_threads"), |bn| {
                bn.iter(|| black_box(rayon::broadcast(|_| dp())))
            });
        } else {
            println!("peak/bf16_dp: skipped, this CPU lacks avx512bf16");
        }
    }
    group.finish();
}

/// One product: `dst[m x n] (+)= a @ b`, with each operand's view.
struct Shape {
    name: &'static str,
    al: MatLayout,
    bl: MatLayout,
    accumulate: bool,
}

impl Shape {
    /// `x[rows x inp] @ W^T`, W stored `[out, inp]` as the linear layers store it.
    fn linear(name: &'static str, rows: usize, inp: usize, out: usize) -> Self {
        Shape {
            name,
            al: MatLayout::row_major(rows, inp),
            bl: MatLayout::row_major(out, inp).t(),
            accumulate: false,
        }
    }

    fn flops(&self) -> u64 {
        2 * (self.al.rows * self.al.cols * self.bl.cols) as u64
    }
}

fn gemms(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let shapes = [
        Shape::linear("qkv_4096x256x768", 4096, 256, 768),
        Shape::linear("ff_up_4096x256x1024", 4096, 256, 1024),
        Shape::linear("ff_down_4096x1024x256", 4096, 1024, 256),
        Shape::linear("head_614x256x5000", 614, 256, 5000),
        // dW[out x inp] += dy^T[out x rows] @ x[rows x inp], dy stored [rows, out].
        Shape {
            name: "dw_768x4096x256",
            al: MatLayout::row_major(4096, 768).t(),
            bl: MatLayout::row_major(4096, 256),
            accumulate: true,
        },
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let kernels: Vec<Bf16Gemm> = [Bf16Gemm::Avx512Bf16, Bf16Gemm::Portable]
        .into_iter()
        .filter(|k| k.available())
        .collect();
    for s in &shapes {
        let (m, k, n) = (s.al.rows, s.al.cols, s.bl.cols);
        let a32: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b32: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let a16: Vec<bf16> = a32.iter().map(|&x| bf16::from_f32(x)).collect();
        let b16: Vec<bf16> = b32.iter().map(|&x| bf16::from_f32(x)).collect();
        let dl = MatLayout::row_major(m, n);
        let mut dst = vec![0f32; m * n];
        group.throughput(Throughput::Elements(s.flops()));
        group.bench_function(format!("{}/f32", s.name), |bn| {
            bn.iter(|| {
                matmul(
                    &mut dst,
                    dl,
                    &a32,
                    s.al,
                    &b32,
                    s.bl,
                    1.0,
                    s.accumulate,
                    true,
                )
            })
        });
        for &kernel in &kernels {
            group.bench_function(format!("{}/bf16_{kernel:?}", s.name), |bn| {
                bn.iter(|| {
                    matmul_bf16(
                        kernel,
                        &mut dst,
                        dl,
                        &a16,
                        s.al,
                        &b16,
                        s.bl,
                        1.0,
                        s.accumulate,
                        true,
                    )
                })
            });
        }
        black_box(&dst);
    }
    group.finish();
}

criterion_group!(benches, peaks, gemms);
criterion_main!(benches);
