//! kernels/linear.cu and the linear layer's GEMMs against the CPU backend: y = x W^T + b, and
//! dx = dy W with dW and db added into a gradient buffer that starts non-zero.

use crate::harness::{assert_close, cpu, gpus, random, rng};
use undertale_maskedlm::Error;
use undertale_maskedlm::Tensor;
use undertale_maskedlm::backend::{Backend, Param};
use undertale_maskedlm::ops::Weights;

/// Relative tolerance, for the GEMMs (the emulator runs the CPU's; cuBLASLt rounds differently).
const REL: f32 = 1e-5;

/// Weight `[out, in]` and bias `[out]` at odd offsets of a flat buffer, with padding before,
/// between and after them that the kernels must not touch.
fn slots(inp: usize, out: usize) -> (Param, Param, usize) {
    let weight = Param {
        offset: 5,
        len: out * inp,
    };
    let bias = Param {
        offset: weight.offset + weight.len + 3,
        len: out,
    };
    (weight, bias, bias.offset + out + 7)
}

fn check(seed: u64, x_shape: &[usize], out: usize) {
    let inp = *x_shape.last().unwrap();
    let n: usize = x_shape.iter().product();
    let rows = n / inp;
    let mut y_shape = x_shape.to_vec();
    *y_shape.last_mut().unwrap() = out;
    let (weight, bias, len) = slots(inp, out);
    let mut rng = rng(seed);
    let x = random(&mut rng, n, 1.0);
    let dy = random(&mut rng, rows * out, 1.0);
    let params = random(&mut rng, len, 0.5);
    let grads = random(&mut rng, len, 1.0);

    let cpu = cpu();
    let (cx, cp) = (
        cpu.upload_f32(x_shape, &x).unwrap(),
        cpu.upload_f32(&[len], &params).unwrap(),
    );
    let want_y = cpu
        .linear_forward(&cx, &cp, weight, bias, out)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let mut cg = cpu.upload_f32(&[len], &grads).unwrap();
    let want_dx = cpu
        .linear_backward(
            &cpu.upload_f32(&y_shape, &dy).unwrap(),
            &cx,
            &cp,
            &mut cg,
            weight,
            bias,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let want_grads = cg.to_vec_f32().unwrap();

    let mut first: Option<Vec<f32>> = None;
    for (order, gpu) in gpus() {
        let what = |name: &str| format!("linear {x_shape:?} -> {out} {name} {order:?}");
        let (gx, gp) = (
            gpu.upload_f32(x_shape, &x).unwrap(),
            gpu.upload_f32(&[len], &params).unwrap(),
        );
        let y = gpu.linear_forward(&gx, &gp, weight, bias, out).unwrap();
        assert_eq!(y.shape(), y_shape);
        assert_close(&what("y"), &y.to_vec_f32().unwrap(), &want_y, REL, 0.0);

        let mut gg = gpu.upload_f32(&[len], &grads).unwrap();
        let dx = gpu
            .linear_backward(
                &gpu.upload_f32(&y_shape, &dy).unwrap(),
                &gx,
                &gp,
                &mut gg,
                weight,
                bias,
            )
            .unwrap();
        assert_eq!(dx.shape(), x_shape);
        assert_close(&what("dx"), &dx.to_vec_f32().unwrap(), &want_dx, REL, 0.0);
        let got = gg.to_vec_f32().unwrap();
        let range = |p: Param| p.offset..p.offset + p.len;
        assert_close(
            &what("dW"),
            &got[range(weight)],
            &want_grads[range(weight)],
            REL,
            0.0,
        );
        // db is only additions, in the CPU's order: the same bits.
        assert_eq!(
            got[range(bias)],
            want_grads[range(bias)],
            "{}",
            what("db bits")
        );
        // The padding around the slots is untouched.
        for i in (0..len).filter(|i| !range(weight).contains(i) && !range(bias).contains(i)) {
            assert_eq!(got[i], grads[i], "{}[{i}]", what("padding"));
        }
        // Deterministic: every emulated scheduling order gives the same bits (a GPU's cuBLAS sums
        // in its own order, held to the tolerances only).
        if order.starts_with("emulated") {
            match &first {
                None => first = Some(got),
                Some(got0) => assert_eq!(&got, got0, "{}", what("gradient bits")),
            }
        }
    }
}

#[test]
fn linear_matches_the_cpu() {
    // 37 rows, 45 in, 29 out: no multiple of a warp, a tile or a float4.
    check(1, &[37, 45], 29);
}

#[test]
fn linear_bias_gradient_over_several_row_chunks_matches_the_cpu() {
    // 3 x 71 = 213 rows: db is summed in 4 chunks of 64 rows, the last one short; 300 outputs are
    // 2 blocks of 256 columns, the last partial.
    check(2, &[3, 71, 19], 300);
}

#[test]
fn linear_rejects_what_the_cpu_rejects() {
    let (inp, out) = (45, 29);
    let (weight, bias, len) = slots(inp, out);
    let mut rng = rng(3);
    let (x, params) = (random(&mut rng, 5 * inp, 1.0), random(&mut rng, len, 1.0));
    let cpu = cpu();
    let (order, gpu) = gpus().swap_remove(0);
    let both = |f: &dyn Fn(&dyn Backend) -> Error| {
        let (want, got) = (f(&cpu), f(gpu.as_ref()));
        assert!(matches!(got, Error::Shape { .. }), "{order:?}: {got}");
        assert_eq!(got.to_string(), want.to_string(), "{order:?}");
    };
    let upload = |b: &dyn Backend| {
        (
            b.upload_f32(&[5, inp], &x).unwrap(),
            b.upload_f32(&[len], &params).unwrap(),
        )
    };
    // A weight that is not [out, in].
    both(&|b| {
        let (x, p) = upload(b);
        b.linear_forward(&x, &p, weight, bias, out + 1).unwrap_err()
    });
    // dy with another number of rows than x.
    both(&|b| {
        let (x, p) = upload(b);
        let dy = b.upload_f32(&[4, out], &vec![0.5; 4 * out]).unwrap();
        let mut g = b.upload_f32(&[len], &params).unwrap();
        b.linear_backward(&dy, &x, &p, &mut g, weight, bias)
            .unwrap_err()
    });
    // Gradient slots that overlap.
    both(&|b| {
        let (x, p) = upload(b);
        let dy = b.upload_f32(&[5, out], &vec![0.5; 5 * out]).unwrap();
        let mut g = b.upload_f32(&[len], &params).unwrap();
        let overlapping = Param {
            offset: weight.offset + weight.len - 1,
            len: out,
        };
        b.linear_backward(&dy, &x, &p, &mut g, weight, overlapping)
            .unwrap_err()
    });
}

/// Half a bf16 ulp relative to a value's magnitude: bf16 keeps 8 significant bits, so rounding to
/// nearest moves a value by at most 2^-8 of its magnitude.
const BF16_HALF_ULP: f32 = 1.0 / 256.0;
/// bf16 outputs (y, dx): the GPU rounds its f32 result once to bf16, at most half an ulp, and that
/// f32 result differs from the CPU's only in the order of the f32 sums (REL). Relative to the
/// largest magnitude, as every comparison here is, that bound holds for every element.
const REL_BF16_OUT: f32 = BF16_HALF_ULP + REL;
/// dW, an f32 output from bf16 operands: both sides multiply the same bf16 values (each product is
/// exact in f32) and add them in f32, in different orders, over `rows` terms (213 at most here).
/// The emulator's order differs from the CPU's by no more than the f32 GEMMs do (REL); a GPU's
/// tensor cores may also truncate instead of rounding inside their adders, about 2^-23 of the
/// running sum per addition, which over a couple of hundred terms of mixed signs stays well below
/// 1e-4 of the largest magnitude. No bf16 rounding enters: the grads are f32 and C is f32.
const REL_BF16_DW: f32 = 1e-4;

/// bf16 activations: x and dy bf16 -> y and dx bf16, W read from the parameters' bf16 shadow,
/// dW and db added into the f32 gradients. The reference is the CPU on the inputs as the GPU sees
/// them: x and dy rounded to bf16, and the parameters rounded to bf16 too (the GEMMs read W from
/// the bf16 copy of the weights, and the bias is rounded when it is written into the bf16 y that the GEMM adds onto).
fn check_bf16(seed: u64, x_shape: &[usize], out: usize) {
    use crate::harness::{gpus_bf16, round_bf16, upload_bf16};
    use undertale_maskedlm::DType;
    let inp = *x_shape.last().unwrap();
    let n: usize = x_shape.iter().product();
    let rows = n / inp;
    let mut y_shape = x_shape.to_vec();
    *y_shape.last_mut().unwrap() = out;
    let (weight, bias, len) = slots(inp, out);
    let mut rng = rng(seed);
    let x = random(&mut rng, n, 1.0);
    let dy = random(&mut rng, rows * out, 1.0);
    let params = random(&mut rng, len, 0.5);
    let grads = random(&mut rng, len, 1.0);
    let (rx, rdy, rparams) = (round_bf16(&x), round_bf16(&dy), round_bf16(&params));

    let cpu = cpu();
    let (cx, cp) = (
        cpu.upload_f32(x_shape, &rx).unwrap(),
        cpu.upload_f32(&[len], &rparams).unwrap(),
    );
    let want_y = cpu
        .linear_forward(&cx, &cp, weight, bias, out)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let mut cg = cpu.upload_f32(&[len], &grads).unwrap();
    let want_dx = cpu
        .linear_backward(
            &cpu.upload_f32(&y_shape, &rdy).unwrap(),
            &cx,
            &cp,
            &mut cg,
            weight,
            bias,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let want_grads = cg.to_vec_f32().unwrap();

    let mut first: Option<Vec<f32>> = None;
    for (name, gpu) in gpus_bf16() {
        let what = |part: &str| format!("linear bf16 {x_shape:?} -> {out} {part} {name}");
        // The parameters are f32 (the master weights): the GPU rounds them itself.
        let (gx, gp) = (
            upload_bf16(&gpu, x_shape, &x),
            gpu.upload_f32(&[len], &params).unwrap(),
        );
        // The GEMMs read the bf16 copy of the weights, as the model keeps it.
        let gw = gpu.cast(&gp, DType::BF16).unwrap();
        let mixed = Weights::mixed(&gp, &gw);
        let y = gpu.linear_forward(&gx, mixed, weight, bias, out).unwrap();
        assert_eq!(y.shape(), y_shape);
        assert_eq!(y.dtype(), DType::BF16, "{}", what("y dtype"));
        assert_close(
            &what("y"),
            &y.to_vec_f32().unwrap(),
            &want_y,
            REL_BF16_OUT,
            0.0,
        );

        let gdy = upload_bf16(&gpu, &y_shape, &dy);
        let mut gg = gpu.upload_f32(&[len], &grads).unwrap();
        let dx = gpu
            .linear_backward(&gdy, &gx, mixed, &mut gg, weight, bias)
            .unwrap();
        assert_eq!(dx.shape(), x_shape);
        assert_eq!(dx.dtype(), DType::BF16, "{}", what("dx dtype"));
        assert_eq!(gg.dtype(), DType::F32, "{}", what("grads dtype"));
        assert_close(
            &what("dx"),
            &dx.to_vec_f32().unwrap(),
            &want_dx,
            REL_BF16_OUT,
            0.0,
        );
        let got = gg.to_vec_f32().unwrap();
        let range = |p: Param| p.offset..p.offset + p.len;
        assert_close(
            &what("dW"),
            &got[range(weight)],
            &want_grads[range(weight)],
            REL_BF16_DW,
            0.0,
        );
        // db: f32 additions of the same bf16 values in the CPU's order: the same bits.
        assert_eq!(
            got[range(bias)],
            want_grads[range(bias)],
            "{}",
            what("db bits")
        );
        for i in (0..len).filter(|i| !range(weight).contains(i) && !range(bias).contains(i)) {
            assert_eq!(got[i], grads[i], "{}[{i}]", what("padding"));
        }
        // Deterministic: every emulated scheduling order gives the same bits.
        if name.starts_with("emulated") {
            match &first {
                None => first = Some(got),
                Some(got0) => assert_eq!(&got, got0, "{}", what("gradient bits")),
            }
        }

        // Mixed element types are errors: dy must have x's type.
        let fdy = gpu.upload_f32(&y_shape, &rdy).unwrap();
        let fx = gpu.upload_f32(x_shape, &rx).unwrap();
        for (dy, x) in [(&fdy, &gx), (&gdy, &fx)] {
            let mut g = gpu.upload_f32(&[len], &grads).unwrap();
            let err = gpu
                .linear_backward(dy, x, &gp, &mut g, weight, bias)
                .unwrap_err();
            assert!(
                matches!(err, Error::DType { .. }),
                "{}: {err}",
                what("mixed")
            );
            assert_eq!(g.to_vec_f32().unwrap(), grads, "{}", what("no write"));
        }

        // f32 activations on the same backend take the f32 path: f32 out, f32 weights (not the
        // bf16 copy), as close to the CPU's f32 result as the f32 test asks.
        let want_f32 = cpu
            .linear_forward(
                &cpu.upload_f32(x_shape, &rx).unwrap(),
                &cpu.upload_f32(&[len], &params).unwrap(),
                weight,
                bias,
                out,
            )
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let y32 = gpu.linear_forward(&fx, &gp, weight, bias, out).unwrap();
        assert_eq!(y32.dtype(), DType::F32, "{}", what("f32 y dtype"));
        assert_close(
            &what("f32 y"),
            &y32.to_vec_f32().unwrap(),
            &want_f32,
            REL,
            0.0,
        );
    }
}

#[test]
fn linear_in_bf16_matches_the_cpu_on_bf16_inputs() {
    // 37 rows, 45 in, 29 out: no multiple of a warp, a tile or a vector; the weight at an odd
    // offset of the shadow.
    check_bf16(4, &[37, 45], 29);
}

#[test]
fn linear_in_bf16_over_several_row_chunks_matches_the_cpu_on_bf16_inputs() {
    // 213 rows: db in 4 chunks of 64 rows; 300 outputs: 2 blocks of 256 columns.
    check_bf16(5, &[3, 71, 19], 300);
}

/// The bias and GELU fused after the GEMM: the same `z` and `GELU(z)` as the two ops the CPU backend
/// runs one after the other (its default `linear_gelu_forward`), in f32 and in bf16.
#[test]
fn linear_with_the_bias_and_gelu_fused_matches_the_two_ops() {
    use crate::harness::{gpus_bf16, round_bf16, upload_bf16};
    use undertale_maskedlm::DType;
    let (rows, inp, out) = (37, 45, 29);
    let weight = Param {
        offset: 3,
        len: out * inp,
    };
    let bias = Param {
        offset: 3 + out * inp + 5,
        len: out,
    };
    let len = bias.offset + out + 2;
    let mut rng = rng(77);
    let x = random(&mut rng, rows * inp, 1.0);
    let params = random(&mut rng, len, 0.5);
    let cpu = cpu();
    let (cx, cp) = (
        cpu.upload_f32(&[rows, inp], &x).unwrap(),
        cpu.upload_f32(&[len], &params).unwrap(),
    );
    let (z, y) = cpu
        .linear_gelu_forward(&cx, &cp, weight, bias, out)
        .unwrap();
    let (want_z, want_y) = (z.to_vec_f32().unwrap(), y.to_vec_f32().unwrap());
    for (name, gpu) in gpus() {
        let (gx, gp) = (
            gpu.upload_f32(&[rows, inp], &x).unwrap(),
            gpu.upload_f32(&[len], &params).unwrap(),
        );
        let (z, y) = gpu
            .linear_gelu_forward(&gx, &gp, weight, bias, out)
            .unwrap();
        assert_close(
            &format!("z on {name}"),
            &z.to_vec_f32().unwrap(),
            &want_z,
            1e-5,
            0.0,
        );
        assert_close(
            &format!("gelu on {name}"),
            &y.to_vec_f32().unwrap(),
            &want_y,
            1e-5,
            0.0,
        );
    }
    // bf16: x and W rounded (the GEMM reads the bf16 shadow), the bias f32. z is the bf16 GEMM output
    // plus the bias, rounded again: two roundings of at most 2^-8 of the value each; GELU (slope at
    // most about 1.13) carries them into y, which is rounded once more.
    let rounded_params: Vec<f32> = params
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if (weight.offset..weight.offset + weight.len).contains(&i) {
                round_bf16(&[v])[0]
            } else {
                v
            }
        })
        .collect();
    let (z, y) = cpu
        .linear_gelu_forward(
            &cpu.upload_f32(&[rows, inp], &round_bf16(&x)).unwrap(),
            &cpu.upload_f32(&[len], &rounded_params).unwrap(),
            weight,
            bias,
            out,
        )
        .unwrap();
    let (want_z, want_y) = (z.to_vec_f32().unwrap(), y.to_vec_f32().unwrap());
    let scale_z = want_z.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale_y = want_y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (name, gpu) in gpus_bf16() {
        let gp = gpu.upload_f32(&[len], &params).unwrap();
        let gw = gpu.cast(&gp, DType::BF16).unwrap();
        let (z, y) = gpu
            .linear_gelu_forward(
                &upload_bf16(&gpu, &[rows, inp], &x),
                Weights::mixed(&gp, &gw),
                weight,
                bias,
                out,
            )
            .unwrap();
        assert_eq!((z.dtype(), y.dtype()), (DType::BF16, DType::BF16));
        assert_close(
            &format!("bf16 z on {name}"),
            &z.to_vec_f32().unwrap(),
            &want_z,
            0.0,
            2.0 * scale_z / 256.0 + 1e-5,
        );
        assert_close(
            &format!("bf16 gelu on {name}"),
            &y.to_vec_f32().unwrap(),
            &want_y,
            0.0,
            4.0 * scale_y / 256.0 + 1e-5,
        );
    }
}

