// Kernel tests for kernels/cross_entropy.cu: the fused loss and gradient against the CPU backend
// (ignored labels, -inf logits, a vocabulary spanning many warps), plus the label errors; bf16 logits
// against the CPU on the rounded logits.

use crate::harness::{assert_close, cpu, gpus, gpus_bf16, random, rng, round_bf16, upload_bf16};
use rand::Rng;
use undertale_maskedlm::backend::Backend;
use undertale_maskedlm::backend::cpu::IGNORE_INDEX;
use undertale_maskedlm::{DType, Error, Tensor};

/// Random labels below `vocab`, every third one ignored.
fn labels(seed: u64, rows: usize, vocab: usize) -> Vec<i32> {
    let mut rng = rng(seed);
    (0..rows)
        .map(|r| {
            if r % 3 == 1 {
                IGNORE_INDEX
            } else {
                rng.random_range(0..vocab as i32)
            }
        })
        .collect()
}

fn check_matches_cpu(rows: usize, vocab: usize, logits: &[f32], labels: &[i32]) {
    let cpu = cpu();
    let shape = [rows, vocab];
    let want = cpu
        .cross_entropy(
            &cpu.upload_f32(&shape, logits).unwrap(),
            &cpu.upload_i32(&[rows], labels).unwrap(),
            true,
        )
        .unwrap();
    let want_dlogits = want.dlogits.as_ref().unwrap().to_vec_f32().unwrap();
    for (order, gpu) in gpus() {
        let x = gpu.upload_f32(&shape, logits).unwrap();
        let l = gpu.upload_i32(&[rows], labels).unwrap();
        let got = gpu.cross_entropy(&x, &l, true).unwrap();
        assert_eq!(got.count, want.count);
        // f32 row sums on the device, f64 on the CPU: a few ulp apart.
        assert_close(
            &format!("loss {order:?}"),
            &[got.loss_value().unwrap()],
            &[want.loss_value().unwrap()],
            1e-6,
            0.0,
        );
        let dlogits = gpu.download_f32(got.dlogits.as_ref().unwrap()).unwrap();
        assert_eq!(got.dlogits.as_ref().unwrap().shape(), &shape);
        assert_close(
            &format!("dlogits {order:?}"),
            &dlogits,
            &want_dlogits,
            1e-6,
            0.0,
        );
        // Ignored rows: exactly zero gradient.
        for (r, &label) in labels.iter().enumerate() {
            if label == IGNORE_INDEX {
                assert!(dlogits[r * vocab..][..vocab].iter().all(|&d| d == 0.0));
            }
        }
        // Without the gradient: the same loss, bit for bit, and no tensor.
        let loss_only = gpu.cross_entropy(&x, &l, false).unwrap();
        assert!(loss_only.dlogits.is_none());
        assert_eq!(
            loss_only.loss_value().unwrap().to_bits(),
            got.loss_value().unwrap().to_bits()
        );
        assert_eq!(loss_only.count, want.count);
    }
}

#[test]
fn loss_and_gradient_match_the_cpu() {
    // 103 logits per row: four warps, the last partial; every third row ignored.
    let (rows, vocab) = (29, 103);
    let mut logits = random(&mut rng(21), rows * vocab, 4.0);
    // Row 0: its first 40 logits are -inf (whole threads start on -inf), the label elsewhere.
    logits[..40].fill(f32::NEG_INFINITY);
    let mut labels = labels(22, rows, vocab);
    labels[0] = 77;
    // Row 2: a confident row (tiny loss).
    logits[2 * vocab + labels[2] as usize] = 30.0;
    check_matches_cpu(rows, vocab, &logits, &labels);
}

#[test]
fn a_vocabulary_wider_than_the_block_loops() {
    // 1000 logits per row on 512 threads: every thread sees one or two, the online max moves.
    let (rows, vocab) = (5, 1000);
    let logits = random(&mut rng(23), rows * vocab, 6.0);
    let labels = labels(24, rows, vocab);
    check_matches_cpu(rows, vocab, &logits, &labels);
    // A tiny vocabulary: one warp, most lanes idle.
    let logits = random(&mut rng(25), 7 * 3, 2.0);
    check_matches_cpu(7, 3, &logits, &[0, 2, IGNORE_INDEX, 1, 1, 0, 2]);
}

#[test]
fn bad_labels_and_no_labels_are_the_cpus_errors() {
    let cpu = cpu();
    let (_, gpu) = &gpus()[0];
    let (rows, vocab) = (4, 9);
    let logits = random(&mut rng(26), rows * vocab, 1.0);
    let cases: [(Vec<i32>, usize); 5] = [
        (vec![1, 9, 2, 3], rows),
        (vec![1, IGNORE_INDEX, -1, 3], rows),
        (vec![-101, 0, 0, 0], rows),
        (vec![IGNORE_INDEX; 4], rows),
        (vec![1, 2, 3], 3),
    ];
    for (labels, n) in cases {
        let errors: Vec<(String, bool)> = [&cpu as &dyn Backend, gpu.as_ref()]
            .iter()
            .map(|b| {
                let err = b
                    .cross_entropy(
                        &b.upload_f32(&[rows, vocab], &logits).unwrap(),
                        &b.upload_i32(&[n], &labels).unwrap(),
                        true,
                    )
                    .unwrap_err();
                let typed = match labels.as_slice() {
                    [IGNORE_INDEX, ..] => matches!(err, Error::NoLabels),
                    [_, _, _] => matches!(err, Error::Shape { .. }),
                    _ => matches!(err, Error::LabelOutOfRange { .. }),
                };
                (err.to_string(), typed)
            })
            .collect();
        assert_eq!(errors[0], errors[1], "{labels:?}");
        assert!(errors[1].1, "{labels:?}: {}", errors[1].0);
    }
}

