//! Packed execution against padded execution of the same model and batch: the packed layout
//! computes only real tokens, and must give the padded layout's logits at real positions, its loss
//! and its gradients (dropout included: both draw the masks of the padded positions), to rounding.
//! The emulated GPU runs packed in `gpu_model.rs`; the kernels' varlen cases are in `kernels/`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::model::{DropoutSchedule, Packing};
use undertale_maskedlm::{
    Device, Error, InstructionTraceTransformerEncoderForMaskedLM as Model, Tensor,
};

mod common;

use common::{ODD_MASK as MASK, ODD_NEXT as NEXT, ODD_VOCAB as VOCAB, odd_config as config};

/// Rows of the given real lengths padded to `seq`, with `[NEXT]` separators and random labels
/// (about a third of the real positions). Returns tokens, mask and labels, each `[rows * seq]`.
fn batch(rng: &mut ChaCha8Rng, lengths: &[usize], seq: usize) -> [Vec<i32>; 3] {
    let (mut tokens, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for &len in lengths {
        for j in 0..seq {
            let real = j < len;
            let token = match (real, rng.random::<f32>()) {
                (false, _) => 0,
                (true, u) if u < 0.2 => NEXT,
                (true, _) => rng.random_range(6..VOCAB as i32),
            };
            tokens.push(token);
            mask.push(i32::from(real));
            labels.push(if real && rng.random::<f32>() < 0.35 {
                rng.random_range(0..VOCAB as i32)
            } else {
                -100
            });
        }
    }
    // Every row has a label: the loss must see every row.
    for (r, &len) in lengths.iter().enumerate() {
        labels[r * seq + len - 1] = 7;
    }
    [tokens, mask, labels]
}

fn tensor(rows: usize, seq: usize, v: &[i32]) -> Tensor {
    Tensor::from_i32(&[rows, seq], v.to_vec()).unwrap()
}

/// The largest difference relative to the largest magnitude of `want`.
fn worst(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max)
        / scale
}

/// Loss and every gradient of one training step (dropout on) in each layout, and the logits at
/// every real position.
fn packed_equals_padded(lengths: &[usize], mask_edit: impl Fn(&mut [i32], usize)) {
    let config = config();
    let seq = config.sequence_length;
    let rows = lengths.len();
    let mut rng = ChaCha8Rng::seed_from_u64(lengths.len() as u64);
    let [tokens, mut mask, labels] = batch(&mut rng, lengths, seq);
    mask_edit(&mut mask, seq);
    let labels: Vec<i32> = labels
        .iter()
        .zip(&mask)
        .map(|(&l, &m)| if m == 1 { l } else { -100 })
        .collect();
    let (t, m, l) = (
        tensor(rows, seq, &tokens),
        tensor(rows, seq, &mask),
        tensor(rows, seq, &labels),
    );
    let padded = Model::new(config.clone(), Device::Cpu, 9)
        .unwrap()
        .with_packing(Packing::Padded);
    let packed = Model::new(config, Device::Cpu, 9).unwrap();
    assert_eq!(packed.packing(), Packing::Packed, "packed is the default");
    let dropout = Some(DropoutSchedule {
        p: 0.1,
        seed: 17,
        step: 3,
    });

    let n = packed.num_parameters();
    let mut results = Vec::new();
    for model in [&padded, &packed] {
        let mut grads = model.backend().zeros_f32(&[n]).unwrap();
        let loss = model
            .loss_and_backward(&t, &m, &l, &mut grads, dropout)
            .unwrap();
        let real: Vec<i32> = (0..(rows * seq) as i32)
            .filter(|&i| mask[i as usize] == 1)
            .collect();
        let logits = model
            .logits_at_positions(&t, Some(&m), &real)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        results.push((loss, grads.to_vec_f32().unwrap(), logits));
    }
    let [
        (pad_loss, pad_grads, pad_logits),
        (pack_loss, pack_grads, pack_logits),
    ] = <[_; 2]>::try_from(results).unwrap();
    assert!(
        (pack_loss - pad_loss).abs() <= 1e-6 * pad_loss.abs(),
        "loss: packed {pack_loss} vs padded {pad_loss}"
    );
    let logits_error = worst(&pack_logits, &pad_logits);
    assert!(logits_error <= 1e-5, "logits differ by {logits_error}");
    for entry in packed.layout().entries() {
        let range = entry.param.offset..entry.param.offset + entry.param.len;
        let error = worst(&pack_grads[range.clone()], &pad_grads[range]);
        assert!(
            error <= 1e-5,
            "gradient of {} differs by {error}",
            entry.name
        );
    }
}

