//! Kernel tests for kernels/attention.cu: forward (out, lse) and backward (dqkv) against the CPU
//! backend, for every head-dim capacity the kernels are compiled for, with sizes that are no multiple
//! of any tile, padding at the end of sequences, holes in masks and sequences that are all padding;
//! and the bf16 kernels (tensor-core and CUDA-core, forward and backward) against the CPU run on the
//! same bf16-rounded inputs.

use crate::harness::{assert_close, cpu, gpus, gpus_bf16, random, rng, round_bf16, upload_bf16};
use undertale_maskedlm::backend::Backend;
use undertale_maskedlm::backend::cuda::ops::attention::{BackwardKernel, ForwardKernel};
use undertale_maskedlm::{DType, Error, Tensor};

/// One attention call: sizes and, per sequence, which keys are real.
struct Case {
    heads: usize,
    head_dim: usize,
    seq: usize,
    masks: Vec<Vec<i32>>,
}

/// A mask whose first `len` keys are real: padding at the end (all padding for `len` 0).
fn prefix(seq: usize, len: usize) -> Vec<i32> {
    (0..seq).map(|j| i32::from(j < len)).collect()
}

/// A mask with padding at the end and holes: keys in `holes` are padding too.
fn with_holes(seq: usize, len: usize, holes: &[usize]) -> Vec<i32> {
    let mut mask = prefix(seq, len);
    for &j in holes {
        mask[j] = 0;
    }
    mask
}

/// `lse` equal to `want`: the same rows are -inf (no real key), the others within `rel`.
fn assert_lse(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g == f32::NEG_INFINITY,
            w == f32::NEG_INFINITY,
            "{what}[{i}]: got {g}, want {w}"
        );
    }
    let finite = |v: &[f32]| -> Vec<f32> { v.iter().copied().filter(|x| x.is_finite()).collect() };
    assert_close(what, &finite(got), &finite(want), rel, 0.0);
}

/// The largest difference relative to the largest magnitude of `want` (finite entries).
fn worst(got: &[f32], want: &[f32]) -> f32 {
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .filter(|(_, w)| w.is_finite())
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0.0f32, f32::max)
}

/// Forward and backward of `case` on the emulated GPU, in every scheduling order, against the CPU.
fn check(case: &Case, seed: u64) {
    let Case {
        heads,
        head_dim,
        seq,
        ref masks,
    } = *case;
    let batch = masks.len();
    let hidden = heads * head_dim;
    let mut rng = rng(seed);
    // Scores of a few units: softmax rows are peaked, so the online max moves between key tiles.
    let qkv = random(&mut rng, batch * seq * 3 * hidden, 2.0);
    let dout = random(&mut rng, batch * seq * hidden, 1.0);
    let mask: Vec<i32> = masks.concat();
    let (qkv_shape, out_shape, mask_shape) = (
        [batch * seq, 3 * hidden],
        [batch * seq, hidden],
        [batch, seq],
    );
    let what = format!("batch {batch} seq {seq} heads {heads} head_dim {head_dim}");

    let cpu = cpu();
    let c_qkv = cpu.upload_f32(&qkv_shape, &qkv).unwrap();
    let c_mask = cpu.upload_i32(&mask_shape, &mask).unwrap();
    let c_dout = cpu.upload_f32(&out_shape, &dout).unwrap();
    let want = cpu.attention_forward(&c_qkv, &c_mask, heads).unwrap();
    let want_dqkv = cpu
        .attention_backward(&c_dout, &c_qkv, &c_mask, &want.out, &want.lse, heads)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let (want_out, want_lse) = (
        want.out.to_vec_f32().unwrap(),
        want.lse.to_vec_f32().unwrap(),
    );

    for (order, gpu) in gpus() {
        let g_qkv = gpu.upload_f32(&qkv_shape, &qkv).unwrap();
        let g_mask = gpu.upload_i32(&mask_shape, &mask).unwrap();
        let g_dout = gpu.upload_f32(&out_shape, &dout).unwrap();
        let got = gpu.attention_forward(&g_qkv, &g_mask, heads).unwrap();
        assert_eq!(got.out.shape(), want.out.shape());
        assert_eq!(got.lse.shape(), want.lse.shape());
        let out = got.out.to_vec_f32().unwrap();
        let lse = got.lse.to_vec_f32().unwrap();
        assert_close(&format!("{what} out {order:?}"), &out, &want_out, 1e-5, 0.0);
        assert_lse(&format!("{what} lse {order:?}"), &lse, &want_lse, 1e-5);

        let dqkv = gpu
            .attention_backward(&g_dout, &g_qkv, &g_mask, &got.out, &got.lse, heads)
            .unwrap();
        assert_eq!(dqkv.shape(), &qkv_shape);
        let dqkv = dqkv.to_vec_f32().unwrap();
        assert_close(
            &format!("{what} dqkv {order:?}"),
            &dqkv,
            &want_dqkv,
            1e-5,
            0.0,
        );
        eprintln!(
            "{what} {order:?}: worst relative difference out {:.1e}, lse {:.1e}, dqkv {:.1e}",
            worst(&out, &want_out),
            worst(&lse, &want_lse),
            worst(&dqkv, &want_dqkv)
        );
    }
}

