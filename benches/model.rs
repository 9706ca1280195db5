//! The whole model: a training step (forward, loss, backward, AdamW), batch-1 inference latency and
//! batch-64 inference throughput, at sequence 512; and a training step on a batch of real
//! functions' lengths (`benches/data/function_lengths.json`, rows padded to 512) run packed and
//! padded, whose throughput counts real tokens only.
//!
//! `cargo bench --bench model`. On a machine with a GPU: the `medium` preset in bf16 mixed
//! precision, training at batch 32; elsewhere, or with `MASKEDLM_BENCH_DEVICE=cpu`: the `small`
//! preset on the CPU, training at batch 8, in f32 or (`MASKEDLM_BENCH_PRECISION=bf16`, a CPU with
//! AVX512_BF16) bf16. Throughput is in tokens (batch x sequence). The same
//! figures, with PyTorch's beside them, come from `scripts/compare.sh`.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::data::Example;
use undertale_maskedlm::device::Precision;
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Packing, Size,
};
use undertale_maskedlm::pipeline::bench::read_lengths;
use undertale_maskedlm::train::{Trainer, TrainerOptions};
use undertale_maskedlm::{Device, Tensor};

const SEQ: usize = 512;
/// A tokenizer of the reference recipe: 4096 BPE pieces plus the whole non-integer tokens.
const VOCAB: usize = 5000;
const MASK: i32 = 4;
const INFER_BATCH: usize = 64;

fn rows(rng: &mut ChaCha8Rng, batch: usize) -> Vec<Example> {
    (0..batch)
        .map(|_| Example {
            tokens: (0..SEQ)
                .map(|_| rng.random_range(6..VOCAB as i32))
                .collect(),
            mask: vec![1; SEQ],
        })
        .collect()
}

/// `batch` sequences with 15% of the positions `[MASK]`.
fn masked(rng: &mut ChaCha8Rng, batch: usize) -> Tensor {
    let tokens = rows(rng, batch)
        .into_iter()
        .flat_map(|r| r.tokens)
        .map(|t| if rng.random_bool(0.15) { MASK } else { t })
        .collect();
    Tensor::from_i32(&[batch, SEQ], tokens).unwrap()
}

fn bench(c: &mut Criterion) {
    let forced_cpu = std::env::var("MASKEDLM_BENCH_DEVICE").is_ok_and(|d| d == "cpu");
    let gpu = !forced_cpu && Device::Cuda(0).backend().is_ok();
    let (device, precision, size, preset, batch) = if gpu {
        (Device::Cuda(0), Precision::Bf16, Size::MEDIUM, "medium", 32)
    } else {
        // The CPU in f32, or in bf16 with MASKEDLM_BENCH_PRECISION=bf16 (AVX512_BF16).
        let precision = std::env::var("MASKEDLM_BENCH_PRECISION")
            .map_or(Ok(Precision::F32), |p| p.parse())
            .expect("MASKEDLM_BENCH_PRECISION is f32 or bf16");
        (Device::Cpu, precision, Size::SMALL, "small", 8)
    };
    let model = Model::new(Config::new(size, VOCAB, 5, MASK), device, 0)
        .unwrap()
        .with_precision(precision)
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut group = c.benchmark_group(format!("{}_{precision}_{preset}", model.device()));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));

    // Inference returns the filled ids on the host, so each call has finished when it returns.
    let one = masked(&mut rng, 1);
    group.throughput(Throughput::Elements(SEQ as u64));
    group.bench_function("infer_b1", |b| {
        b.iter(|| model.infer_batch(&one, None).unwrap())
    });
    let many = masked(&mut rng, INFER_BATCH);
    group.throughput(Throughput::Elements((INFER_BATCH * SEQ) as u64));
    group.bench_function(format!("infer_b{INFER_BATCH}"), |b| {
        b.iter(|| model.infer_batch(&many, None).unwrap())
    });

    // A training step downloads its loss, so it too has finished when it returns.
    let mut trainer = Trainer::new(
        model,
        TrainerOptions {
            batch_size: batch,
            seed: 0,
            ..TrainerOptions::new(1_000_000)
        },
    )
    .unwrap();
    let data = rows(&mut rng, batch);
    group.throughput(Throughput::Elements((batch * SEQ) as u64));
    group.bench_function(format!("train_step_b{batch}"), |b| {
        b.iter(|| trainer.step(&data).unwrap())
    });

    let lengths_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/data/function_lengths.json"
    );
    let (_, lengths) = read_lengths(std::path::Path::new(lengths_file), SEQ).unwrap();
    let mut real_rows = rows(&mut rng, batch);
    for (row, &len) in real_rows.iter_mut().zip(&lengths) {
        row.tokens[len..].fill(0);
        row.mask[len..].fill(0);
    }
    let real: usize = lengths[..batch].iter().sum();
    group.throughput(Throughput::Elements(real as u64));
    for (name, packing) in [("packed", Packing::Packed), ("padded", Packing::Padded)] {
        trainer.set_packing(packing);
        group.bench_function(format!("train_step_b{batch}_real_lengths_{name}"), |b| {
            b.iter(|| trainer.step(&real_rows).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
