//! kernels/linear.cu and the linear layer's GEMMs against the CPU backend: y = x W^T + b, and
//! dx = dy W with dW and db added into a gradient buffer that starts non-zero.

use crate::harness::{assert_close, cpu, gpus, random, rng};
use undertale_maskedlm::Error;
use undertale_maskedlm::backend::{Backend, Param};

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
        // Deterministic: every scheduling order gives the same bits.
        match &first {
            None => first = Some(got),
            Some(got0) => assert_eq!(&got, got0, "{}", what("gradient bits")),
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