#[test]
fn head_dim_16_with_padding_and_an_all_padding_sequence() {
    let seq = 37;
    check(
        &Case {
            heads: 2,
            head_dim: 16,
            seq,
            masks: vec![prefix(seq, seq), prefix(seq, 20), prefix(seq, 0)],
        },
        1,
    );
    // The tiny preset's shape: 4 heads of 16 over 128 positions, two whole tiles.
    let seq = 128;
    check(
        &Case {
            heads: 4,
            head_dim: 16,
            seq,
            masks: vec![prefix(seq, 64), prefix(seq, 100)],
        },
        7,
    );
}

#[test]
fn head_dim_64_over_more_than_two_tiles() {
    // 150 rows: three 64-row query tiles and three 64-key tiles, the last ones ragged. The second
    // sequence has holes in its mask and padding after 140; its last key tile is partly padding.
    let seq = 150;
    check(
        &Case {
            heads: 2,
            head_dim: 64,
            seq,
            masks: vec![
                prefix(seq, 131),
                with_holes(seq, 140, &[0, 3, 63, 64, 70, 71, 72, 100]),
                prefix(seq, 0),
            ],
        },
        2,
    );
}

#[test]
fn odd_head_dims_of_every_capacity() {
    // head_dim 7 (capacity 16), 27 (32) and 100 (128, where key tiles are 32 rows): features past
    // head_dim are padding inside the kernels. One real key only; padding crossing a row tile.
    let seq = 45;
    check(
        &Case {
            heads: 3,
            head_dim: 7,
            seq,
            masks: vec![prefix(seq, 1), prefix(seq, seq)],
        },
        3,
    );
    let seq = 70;
    check(
        &Case {
            heads: 1,
            head_dim: 27,
            seq,
            masks: vec![prefix(seq, 65), with_holes(seq, seq, &[1, 2, 69])],
        },
        4,
    );
    let seq = 41;
    check(
        &Case {
            heads: 2,
            head_dim: 100,
            seq,
            masks: vec![prefix(seq, 33), prefix(seq, 0), prefix(seq, seq)],
        },
        5,
    );
}

#[test]
fn backward_is_deterministic() {
    let (batch, seq, heads, head_dim) = (2, 70, 2, 32);
    let hidden = heads * head_dim;
    let mut rng = rng(6);
    let qkv = random(&mut rng, batch * seq * 3 * hidden, 2.0);
    let dout = random(&mut rng, batch * seq * hidden, 1.0);
    let mask = [prefix(seq, 50), prefix(seq, seq)].concat();
    let gpu = &gpus()[2].1;
    let qkv = gpu.upload_f32(&[batch * seq, 3 * hidden], &qkv).unwrap();
    let mask = gpu.upload_i32(&[batch, seq], &mask).unwrap();
    let dout = gpu.upload_f32(&[batch * seq, hidden], &dout).unwrap();
    let fwd = gpu.attention_forward(&qkv, &mask, heads).unwrap();
    let run = || {
        gpu.attention_backward(&dout, &qkv, &mask, &fwd.out, &fwd.lse, heads)
            .unwrap()
            .to_vec_f32()
            .unwrap()
    };
    let (a, b) = (run(), run());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "two backward runs differ"
    );
}

