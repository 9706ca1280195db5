//! What crosses between the host and the GPU, counted by the backend ([`Backend::host_traffic`]),
//! on the emulated GPU (which counts exactly as a real one does): a steady-state training step
//! reads back only its loss, asynchronously, and never waits for the whole queue; `infer` reads
//! back only what it returns.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::backend::HostTraffic;
use undertale_maskedlm::backend::cuda::emulator::ScheduleOrder;
use undertale_maskedlm::data::Example;
use undertale_maskedlm::device::Precision;
use undertale_maskedlm::model::Config;
use undertale_maskedlm::train::{Continue, Trainer, TrainerOptions};
use undertale_maskedlm::{
    Device, InstructionTraceTransformerEncoderForMaskedLM as Model, Size, Tensor,
};

const VOCAB: usize = 40;
const NEXT: i32 = 5;
const MASK: i32 = 4;

fn config() -> Config {
    let size = Size {
        depth: 2,
        hidden_dimensions: 32,
        heads: 2,
        intermediate_dimensions: 48,
        sequence_length: 24,
    };
    Config::new(size, VOCAB, NEXT, MASK)
}

fn device() -> Device {
    Device::Emulated(ScheduleOrder::Forward)
}

/// Rows of random ordinary tokens with `[NEXT]` separators, of random lengths.
fn examples(rng: &mut ChaCha8Rng, rows: usize) -> Vec<Example> {
    let seq = config().sequence_length;
    (0..rows)
        .map(|_| {
            let len = rng.random_range(seq / 2..=seq);
            let tokens = (0..seq)
                .map(|j| match j {
                    _ if j >= len => 0,
                    _ if rng.random::<f32>() < 0.2 => NEXT,
                    _ => rng.random_range(6..VOCAB as i32),
                })
                .collect();
            let mask = (0..seq).map(|j| i32::from(j < len)).collect();
            Example { tokens, mask }
        })
        .collect()
}

fn traffic(trainer: &Trainer) -> HostTraffic {
    trainer.model().backend().host_traffic()
}

