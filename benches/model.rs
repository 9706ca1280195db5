//! CPU forward pass and training step of the `small` preset at batch 8, sequence 512.
//!
//! `cargo bench --bench cpu_model`. Throughput is reported in tokens (batch x sequence).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::data::{Example, MaskedLMCollator};
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::train::Trainer;
use undertale_maskedlm::{Device, Tensor};

const BATCH: usize = 8;
const SEQ: usize = 512;
/// A tokenizer of the reference recipe: 4096 BPE pieces plus the whole non-integer tokens.
const VOCAB: usize = 5000;

fn config() -> Config {
    Config::new(Size::SMALL, VOCAB, 5, 4)
}

fn rows(seed: u64) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..BATCH)
        .map(|_| Example {
            tokens: (0..SEQ)
                .map(|_| rng.random_range(6..VOCAB as i32))
                .collect(),
            mask: vec![1; SEQ],
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_small_b8_s512");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));

    let model = Model::new(config(), Device::Cpu, 0).unwrap();
    let batch = MaskedLMCollator::new(4, VOCAB, 0.15, 0)
        .unwrap()
        .collate(&rows(1))
        .unwrap();
    group.bench_function("forward_logits", |b| {
        b.iter(|| model.forward(&batch.tokens, Some(&batch.mask)).unwrap())
    });
    let tokens: Tensor = batch.tokens.clone();
    group.bench_function("forward_loss_eval", |b| {
        b.iter(|| model.evaluate(&tokens, &batch.mask, &batch.labels).unwrap())
    });

    let mut trainer = Trainer::new(model, BATCH, 1_000_000, 0).unwrap();
    let data = rows(2);
    group.bench_function("train_step", |b| b.iter(|| trainer.step(&data).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
