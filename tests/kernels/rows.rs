// Kernel tests for kernels/rows.cu: gather, scatter-add (with repeated rows) and argmax (ties, NaN,
// infinities), against the CPU backend, plus the row-index errors.

use crate::harness::{cpu, gpus, random, rng};
use rand::Rng;
use undertale_maskedlm::backend::Backend;

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
