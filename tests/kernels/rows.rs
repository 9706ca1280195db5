// Kernel tests for kernels/rows.cu: gather, scatter-add (with repeated rows), argmax and the
// softmax's top k (ties, NaN, infinities), against the CPU backend, plus the row-index errors; in bf16, against the CPU on the
// rounded inputs.

use crate::harness::{assert_close, cpu, gpus, gpus_bf16, random, rng, round_bf16, upload_bf16};
use rand::Rng;
use undertale_maskedlm::backend::Backend;
use undertale_maskedlm::{DType, Error};

/// `m` row indices below `n` with repeats: every third one copies an earlier index.
fn indices_with_repeats(seed: u64, m: usize, n: usize) -> Vec<i32> {
    let mut rng = rng(seed);
    let mut idx: Vec<i32> = Vec::with_capacity(m);
    for i in 0..m {
        if i >= 3 && i % 3 == 0 {
            let earlier = idx[rng.random_range(0..i)];
            idx.push(earlier);
        } else {
            idx.push(rng.random_range(0..n as i32));
        }
    }
    idx
}

#[test]
fn gather_and_scatter_match_the_cpu_exactly() {
    // 53 rows of 19 features (not a multiple of the 32 lanes), 41 picks (not a multiple of the 8
    // rows per block), repeats included; the input has rank 3 to show only the last axis counts.
    let (n, width, m) = (53, 19, 41);
    let mut rng = rng(11);
    let x = random(&mut rng, n * width, 3.0);
    let dy = random(&mut rng, m * width, 3.0);
    let idx = indices_with_repeats(12, m, n);
    let distinct: std::collections::HashSet<i32> = idx.iter().copied().collect();
    assert!(distinct.len() < m, "the indices repeat");
    let cpu = cpu();
    let cx = cpu.upload_f32(&[1, n, width], &x).unwrap();
    let crows = cpu.upload_i32(&[m], &idx).unwrap();
    let cdy = cpu.upload_f32(&[m, width], &dy).unwrap();
    let want_gather = cpu.gather_rows(&cx, &crows).unwrap().to_vec_f32().unwrap();
    let want_scatter = cpu
        .scatter_rows(&cdy, &crows, n)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    for (order, gpu) in gpus() {
        let gx = gpu.upload_f32(&[1, n, width], &x).unwrap();
        let grows = gpu.upload_i32(&[m], &idx).unwrap();
        let gdy = gpu.upload_f32(&[m, width], &dy).unwrap();
        let gathered = gpu.gather_rows(&gx, &grows).unwrap();
        assert_eq!(gathered.shape(), &[m, width]);
        assert_eq!(
            gpu.download_f32(&gathered).unwrap(),
            want_gather,
            "gather {order:?}"
        );
        // Repeats are summed in index order from zero, as on the CPU: bit-identical.
        let scattered = gpu.scatter_rows(&gdy, &grows, n).unwrap();
        assert_eq!(scattered.shape(), &[n, width]);
        let got = gpu.download_f32(&scattered).unwrap();
        assert!(
            got.iter()
                .zip(&want_scatter)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "scatter {order:?}"
        );
    }
}

