//! The whole model on the GPU backend against the CPU backend: forward, backward and two training
//! steps (collator, dropout, AdamW, schedule). Runs on the emulated GPU everywhere; on a real GPU
//! too when one is present (otherwise that test says why it skipped).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::backend::cuda::emulator::ScheduleOrder;
use undertale_maskedlm::data::Example;
use undertale_maskedlm::device::Precision;
use undertale_maskedlm::model::Config;
use undertale_maskedlm::train::{Trainer, TrainerOptions};
use undertale_maskedlm::{
    Device, InstructionTraceTransformerEncoderForMaskedLM as Model, Size, Tensor,
};

mod common;

use common::{ODD_MASK as MASK, ODD_NEXT as NEXT, odd_batch, odd_config as config, odd_labels};
/// GPU 0 when it is usable; a failure instead of a skip under `MASKEDLM_REQUIRE_GPU=1`.
fn real_gpu() -> Option<Device> {
    Device::gpu_for_checks().unwrap_or_else(|e| panic!("{e}"))
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= rel * scale,
        "{what}: worst difference {worst} against scale {scale}"
    );
}

/// Forward logits, the training loss and every gradient, on `device` against the CPU.
fn forward_and_backward_match(device: Device, precision: Precision, rel: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let config = config();
    let (b, s) = (4, config.sequence_length);
    let (tokens, mask) = odd_batch(&mut rng, b, s);
    let labels = odd_labels(&mut rng, &tokens, &mask);
    let t = |v: &[i32]| Tensor::from_i32(&[b, s], v.to_vec()).unwrap();
    let cpu = Model::new(config.clone(), Device::Cpu, 11).unwrap();
    let gpu = Model::new(config, device, 11)
        .unwrap()
        .with_precision(precision)
        .unwrap();
    assert_eq!(gpu.precision(), precision);

    let want = cpu
        .forward(&t(&tokens), Some(&t(&mask)))
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let got = gpu
        .forward(&t(&tokens), Some(&t(&mask)))
        .unwrap()
        .to_vec_f32()
        .unwrap();
    assert_close(&format!("logits on {device}"), &got, &want, rel);

    let n = cpu.num_parameters();
    let mut cpu_grads = cpu.backend().zeros_f32(&[n]).unwrap();
    let mut gpu_grads = gpu.backend().zeros_f32(&[n]).unwrap();
    let cpu_loss = cpu
        .loss_and_backward(&t(&tokens), &t(&mask), &t(&labels), &mut cpu_grads, None)
        .unwrap();
    let gpu_loss = gpu
        .loss_and_backward(&t(&tokens), &t(&mask), &t(&labels), &mut gpu_grads, None)
        .unwrap();
    assert!(
        (gpu_loss - cpu_loss).abs() <= rel * cpu_loss.abs(),
        "loss on {device}: {gpu_loss} vs {cpu_loss}"
    );
    let want = cpu_grads.to_vec_f32().unwrap();
    let got = gpu_grads.to_vec_f32().unwrap();
    // Gradients pass through every op twice: a looser bound than the logits.
    let grad_rel = if precision == Precision::F32 {
        rel * 10.0
    } else {
        rel * 4.0
    };
    for entry in cpu.layout().entries() {
        let range = entry.param.offset..entry.param.offset + entry.param.len;
        let what = format!("gradient of {} on {device}", entry.name);
        assert_close(&what, &got[range.clone()], &want[range], grad_rel);
    }

    // infer fills one sequence: the first row's real tokens, every fourth one masked.
    let mut row: Vec<i32> = tokens[..s]
        .iter()
        .zip(&mask[..s])
        .filter(|(_, m)| **m == 1)
        .map(|(t, _)| *t)
        .collect();
    for j in (1..row.len()).step_by(4) {
        row[j] = MASK;
    }
    if precision != Precision::F32 {
        return; // argmaxes of bf16 logits may legitimately differ where two candidates are close
    }
    let one = Tensor::from_i32(&[row.len()], row).unwrap();
    let filled_cpu = cpu.infer(&one, None).unwrap().to_vec_i32().unwrap();
    let filled_gpu = gpu.infer(&one, None).unwrap().to_vec_i32().unwrap();
    assert_eq!(filled_gpu, filled_cpu, "infer on {device}");
}

/// Two optimiser steps of the trainer (collator masks, dropout, AdamW, schedule).
fn training_steps_match(device: Device, precision: Precision, rel: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let config = config();
    let (tokens, mask) = odd_batch(&mut rng, 12, config.sequence_length);
    let examples: Vec<Example> = tokens
        .chunks(config.sequence_length)
        .zip(mask.chunks(config.sequence_length))
        .map(|(t, m)| Example {
            tokens: t.to_vec(),
            mask: m.to_vec(),
        })
        .collect();
    let mut cpu = Trainer::new(
        Model::new(config.clone(), Device::Cpu, 5).unwrap(),
        TrainerOptions {
            batch_size: 6,
            seed: 9,
            ..TrainerOptions::new(10)
        },
    )
    .unwrap();
    let model = Model::new(config, device, 5)
        .unwrap()
        .with_precision(precision)
        .unwrap();
    let mut gpu = Trainer::new(
        model,
        TrainerOptions {
            batch_size: 6,
            seed: 9,
            ..TrainerOptions::new(10)
        },
    )
    .unwrap();
    for step in 0..2 {
        let rows = &examples[step * 6..(step + 1) * 6];
        let want = cpu.step(rows).unwrap();
        let got = gpu.step(rows).unwrap();
        let (w, g) = (want.loss, got.loss);
        assert!(
            (g - w).abs() <= rel * w.abs(),
            "step {step} loss on {device}: {g} vs {w}"
        );
    }
    let want = cpu.model().parameters().to_vec_f32().unwrap();
    let got = gpu.model().parameters().to_vec_f32().unwrap();
    assert_close(
        &format!("parameters after two steps on {device}"),
        &got,
        &want,
        rel,
    );
}