#[test]
fn packed_training_matches_padded_on_rows_of_unequal_length() {
    // Odd lengths, a single token, and a full row in one batch.
    packed_equals_padded(&[13, 1, 21, 6, 9], |_, _| {});
}

#[test]
fn packed_training_matches_padded_when_every_row_is_full() {
    packed_equals_padded(&[21, 21], |_, _| {});
}

/// A mask with a hole (a 0 before the row's last 1) keeps the reference's key-padding semantics:
/// the hole stays a position of the packed row and is masked as a key.
#[test]
fn a_hole_in_a_mask_is_a_masked_key_in_both_layouts() {
    packed_equals_padded(&[12, 17, 4], |mask, seq| {
        mask[3] = 0;
        mask[seq + 5] = 0;
        mask[seq + 6] = 0;
    });
}

/// Inference fills the same masks packed and padded; a `[MASK]` placed in the padding of a row is
/// filled too (packing cannot compute it, so that batch runs padded).
#[test]
fn packed_inference_fills_what_padded_inference_fills() {
    let config = config();
    let seq = config.sequence_length;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let lengths = [7, 19, 1, 12];
    let [mut tokens, mask, _] = batch(&mut rng, &lengths, seq);
    for (i, t) in tokens.iter_mut().enumerate() {
        if mask[i] == 1 && i % 3 == 0 {
            *t = MASK;
        }
    }
    let packed = Model::new(config.clone(), Device::Cpu, 2).unwrap();
    let padded = Model::new(config, Device::Cpu, 2)
        .unwrap()
        .with_packing(Packing::Padded);
    let m = tensor(4, seq, &mask);
    let fill = |model: &Model, tokens: &[i32]| {
        model
            .infer_batch(&tensor(4, seq, tokens), Some(&m))
            .unwrap()
            .to_vec_i32()
            .unwrap()
    };
    // Every [MASK] on a real token: the packed model computes real tokens only.
    let filled = fill(&packed, &tokens);
    assert_eq!(filled, fill(&padded, &tokens));
    assert!(!filled.contains(&MASK), "every [MASK] is filled");

    tokens[2 * seq + 4] = MASK; // in row 2's padding
    let filled = fill(&packed, &tokens);
    assert_eq!(filled, fill(&padded, &tokens));
    assert!(
        !filled.contains(&MASK),
        "the [MASK] in the padding is filled"
    );
}

/// The error a training step on these `[rows, seq]` inputs fails with.
fn training_error(model: &Model, rows: usize, [tokens, mask, labels]: [&[i32]; 3]) -> Error {
    let seq = tokens.len() / rows;
    let mut grads = model
        .backend()
        .zeros_f32(&[model.num_parameters()])
        .unwrap();
    model
        .loss_and_backward(
            &tensor(rows, seq, tokens),
            &tensor(rows, seq, mask),
            &tensor(rows, seq, labels),
            &mut grads,
            None,
        )
        .unwrap_err()
}

/// A row with no real token is an error naming it, in both layouts.
#[test]
fn a_row_without_a_real_token_is_named() {
    let config = config();
    let seq = config.sequence_length;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let [tokens, mut mask, labels] = batch(&mut rng, &[5, 8, 3], seq);
    mask[seq..2 * seq].fill(0);
    let labels: Vec<i32> = labels
        .iter()
        .zip(&mask)
        .map(|(&l, &m)| if m == 1 { l } else { -100 })
        .collect();
    for packing in [Packing::Packed, Packing::Padded] {
        let model = Model::new(config.clone(), Device::Cpu, 1)
            .unwrap()
            .with_packing(packing);
        let err = training_error(&model, 3, [&tokens, &mask, &labels]);
        assert!(matches!(err, Error::EmptyRow { row: 1 }), "{err:?}");
    }
}

/// A label on a padding position is an error naming it: padding is never a prediction target.
#[test]
fn a_label_on_padding_is_named() {
    let config = config();
    let seq = config.sequence_length;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let [tokens, mask, mut labels] = batch(&mut rng, &[5, 8], seq);
    labels[seq + 10] = 3;
    let model = Model::new(config, Device::Cpu, 1).unwrap();
    let err = training_error(&model, 2, [&tokens, &mask, &labels]);
    assert!(
        matches!(
            err,
            Error::LabelOnPadding {
                label: 3,
                row: 1,
                position: 10
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 1, position 10"), "{err}");
}
