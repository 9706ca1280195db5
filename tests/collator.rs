//! The masked-LM collator: the reference's own unit tests, the masking statistics (15% selected;
//! of those 80% [MASK], 10% random id, 10% unchanged; padding never), the uniformity of the random
//! replacements, seeding and resumable state, and bad input; the training collator's draw order,
//! and the evaluation collator whose masks depend only on the seed and the row.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::Error;
use undertale_maskedlm::data::collator::DEFAULT_PROBABILITY;
use undertale_maskedlm::data::{Example, MaskedBatch, MaskedLMCollator, RowKeyedCollator};

const IGNORE: i32 = -100;
const MASK_ID: i32 = 4;

/// `rows` rows of `seq` random ids in `[lo, vocab)`; each row gets a random number of trailing
/// padding positions (at least one real token) when `padded`.
fn random_rows(
    rng: &mut ChaCha8Rng,
    rows: usize,
    seq: usize,
    lo: i32,
    vocab: usize,
    padded: bool,
) -> Vec<Example> {
    (0..rows)
        .map(|_| {
            let real = if padded {
                rng.random_range(1..=seq)
            } else {
                seq
            };
            let tokens = (0..seq)
                .map(|_| rng.random_range(lo..vocab as i32))
                .collect();
            let mask = (0..seq).map(|j| i32::from(j < real)).collect();
            Example { tokens, mask }
        })
        .collect()
}

/// Flattened (tokens, mask, labels) of a batch, checking the shapes are `[rows, seq]`.
fn unpack(batch: &MaskedBatch, rows: usize, seq: usize) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    for t in [&batch.tokens, &batch.mask, &batch.labels] {
        assert_eq!(t.shape(), &[rows, seq]);
    }
    (
        batch.tokens.to_vec_i32().unwrap(),
        batch.mask.to_vec_i32().unwrap(),
        batch.labels.to_vec_i32().unwrap(),
    )
}

fn flat(rows: &[Example]) -> (Vec<i32>, Vec<i32>) {
    (
        rows.iter().flat_map(|r| r.tokens.iter().copied()).collect(),
        rows.iter().flat_map(|r| r.mask.iter().copied()).collect(),
    )
}

// Reference unit test: at probability 1.0 every position of an unpadded batch is labelled.
#[test]
fn probability_one_labels_every_unpadded_position() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let rows = random_rows(&mut rng, 6, 40, 5, 300, false);
    let mut c = MaskedLMCollator::new(MASK_ID, 300, 1.0, 7).unwrap();
    let (_, _, labels) = unpack(&c.collate(&rows).unwrap(), 6, 40);
    assert!(labels.iter().all(|&l| l != IGNORE), "{labels:?}");
}

// Reference unit test: at probability 0.0 nothing is labelled and no token changes.
#[test]
fn probability_zero_labels_nothing_and_keeps_tokens() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let rows = random_rows(&mut rng, 6, 40, 0, 300, true);
    let mut c = MaskedLMCollator::new(MASK_ID, 300, 0.0, 7).unwrap();
    let (tokens, _, labels) = unpack(&c.collate(&rows).unwrap(), 6, 40);
    assert!(labels.iter().all(|&l| l == IGNORE), "{labels:?}");
    assert_eq!(tokens, flat(&rows).0);
}

// Reference unit test: padded positions keep label -100 (and their token) even at probability 1.0,
// while every real position is labelled.
#[test]
fn padding_is_never_labelled_even_at_probability_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rows = random_rows(&mut rng, 16, 50, 5, 300, true);
    let (orig, mask) = flat(&rows);
    assert!(
        mask.contains(&0) && mask.contains(&1),
        "the batch must mix padding and real tokens"
    );
    let mut c = MaskedLMCollator::new(MASK_ID, 300, 1.0, 11).unwrap();
    let (tokens, _, labels) = unpack(&c.collate(&rows).unwrap(), 16, 50);
    for i in 0..orig.len() {
        if mask[i] == 0 {
            assert_eq!(labels[i], IGNORE, "padding position {i} labelled");
            assert_eq!(tokens[i], orig[i], "padding position {i} changed");
        } else {
            assert_ne!(
                labels[i], IGNORE,
                "real position {i} not labelled at probability 1"
            );
        }
    }
}

// Reference unit test: the attention mask comes out exactly as it went in.
#[test]
fn mask_passes_through_unchanged() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let rows = random_rows(&mut rng, 9, 33, 0, 100, true);
    let mut c = MaskedLMCollator::new(MASK_ID, 100, 0.5, 5).unwrap();
    let (_, mask, _) = unpack(&c.collate(&rows).unwrap(), 9, 33);
    assert_eq!(mask, flat(&rows).1);
}

