//! bf16 mixed precision on the CPU: the same contract as the GPU's (bf16 activations and GEMM
//! operands, f32 accumulation, statistics, loss and optimiser state). Checked against bf16 on the
//! emulated GPU, against f32 over a whole training run, and with the CPU feature detection forced
//! both ways. The tests that need AVX512_BF16 say "skipped" on a CPU without it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::backend::Backend;
use undertale_maskedlm::backend::cpu::CpuBackend;
use undertale_maskedlm::backend::cpu::gemm_bf16::Bf16Gemm;
use undertale_maskedlm::backend::cuda::emulator::ScheduleOrder;
use undertale_maskedlm::data::Example;
use undertale_maskedlm::device::Precision;
use undertale_maskedlm::model::Config;
use undertale_maskedlm::train::{Trainer, TrainerOptions};
use undertale_maskedlm::{
    DType, Device, Error, InstructionTraceTransformerEncoderForMaskedLM as Model, Size, Tensor,
};

mod common;

use common::{ODD_MASK as MASK, ODD_NEXT as NEXT, odd_batch, odd_config, odd_labels};

/// Whether this CPU runs bf16; prints why a test skips when it does not.
fn cpu_has_bf16() -> bool {
    let ok = Bf16Gemm::Avx512Bf16.available();
    if !ok {
        println!("skipped: this CPU has no AVX512_BF16");
    }
    ok
}
/// The largest difference against the largest magnitude of `want`, for a relative bound.
fn worst_relative(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    worst / scale
}

/// Logits, loss and every gradient of one batch.
struct Pass {
    logits: Vec<f32>,
    loss: f32,
    grads: Vec<f32>,
}

fn pass(model: &Model, tokens: &[i32], mask: &[i32], labels: &[i32], shape: [usize; 2]) -> Pass {
    let t = |v: &[i32]| Tensor::from_i32(&shape, v.to_vec()).unwrap();
    let logits = model
        .forward(&t(tokens), Some(&t(mask)))
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let mut grads = model
        .backend()
        .zeros_f32(&[model.num_parameters()])
        .unwrap();
    let loss = model
        .loss_and_backward(&t(tokens), &t(mask), &t(labels), &mut grads, None)
        .unwrap();
    Pass {
        logits,
        loss,
        grads: grads.to_vec_f32().unwrap(),
    }
}

/// Compares two passes with the bounds of the GPU's bf16 test (`tests/gpu_model.rs`): 5e-2 of
/// the largest logit, of the loss, and 4x that for each parameter's gradient.
fn assert_passes_agree(what: &str, model: &Model, got: &Pass, want: &Pass) {
    let rel = 5e-2;
    let logits = worst_relative(&got.logits, &want.logits);
    println!(
        "{what}: logits {logits:.2e} of their scale, loss {} vs {}",
        got.loss, want.loss
    );
    assert!(
        logits <= rel,
        "{what}: logits differ by {logits} of their scale"
    );
    assert!(
        (got.loss - want.loss).abs() <= rel * want.loss.abs(),
        "{what}: loss {} vs {}",
        got.loss,
        want.loss
    );
    for entry in model.layout().entries() {
        let range = entry.param.offset..entry.param.offset + entry.param.len;
        let r = worst_relative(&got.grads[range.clone()], &want.grads[range]);
        assert!(
            r <= 4.0 * rel,
            "{what}: gradient of {} differs by {r}",
            entry.name
        );
    }
}

fn random_batch(seed: u64) -> (Vec<i32>, Vec<i32>, Vec<i32>, [usize; 2]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = odd_config().sequence_length;
    let (tokens, mask) = odd_batch(&mut rng, 4, s);
    let labels = odd_labels(&mut rng, &tokens, &mask);
    (tokens, mask, labels, [4, s])
}

#[test]
fn bf16_on_the_cpu_matches_bf16_on_the_emulated_gpu() {
    if !cpu_has_bf16() {
        return;
    }
    let (tokens, mask, labels, shape) = random_batch(3);
    let cpu = Model::new(odd_config(), Device::Cpu, 11)
        .unwrap()
        .with_precision(Precision::Bf16)
        .unwrap();
    assert_eq!(cpu.precision(), Precision::Bf16);
    let gpu = Model::new(odd_config(), Device::Emulated(ScheduleOrder::Forward), 11)
        .unwrap()
        .with_precision(Precision::Bf16)
        .unwrap();
    let got = pass(&cpu, &tokens, &mask, &labels, shape);
    let want = pass(&gpu, &tokens, &mask, &labels, shape);
    assert_passes_agree("bf16 CPU against bf16 emulated GPU", &cpu, &got, &want);

    // And both follow f32 as loosely as bf16 allows (a wrong op shows as an error of order one).
    let f32 = Model::new(odd_config(), Device::Cpu, 11).unwrap();
    let reference = pass(&f32, &tokens, &mask, &labels, shape);
    assert_passes_agree("bf16 CPU against f32 CPU", &cpu, &got, &reference);
    // bf16 really ran: activations rounded to 8 significant bits move the logits.
    assert!(got.logits != reference.logits, "bf16 logits equal f32's");
}