#[test]
fn empty_sizes() {
    // seq 0: empty outputs (and no launch on the GPU), on every backend.
    let cpu = cpu();
    let gpu = gpus()[0].1.clone();
    for backend in [&cpu as &dyn Backend, gpu.as_ref()] {
        let qkv = backend.upload_f32(&[0, 12], &[]).unwrap();
        let mask = backend.upload_i32(&[2, 0], &[]).unwrap();
        let fwd = backend.attention_forward(&qkv, &mask, 2).unwrap();
        assert_eq!(fwd.out.shape(), &[0, 4]);
        assert_eq!(fwd.lse.shape(), &[2, 2, 0]);
        let dout = backend.upload_f32(&[0, 4], &[]).unwrap();
        let dqkv = backend
            .attention_backward(&dout, &qkv, &mask, &fwd.out, &fwd.lse, 2)
            .unwrap();
        assert_eq!(dqkv.shape(), &[0, 12]);
    }
}

/// The same call on both backends: both fail with the same message.
fn same_error(what: &str, call: impl Fn(&dyn Backend) -> Result<(), Error>) -> Error {
    let cpu_error = call(&cpu()).expect_err(what);
    let gpu_error = call(gpus()[0].1.as_ref()).expect_err(what);
    assert_eq!(gpu_error.to_string(), cpu_error.to_string(), "{what}");
    gpu_error
}

#[test]
fn bad_shapes_fail_as_on_the_cpu() {
    let upload = |backend: &dyn Backend, shape: &[usize]| -> Tensor {
        let n = shape.iter().product();
        backend.upload_f32(shape, &vec![0.5; n]).unwrap()
    };
    let mask = |backend: &dyn Backend, shape: &[usize]| -> Tensor {
        let n = shape.iter().product();
        backend.upload_i32(shape, &vec![1; n]).unwrap()
    };
    let forward = |qkv: &'static [usize], m: &'static [usize], heads: usize| {
        move |b: &dyn Backend| {
            b.attention_forward(&upload(b, qkv), &mask(b, m), heads)
                .map(|_| ())
        }
    };
    // qkv width not a multiple of 3, hidden not divisible by the heads, rows not batch * seq,
    // a mask that is not [batch, seq].
    for (what, call) in [
        ("width 13", forward(&[10, 13], &[2, 5], 1)),
        ("hidden 8 over 3 heads", forward(&[10, 24], &[2, 5], 3)),
        ("9 rows", forward(&[9, 24], &[2, 5], 2)),
        ("mask rank 1", forward(&[10, 24], &[10], 2)),
    ] {
        let error = same_error(what, call);
        assert!(matches!(error, Error::Shape { .. }), "{what}: {error}");
    }

    // A mask of floats: the same dtype error.
    let error = same_error("f32 mask", |b| {
        b.attention_forward(&upload(b, &[10, 24]), &upload(b, &[2, 5]), 2)
            .map(|_| ())
    });
    assert!(matches!(error, Error::DType { .. }), "{error}");

    // Backward: dout not shaped like out, and an lse of the wrong size.
    let backward = |dout: &'static [usize], lse: &'static [usize]| {
        move |b: &dyn Backend| {
            b.attention_backward(
                &upload(b, dout),
                &upload(b, &[10, 24]),
                &mask(b, &[2, 5]),
                &upload(b, &[10, 8]),
                &upload(b, lse),
                2,
            )
            .map(|_| ())
        }
    };
    for (what, call) in [
        ("dout [10, 9]", backward(&[10, 9], &[2, 2, 5])),
        ("lse [2, 2, 4]", backward(&[10, 8], &[2, 2, 4])),
    ] {
        let error = same_error(what, call);
        assert!(matches!(error, Error::Shape { .. }), "{what}: {error}");
    }
}

#[test]
fn head_dims_past_128_are_a_clear_error() {
    // The CPU takes any head_dim; the kernels stop at 128 and say so instead of computing garbage.
    let gpu = &gpus()[0].1;
    let qkv = gpu
        .upload_f32(&[2, 3 * 136], &vec![0.5; 2 * 3 * 136])
        .unwrap();
    let mask = gpu.upload_i32(&[1, 2], &[1, 1]).unwrap();
    let error = gpu.attention_forward(&qkv, &mask, 1).unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
    assert!(error.to_string().contains("head_dim 136"), "{error}");
    let cpu = cpu();
    let c_qkv = cpu
        .upload_f32(&[2, 3 * 136], &vec![0.5; 2 * 3 * 136])
        .unwrap();
    let c_mask = cpu.upload_i32(&[1, 2], &[1, 1]).unwrap();
    assert!(cpu.attention_forward(&c_qkv, &c_mask, 1).is_ok());
}

// ---- bf16 -------------------------------------------------------------------------------------------

