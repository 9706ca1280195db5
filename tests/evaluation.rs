//! Scoring a checkpoint: every path (`evaluate` at any batch size, `pretrain`'s validation) masks
//! each row by the evaluation seed and the row alone, so they all give the same loss and accuracy.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::Device;
use undertale_maskedlm::checkpoint::load_model;
use undertale_maskedlm::data::Example;
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::pipeline::dataset::load_examples;
use undertale_maskedlm::pipeline::evaluate::evaluate;
use undertale_maskedlm::pipeline::pretrain::{PretrainOptions, pretrain};
use undertale_maskedlm::train::metrics::{Record, read_records};

/// Loss tolerance between batchings: the same per-position losses summed in other groupings
/// (f32 means per batch, and GEMMs blocked by batch size), relative.
const LOSS_TOLERANCE: f64 = 1e-5;

/// Accuracies must agree within one position in a thousand: only an argmax between two logits
/// within f32 rounding of each other could flip.
fn assert_close(what: &str, a: (f64, f64), b: (f64, f64)) {
    assert!(
        (a.0 - b.0).abs() <= LOSS_TOLERANCE * a.0.abs().max(1.0),
        "{what}: loss {} vs {}",
        a.0,
        b.0
    );
    assert!(
        (a.1 - b.1).abs() <= 1e-3,
        "{what}: accuracy {} vs {}",
        a.1,
        b.1
    );
}

/// Rows of `seq` random ids, each with a random number of real tokens (at least one) and the
/// rest padding.
fn random_rows(rng: &mut ChaCha8Rng, rows: usize, seq: usize, vocab: usize) -> Vec<Example> {
    (0..rows)
        .map(|_| {
            let real = rng.random_range(1..=seq);
            Example {
                tokens: (0..seq)
                    .map(|j| {
                        if j < real {
                            rng.random_range(6..vocab as i32)
                        } else {
                            0
                        }
                    })
                    .collect(),
                mask: (0..seq).map(|j| i32::from(j < real)).collect(),
            }
        })
        .collect()
}

#[test]
fn evaluate_scores_do_not_depend_on_the_batch_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    // A vocabulary of few real ids, so that even random weights get some masked positions right
    // and the accuracies compared are not all zero.
    let (vocab, seq) = (9, 24);
    let mut config = Config::new(Size::TINY, vocab, 5, 4);
    config.sequence_length = seq;
    let model = Model::new(config, Device::Cpu, rng.random()).unwrap();
    let rows = random_rows(&mut rng, 29, seq, vocab);
    let score = |batch: usize| {
        let r = evaluate(&model, &rows, batch).unwrap();
        assert_eq!(r.sequences, rows.len());
        (r.loss, r.accuracy)
    };
    let one = score(1);
    assert!(one.0.is_finite() && one.0 > 0.0 && one.1 > 0.0, "{one:?}");
    for batch in [3, 8, rows.len()] {
        assert_close(&format!("batch size {batch} against 1"), score(batch), one);
    }
}

#[test]
fn evaluate_of_a_checkpoint_reproduces_pretrains_logged_validation() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let data = fixtures.join("reference_tokenized.parquet");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let options = PretrainOptions {
        validation: Some(data.clone()),
        config: Some("tiny".into()),
        epochs: Some(1),
        // A few steps at a high rate, so the model predicts something and the F1 is not zero.
        batch_size: Some(4),
        learning_rate: Some(1e-2),
        warmup: Some(0.0),
        progress: false,
        ..PretrainOptions::new(
            fixtures.join("tokenizer_reference.json"),
            data.clone(),
            out.clone(),
        )
    };
    pretrain(&options).unwrap();
    let logged = read_records(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .find_map(|r| match r {
            Record::Epoch {
                validation_loss: Some(loss),
                validation_f1: Some(f1),
                ..
            } => Some((loss, f1)),
            _ => None,
        })
        .expect("an epoch record with validation scores");
    assert!(logged.1 > 0.0, "{logged:?}");
    let model = load_model(&out.join("last"), Device::Cpu).unwrap();
    let rows = load_examples(&data, model.config()).unwrap();
    // Another batch size than training's: the masks, and so the scores, are the same.
    for batch in [4, 7, 32] {
        let r = evaluate(&model, &rows, batch).unwrap();
        assert_close(
            &format!("evaluate at batch size {batch} against the log"),
            (r.loss, r.accuracy),
            logged,
        );
    }
}