#[test]
fn the_avx512_bf16_kernel_agrees_with_the_portable_path() {
    if !cpu_has_bf16() {
        return;
    }
    let (tokens, mask, labels, shape) = random_batch(5);
    let fast = Model::new(odd_config(), Device::Cpu, 2)
        .unwrap()
        .with_precision(Precision::Bf16)
        .unwrap();
    let portable = Model::new(odd_config(), Device::Cpu, 2)
        .unwrap()
        .on_backend(std::sync::Arc::new(CpuBackend::bf16_portable()))
        .unwrap();
    assert_eq!(portable.precision(), Precision::Bf16);
    let got = pass(&fast, &tokens, &mask, &labels, shape);
    let want = pass(&portable, &tokens, &mask, &labels, shape);
    // The two differ only in the order of each dot product's f32 sums.
    assert_passes_agree("AVX512_BF16 against portable", &fast, &got, &want);
}

#[test]
fn bf16_on_a_cpu_without_avx512_bf16_is_a_clear_error() {
    // Forced: the detection reports only the portable kernel, as on an AVX2 CPU.
    let err = CpuBackend::with_bf16_gemm(Precision::Bf16, Bf16Gemm::Portable).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(message.contains("AVX512_BF16"), "{message}");
    assert!(message.contains("--precision f32"), "{message}");
    // f32 runs whatever the CPU has.
    let f32 = CpuBackend::with_bf16_gemm(Precision::F32, Bf16Gemm::Portable).unwrap();
    assert_eq!(f32.precision(), Precision::F32);
    // Forced the other way, the backend is bf16 exactly when the CPU can run it.
    let forced = CpuBackend::with_bf16_gemm(Precision::Bf16, Bf16Gemm::Avx512Bf16);
    assert_eq!(forced.is_ok(), Bf16Gemm::Avx512Bf16.available());
    if let Ok(b) = forced {
        assert_eq!(b.precision(), Precision::Bf16);
        let t = b.alloc(&[3], DType::BF16).unwrap();
        assert_eq!(t.dtype(), DType::BF16);
    }
}

/// Rows of a learnable language: each row repeats a random 3-token motif, so the masked tokens
/// can be predicted from their context and the loss falls well below chance.
fn motif_rows(rng: &mut ChaCha8Rng, count: usize, seq: usize, vocab: usize) -> Vec<Example> {
    (0..count)
        .map(|_| {
            let motif: Vec<i32> = (0..3).map(|_| rng.random_range(6..vocab as i32)).collect();
            let len = rng.random_range(seq / 2..=seq);
            Example {
                tokens: (0..seq)
                    .map(|j| if j < len { motif[j % 3] } else { 0 })
                    .collect(),
                mask: (0..seq).map(|j| i32::from(j < len)).collect(),
            }
        })
        .collect()
}

#[test]
fn two_hundred_bf16_training_steps_end_within_two_percent_of_f32() {
    if !cpu_has_bf16() {
        return;
    }
    let (vocab, seq, batch_size, steps) = (40, 32, 8, 200);
    let mut config = Config::new(Size::TINY, vocab, NEXT, MASK);
    config.sequence_length = seq;
    config.lr = 2e-3;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let rows = motif_rows(&mut rng, batch_size * steps, seq, vocab);
    let run = |precision: Precision| -> Vec<f32> {
        let model = Model::new(config.clone(), Device::Cpu, 21)
            .unwrap()
            .with_precision(precision)
            .unwrap();
        let options = TrainerOptions {
            batch_size,
            seed: 4,
            ..TrainerOptions::new(steps as u64)
        };
        let mut trainer = Trainer::new(model, options).unwrap();
        rows.chunks(batch_size)
            .map(|b| trainer.step(b).unwrap().loss)
            .collect()
    };
    let f32 = run(Precision::F32);
    let bf16 = run(Precision::Bf16);
    // The last 20 steps' mean: one step's loss depends on which 15% the collator masked.
    let tail = |losses: &[f32]| losses[losses.len() - 20..].iter().sum::<f32>() / 20.0;
    let (end_f32, end_bf16) = (tail(&f32), tail(&bf16));
    println!(
        "loss: start {:.4} (f32) {:.4} (bf16), last 20 steps {end_f32:.4} (f32) {end_bf16:.4} (bf16)",
        f32[0], bf16[0]
    );
    // Training did something: the loss fell well below chance (ln 40 = 3.69).
    assert!(
        end_f32 < 0.8 * f32[0],
        "f32 did not learn: {} -> {end_f32}",
        f32[0]
    );
    let gap = (end_bf16 - end_f32).abs() / end_f32;
    assert!(
        gap <= 0.02,
        "bf16 ends {gap:.4} away from f32 ({end_bf16} vs {end_f32})"
    );
}