/// The fused backward of the feed-forward block's first layer (GELU's backward in the bias
/// gradient's pass) against the CPU's two backwards, and against the GPU's own unfused path, which
/// it must match bit for bit: the same dz, summed in the same order, fed to the same GEMMs. 150 rows:
/// three row chunks of the bias sum, the last one partial.
#[test]
fn linear_gelu_fused_backward_matches_the_two_backwards() {
    use crate::harness::{gpus_bf16, round_bf16, upload_bf16};
    let (rows, inp, out) = (150, 37, 29);
    let (weight, bias, len) = slots(inp, out);
    let mut rng = rng(78);
    let x = random(&mut rng, rows * inp, 1.0);
    let z = random(&mut rng, rows * out, 2.0);
    let dy = random(&mut rng, rows * out, 1.0);
    let params = random(&mut rng, len, 0.5);
    let grads = random(&mut rng, len, 1.0);
    let range = |p: Param| p.offset..p.offset + p.len;

    // Runs the fused backward and the two backwards on `backend`, with the activations uploaded by
    // `upload` (f32, or rounded to bf16): (dx, grads) of each.
    let both = |backend: &dyn Backend, upload: &dyn Fn(&[usize], &[f32]) -> Tensor| {
        let (bx, bz, bdy) = (
            upload(&[rows, inp], &x),
            upload(&[rows, out], &z),
            upload(&[rows, out], &dy),
        );
        let bp = backend.upload_f32(&[len], &params).unwrap();
        // The GEMMs read weights of the activations' type (the bf16 copy in mixed precision).
        let bw = backend.cast(&bp, bx.dtype()).unwrap();
        let bp = Weights::mixed(&bp, &bw);
        let mut fused_grads = backend.upload_f32(&[len], &grads).unwrap();
        let fused_dx = backend
            .linear_gelu_backward(&bdy, &bx, &bz, bp, &mut fused_grads, weight, bias)
            .unwrap();
        let mut apart_grads = backend.upload_f32(&[len], &grads).unwrap();
        let dz = backend.gelu_backward(&bdy, &bz).unwrap();
        let apart_dx = backend
            .linear_backward(&dz, &bx, bp, &mut apart_grads, weight, bias)
            .unwrap();
        let v = |t: &Tensor| t.to_vec_f32().unwrap();
        (
            (v(&fused_dx), v(&fused_grads)),
            (v(&apart_dx), v(&apart_grads)),
        )
    };

    let cpu = cpu();
    let ((want_dx, want_grads), _) = both(&cpu, &|shape, v| cpu.upload_f32(shape, v).unwrap());
    for (name, gpu) in gpus() {
        let upload = |shape: &[usize], v: &[f32]| gpu.upload_f32(shape, v).unwrap();
        let ((dx, got), (apart_dx, apart_grads)) = both(gpu.as_ref(), &upload);
        let what = |part: &str| format!("fused linear+gelu backward {part} on {name}");
        assert_close(&what("dx"), &dx, &want_dx, REL, 0.0);
        assert_close(
            &what("dW"),
            &got[range(weight)],
            &want_grads[range(weight)],
            REL,
            0.0,
        );
        assert_close(
            &what("db"),
            &got[range(bias)],
            &want_grads[range(bias)],
            REL,
            0.0,
        );
        for i in (0..len).filter(|i| !range(weight).contains(i) && !range(bias).contains(i)) {
            assert_eq!(got[i], grads[i], "{}[{i}]", what("padding"));
        }
        if name.starts_with("emulated") {
            assert_eq!(dx, apart_dx, "{}", what("dx bits against the unfused path"));
            assert_eq!(
                got,
                apart_grads,
                "{}",
                what("gradient bits against the unfused path")
            );
        }
    }

    // bf16: the CPU reference runs on the rounded inputs in f32; the GPU rounds dz to bf16 before
    // the GEMMs (2^-8 of each value), which the sums over 150 rows and 29 features carry into dx,
    // dW and db.
    let ((want_dx, want_grads), _) = {
        let (x, z, dy) = (round_bf16(&x), round_bf16(&z), round_bf16(&dy));
        let rounded_params: Vec<f32> = params
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if range(weight).contains(&i) {
                    round_bf16(&[v])[0]
                } else {
                    v
                }
            })
            .collect();
        let mut g = cpu.upload_f32(&[len], &grads).unwrap();
        let dx = cpu
            .linear_gelu_backward(
                &cpu.upload_f32(&[rows, out], &dy).unwrap(),
                &cpu.upload_f32(&[rows, inp], &x).unwrap(),
                &cpu.upload_f32(&[rows, out], &z).unwrap(),
                &cpu.upload_f32(&[len], &rounded_params).unwrap(),
                &mut g,
                weight,
                bias,
            )
            .unwrap();
        ((dx.to_vec_f32().unwrap(), g.to_vec_f32().unwrap()), ())
    };
    let scale = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (name, gpu) in gpus_bf16() {
        let upload = |shape: &[usize], v: &[f32]| upload_bf16(&gpu, shape, v);
        let ((dx, got), (apart_dx, apart_grads)) = both(&gpu, &upload);
        let what = |part: &str| format!("bf16 fused linear+gelu backward {part} on {name}");
        assert_close(
            &what("dx"),
            &dx,
            &want_dx,
            0.0,
            scale(&want_dx) * 4.0 / 256.0,
        );
        let (dw, want_dw) = (&got[range(weight)], &want_grads[range(weight)]);
        assert_close(&what("dW"), dw, want_dw, 0.0, scale(want_dw) * 4.0 / 256.0);
        let (db, want_db) = (&got[range(bias)], &want_grads[range(bias)]);
        assert_close(&what("db"), db, want_db, 0.0, scale(want_db) * 4.0 / 256.0);
        if name.starts_with("emulated") {
            assert_eq!(dx, apart_dx, "{}", what("dx bits against the unfused path"));
            assert_eq!(
                got,
                apart_grads,
                "{}",
                what("gradient bits against the unfused path")
            );
        }
    }
}