#[test]
fn scatter_sums_many_repeats_of_one_row() {
    // Every index is row 2 except two: one chain of 30 adds, rows never picked stay zero.
    let (n, width, m) = (5, 33, 32);
    let mut idx = vec![2i32; m];
    idx[7] = 4;
    idx[20] = 0;
    let dy = random(&mut rng(13), m * width, 1.0);
    let cpu = cpu();
    let want = cpu
        .scatter_rows(
            &cpu.upload_f32(&[m, width], &dy).unwrap(),
            &cpu.upload_i32(&[m], &idx).unwrap(),
            n,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    for (order, gpu) in gpus() {
        let got = gpu
            .scatter_rows(
                &gpu.upload_f32(&[m, width], &dy).unwrap(),
                &gpu.upload_i32(&[m], &idx).unwrap(),
                n,
            )
            .unwrap();
        let got = gpu.download_f32(&got).unwrap();
        assert_eq!(got, want, "scatter {order:?}");
        assert!(got[width..2 * width].iter().all(|&v| v == 0.0));
        assert!(got[3 * width..4 * width].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn argmax_matches_the_cpu_on_ties_nan_and_infinities() {
    // 77 columns: two full lane sweeps and a partial one; 19 rows: not a multiple of 8.
    let (rows, width) = (19, 77);
    let mut x = random(&mut rng(14), rows * width, 5.0);
    let row = |r: usize| r * width;
    // Row 0: a tie between columns 70 and 3 (different lanes): the first wins.
    x[row(0) + 70] = 9.0;
    x[row(0) + 3] = 9.0;
    // Row 1: a tie within one lane's columns (5 and 37).
    x[row(1) + 37] = 9.5;
    x[row(1) + 5] = 9.5;
    // Row 2: NaN at column 0: the CPU never moves past it.
    x[row(2)] = f32::NAN;
    // Row 3: NaN elsewhere is skipped; the max is at 60.
    x[row(3) + 10] = f32::NAN;
    x[row(3) + 60] = 7.5;
    // Row 4: all NaN.
    x[row(4)..row(5)].fill(f32::NAN);
    // Row 5: all -inf but one NaN: 0.
    x[row(5)..row(6)].fill(f32::NEG_INFINITY);
    x[row(5) + 40] = f32::NAN;
    // Row 6: +inf twice.
    x[row(6) + 50] = f32::INFINITY;
    x[row(6) + 51] = f32::INFINITY;
    // Row 7: the max in the last column.
    x[row(7) + 76] = 8.0;
    // Row 8: -0.0 and 0.0 as the max: equal, so the first.
    x[row(8)..row(9)].fill(-1.0);
    x[row(8) + 30] = -0.0;
    x[row(8) + 12] = 0.0;
    let cpu = cpu();
    let want = cpu
        .argmax_rows(&cpu.upload_f32(&[rows, width], &x).unwrap())
        .unwrap()
        .to_vec_i32()
        .unwrap();
    assert_eq!(&want[..9], &[3, 5, 0, 60, 0, 0, 50, 76, 12]);
    for (order, gpu) in gpus() {
        let got = gpu
            .argmax_rows(&gpu.upload_f32(&[rows, width], &x).unwrap())
            .unwrap();
        assert_eq!(got.shape(), &[rows]);
        assert_eq!(gpu.download_i32(&got).unwrap(), want, "argmax {order:?}");
    }
    // Narrow rows (fewer columns than lanes).
    let narrow = random(&mut rng(15), 9 * 3, 1.0);
    let want = cpu
        .argmax_rows(&cpu.upload_f32(&[9, 3], &narrow).unwrap())
        .unwrap()
        .to_vec_i32()
        .unwrap();
    let (_, gpu) = &gpus()[1];
    let got = gpu
        .argmax_rows(&gpu.upload_f32(&[9, 3], &narrow).unwrap())
        .unwrap();
    assert_eq!(gpu.download_i32(&got).unwrap(), want);
}

#[test]
fn bad_row_indices_are_the_cpus_errors() {
    let cpu = cpu();
    let (_, gpu) = &gpus()[0];
    let (n, width) = (6, 5);
    let x = random(&mut rng(16), n * width, 1.0);
    for idx in [vec![0, 6, 1], vec![2, -1, 9], vec![i32::MAX]] {
        let m = idx.len();
        let dy = random(&mut rng(17), m * width, 1.0);
        let errors: Vec<(String, String)> = [&cpu as &dyn Backend, gpu.as_ref()]
            .iter()
            .map(|b| {
                let rows = b.upload_i32(&[m], &idx).unwrap();
                let gather = b
                    .gather_rows(&b.upload_f32(&[n, width], &x).unwrap(), &rows)
                    .unwrap_err()
                    .to_string();
                let scatter = b
                    .scatter_rows(&b.upload_f32(&[m, width], &dy).unwrap(), &rows, n)
                    .unwrap_err()
                    .to_string();
                (gather, scatter)
            })
            .collect();
        assert_eq!(errors[0], errors[1], "{idx:?}");
        assert!(errors[1].0.contains("row index"), "{}", errors[1].0);
    }
    // Scatter with one index per row of dy or bust.
    let errors: Vec<String> = [&cpu as &dyn Backend, gpu.as_ref()]
        .iter()
        .map(|b| {
            b.scatter_rows(
                &b.upload_f32(&[3, width], &[1.0; 15]).unwrap(),
                &b.upload_i32(&[2], &[0, 1]).unwrap(),
                n,
            )
            .unwrap_err()
            .to_string()
        })
        .collect();
    assert_eq!(errors[0], errors[1]);
    assert!(errors[1].contains("scatter rows"), "{}", errors[1]);
}

#[test]
fn bf16_gather_and_scatter_match_the_cpu_on_rounded_values() {
    // The sizes of the f32 test; bf16 in, bf16 out.
    let (n, width, m) = (53, 19, 41);
    let mut rng = rng(41);
    let x = random(&mut rng, n * width, 3.0);
    let dy = random(&mut rng, m * width, 3.0);
    let idx = indices_with_repeats(42, m, n);
    let cpu = cpu();
    let crows = cpu.upload_i32(&[m], &idx).unwrap();
    let want_gather = cpu
        .gather_rows(
            &cpu.upload_f32(&[n, width], &round_bf16(&x)).unwrap(),
            &crows,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let want_scatter = cpu
        .scatter_rows(
            &cpu.upload_f32(&[m, width], &round_bf16(&dy)).unwrap(),
            &crows,
            n,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let picked: std::collections::HashSet<i32> = idx.iter().copied().collect();
    for (name, gpu) in gpus_bf16() {
        let grows = gpu.upload_i32(&[m], &idx).unwrap();
        // A copy: exactly the rounded rows.
        let gathered = gpu
            .gather_rows(&upload_bf16(&gpu, &[1, n, width], &x), &grows)
            .unwrap();
        assert_eq!(gathered.dtype(), DType::BF16, "{name}");
        assert_eq!(gathered.shape(), &[m, width]);
        assert_eq!(gathered.to_vec_f32().unwrap(), want_gather, "gather {name}");
        // Summed in f32 in the CPU's order, rounded once: within the bf16 output rounding (in fact
        // the CPU's sum rounded, exactly).
        let scattered = gpu
            .scatter_rows(&upload_bf16(&gpu, &[m, width], &dy), &grows, n)
            .unwrap();
        assert_eq!(scattered.dtype(), DType::BF16, "{name}");
        assert_eq!(scattered.shape(), &[n, width]);
        let got = scattered.to_vec_f32().unwrap();
        assert_close(&format!("scatter {name}"), &got, &want_scatter, 1e-2, 0.0);
        assert_eq!(got, round_bf16(&want_scatter), "scatter {name}");
        for r in (0..n as i32).filter(|r| !picked.contains(r)) {
            let r = r as usize;
            assert!(
                got[r * width..][..width].iter().all(|&v| v == 0.0),
                "{name}"
            );
        }
    }
}

#[test]
fn bf16_argmax_is_the_cpus_on_the_rounded_rows() {
    let (rows, width) = (19, 77);
    let mut x = random(&mut rng(43), rows * width, 5.0);
    let row = |r: usize| r * width;
    // Row 0: distinct in f32 (column 70 is larger) but equal in bf16: the first, 3, wins.
    x[row(0) + 3] = 9.0;
    x[row(0) + 70] = 9.01;
    // Row 1: a tie within one lane's columns (5 and 37), exact in bf16.
    x[row(1) + 37] = 9.5;
    x[row(1) + 5] = 9.5;
    // Row 2: NaN at column 0; row 3: NaN elsewhere, the max at 60.
    x[row(2)] = f32::NAN;
    x[row(3) + 10] = f32::NAN;
    x[row(3) + 60] = 7.5;
    // Row 4: all NaN; row 5: -inf but one NaN; row 6: +inf twice; row 7: the last column.
    x[row(4)..row(5)].fill(f32::NAN);
    x[row(5)..row(6)].fill(f32::NEG_INFINITY);
    x[row(5) + 40] = f32::NAN;
    x[row(6) + 50] = f32::INFINITY;
    x[row(6) + 51] = f32::INFINITY;
    x[row(7) + 76] = 8.0;
    // Row 8: 1.001 at 30 and 1.002 at 12 round to the same bf16: 12 wins.
    x[row(8)..row(9)].fill(-1.0);
    x[row(8) + 30] = 1.002;
    x[row(8) + 12] = 1.001;
    let rounded = round_bf16(&x);
    assert_ne!(x[row(0) + 3], x[row(0) + 70]);
    assert_eq!(rounded[row(0) + 3], rounded[row(0) + 70]);
    let cpu = cpu();
    let want = cpu
        .argmax_rows(&cpu.upload_f32(&[rows, width], &rounded).unwrap())
        .unwrap()
        .to_vec_i32()
        .unwrap();
    assert_eq!(&want[..9], &[3, 5, 0, 60, 0, 0, 50, 76, 12]);
    let narrow = random(&mut rng(44), 9 * 3, 1.0);
    let want_narrow = cpu
        .argmax_rows(&cpu.upload_f32(&[9, 3], &round_bf16(&narrow)).unwrap())
        .unwrap()
        .to_vec_i32()
        .unwrap();
    for (name, gpu) in gpus_bf16() {
        let got = gpu
            .argmax_rows(&upload_bf16(&gpu, &[rows, width], &x))
            .unwrap();
        assert_eq!(got.dtype(), DType::I32);
        assert_eq!(got.shape(), &[rows]);
        assert_eq!(gpu.download_i32(&got).unwrap(), want, "argmax {name}");
        let got = gpu
            .argmax_rows(&upload_bf16(&gpu, &[9, 3], &narrow))
            .unwrap();
        assert_eq!(
            gpu.download_i32(&got).unwrap(),
            want_narrow,
            "narrow {name}"
        );
    }
}

#[test]
fn integer_rows_are_a_dtype_error() {
    let (_, gpu) = &gpus_bf16()[0];
    let x = gpu.upload_i32(&[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
    let rows = gpu.upload_i32(&[1], &[1]).unwrap();
    assert!(matches!(gpu.argmax_rows(&x), Err(Error::DType { .. })));
    assert!(matches!(
        gpu.gather_rows(&x, &rows),
        Err(Error::DType { .. })
    ));
    let both = gpu.upload_i32(&[2], &[1, 0]).unwrap();
    assert!(matches!(
        gpu.scatter_rows(&x, &both, 2),
        Err(Error::DType { .. })
    ));
}

/// Logits with ties (values on a grid of 1/4), plus, in chosen rows, NaN and infinite entries.
fn logits_with_ties_and_specials(seed: u64, rows: usize, width: usize) -> Vec<f32> {
    let mut rng = rng(seed);
    let mut x: Vec<f32> = (0..rows * width)
        .map(|_| (rng.random_range(-12.0f32..12.0) * 4.0).round() / 4.0)
        .collect();
    // Row 1: a NaN (the whole row's probabilities become NaN; NaN ranks last). Row 2: -inf entries
    // (probability 0, ranked after every finite logit). Row 3: a logit so large that exp of it
    // would overflow: the max is taken out of the exponents, so it gets probability 1.
    x[width + 3] = f32::NAN;
    x[2 * width + 1] = f32::NEG_INFINITY;
    x[2 * width + 7] = f32::NEG_INFINITY;
    x[3 * width + 5] = 1.0e30;
    x
}

/// Compares top-k answers: ids exactly, probabilities within `abs` (NaN where the reference is NaN).
fn assert_top_k(what: &str, got: (&[i32], &[f32]), want: (&[i32], &[f32]), abs: f32) {
    assert_eq!(got.0, want.0, "{what}: ids");
    for (i, (&g, &w)) in got.1.iter().zip(want.1).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: probability [{i}] = {g}, want NaN");
        } else {
            assert!(
                (g - w).abs() <= abs + 1e-5 * w,
                "{what}: probability [{i}] = {g}, want {w}"
            );
        }
    }
}

/// The softmax's top k, f32: the CPU's ids in the CPU's order (ties by index, NaN last) and its
/// probabilities, for a k of 1, a few, and the whole row; entry 0 is the argmax.
#[test]
fn softmax_top_k_matches_the_cpu_on_ties_nan_and_infinities() {
    let (rows, width) = (37, 1001);
    let x = logits_with_ties_and_specials(91, rows, width);
    let cpu = cpu();
    let cx = cpu.upload_f32(&[rows, width], &x).unwrap();
    for k in [1, 5, 64] {
        let top = cpu.softmax_top_k(&cx, k).unwrap();
        assert_eq!(top.ids.shape(), [rows, k]);
        let want_ids = top.ids.to_vec_i32().unwrap();
        let want_p = top.probabilities.to_vec_f32().unwrap();
        // The reference's own sense: entry 0 is the argmax, the probabilities do not increase, and
        // they are softmax values.
        let argmax = cpu.argmax_rows(&cx).unwrap().to_vec_i32().unwrap();
        for r in [0, 2, 3, 36] {
            assert_eq!(want_ids[r * k], argmax[r], "row {r}: entry 0 is the argmax");
            let p = &want_p[r * k..(r + 1) * k];
            assert!(
                p.windows(2).all(|w| w[0] >= w[1]),
                "row {r}: best first {p:?}"
            );
            assert!(
                p.iter().all(|&v| (0.0..=1.0).contains(&v)),
                "row {r}: {p:?}"
            );
        }
        assert!(
            want_p[k..2 * k].iter().all(|p| p.is_nan()),
            "row 1 has a NaN logit"
        );
        assert_eq!(
            want_p[3 * k],
            1.0,
            "row 3: the huge logit takes all the mass"
        );
        for (name, gpu) in gpus() {
            let top = gpu
                .softmax_top_k(&gpu.upload_f32(&[rows, width], &x).unwrap(), k)
                .unwrap();
            assert_top_k(
                &format!("top-{k} on {name}"),
                (
                    &top.ids.to_vec_i32().unwrap(),
                    &top.probabilities.to_vec_f32().unwrap(),
                ),
                (&want_ids, &want_p),
                1e-6,
            );
        }
    }
    // k = width: every entry, so each row's probabilities sum to 1 (those without NaN).
    let (rows, width) = (3, 45);
    let x = random(&mut rng(92), rows * width, 6.0);
    let top = cpu
        .softmax_top_k(&cpu.upload_f32(&[rows, width], &x).unwrap(), width)
        .unwrap();
    let want_p = top.probabilities.to_vec_f32().unwrap();
    for row in want_p.chunks(width) {
        let sum: f32 = row.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "a whole row's probabilities sum to {sum}"
        );
    }
    for (name, gpu) in gpus() {
        let got = gpu
            .softmax_top_k(&gpu.upload_f32(&[rows, width], &x).unwrap(), width)
            .unwrap();
        assert_top_k(
            &format!("top-{width} of {width} on {name}"),
            (
                &got.ids.to_vec_i32().unwrap(),
                &got.probabilities.to_vec_f32().unwrap(),
            ),
            (&top.ids.to_vec_i32().unwrap(), &want_p),
            1e-6,
        );
    }
}

/// bf16 logits (many ties once rounded): the CPU's answer on the rounded rows.
#[test]
fn bf16_softmax_top_k_is_the_cpus_on_the_rounded_rows() {
    let (rows, width, k) = (19, 517, 7);
    let x = random(&mut rng(93), rows * width, 8.0);
    let cpu = cpu();
    let top = cpu
        .softmax_top_k(&cpu.upload_f32(&[rows, width], &round_bf16(&x)).unwrap(), k)
        .unwrap();
    let (want_ids, want_p) = (
        top.ids.to_vec_i32().unwrap(),
        top.probabilities.to_vec_f32().unwrap(),
    );
    for (name, gpu) in gpus_bf16() {
        let logits = upload_bf16(&gpu, &[rows, width], &x);
        let got = gpu.softmax_top_k(&logits, k).unwrap();
        assert_eq!(got.probabilities.dtype(), DType::F32);
        assert_top_k(
            &format!("bf16 top-{k} on {name}"),
            (
                &got.ids.to_vec_i32().unwrap(),
                &got.probabilities.to_vec_f32().unwrap(),
            ),
            (&want_ids, &want_p),
            1e-6,
        );
    }
}

/// k = 0 and k above the row width are the CPU's error, on every backend.
#[test]
fn softmax_top_k_rejects_k_outside_the_row() {
    let x = random(&mut rng(94), 2 * 9, 1.0);
    let cpu = cpu();
    for k in [0, 10] {
        let want = cpu
            .softmax_top_k(&cpu.upload_f32(&[2, 9], &x).unwrap(), k)
            .unwrap_err();
        assert!(
            matches!(&want, Error::Config(m) if m.contains(&format!("k = {k}"))),
            "{want}"
        );
        for (name, gpu) in gpus() {
            let err = gpu
                .softmax_top_k(&gpu.upload_f32(&[2, 9], &x).unwrap(), k)
                .unwrap_err();
            assert_eq!(err.to_string(), want.to_string(), "k = {k} on {name}");
        }
    }
}