#[test]
fn the_model_on_the_emulated_gpu_matches_the_cpu() {
    for order in [ScheduleOrder::Forward, ScheduleOrder::Random(7)] {
        forward_and_backward_match(Device::Emulated(order), Precision::F32, 1e-4);
    }
}

#[test]
fn training_on_the_emulated_gpu_matches_the_cpu() {
    training_steps_match(
        Device::Emulated(ScheduleOrder::Reverse),
        Precision::F32,
        1e-4,
    );
}

/// bf16 mixed precision: activations rounded to 8 significant bits at every op, so the whole
/// model agrees with the f32 CPU only loosely; what this catches is a wrong op (a missing term,
/// a transposed operand, a lost update), which shows as an error of order one.
#[test]
fn the_model_in_bf16_on_the_emulated_gpu_follows_the_cpu() {
    forward_and_backward_match(
        Device::Emulated(ScheduleOrder::Forward),
        Precision::Bf16,
        5e-2,
    );
    training_steps_match(
        Device::Emulated(ScheduleOrder::Reverse),
        Precision::Bf16,
        5e-2,
    );
}

#[test]
fn the_model_on_a_real_gpu_matches_the_cpu() {
    if let Some(gpu) = real_gpu() {
        forward_and_backward_match(gpu, Precision::F32, 1e-4);
        training_steps_match(gpu, Precision::F32, 1e-4);
        forward_and_backward_match(gpu, Precision::Bf16, 5e-2);
        training_steps_match(gpu, Precision::Bf16, 5e-2);
    }
}

/// The reference's own size on a real GPU: `medium` (12 layers of 768) forward against the CPU,
/// and a short training run whose losses must follow the CPU's. Skipped without a GPU (on the CPU
/// alone this would take minutes).
#[test]
fn the_medium_model_on_a_real_gpu_matches_the_cpu() {
    if real_gpu().is_none() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let config = Config::new(Size::MEDIUM, 4096, NEXT, MASK);
    let seq = 128; // shorter than the 512 positions: the forward and the loss do not depend on it
    let (tokens, mask) = odd_batch(&mut rng, 4, seq);
    let t = |v: &[i32]| Tensor::from_i32(&[4, seq], v.to_vec()).unwrap();
    let cpu = Model::new(config.clone(), Device::Cpu, 1).unwrap();
    for precision in [Precision::F32, Precision::Bf16] {
        let gpu = Model::new(config.clone(), Device::Cuda(0), 1)
            .unwrap()
            .with_precision(precision)
            .unwrap();
        let want = cpu
            .forward(&t(&tokens), Some(&t(&mask)))
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let got = gpu
            .forward(&t(&tokens), Some(&t(&mask)))
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let rel = if precision == Precision::F32 {
            1e-3
        } else {
            1e-1
        };
        assert_close(&format!("medium logits in {precision}"), &got, &want, rel);
    }
    let examples: Vec<Example> = tokens
        .chunks(seq)
        .zip(mask.chunks(seq))
        .map(|(t, m)| Example {
            tokens: t.to_vec(),
            mask: m.to_vec(),
        })
        .collect();
    let mut cpu = Trainer::new(
        cpu,
        TrainerOptions {
            batch_size: 4,
            seed: 2,
            ..TrainerOptions::new(3)
        },
    )
    .unwrap();
    let mut gpu = Trainer::new(
        Model::new(config, Device::Cuda(0), 1).unwrap(),
        TrainerOptions {
            batch_size: 4,
            seed: 2,
            ..TrainerOptions::new(3)
        },
    )
    .unwrap();
    for step in 0..3 {
        let (w, g) = (
            cpu.step(&examples).unwrap().loss,
            gpu.step(&examples).unwrap().loss,
        );
        assert!(
            (g - w).abs() <= 1e-3 * w.abs(),
            "medium step {step} loss: {g} on the GPU, {w} on the CPU"
        );
    }
}

/// The emulated GPU counts the bytes its tensors hold: a new tensor raises the live count and the
/// peak, dropping it lowers the live count only, and a reset starts the peak from what is live.
#[test]
fn the_gpu_backend_counts_the_memory_its_tensors_hold() {
    let backend = Device::Emulated(ScheduleOrder::Forward).backend().unwrap();
    let before = backend
        .memory_use()
        .expect("a GPU backend counts its memory");
    let t = backend.zeros_f32(&[1000]).unwrap();
    let held = backend.memory_use().unwrap();
    assert_eq!(held.live, before.live + 4000);
    assert!(held.peak >= held.live);
    drop(t);
    let after = backend.memory_use().unwrap();
    assert_eq!(after.live, before.live);
    assert_eq!(after.peak, held.peak);
    backend.reset_peak_memory();
    assert_eq!(backend.memory_use().unwrap().peak, before.live);
    assert!(Device::Cpu.backend().unwrap().memory_use().is_none());
}
