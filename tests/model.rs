//! Model-level behaviour: preset sizes, `infer`, and the head-at-labelled-positions loss.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::{Device, Tensor};

/// The parameter count from SPEC.md's list of shapes, written out independently of the layout.
fn spec_parameter_count(c: &Config) -> usize {
    let (h, v, s, i, d) = (
        c.hidden_dimensions,
        c.vocab_size,
        c.sequence_length,
        c.intermediate_dimensions,
        c.head_dim(),
    );
    let embedding = v * h + 2 * s * h + 2 * h;
    let attention = c.heads * 3 * (d * h + d) + h * h + h;
    let layer = 2 * h + attention + 2 * h + (i * h + i) + (h * i + h);
    let head = (h * h + h) + 2 * h + (v * h + v);
    embedding + c.depth * layer + head
}

#[test]
fn presets_have_the_stated_sizes() {
    for (name, size) in Size::PRESETS {
        let config = Config::new(size, 5000, 5, 4);
        config.validate().unwrap();
        let layout = Model::layout_for(&config);
        assert_eq!(layout.len(), spec_parameter_count(&config), "{name}");
    }
    let medium = Size::preset("medium").unwrap();
    assert_eq!(
        (
            medium.depth,
            medium.hidden_dimensions,
            medium.heads,
            medium.intermediate_dimensions,
            medium.sequence_length
        ),
        (12, 768, 12, 3072, 512)
    );
    assert!(Size::preset("large").is_err());
}

fn random_model(seed: u64) -> (Model, ChaCha8Rng) {
    let size = Size {
        depth: 2,
        hidden_dimensions: 32,
        heads: 2,
        intermediate_dimensions: 48,
        sequence_length: 20,
    };
    let model = Model::new(Config::new(size, 30, 5, 4), Device::Cpu, seed).unwrap();
    (model, ChaCha8Rng::seed_from_u64(seed))
}

#[test]
fn infer_fills_only_mask_positions_with_the_argmax() {
    let (model, mut rng) = random_model(3);
    let mut ids: Vec<i32> = (0..17).map(|_| rng.random_range(6..30)).collect();
    for p in [0, 5, 16] {
        ids[p] = 4;
    }
    ids[8] = 5;
    let tokens = Tensor::from_i32(&[17], ids.clone()).unwrap();
    let filled = model.infer(&tokens, None).unwrap().to_vec_i32().unwrap();
    let logits = model.forward(&tokens, None).unwrap().to_vec_f32().unwrap();
    for (j, (&f, &orig)) in filled.iter().zip(&ids).enumerate() {
        if orig == 4 {
            let row = &logits[j * 30..][..30];
            let best = (0..30).fold(0, |b, k| if row[k] > row[b] { k } else { b });
            assert_eq!(f, best as i32, "position {j}");
        } else {
            assert_eq!(f, orig, "position {j} is not a mask and keeps its token");
        }
    }
}

/// A batch is filled as each of its sequences alone, padding and all.
#[test]
fn infer_batch_fills_each_sequence_as_infer_does() {
    let (model, mut rng) = random_model(4);
    let (batch, seq) = (3, 14);
    let mut ids: Vec<i32> = (0..batch * seq).map(|_| rng.random_range(6..30)).collect();
    for p in (0..batch * seq).step_by(3) {
        ids[p] = 4;
    }
    // Row 1 has four padding positions at its end.
    let mask: Vec<i32> = (0..batch * seq)
        .map(|i| i32::from(!(i / seq == 1 && i % seq >= seq - 4)))
        .collect();
    let tokens = Tensor::from_i32(&[batch, seq], ids.clone()).unwrap();
    let mask_t = Tensor::from_i32(&[batch, seq], mask.clone()).unwrap();
    let filled = model.infer_batch(&tokens, Some(&mask_t)).unwrap();
    assert_eq!(filled.shape(), [batch, seq]);
    let filled = filled.to_vec_i32().unwrap();
    assert_ne!(filled, ids, "some [MASK] was filled");
    for b in 0..batch {
        let row = |v: &[i32]| v[b * seq..(b + 1) * seq].to_vec();
        let alone = model
            .infer(
                &Tensor::from_i32(&[seq], row(&ids)).unwrap(),
                Some(&Tensor::from_i32(&[seq], row(&mask)).unwrap()),
            )
            .unwrap()
            .to_vec_i32()
            .unwrap();
        assert_eq!(row(&filled), alone, "sequence {b}");
    }
}

#[test]
fn the_labelled_rows_loss_equals_the_full_logits_loss() {
    // The training path runs the head only at labelled positions; the reference computes logits
    // everywhere and ignores label -100. Both must give the same number.
    let (model, mut rng) = random_model(5);
    let (b, s) = (3, 20);
    let tokens: Vec<i32> = (0..b * s).map(|_| rng.random_range(0..30)).collect();
    let mut mask = vec![1; b * s];
    mask[s + 15..2 * s].fill(0);
    let labels: Vec<i32> = (0..b * s)
        .map(|i| {
            if mask[i] == 1 && rng.random::<f32>() < 0.3 {
                rng.random_range(0..30)
            } else {
                -100
            }
        })
        .collect();
    let t = |v: &Vec<i32>| Tensor::from_i32(&[b, s], v.clone()).unwrap();
    let logits = model
        .forward(&t(&tokens), Some(&t(&mask)))
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let (mut total, mut count) = (0.0f64, 0);
    for (i, &l) in labels.iter().enumerate().filter(|(_, l)| **l != -100) {
        let row = &logits[i * 30..][..30];
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        total += lse - row[l as usize] as f64;
        count += 1;
    }
    let full = total / count as f64;
    let mut grads =
        Tensor::from_f32(&[model.num_parameters()], vec![0.0; model.num_parameters()]).unwrap();
    let loss = model
        .loss_and_backward(&t(&tokens), &t(&mask), &t(&labels), &mut grads, None)
        .unwrap();
    assert!(
        (loss as f64 - full).abs() < 1e-5 * full.abs(),
        "{loss} vs {full}"
    );
    let eval = model.evaluate(&t(&tokens), &t(&mask), &t(&labels)).unwrap();
    assert_eq!(eval.count, count);
    assert!((eval.loss - loss).abs() < 1e-6);
}