/// bf16 logits: the CPU on the rounded logits is the reference. The loss is f32 from exactly those
/// values (f32 on the device, f64 on the CPU: ulps apart); the gradient is bf16, within its rounding.
fn check_bf16_matches_cpu(rows: usize, vocab: usize, logits: &[f32], labels: &[i32]) {
    let cpu = cpu();
    let shape = [rows, vocab];
    let want = cpu
        .cross_entropy(
            &cpu.upload_f32(&shape, &round_bf16(logits)).unwrap(),
            &cpu.upload_i32(&[rows], labels).unwrap(),
            true,
        )
        .unwrap();
    let want_dlogits = want.dlogits.as_ref().unwrap().to_vec_f32().unwrap();
    for (name, gpu) in gpus_bf16() {
        let x = upload_bf16(&gpu, &shape, logits);
        let l = gpu.upload_i32(&[rows], labels).unwrap();
        let got = gpu.cross_entropy(&x, &l, true).unwrap();
        assert_eq!(got.count, want.count);
        assert_close(
            &format!("bf16 loss {name}"),
            &[got.loss_value().unwrap()],
            &[want.loss_value().unwrap()],
            1e-5,
            0.0,
        );
        let d = got.dlogits.as_ref().unwrap();
        assert_eq!(d.dtype(), DType::BF16, "{name}");
        assert_eq!(d.shape(), &shape);
        let dlogits = d.to_vec_f32().unwrap();
        assert_close(
            &format!("bf16 dlogits {name}"),
            &dlogits,
            &want_dlogits,
            1e-2,
            0.0,
        );
        for (r, &label) in labels.iter().enumerate() {
            if label == IGNORE_INDEX {
                assert!(dlogits[r * vocab..][..vocab].iter().all(|&d| d == 0.0));
            }
        }
        let loss_only = gpu.cross_entropy(&x, &l, false).unwrap();
        assert!(loss_only.dlogits.is_none());
        assert_eq!(
            loss_only.loss_value().unwrap().to_bits(),
            got.loss_value().unwrap().to_bits()
        );
    }
}

#[test]
fn bf16_loss_and_gradient_match_the_cpu_on_rounded_logits() {
    // The f32 tests' shapes: 103 logits (a partial warp), -inf logits, a confident row; 1000 logits
    // on 512 threads; a three-logit vocabulary.
    let (rows, vocab) = (29, 103);
    let mut logits = random(&mut rng(121), rows * vocab, 4.0);
    logits[..40].fill(f32::NEG_INFINITY);
    let mut first = labels(122, rows, vocab);
    first[0] = 77;
    logits[2 * vocab + first[2] as usize] = 30.0;
    check_bf16_matches_cpu(rows, vocab, &logits, &first);
    let logits = random(&mut rng(123), 5 * 1000, 6.0);
    check_bf16_matches_cpu(5, 1000, &logits, &labels(124, 5, 1000));
    let logits = random(&mut rng(125), 7 * 3, 2.0);
    check_bf16_matches_cpu(7, 3, &logits, &[0, 2, IGNORE_INDEX, 1, 1, 0, 2]);
}

/// The gradient written over the logits gives the same loss and the same gradient, bit for bit, as
/// the out-of-place call; a clone of the logits is left as it was (the buffer is copied first).
#[test]
fn the_gradient_written_over_the_logits_matches_the_out_of_place_call() {
    let (rows, vocab) = (23, 301);
    let mut rng = rng(61);
    let logits = random(&mut rng, rows * vocab, 4.0);
    let labels: Vec<i32> = (0..rows as i32)
        .map(|r| {
            if r % 5 == 0 {
                -100
            } else {
                (r * 37) % vocab as i32
            }
        })
        .collect();
    let check = |name: &str, gpu: &dyn Backend, logits: Tensor| {
        let labels = gpu.upload_i32(&[rows], &labels).unwrap();
        let want = gpu.cross_entropy(&logits, &labels, true).unwrap();
        let kept = logits.clone();
        let before = kept.to_vec_f32().unwrap();
        let got = gpu.cross_entropy_in_place(logits, &labels).unwrap();
        assert_eq!(
            got.loss_value().unwrap().to_bits(),
            want.loss_value().unwrap().to_bits(),
            "loss on {name}"
        );
        assert_eq!(got.count, want.count);
        let (got, want) = (got.dlogits.unwrap(), want.dlogits.unwrap());
        assert_eq!(got.dtype(), want.dtype());
        assert_eq!(
            got.to_vec_f32().unwrap(),
            want.to_vec_f32().unwrap(),
            "dlogits on {name}"
        );
        assert_eq!(
            kept.to_vec_f32().unwrap(),
            before,
            "the clone's logits on {name}"
        );
    };
    for (name, gpu) in gpus() {
        let t = gpu.upload_f32(&[rows, vocab], &logits).unwrap();
        check(&name, gpu.as_ref(), t);
    }
    for (name, gpu) in gpus_bf16() {
        let t = upload_bf16(&gpu, &[rows, vocab], &logits);
        check(&name, &gpu, t);
    }
    // The CPU backend's default: the same as its out-of-place call.
    let cpu = cpu();
    let t = cpu.upload_f32(&[rows, vocab], &logits).unwrap();
    check("cpu", &cpu, t);
}