// Reference unit test: the default masking probability is 0.15.
#[test]
fn default_probability_is_0_15() {
    assert_eq!(DEFAULT_PROBABILITY, 0.15);
}

// Labels hold the original token wherever they are set; unlabelled positions keep their token.
#[test]
fn labels_are_the_original_tokens() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut c = MaskedLMCollator::new(MASK_ID, 1000, 0.4, 9).unwrap();
    let mut labelled = 0;
    for _ in 0..20 {
        let rows = random_rows(&mut rng, 8, 64, 0, 1000, true);
        let (orig, _) = flat(&rows);
        let (tokens, _, labels) = unpack(&c.collate(&rows).unwrap(), 8, 64);
        for i in 0..orig.len() {
            if labels[i] == IGNORE {
                assert_eq!(tokens[i], orig[i], "unlabelled position {i} changed");
            } else {
                assert_eq!(labels[i], orig[i], "label at {i} is not the original token");
                labelled += 1;
            }
        }
    }
    assert!(
        labelled > 1000,
        "too few labelled positions ({labelled}) for the test to mean anything"
    );
}

/// Asserts `count / n` is within 5 binomial standard deviations of `p`.
fn assert_fraction(what: &str, count: usize, n: usize, p: f64) {
    let sigma = (p * (1.0 - p) / n as f64).sqrt();
    let got = count as f64 / n as f64;
    assert!(
        (got - p).abs() <= 5.0 * sigma,
        "{what}: {count}/{n} = {got:.5}, expected {p:.5} +- {:.5} (5 sigma)",
        5.0 * sigma
    );
}

// Over ~200k real tokens: 15% of real tokens are selected, and of those 80% become [MASK], 10% a
// random id, 10% stay; padding is never selected or changed; every output id is in the vocabulary.
#[test]
fn masking_statistics_match_bert_recipe() {
    const VOCAB: usize = 30_000;
    const SEQ: usize = 128;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut c = MaskedLMCollator::new(MASK_ID, VOCAB, DEFAULT_PROBABILITY, 1234).unwrap();
    let (mut real, mut selected, mut masked, mut kept, mut random) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    while real < 200_000 {
        // Original ids avoid the mask id, so "became [MASK]" is unambiguous.
        let rows = random_rows(&mut rng, 64, SEQ, 5, VOCAB, true);
        let (orig, mask) = flat(&rows);
        let (tokens, _, labels) = unpack(&c.collate(&rows).unwrap(), 64, SEQ);
        for i in 0..orig.len() {
            assert!(
                (0..VOCAB as i32).contains(&tokens[i]),
                "token {} out of range",
                tokens[i]
            );
            if mask[i] == 0 {
                assert_eq!(labels[i], IGNORE, "padding selected");
                assert_eq!(tokens[i], orig[i], "padding changed");
                continue;
            }
            real += 1;
            if labels[i] == IGNORE {
                continue;
            }
            selected += 1;
            if tokens[i] == MASK_ID {
                masked += 1;
            } else if tokens[i] == orig[i] {
                kept += 1;
            } else {
                random += 1;
            }
        }
    }
    let v = VOCAB as f64;
    assert_fraction("selected among real tokens", selected, real, 0.15);
    // A random replacement lands on [MASK] or on the original token with probability 1/V each.
    assert_fraction("[MASK] among selected", masked, selected, 0.8 + 0.1 / v);
    assert_fraction("unchanged among selected", kept, selected, 0.1 + 0.1 / v);
    assert_fraction("random among selected", random, selected, 0.1 - 0.2 / v);
}

