//! kernels/layernorm.cu against the CPU backend: forward (y, mean, rstd) and backward (dx, and
//! dweight/dbias added into a gradient buffer that starts non-zero).

use crate::harness::{assert_close, cpu, gpus, random, rng};
use undertale_maskedlm::Error;
use undertale_maskedlm::backend::{Backend, Param};

/// Relative tolerance: the GPU sums a row as a warp tree, the CPU left to right.
const REL: f32 = 1e-5;

/// Weight and bias at odd offsets of a flat buffer, with padding before, between and after them
/// that the kernels must not touch.
fn slots(c: usize) -> (Param, Param, usize) {
    let weight = Param { offset: 3, len: c };
    let bias = Param {
        offset: 3 + c + 5,
        len: c,
    };
    (weight, bias, bias.offset + c + 2)
}

fn outside(i: usize, slots: &[Param]) -> bool {
    slots.iter().all(|p| i < p.offset || i >= p.offset + p.len)
}

fn check(seed: u64, shape: &[usize]) {
    let c = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let rows = n / c;
    let (weight, bias, len) = slots(c);
    let mut rng = rng(seed);
    // A mean far from zero (about 3, spread 2) makes the variance's two passes matter.
    let x: Vec<f32> = random(&mut rng, n, 2.0).iter().map(|v| v + 3.0).collect();
    let dy = random(&mut rng, n, 1.0);
    let mut params = random(&mut rng, len, 1.0);
    for w in &mut params[weight.offset..weight.offset + c] {
        *w += 1.0;
    }
    let grads = random(&mut rng, len, 1.0);
    let eps = 1e-5;

    let cpu = cpu();
    let (cx, cp) = (
        cpu.upload_f32(shape, &x).unwrap(),
        cpu.upload_f32(&[len], &params).unwrap(),
    );
    let want = cpu.layernorm_forward(&cx, &cp, weight, bias, eps).unwrap();
    let (want_y, want_mean, want_rstd) = (
        want.y.to_vec_f32().unwrap(),
        want.mean.to_vec_f32().unwrap(),
        want.rstd.to_vec_f32().unwrap(),
    );
    let mut cg = cpu.upload_f32(&[len], &grads).unwrap();
    let want_dx = cpu
        .layernorm_backward(
            &cpu.upload_f32(shape, &dy).unwrap(),
            &cx,
            &want.mean,
            &want.rstd,
            &cp,
            &mut cg,
            weight,
            bias,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let want_grads = cg.to_vec_f32().unwrap();

    let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
    for (order, gpu) in gpus() {
        let what = |name: &str| format!("layernorm {shape:?} {name} {order:?}");
        let (gx, gp) = (
            gpu.upload_f32(shape, &x).unwrap(),
            gpu.upload_f32(&[len], &params).unwrap(),
        );
        let out = gpu.layernorm_forward(&gx, &gp, weight, bias, eps).unwrap();
        assert_eq!(out.y.shape(), shape);
        assert_eq!(out.mean.shape(), [rows]);
        assert_eq!(out.rstd.shape(), [rows]);
        let y = out.y.to_vec_f32().unwrap();
        assert_close(&what("y"), &y, &want_y, REL, 0.0);
        let mean = out.mean.to_vec_f32().unwrap();
        assert_close(&what("mean"), &mean, &want_mean, REL, 0.0);
        let rstd = out.rstd.to_vec_f32().unwrap();
        assert_close(&what("rstd"), &rstd, &want_rstd, REL, 0.0);

        // Backward from the CPU's statistics, so that dx and the gradients are compared on the
        // same inputs.
        let mut gg = gpu.upload_f32(&[len], &grads).unwrap();
        let dx = gpu
            .layernorm_backward(
                &gpu.upload_f32(shape, &dy).unwrap(),
                &gx,
                &gpu.upload_f32(&[rows], &want_mean).unwrap(),
                &gpu.upload_f32(&[rows], &want_rstd).unwrap(),
                &gp,
                &mut gg,
                weight,
                bias,
            )
            .unwrap();
        assert_eq!(dx.shape(), shape);
        let dx = dx.to_vec_f32().unwrap();
        assert_close(&what("dx"), &dx, &want_dx, REL, 0.0);
        let got_grads = gg.to_vec_f32().unwrap();
        let (slot, pad): (Vec<usize>, Vec<usize>) =
            (0..len).partition(|&i| !outside(i, &[weight, bias]));
        let pick = |v: &[f32], at: &[usize]| at.iter().map(|&i| v[i]).collect::<Vec<_>>();
        assert_close(
            &what("dweight, dbias"),
            &pick(&got_grads, &slot),
            &pick(&want_grads, &slot),
            REL,
            0.0,
        );
        assert_eq!(
            pick(&got_grads, &pad),
            pick(&grads, &pad),
            "{}",
            what("padding")
        );
        // dbias is only additions, in the CPU's order: the same bits.
        let bias_range = bias.offset..bias.offset + c;
        assert_eq!(
            got_grads[bias_range.clone()],
            want_grads[bias_range],
            "{}",
            what("dbias bits")
        );

        // Deterministic: every emulated scheduling order gives the same bits (no atomics, fixed
        // orders). A GPU may contract multiply-adds differently, so it is held to the tolerances only.
        if order.starts_with("emulated") {
            match &first {
                None => first = Some((dx, got_grads)),
                Some((dx0, grads0)) => {
                    assert_eq!(&dx, dx0, "{}", what("dx bits"));
                    assert_eq!(&got_grads, grads0, "{}", what("gradient bits"));
                }
            }
        }
    }
}

#[test]
fn layernorm_matches_the_cpu() {
    // 37 rows of 45: neither a multiple of the 8 rows of a block nor of the 32 lanes of a warp.
    check(1, &[37, 45]);
}

#[test]
fn layernorm_gradients_over_several_row_chunks_match_the_cpu() {
    // 201 rows: the parameter gradients are summed in 4 chunks of 64 rows, the last one short.
    check(2, &[3, 67, 45]);
}

#[test]
fn layernorm_over_more_than_1024_features_matches_the_cpu() {
    // 1100 features: each lane loops 34 or 35 times; the column sums take 5 blocks of 256 columns,
    // the last partial.
    check(3, &[2, 9, 1100]);
}

#[test]
fn layernorm_rejects_what_the_cpu_rejects() {
    let c = 45;
    let (weight, bias, len) = slots(c);
    let mut rng = rng(4);
    let (x, params) = (random(&mut rng, 5 * c, 1.0), random(&mut rng, len, 1.0));
    let cpu = cpu();
    let (order, gpu) = gpus().swap_remove(0);
    let both = |f: &dyn Fn(&dyn Backend) -> Error| {
        let (want, got) = (f(&cpu), f(gpu.as_ref()));
        assert!(matches!(got, Error::Shape { .. }), "{order:?}: {got}");
        assert_eq!(got.to_string(), want.to_string(), "{order:?}");
    };
    // A weight of the wrong length.
    both(&|b| {
        let (x, p) = (
            b.upload_f32(&[5, c], &x).unwrap(),
            b.upload_f32(&[len], &params).unwrap(),
        );
        let short = Param {
            len: c - 1,
            ..weight
        };
        b.layernorm_forward(&x, &p, short, bias, 1e-5).unwrap_err()
    });
    // Statistics for the wrong number of rows, dy of the wrong shape, overlapping slots.
    let backward = |b: &dyn Backend, dy_rows: usize, stats: usize, bias: Param| {
        let (x, p) = (
            b.upload_f32(&[5, c], &x).unwrap(),
            b.upload_f32(&[len], &params).unwrap(),
        );
        let dy = b
            .upload_f32(&[dy_rows, c], &vec![0.5; dy_rows * c])
            .unwrap();
        let stats = b.upload_f32(&[stats], &vec![1.0; stats]).unwrap();
        let mut g = b.upload_f32(&[len], &params).unwrap();
        b.layernorm_backward(&dy, &x, &stats, &stats, &p, &mut g, weight, bias)
            .unwrap_err()
    };
    both(&|b| backward(b, 5, 4, bias));
    both(&|b| backward(b, 4, 5, bias));
    let overlapping = Param {
        offset: weight.offset + 1,
        len: c,
    };
    both(&|b| backward(b, 5, 5, overlapping));
}

/// Half a bf16 ulp relative to a value's magnitude: bf16 keeps 8 significant bits, so rounding to
/// nearest moves a value by at most 2^-8 of its magnitude.
const BF16_HALF_ULP: f32 = 1.0 / 256.0;

/// bf16 activations: x and dy bf16 -> y and dx bf16; mean, rstd, dweight and dbias f32. The
/// reference is the CPU given the same inputs as bf16 values (x and dy rounded; the parameters are
/// f32 on both sides, LayerNorm reads them as they are). Tolerances:
///
/// - mean, rstd, dweight, dbias (f32): computed in f32 from exactly the values the CPU gets, so no
///   bf16 rounding enters them and they differ from the CPU's only where the f32 test's results do
///   (the warp's summation order): the f32 tolerance REL. dbias is even the same bits (additions of
///   the same values in the CPU's order), and so is every gradient across scheduling orders.
/// - y, dx (bf16): the same f32 value as above, then rounded once to bf16: REL + half a bf16 ulp of
///   the element, which is at most 2^-8 of the largest magnitude.
fn check_bf16(seed: u64, shape: &[usize]) {
    use crate::harness::{gpus_bf16, round_bf16, upload_bf16};
    use undertale_maskedlm::DType;
    let c = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let rows = n / c;
    let (weight, bias, len) = slots(c);
    let mut rng = rng(seed);
    // A mean far from zero (about 3, spread 2), as in the f32 check.
    let x: Vec<f32> = random(&mut rng, n, 2.0).iter().map(|v| v + 3.0).collect();
    let dy = random(&mut rng, n, 1.0);
    let mut params = random(&mut rng, len, 1.0);
    for w in &mut params[weight.offset..weight.offset + c] {
        *w += 1.0;
    }
    let grads = random(&mut rng, len, 1.0);
    let eps = 1e-5;
    let (rx, rdy) = (round_bf16(&x), round_bf16(&dy));

    let cpu = cpu();
    let (cx, cp) = (
        cpu.upload_f32(shape, &rx).unwrap(),
        cpu.upload_f32(&[len], &params).unwrap(),
    );
    let want = cpu.layernorm_forward(&cx, &cp, weight, bias, eps).unwrap();
    let (want_y, want_mean, want_rstd) = (
        want.y.to_vec_f32().unwrap(),
        want.mean.to_vec_f32().unwrap(),
        want.rstd.to_vec_f32().unwrap(),
    );
    let mut cg = cpu.upload_f32(&[len], &grads).unwrap();
    let want_dx = cpu
        .layernorm_backward(
            &cpu.upload_f32(shape, &rdy).unwrap(),
            &cx,
            &want.mean,
            &want.rstd,
            &cp,
            &mut cg,
            weight,
            bias,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let want_grads = cg.to_vec_f32().unwrap();

    let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
    for (name, gpu) in gpus_bf16() {
        let what = |part: &str| format!("layernorm bf16 {shape:?} {part} {name}");
        let (gx, gp) = (
            upload_bf16(&gpu, shape, &x),
            gpu.upload_f32(&[len], &params).unwrap(),
        );
        let out = gpu.layernorm_forward(&gx, &gp, weight, bias, eps).unwrap();
        assert_eq!(out.y.shape(), shape);
        assert_eq!(out.y.dtype(), DType::BF16, "{}", what("y dtype"));
        assert_eq!(out.mean.dtype(), DType::F32, "{}", what("mean dtype"));
        assert_eq!(out.rstd.dtype(), DType::F32, "{}", what("rstd dtype"));
        assert_eq!(out.mean.shape(), [rows]);
        assert_eq!(out.rstd.shape(), [rows]);
        assert_close(
            &what("y"),
            &out.y.to_vec_f32().unwrap(),
            &want_y,
            REL + BF16_HALF_ULP,
            0.0,
        );
        assert_close(
            &what("mean"),
            &out.mean.to_vec_f32().unwrap(),
            &want_mean,
            REL,
            0.0,
        );
        assert_close(
            &what("rstd"),
            &out.rstd.to_vec_f32().unwrap(),
            &want_rstd,
            REL,
            0.0,
        );

        // Backward from the CPU's statistics (f32), so that dx and the gradients are compared on
        // the same inputs.
        let (gmean, grstd) = (
            gpu.upload_f32(&[rows], &want_mean).unwrap(),
            gpu.upload_f32(&[rows], &want_rstd).unwrap(),
        );
        let gdy = upload_bf16(&gpu, shape, &dy);
        let mut gg = gpu.upload_f32(&[len], &grads).unwrap();
        let dx = gpu
            .layernorm_backward(&gdy, &gx, &gmean, &grstd, &gp, &mut gg, weight, bias)
            .unwrap();
        assert_eq!(dx.shape(), shape);
        assert_eq!(dx.dtype(), DType::BF16, "{}", what("dx dtype"));
        assert_eq!(gg.dtype(), DType::F32, "{}", what("grads dtype"));
        let dx = dx.to_vec_f32().unwrap();
        assert_close(&what("dx"), &dx, &want_dx, REL + BF16_HALF_ULP, 0.0);
        let got_grads = gg.to_vec_f32().unwrap();
        let (slot, pad): (Vec<usize>, Vec<usize>) =
            (0..len).partition(|&i| !outside(i, &[weight, bias]));
        let pick = |v: &[f32], at: &[usize]| at.iter().map(|&i| v[i]).collect::<Vec<_>>();
        assert_close(
            &what("dweight, dbias"),
            &pick(&got_grads, &slot),
            &pick(&want_grads, &slot),
            REL,
            0.0,
        );
        assert_eq!(
            pick(&got_grads, &pad),
            pick(&grads, &pad),
            "{}",
            what("padding")
        );
        let bias_range = bias.offset..bias.offset + c;
        assert_eq!(
            got_grads[bias_range.clone()],
            want_grads[bias_range],
            "{}",
            what("dbias bits")
        );
        if name.starts_with("emulated") {
            match &first {
                None => first = Some((dx, got_grads)),
                Some((dx0, grads0)) => {
                    assert_eq!(&dx, dx0, "{}", what("dx bits"));
                    assert_eq!(&got_grads, grads0, "{}", what("gradient bits"));
                }
            }
        }

        // Mixed element types are errors, and write nothing: dy must have x's type, and the
        // statistics are f32 whatever the activations are.
        let fdy = gpu.upload_f32(shape, &rdy).unwrap();
        let fx = gpu.upload_f32(shape, &rx).unwrap();
        let bf16_mean = upload_bf16(&gpu, &[rows], &want_mean);
        for (dy, x, mean) in [
            (&fdy, &gx, &gmean),
            (&gdy, &fx, &gmean),
            (&gdy, &gx, &bf16_mean),
        ] {
            let mut g = gpu.upload_f32(&[len], &grads).unwrap();
            let err = gpu
                .layernorm_backward(dy, x, mean, &grstd, &gp, &mut g, weight, bias)
                .unwrap_err();
            assert!(
                matches!(err, Error::DType { .. }),
                "{}: {err}",
                what("mixed")
            );
            assert_eq!(g.to_vec_f32().unwrap(), grads, "{}", what("no write"));
        }

        // f32 activations on the same backend take the f32 path.
        let y32 = gpu.layernorm_forward(&fx, &gp, weight, bias, eps).unwrap();
        assert_eq!(y32.y.dtype(), DType::F32, "{}", what("f32 y dtype"));
        assert_close(
            &what("f32 y"),
            &y32.y.to_vec_f32().unwrap(),
            &want_y,
            REL,
            0.0,
        );
    }
}

#[test]
fn layernorm_in_bf16_matches_the_cpu_on_bf16_inputs() {
    // 37 rows of 45, as the f32 check.
    check_bf16(5, &[37, 45]);
}

#[test]
fn layernorm_in_bf16_over_several_row_chunks_and_wide_rows_matches_the_cpu() {
    // 201 rows (4 chunks of the parameter gradients), then rows of 1100 features.
    check_bf16(6, &[3, 67, 45]);
    check_bf16(7, &[2, 9, 1100]);
}

/// The residual add fused into LayerNorm: the same sum and the same LayerNorm as the two ops the
/// CPU backend runs one after the other (its default `add_layernorm_forward`), in f32 and in bf16.
#[test]
fn the_residual_add_fused_into_layernorm_matches_the_two_ops() {
    use crate::harness::{gpus_bf16, round_bf16, upload_bf16};
    use undertale_maskedlm::DType;
    let (rows, c) = (37, 45);
    let n = rows * c;
    let (weight, bias, len) = slots(c);
    let mut rng = rng(91);
    let a: Vec<f32> = random(&mut rng, n, 2.0).iter().map(|v| v + 3.0).collect();
    let b = random(&mut rng, n, 1.0);
    let params = random(&mut rng, len, 1.0);
    let eps = 1e-5;
    let cpu = cpu();
    let (ca, cb, cp) = (
        cpu.upload_f32(&[rows, c], &a).unwrap(),
        cpu.upload_f32(&[rows, c], &b).unwrap(),
        cpu.upload_f32(&[len], &params).unwrap(),
    );
    let (want_sum, want) = cpu
        .add_layernorm_forward(&ca, &cb, &cp, weight, bias, eps)
        .unwrap();
    for (name, gpu) in gpus() {
        let (ga, gb, gp) = (
            gpu.upload_f32(&[rows, c], &a).unwrap(),
            gpu.upload_f32(&[rows, c], &b).unwrap(),
            gpu.upload_f32(&[len], &params).unwrap(),
        );
        let (sum, out) = gpu
            .add_layernorm_forward(&ga, &gb, &gp, weight, bias, eps)
            .unwrap();
        assert_eq!(
            sum.to_vec_f32().unwrap(),
            want_sum.to_vec_f32().unwrap(),
            "sum on {name}"
        );
        assert_close(
            &format!("y on {name}"),
            &out.y.to_vec_f32().unwrap(),
            &want.y.to_vec_f32().unwrap(),
            REL,
            0.0,
        );
        assert_close(
            "mean",
            &out.mean.to_vec_f32().unwrap(),
            &want.mean.to_vec_f32().unwrap(),
            REL,
            0.0,
        );
        assert_close(
            "rstd",
            &out.rstd.to_vec_f32().unwrap(),
            &want.rstd.to_vec_f32().unwrap(),
            REL,
            0.0,
        );
        let wrong = gpu.upload_f32(&[c, rows], &a).unwrap();
        assert!(
            gpu.add_layernorm_forward(&ga, &wrong, &gp, weight, bias, eps)
                .is_err()
        );
    }
    // bf16: the sum is rounded once (as the add kernel stores it) and LayerNorm reads the rounded sum.
    let (ra, rb) = (round_bf16(&a), round_bf16(&b));
    let sum_rounded: Vec<f32> =
        round_bf16(&ra.iter().zip(&rb).map(|(x, y)| x + y).collect::<Vec<_>>());
    let want = cpu
        .layernorm_forward(
            &cpu.upload_f32(&[rows, c], &sum_rounded).unwrap(),
            &cp,
            weight,
            bias,
            eps,
        )
        .unwrap();
    let want_y = want.y.to_vec_f32().unwrap();
    let scale = want_y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (name, gpu) in gpus_bf16() {
        let gp = gpu.upload_f32(&[len], &params).unwrap();
        let (sum, out) = gpu
            .add_layernorm_forward(
                &upload_bf16(&gpu, &[rows, c], &a),
                &upload_bf16(&gpu, &[rows, c], &b),
                &gp,
                weight,
                bias,
                eps,
            )
            .unwrap();
        assert_eq!(
            (sum.dtype(), out.y.dtype(), out.mean.dtype()),
            (DType::BF16, DType::BF16, DType::F32)
        );
        assert_eq!(sum.to_vec_f32().unwrap(), sum_rounded, "bf16 sum on {name}");
        // y is rounded once to bf16: within 2^-8 of the largest magnitude.
        assert_close(
            &format!("bf16 y on {name}"),
            &out.y.to_vec_f32().unwrap(),
            &want_y,
            0.0,
            scale / 256.0 + 1e-5,
        );
        assert_close(
            "bf16 mean",
            &out.mean.to_vec_f32().unwrap(),
            &want.mean.to_vec_f32().unwrap(),
            REL,
            0.0,
        );
        assert_close(
            "bf16 rstd",
            &out.rstd.to_vec_f32().unwrap(),
            &want.rstd.to_vec_f32().unwrap(),
            REL,
            0.0,
        );
    }
}