/// A `z` whose shape is not `dy`'s is refused before anything runs, with the CPU's error.
#[test]
fn linear_gelu_fused_backward_rejects_a_mismatched_z() {
    let (rows, inp, out) = (5, 4, 3);
    let (weight, bias, len) = slots(inp, out);
    let mut rng = rng(79);
    let x = random(&mut rng, rows * inp, 1.0);
    let z = random(&mut rng, rows * (out + 1), 1.0);
    let dy = random(&mut rng, rows * out, 1.0);
    let params = random(&mut rng, len, 1.0);
    let grads = random(&mut rng, len, 1.0);
    let run = |backend: &dyn Backend| {
        let up = |shape: &[usize], v: &[f32]| backend.upload_f32(shape, v).unwrap();
        let mut g = up(&[len], &grads);
        let err = backend
            .linear_gelu_backward(
                &up(&[rows, out], &dy),
                &up(&[rows, inp], &x),
                &up(&[rows, out + 1], &z),
                &up(&[len], &params),
                &mut g,
                weight,
                bias,
            )
            .unwrap_err();
        (err.to_string(), g.to_vec_f32().unwrap())
    };
    let (want, _) = run(&cpu());
    assert!(want.contains("gelu dy"), "{want}");
    for (name, gpu) in gpus() {
        let (err, got) = run(gpu.as_ref());
        assert_eq!(err, want, "error on {name}");
        assert_eq!(got, grads, "gradients left as they were on {name}");
    }
}