/// The dQ, dK and dV columns of a [rows, 3 hidden] gradient, each as one vector.
fn parts(dqkv: &[f32], hidden: usize) -> [Vec<f32>; 3] {
    std::array::from_fn(|p| {
        dqkv.chunks(3 * hidden)
            .flat_map(|row| &row[p * hidden..(p + 1) * hidden])
            .copied()
            .collect()
    })
}

/// The worst of `worst` over dQ, dK and dV, each against its own largest magnitude.
fn worst_part(got: &[f32], want: &[f32], hidden: usize) -> f32 {
    parts(got, hidden)
        .iter()
        .zip(parts(want, hidden))
        .map(|(g, w)| worst(g, &w))
        .fold(0.0f32, f32::max)
}

/// A bf16 dqkv against the reference: dQ, dK and dV each within 1e-2 of their own largest
/// magnitude (dV is the largest, and would hide an error in dK or dQ against the whole).
fn assert_parts_close(what: &str, got: &[f32], want: &[f32], hidden: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for ((part, got), want) in ["dQ", "dK", "dV"]
        .iter()
        .zip(parts(got, hidden))
        .zip(parts(want, hidden))
    {
        assert_close(&format!("{what} {part}"), &got, &want, 1e-2, 0.0);
    }
}

/// Forward and backward of `case` with bf16 activations, in every bf16 backend, against the CPU run
/// on the bf16-rounded qkv and dout: out and dqkv are bf16 (within 1e-2 of the largest magnitude, of
/// each of dQ, dK and dV for dqkv),
/// lse is f32 (within 1e-3: the scores are sums of bf16 products in f32). Forward and backward run
/// on tensor cores (the default) and on CUDA cores; the two agree within the same tolerances, and the
/// tensor-core backward gives the same bits in every scheduling order (every output has one owner
/// and a fixed summation order).
fn check_bf16(case: &Case, seed: u64) {
    let Case {
        heads,
        head_dim,
        seq,
        ref masks,
    } = *case;
    let batch = masks.len();
    let hidden = heads * head_dim;
    let mut rng = rng(seed);
    let qkv = round_bf16(&random(&mut rng, batch * seq * 3 * hidden, 2.0));
    let dout = round_bf16(&random(&mut rng, batch * seq * hidden, 1.0));
    let mask: Vec<i32> = masks.concat();
    let (qkv_shape, out_shape, mask_shape) = (
        [batch * seq, 3 * hidden],
        [batch * seq, hidden],
        [batch, seq],
    );
    let what = format!("bf16 batch {batch} seq {seq} heads {heads} head_dim {head_dim}");

    let cpu = cpu();
    let c_qkv = cpu.upload_f32(&qkv_shape, &qkv).unwrap();
    let c_mask = cpu.upload_i32(&mask_shape, &mask).unwrap();
    let c_dout = cpu.upload_f32(&out_shape, &dout).unwrap();
    let want = cpu.attention_forward(&c_qkv, &c_mask, heads).unwrap();
    let want_dqkv = cpu
        .attention_backward(&c_dout, &c_qkv, &c_mask, &want.out, &want.lse, heads)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let (want_out, want_lse) = (
        want.out.to_vec_f32().unwrap(),
        want.lse.to_vec_f32().unwrap(),
    );

    let mut first_dqkv: Option<(String, Vec<f32>)> = None;
    for (name, gpu) in gpus_bf16() {
        let g_qkv = upload_bf16(&gpu, &qkv_shape, &qkv);
        let g_mask = gpu.upload_i32(&mask_shape, &mask).unwrap();
        let g_dout = upload_bf16(&gpu, &out_shape, &dout);
        let got = gpu.attention_forward(&g_qkv, &g_mask, heads).unwrap();
        assert_eq!(got.out.shape(), want.out.shape());
        assert_eq!(got.lse.shape(), want.lse.shape());
        assert_eq!(got.out.dtype(), DType::BF16, "{what} out dtype");
        assert_eq!(got.lse.dtype(), DType::F32, "{what} lse dtype");
        let out = got.out.to_vec_f32().unwrap();
        let lse = got.lse.to_vec_f32().unwrap();
        assert_close(&format!("{what} out {name}"), &out, &want_out, 1e-2, 0.0);
        assert_lse(&format!("{what} lse {name}"), &lse, &want_lse, 1e-3);

        let on_cores = gpu
            .clone()
            .with_attention_kernels(ForwardKernel::CudaCores, BackwardKernel::CudaCores);
        let cores = on_cores.attention_forward(&g_qkv, &g_mask, heads).unwrap();
        assert_eq!(cores.out.dtype(), DType::BF16, "{what} CUDA-core out dtype");
        assert_eq!(cores.lse.dtype(), DType::F32, "{what} CUDA-core lse dtype");
        let cores_out = cores.out.to_vec_f32().unwrap();
        let cores_lse = cores.lse.to_vec_f32().unwrap();
        assert_close(
            &format!("{what} CUDA-core out {name}"),
            &cores_out,
            &want_out,
            1e-2,
            0.0,
        );
        assert_lse(
            &format!("{what} CUDA-core lse {name}"),
            &cores_lse,
            &want_lse,
            1e-3,
        );
        assert_close(
            &format!("{what} tensor-core vs CUDA-core out {name}"),
            &out,
            &cores_out,
            1e-2,
            0.0,
        );
        assert_lse(
            &format!("{what} tensor-core vs CUDA-core lse {name}"),
            &lse,
            &cores_lse,
            1e-3,
        );

        let dqkv = gpu
            .attention_backward(&g_dout, &g_qkv, &g_mask, &got.out, &got.lse, heads)
            .unwrap();
        assert_eq!(dqkv.shape(), &qkv_shape);
        assert_eq!(dqkv.dtype(), DType::BF16, "{what} dqkv dtype");
        let dqkv = dqkv.to_vec_f32().unwrap();
        assert_parts_close(&format!("{what} dqkv {name}"), &dqkv, &want_dqkv, hidden);

        let cores_dqkv = on_cores
            .attention_backward(&g_dout, &g_qkv, &g_mask, &got.out, &got.lse, heads)
            .unwrap();
        assert_eq!(
            cores_dqkv.dtype(),
            DType::BF16,
            "{what} CUDA-core dqkv dtype"
        );
        let cores_dqkv = cores_dqkv.to_vec_f32().unwrap();
        assert_parts_close(
            &format!("{what} CUDA-core dqkv {name}"),
            &cores_dqkv,
            &want_dqkv,
            hidden,
        );
        assert_parts_close(
            &format!("{what} tensor-core vs CUDA-core dqkv {name}"),
            &dqkv,
            &cores_dqkv,
            hidden,
        );
        // Every gradient of an all-padding sequence, and dK, dV of every padding key, is exactly 0.
        for (row, values) in dqkv.chunks(3 * hidden).enumerate() {
            let (b, j) = (row / seq, row % seq);
            let all_padding = masks[b].iter().all(|&m| m == 0);
            let from = if all_padding {
                0
            } else if masks[b][j] == 0 {
                hidden
            } else {
                continue;
            };
            for (c, &g) in values.iter().enumerate().skip(from) {
                assert_eq!(g, 0.0, "{what} dqkv[{row}, {c}] {name}: want an exact 0");
            }
        }
        if name.starts_with("emulated") {
            match &first_dqkv {
                None => first_dqkv = Some((name.clone(), dqkv.clone())),
                Some((first, bits)) => assert!(
                    bits.iter()
                        .zip(&dqkv)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{what}: the tensor-core dqkv differs between {first} and {name}"
                ),
            }
        }
        eprintln!(
            "{what} {name}: worst relative difference out {:.1e} (CUDA cores {:.1e}), \
             lse {:.1e} ({:.1e}), dQ, dK, dV {:.1e} ({:.1e})",
            worst(&out, &want_out),
            worst(&cores_out, &want_out),
            worst(&lse, &want_lse),
            worst(&cores_lse, &want_lse),
            worst_part(&dqkv, &want_dqkv, hidden),
            worst_part(&cores_dqkv, &want_dqkv, hidden)
        );
    }
}