// Random replacements are uniform over the whole vocabulary, special ids 0..5 included: a
// chi-square test over a vocabulary of 20. A replacement equal to the original token or to [MASK]
// is indistinguishable from the other branches, so each run drops the [MASK] bin and expects, for
// id k, 0.1/V per selected position whose original token is not k; two runs with different mask
// ids cover all 20 bins.
#[test]
fn random_replacements_are_uniform_over_vocab() {
    const VOCAB: usize = 20;
    const SEQ: usize = 100;
    // Chi-square critical value for 19 degrees of freedom at p ~ 1e-6 (Wilson-Hilferty).
    const CRITICAL: f64 = 64.0;
    for (mask_id, seed) in [(4i32, 21u64), (17, 22)] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut c = MaskedLMCollator::new(mask_id, VOCAB, 1.0, seed * 100).unwrap();
        let mut observed = [0f64; VOCAB];
        let mut expected = [0f64; VOCAB];
        for _ in 0..50 {
            // Originals uniform over the non-[MASK] ids.
            let rows: Vec<Example> = (0..100)
                .map(|_| Example {
                    tokens: (0..SEQ)
                        .map(|_| {
                            loop {
                                let t = rng.random_range(0..VOCAB as i32);
                                if t != mask_id {
                                    break t;
                                }
                            }
                        })
                        .collect(),
                    mask: vec![1; SEQ],
                })
                .collect();
            let (orig, _) = flat(&rows);
            let (tokens, _, _) = unpack(&c.collate(&rows).unwrap(), 100, SEQ);
            for i in 0..orig.len() {
                for (k, e) in expected.iter_mut().enumerate() {
                    if k != orig[i] as usize {
                        *e += 0.1 / VOCAB as f64;
                    }
                }
                if tokens[i] != mask_id && tokens[i] != orig[i] {
                    observed[tokens[i] as usize] += 1.0;
                }
            }
        }
        let chi2: f64 = (0..VOCAB)
            .filter(|&k| k as i32 != mask_id)
            .map(|k| (observed[k] - expected[k]).powi(2) / expected[k])
            .sum();
        assert!(
            (0..VOCAB)
                .filter(|&k| k as i32 != mask_id)
                .all(|k| expected[k] > 1000.0),
            "too few samples: {expected:?}"
        );
        assert!(
            chi2 < CRITICAL,
            "mask id {mask_id}: chi-square {chi2:.1} >= {CRITICAL}; observed {observed:?}, expected {expected:?}"
        );
    }
}

// The same seed gives identical batches; a different seed gives different ones.
#[test]
fn seed_determines_the_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let rows = random_rows(&mut rng, 8, 64, 0, 500, true);
    let run = |seed: u64| {
        let mut c = MaskedLMCollator::new(MASK_ID, 500, DEFAULT_PROBABILITY, seed).unwrap();
        (0..3)
            .map(|_| {
                let b = c.collate(&rows).unwrap();
                (
                    b.tokens.to_vec_i32().unwrap(),
                    b.labels.to_vec_i32().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // Successive batches from one collator differ too (the stream advances).
    let batches = run(42);
    assert_ne!(batches[0], batches[1]);
}

// `state()` / `restore()` continues the identical random stream in a fresh collator.
#[test]
fn state_and_restore_continue_the_stream() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let rows = random_rows(&mut rng, 8, 64, 0, 500, true);
    let take = |b: MaskedBatch| {
        (
            b.tokens.to_vec_i32().unwrap(),
            b.labels.to_vec_i32().unwrap(),
        )
    };
    let mut a = MaskedLMCollator::new(MASK_ID, 500, DEFAULT_PROBABILITY, 99).unwrap();
    a.collate(&rows).unwrap();
    let state = a.state();
    let a1 = take(a.collate(&rows).unwrap());
    let a2 = take(a.collate(&rows).unwrap());

    // A fresh collator with another seed, restored from the state, including through JSON.
    let json = serde_json::to_string(&state).unwrap();
    let mut b = MaskedLMCollator::new(MASK_ID, 500, DEFAULT_PROBABILITY, 12345).unwrap();
    b.restore(&serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(b.state(), state);
    assert_eq!(take(b.collate(&rows).unwrap()), a1);
    assert_eq!(take(b.collate(&rows).unwrap()), a2);
    assert_ne!(a1, a2);
}

// Rows of unequal length (tokens or mask) and an empty batch are errors, not panics.
#[test]
fn bad_batches_are_errors() {
    let mut c = MaskedLMCollator::new(MASK_ID, 100, DEFAULT_PROBABILITY, 0).unwrap();
    let row = |n: usize, m: usize| Example {
        tokens: (0..n as i32).map(|i| 5 + i % 90).collect(),
        mask: vec![1; m],
    };

    let err = c.collate(&[row(10, 10), row(9, 9)]).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { got, .. } if got == &vec![9, 9]),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 1"), "{err}");

    let err = c
        .collate(&[row(10, 10), row(10, 10), row(10, 11)])
        .unwrap_err();
    assert!(
        matches!(&err, Error::Shape { got, .. } if got == &vec![10, 11]),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 2"), "{err}");

    let err = c.collate(&[row(10, 7)]).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { got, .. } if got == &vec![10, 7]),
        "{err:?}"
    );

    let err = c.collate(&[]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err:?}");
}

// A [MASK] id outside the vocabulary, or a probability outside [0, 1], is a configuration error.
#[test]
fn bad_collator_arguments_are_errors() {
    for (mask_id, vocab) in [(100i32, 100usize), (250, 100), (-1, 100)] {
        let err = MaskedLMCollator::new(mask_id, vocab, 0.15, 0).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&mask_id.to_string()) && msg.contains(&vocab.to_string()),
            "{msg}"
        );
    }
    assert!(MaskedLMCollator::new(99, 100, 0.15, 0).is_ok());
    for p in [-0.1f32, 1.5, f32::NAN] {
        let err = MaskedLMCollator::new(MASK_ID, 100, p, 0).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "probability {p}: {err:?}");
        assert!(err.to_string().contains(&p.to_string()), "{err}");
    }
}