/// A step queued while the one before it is in flight, then that one finished: one download (a
/// loss, 4 bytes), no synchronisation; only the batch's integers go up. In f32 and in bf16.
#[test]
fn a_steady_state_training_step_reads_back_only_its_loss() {
    for precision in [Precision::F32, Precision::Bf16] {
        let model = Model::new(config(), device(), 3)
            .unwrap()
            .with_precision(precision)
            .unwrap();
        let mut trainer = Trainer::new(
            model,
            TrainerOptions {
                batch_size: 4,
                seed: 7,
                ..TrainerOptions::new(100)
            },
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let batches: Vec<Vec<Example>> = (0..4).map(|_| examples(&mut rng, 4)).collect();
        let mut in_flight = trainer.queue_step(&batches[0]).unwrap();
        for batch in &batches[1..] {
            let before = traffic(&trainer);
            let queued = trainer.queue_step(batch).unwrap();
            let report = trainer
                .finish_step(std::mem::replace(&mut in_flight, queued))
                .unwrap();
            let step = traffic(&trainer).since(&before);
            assert!(report.loss.is_finite(), "{precision}: step {}", report.step);
            assert_eq!(step.downloads, 1, "{precision}: {step:?}");
            assert_eq!(step.download_bytes, 4, "{precision}: {step:?}");
            assert_eq!(step.synchronizations, 0, "{precision}: {step:?}");
            // Small integer uploads, nothing else: the packed tokens, the sequence offsets, each
            // row's place in the padded batch (dropout's key), the attention schedule, the
            // labelled rows and their labels, and the scatter plan of the head's gather (a key
            // mask only for a mask with holes, which these batches do not have).
            assert!(step.uploads <= 7, "{precision}: {step:?}");
        }
        trainer.finish_step(in_flight).unwrap();
    }
}

/// `Trainer::train` over three epochs: one 4-byte download per step that has a loss (a batch in
/// which the collator masked nothing has none), and not one synchronisation.
#[test]
fn training_epochs_never_synchronise() {
    let model = Model::new(config(), device(), 5).unwrap();
    let mut trainer = Trainer::new(
        model,
        TrainerOptions {
            batch_size: 3,
            seed: 9,
            ..TrainerOptions::new(100)
        },
    )
    .unwrap();
    let data = examples(&mut ChaCha8Rng::seed_from_u64(2), 7);
    let before = traffic(&trainer);
    let mut losses = Vec::new();
    trainer
        .train(
            &data,
            3,
            None,
            |_, report| {
                losses.push(report.loss);
                Ok(())
            },
            |_, _| Ok(Continue::Yes),
        )
        .unwrap();
    let run = traffic(&trainer).since(&before);
    assert_eq!(losses.len(), 9, "three epochs of three batches");
    let with_loss = losses.iter().filter(|l| !l.is_nan()).count() as u64;
    assert!(with_loss >= 6, "{losses:?}");
    assert_eq!(run.downloads, with_loss, "{run:?}");
    assert_eq!(run.download_bytes, 4 * with_loss, "{run:?}");
    assert_eq!(run.synchronizations, 0, "{run:?}");
}

/// The same steps, synchronous or queued, give the same losses and the same weights.
#[test]
fn queued_steps_train_exactly_as_synchronous_ones() {
    let data = examples(&mut ChaCha8Rng::seed_from_u64(4), 8);
    let run = |queued: bool| {
        let model = Model::new(config(), device(), 8).unwrap();
        let mut trainer = Trainer::new(
            model,
            TrainerOptions {
                batch_size: 4,
                seed: 1,
                ..TrainerOptions::new(100)
            },
        )
        .unwrap();
        let mut losses = Vec::new();
        if queued {
            trainer
                .train(
                    &data,
                    2,
                    None,
                    |_, r| {
                        losses.push(r.loss.to_bits());
                        Ok(())
                    },
                    |_, _| Ok(Continue::Yes),
                )
                .unwrap();
        } else {
            for _ in 0..2 {
                for batch in data.chunks(4) {
                    losses.push(trainer.step(batch).unwrap().loss.to_bits());
                }
            }
        }
        let weights: Vec<u32> = trainer
            .model()
            .parameters()
            .to_vec_f32()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        (losses, weights)
    };
    assert_eq!(run(true), run(false));
}

/// `infer` reads back the filled ids of the masked positions only (4 bytes each, one download);
/// the top-k path reads back k ids and k probabilities per mask.
#[test]
fn infer_reads_back_only_the_answers() {
    let model = Model::new(config(), device(), 6).unwrap();
    let mut tokens: Vec<i32> = examples(&mut ChaCha8Rng::seed_from_u64(1), 1)
        .remove(0)
        .tokens
        .into_iter()
        .map(|t| if t == 0 { 7 } else { t })
        .collect();
    for j in [2, 9, 17] {
        tokens[j] = MASK;
    }
    let input = Tensor::from_i32(&[tokens.len()], tokens.clone()).unwrap();
    let backend = model.backend();
    let before = backend.host_traffic();
    let filled = model.infer(&input, None).unwrap();
    let call = backend.host_traffic().since(&before);
    assert_eq!(filled.shape(), &[tokens.len()]);
    assert_eq!(call.downloads, 1, "{call:?}");
    assert_eq!(call.download_bytes, 3 * 4, "{call:?}");
    assert_eq!(call.synchronizations, 1, "{call:?}");

    let k = 5;
    let before = backend.host_traffic();
    let logits = model
        .logits_at_positions(&input, None, &[2, 9, 17])
        .unwrap();
    let top = backend.softmax_top_k(&logits, k).unwrap();
    let ids = backend.download_i32(&top.ids).unwrap();
    let probabilities = backend.download_f32(&top.probabilities).unwrap();
    let call = backend.host_traffic().since(&before);
    assert_eq!((ids.len(), probabilities.len()), (3 * k, 3 * k));
    assert_eq!(call.downloads, 2, "{call:?}");
    assert_eq!(call.download_bytes, (3 * k * 8) as u64, "{call:?}");
    assert_eq!(call.synchronizations, 2, "{call:?}");
}