#[test]
fn bf16_head_dim_16_with_padding_and_an_all_padding_sequence() {
    let seq = 37;
    check_bf16(
        &Case {
            heads: 2,
            head_dim: 16,
            seq,
            masks: vec![prefix(seq, seq), prefix(seq, 20), prefix(seq, 0)],
        },
        11,
    );
}

#[test]
fn bf16_head_dim_64_over_more_than_two_tiles() {
    let seq = 150;
    check_bf16(
        &Case {
            heads: 2,
            head_dim: 64,
            seq,
            masks: vec![
                with_holes(seq, 140, &[0, 3, 63, 64, 70, 71, 72, 100]),
                prefix(seq, 0),
            ],
        },
        12,
    );
}

#[test]
fn bf16_odd_head_dims() {
    // head_dim 32, and 27 and 100 (capacities 32 and 128), whose padding features the kernels
    // zero-fill.
    let seq = 45;
    check_bf16(
        &Case {
            heads: 2,
            head_dim: 32,
            seq,
            masks: vec![prefix(seq, 1), with_holes(seq, seq, &[1, 2, 44])],
        },
        13,
    );
    let seq = 41;
    check_bf16(
        &Case {
            heads: 1,
            head_dim: 27,
            seq,
            masks: vec![prefix(seq, 33), prefix(seq, 0)],
        },
        14,
    );
    check_bf16(
        &Case {
            heads: 1,
            head_dim: 100,
            seq,
            masks: vec![prefix(seq, 30)],
        },
        15,
    );
}