/// The module's documented masking, drawn from `rng` over `tokens` (row-major), written
/// independently of the crate: first uniforms, second uniforms, then the random ids.
fn documented_masking(
    rng: &mut ChaCha8Rng,
    tokens: &[i32],
    mask: &[i32],
    vocab: usize,
) -> (Vec<i32>, Vec<i32>) {
    let n = tokens.len();
    let first: Vec<f32> = (0..n).map(|_| rng.random()).collect();
    let second: Vec<f32> = (0..n).map(|_| rng.random()).collect();
    let mut out = tokens.to_vec();
    let mut labels = vec![IGNORE; n];
    for i in 0..n {
        if first[i] < DEFAULT_PROBABILITY && mask[i] == 1 {
            labels[i] = tokens[i];
            if second[i] < 0.8 {
                out[i] = MASK_ID;
            } else if second[i] < 0.9 {
                out[i] = rng.random_range(0..vocab) as i32;
            }
        }
    }
    (out, labels)
}

// Training reproduces the reference's run only if the draw order never changes: two batches in a
// row from one stream, as the module documents it.
#[test]
fn training_collator_draws_in_the_documented_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let vocab = 300;
    let batches = [
        random_rows(&mut rng, 5, 24, 0, vocab, true),
        random_rows(&mut rng, 3, 24, 0, vocab, true),
    ];
    let seed = rng.random::<u64>();
    let mut collator = MaskedLMCollator::new(MASK_ID, vocab, DEFAULT_PROBABILITY, seed).unwrap();
    let mut stream = ChaCha8Rng::seed_from_u64(seed);
    for rows in &batches {
        let (tokens, mask) = flat(rows);
        let (t, m, l) = unpack(&collator.collate(rows).unwrap(), rows.len(), 24);
        let (expected_tokens, expected_labels) =
            documented_masking(&mut stream, &tokens, &mask, vocab);
        assert_eq!((t, m, l), (expected_tokens, mask, expected_labels));
    }
}

// Evaluation masks: row i is masked by the generator of (seed, i) alone, so every batching of the
// same rows gives the same masks, and they are the documented masking on that row's stream.
#[test]
fn row_keyed_masks_depend_only_on_the_seed_and_the_row() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let vocab = 200;
    let seq = 32;
    let rows = random_rows(&mut rng, 11, seq, 0, vocab, true);
    let seed = rng.random::<u64>();
    let collator = RowKeyedCollator::new(MASK_ID, vocab, DEFAULT_PROBABILITY, seed).unwrap();
    let batched = |batch_size: usize| {
        let mut tokens = Vec::new();
        let mut labels = Vec::new();
        for (k, chunk) in rows.chunks(batch_size).enumerate() {
            let (t, _, l) = unpack(
                &collator.collate(chunk, k * batch_size).unwrap(),
                chunk.len(),
                seq,
            );
            tokens.extend(t);
            labels.extend(l);
        }
        (tokens, labels)
    };
    let one = batched(1);
    assert_eq!(one, batched(3));
    assert_eq!(one, batched(8));
    assert_eq!(one, batched(rows.len()));
    assert!(one.1.iter().any(|&l| l != IGNORE), "something is masked");
    for (i, row) in rows.iter().enumerate() {
        let mut stream = ChaCha8Rng::seed_from_u64(seed);
        stream.set_stream(i as u64);
        let expected = documented_masking(&mut stream, &row.tokens, &row.mask, vocab);
        let span = i * seq..(i + 1) * seq;
        assert_eq!(
            (one.0[span.clone()].to_vec(), one.1[span].to_vec()),
            expected,
            "row {i}"
        );
    }
    // Another seed, other masks.
    let other = RowKeyedCollator::new(MASK_ID, vocab, DEFAULT_PROBABILITY, seed ^ 1).unwrap();
    let (_, _, l) = unpack(&other.collate(&rows, 0).unwrap(), rows.len(), seq);
    assert_ne!(l, one.1);
    // Its arguments are checked as the training collator's are.
    assert!(matches!(
        RowKeyedCollator::new(vocab as i32, vocab, DEFAULT_PROBABILITY, 0),
        Err(Error::Config(_))
    ));
}