#[test]
fn bf16_backward_odd_lengths_and_ragged_head_dims() {
    // Sequence lengths that are no multiple of 16 (the mma step) or 64 (the tiles), one of a single
    // position; head_dim 12, 27, 64, 100 (capacities 16, 32, 64, 128: the last keeps K and V in
    // shared memory and streams 16-row query tiles); padding at the end, holes, and a sequence
    // that is all padding.
    let seq = 1;
    check_bf16(
        &Case {
            heads: 2,
            head_dim: 12,
            seq,
            masks: vec![prefix(seq, 1), prefix(seq, 0)],
        },
        21,
    );
    let seq = 17;
    check_bf16(
        &Case {
            heads: 3,
            head_dim: 12,
            seq,
            masks: vec![
                with_holes(seq, 15, &[0, 8]),
                prefix(seq, 0),
                prefix(seq, seq),
            ],
        },
        22,
    );
    let seq = 70;
    check_bf16(
        &Case {
            heads: 2,
            head_dim: 27,
            seq,
            masks: vec![prefix(seq, 67), with_holes(seq, seq, &[15, 16, 63, 64, 69])],
        },
        23,
    );
    let seq = 130;
    check_bf16(
        &Case {
            heads: 1,
            head_dim: 64,
            seq,
            masks: vec![with_holes(seq, 129, &[1, 64, 127]), prefix(seq, 0)],
        },
        24,
    );
    let seq = 70;
    check_bf16(
        &Case {
            heads: 1,
            head_dim: 100,
            seq,
            masks: vec![prefix(seq, 0), with_holes(seq, 66, &[0, 31, 32, 65])],
        },
        25,
    );
}

#[test]
fn bf16_backward_whole_capacities() {
    // head_dim equal to its capacity: whole 16-byte rows, loaded and stored in chunks.
    let seq = 130;
    check_bf16(
        &Case {
            heads: 2,
            head_dim: 32,
            seq,
            masks: vec![prefix(seq, 100), prefix(seq, seq)],
        },
        26,
    );
    let seq = 33;
    check_bf16(
        &Case {
            heads: 1,
            head_dim: 128,
            seq,
            masks: vec![prefix(seq, 20), prefix(seq, 0)],
        },
        27,
    );
}

#[test]
fn mixed_element_types_are_a_dtype_error() {
    let (name, gpu) = &gpus_bf16()[0];
    let (batch, seq, heads, head_dim) = (1, 5, 1, 16);
    let values = vec![0.25; batch * seq * 3 * heads * head_dim];
    let qkv = upload_bf16(gpu, &[batch * seq, 3 * heads * head_dim], &values);
    let qkv_f32 = gpu
        .upload_f32(&[batch * seq, 3 * heads * head_dim], &values)
        .unwrap();
    let mask = gpu.upload_i32(&[batch, seq], &[1; 5]).unwrap();
    let fwd = gpu.attention_forward(&qkv, &mask, heads).unwrap();
    let dout_f32 = gpu
        .upload_f32(&[batch * seq, heads * head_dim], &values[..seq * head_dim])
        .unwrap();
    let dout = upload_bf16(
        gpu,
        &[batch * seq, heads * head_dim],
        &values[..seq * head_dim],
    );
    for (what, result) in [
        (
            "f32 dout",
            gpu.attention_backward(&dout_f32, &qkv, &mask, &fwd.out, &fwd.lse, heads),
        ),
        (
            "f32 qkv",
            gpu.attention_backward(&dout, &qkv_f32, &mask, &fwd.out, &fwd.lse, heads),
        ),
    ] {
        let error = result.expect_err(what);
        assert!(
            matches!(error, Error::DType { .. }),
            "{name} {what}: {error}"
        );
    }
}
