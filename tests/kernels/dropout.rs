// Kernel tests for kernels/dropout.cu and kernels/philox.cuh: masks bit-identical to the CPU's, for
// keys with high bits set, sizes that are not multiples of four, forward and backward; in bf16, the
// same masks with every kept element rounded once; and packed rows drawing their padded rows' masks.

use crate::harness::{cpu, gpus, gpus_bf16, random, rng, round_bf16, upload_bf16};
use undertale_maskedlm::backend::{Backend, DropoutKey};
use undertale_maskedlm::{DType, Error};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn masks_are_bit_identical_to_the_cpu() {
    // 37 x 53 = 1961 elements: 490 full groups of four and a tail of one.
    let shape = [37, 53];
    let n = 37 * 53;
    let x = random(&mut rng(31), n, 2.0);
    let dy = random(&mut rng(32), n, 2.0);
    let keys = [
        DropoutKey {
            p: 0.1,
            seed: 1234,
            step: 7,
            site: 0,
        },
        // Every key and counter word in use: 64-bit seed and step, a large site.
        DropoutKey {
            p: 0.5,
            seed: 0xdead_beef_0123_4567,
            step: (5 << 32) | 3,
            site: 0x8000_0011,
        },
        // No dropout: the identity.
        DropoutKey {
            p: 0.0,
            seed: 9,
            step: 1,
            site: 2,
        },
    ];
    let cpu = cpu();
    let (cx, cdy) = (
        cpu.upload_f32(&shape, &x).unwrap(),
        cpu.upload_f32(&shape, &dy).unwrap(),
    );
    for key in keys {
        let want_y = cpu
            .dropout_forward(&cx, key, None)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let want_dx = cpu
            .dropout_backward(&cdy, key, None)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let dropped = want_y.iter().filter(|&&v| v == 0.0).count() as f32 / n as f32;
        assert!(
            (dropped - key.p).abs() < 0.05,
            "{dropped} dropped for p {}",
            key.p
        );
        for (order, gpu) in gpus() {
            let y = gpu
                .dropout_forward(&gpu.upload_f32(&shape, &x).unwrap(), key, None)
                .unwrap();
            assert_eq!(y.shape(), &shape);
            assert_eq!(
                bits(&gpu.download_f32(&y).unwrap()),
                bits(&want_y),
                "forward {key:?} {order:?}"
            );
            let dx = gpu
                .dropout_backward(&gpu.upload_f32(&shape, &dy).unwrap(), key, None)
                .unwrap();
            assert_eq!(
                bits(&gpu.download_f32(&dx).unwrap()),
                bits(&want_dx),
                "backward {key:?} {order:?}"
            );
        }
    }
}

#[test]
fn every_tail_length_and_the_site_and_step_matter() {
    let cpu = cpu();
    let (_, gpu) = &gpus()[2];
    let key = DropoutKey {
        p: 0.3,
        seed: 77,
        step: 4,
        site: 1,
    };
    // 1 to 9 elements: an empty, partial and full group in every combination with the tail.
    for n in 1..10 {
        let x = random(&mut rng(33 + n as u64), n, 1.0);
        let want = cpu
            .dropout_forward(&cpu.upload_f32(&[n], &x).unwrap(), key, None)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let got = gpu
            .dropout_forward(&gpu.upload_f32(&[n], &x).unwrap(), key, None)
            .unwrap();
        assert_eq!(bits(&gpu.download_f32(&got).unwrap()), bits(&want), "{n}");
    }
    // Another site or step draws another mask.
    let x = vec![1.0f32; 256];
    let mask = |key: DropoutKey| {
        let y = gpu
            .dropout_forward(&gpu.upload_f32(&[256], &x).unwrap(), key, None)
            .unwrap();
        gpu.download_f32(&y).unwrap()
    };
    let base = mask(key);
    assert_ne!(base, mask(DropoutKey { site: 2, ..key }));
    assert_ne!(base, mask(DropoutKey { step: 5, ..key }));
    assert_ne!(base, mask(DropoutKey { seed: 78, ..key }));
}

/// The error `call` fails with on the CPU, which the first emulated GPU must give word for word.
fn the_cpus_error(call: impl Fn(&dyn Backend) -> Error) -> String {
    let cpu = cpu();
    let (_, gpu) = &gpus()[0];
    let want = call(&cpu).to_string();
    assert_eq!(call(gpu.as_ref()).to_string(), want);
    want
}

fn key_with_p(p: f32) -> DropoutKey {
    DropoutKey {
        p,
        seed: 1,
        step: 1,
        site: 0,
    }
}

#[test]
fn probabilities_outside_zero_to_one_are_the_cpus_error() {
    for p in [1.0, -0.1, f32::NAN] {
        let error = the_cpus_error(|b| {
            let x = b.upload_f32(&[3], &[1.0, 2.0, 3.0]).unwrap();
            b.dropout_forward(&x, key_with_p(p), None).unwrap_err()
        });
        assert!(error.contains("dropout probability"), "{error}");
    }
}

/// A negative place in the padded batch is an index error naming the row, on every device.
#[test]
fn a_negative_padded_row_is_the_cpus_error() {
    let error = the_cpus_error(|b| {
        let x = b.upload_f32(&[2, 4], &[1.0; 8]).unwrap();
        let rows = b.upload_i32(&[2], &[3, -1]).unwrap();
        b.dropout_forward(&x, key_with_p(0.5), Some(&rows))
            .unwrap_err()
    });
    assert!(
        error.contains("row 1's place in the padded batch -1"),
        "{error}"
    );
}

/// The CPU's dropout of the rounded `x`, rounded to bf16: what a bf16 kernel must produce exactly.
fn want_bf16(x: &[f32], shape: &[usize], key: DropoutKey, backward: bool) -> Vec<f32> {
    let cpu = cpu();
    let t = cpu.upload_f32(shape, &round_bf16(x)).unwrap();
    let y = if backward {
        cpu.dropout_backward(&t, key, None)
    } else {
        cpu.dropout_forward(&t, key, None)
    };
    round_bf16(&y.unwrap().to_vec_f32().unwrap())
}

#[test]
fn bf16_masks_are_the_cpus_and_kept_elements_are_rounded_once() {
    let shape = [37, 53];
    let n = 37 * 53;
    let x = random(&mut rng(131), n, 2.0);
    let dy = random(&mut rng(132), n, 2.0);
    let keys = [
        DropoutKey {
            p: 0.1,
            seed: 1234,
            step: 7,
            site: 0,
        },
        DropoutKey {
            p: 0.5,
            seed: 0xdead_beef_0123_4567,
            step: (5 << 32) | 3,
            site: 0x8000_0011,
        },
        // Scale 1 / 0.7 is not a power of two: kept elements really are rounded.
        DropoutKey {
            p: 0.3,
            seed: 5,
            step: 2,
            site: 3,
        },
        DropoutKey {
            p: 0.0,
            seed: 9,
            step: 1,
            site: 2,
        },
    ];
    for key in keys {
        let want_y = want_bf16(&x, &shape, key, false);
        let want_dx = want_bf16(&dy, &shape, key, true);
        // The f32 mask: the inputs are never zero, so an element is kept iff its output is not.
        let cpu = cpu();
        let mask_f32: Vec<bool> = cpu
            .dropout_forward(&cpu.upload_f32(&shape, &x).unwrap(), key, None)
            .unwrap()
            .to_vec_f32()
            .unwrap()
            .iter()
            .map(|&v| v != 0.0)
            .collect();
        for (name, gpu) in gpus_bf16() {
            let y = gpu
                .dropout_forward(&upload_bf16(&gpu, &shape, &x), key, None)
                .unwrap();
            assert_eq!(y.dtype(), DType::BF16, "{name}");
            assert_eq!(y.shape(), &shape);
            let y = y.to_vec_f32().unwrap();
            assert_eq!(bits(&y), bits(&want_y), "forward {key:?} {name}");
            let mask: Vec<bool> = y.iter().map(|&v| v != 0.0).collect();
            assert_eq!(mask, mask_f32, "the f32 mask {key:?} {name}");
            let dx = gpu
                .dropout_backward(&upload_bf16(&gpu, &shape, &dy), key, None)
                .unwrap();
            assert_eq!(dx.dtype(), DType::BF16, "{name}");
            assert_eq!(
                bits(&dx.to_vec_f32().unwrap()),
                bits(&want_dx),
                "backward {key:?} {name}"
            );
        }
    }
}

#[test]
fn bf16_every_tail_length() {
    let key = DropoutKey {
        p: 0.3,
        seed: 77,
        step: 4,
        site: 1,
    };
    for (name, gpu) in gpus_bf16() {
        for n in 1..10 {
            let x = random(&mut rng(133 + n as u64), n, 1.0);
            let want = want_bf16(&x, &[n], key, false);
            let got = gpu
                .dropout_forward(&upload_bf16(&gpu, &[n], &x), key, None)
                .unwrap();
            assert_eq!(got.dtype(), DType::BF16);
            assert_eq!(bits(&got.to_vec_f32().unwrap()), bits(&want), "{n} {name}");
        }
    }
}

/// Dropout fused into the residual add after it: bit for bit the two ops the CPU backend runs one
/// after the other (its default `dropout_add_forward`) in f32; in bf16, the dropped value rounded as
/// the unfused dropout stores it, then the sum rounded once.
#[test]
fn dropout_fused_into_the_residual_add_matches_the_two_ops() {
    let n = 37 * 53;
    let shape = [37, 53];
    let x = random(&mut rng(41), n, 2.0);
    let residual = random(&mut rng(42), n, 2.0);
    let key = DropoutKey {
        p: 0.3,
        seed: 0x1234_5678_9abc,
        step: 11,
        site: 5,
    };
    let cpu = cpu();
    let want = cpu
        .dropout_add_forward(
            &cpu.upload_f32(&shape, &residual).unwrap(),
            &cpu.upload_f32(&shape, &x).unwrap(),
            key,
            None,
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    for (name, gpu) in gpus() {
        let got = gpu
            .dropout_add_forward(
                &gpu.upload_f32(&shape, &residual).unwrap(),
                &gpu.upload_f32(&shape, &x).unwrap(),
                key,
                None,
            )
            .unwrap();
        assert_eq!(bits(&got.to_vec_f32().unwrap()), bits(&want), "{name}");
        let wrong = gpu.upload_f32(&[53, 37], &x).unwrap();
        assert!(
            gpu.dropout_add_forward(&wrong, &gpu.upload_f32(&shape, &x).unwrap(), key, None)
                .is_err()
        );
    }
    let dropped = round_bf16(
        &cpu.dropout_forward(&cpu.upload_f32(&shape, &round_bf16(&x)).unwrap(), key, None)
            .unwrap()
            .to_vec_f32()
            .unwrap(),
    );
    let want: Vec<f32> = round_bf16(
        &round_bf16(&residual)
            .iter()
            .zip(&dropped)
            .map(|(r, d)| r + d)
            .collect::<Vec<_>>(),
    );
    for (name, gpu) in gpus_bf16() {
        let got = gpu
            .dropout_add_forward(
                &upload_bf16(&gpu, &shape, &residual),
                &upload_bf16(&gpu, &shape, &x),
                key,
                None,
            )
            .unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(bits(&got.to_vec_f32().unwrap()), bits(&want), "bf16 {name}");
    }
}

/// A padded `[batch, seq, width]` batch and its packed rows: the rows `b * seq + j` for `j` below
/// each sequence's length, back to back, and each one's index in the padded batch.
fn packed_rows(
    padded: &[f32],
    seq: usize,
    width: usize,
    lengths: &[usize],
) -> (Vec<f32>, Vec<i32>) {
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for (b, &len) in lengths.iter().enumerate() {
        for j in 0..len {
            let r = b * seq + j;
            rows.push(r as i32);
            values.extend_from_slice(&padded[r * width..(r + 1) * width]);
        }
    }
    (values, rows)
}

/// Packed rows (with `rows`, their places in the padded batch) draw the padded batch's masks: the
/// packed result is the padded one at the kept rows, on the CPU and bit for bit on the GPU, in f32
/// and bf16, forward, backward and fused into the residual add.
#[test]
fn packed_rows_draw_the_padded_batchs_masks() {
    // Width 20: five Philox groups per row, and padded rows (a multiple of 4 in the padded batch's
    // numbering only because width is) that differ from the packed ones after the first sequence.
    // Width 18: groups of four straddle rows, and each element draws on its own.
    packed_rows_draw_the_padded_batchs_masks_at(20);
    packed_rows_draw_the_padded_batchs_masks_at(18);
}

fn packed_rows_draw_the_padded_batchs_masks_at(width: usize) {
    let seq = 11;
    let lengths = [11usize, 3, 0, 1, 7];
    let batch = lengths.len();
    let x = random(&mut rng(51), batch * seq * width, 2.0);
    let residual = random(&mut rng(52), batch * seq * width, 2.0);
    let (px, rows) = packed_rows(&x, seq, width, &lengths);
    let (presidual, _) = packed_rows(&residual, seq, width, &lengths);
    let (padded_shape, packed_shape) = ([batch * seq, width], [rows.len(), width]);
    let key = DropoutKey {
        p: 0.4,
        seed: 0xfeed_0000_beef,
        step: 3,
        site: 7,
    };
    let cpu = cpu();
    let c_rows = cpu.upload_i32(&[rows.len()], &rows).unwrap();
    let padded = cpu
        .dropout_forward(&cpu.upload_f32(&padded_shape, &x).unwrap(), key, None)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let (want, _) = packed_rows(&padded, seq, width, &lengths);
    let cpu_packed = cpu
        .dropout_forward(
            &cpu.upload_f32(&packed_shape, &px).unwrap(),
            key,
            Some(&c_rows),
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
    assert_eq!(bits(&cpu_packed), bits(&want), "CPU packed vs padded");
    let dropped = want.iter().filter(|&&v| v == 0.0).count();
    assert!(dropped > 0 && dropped < want.len(), "{dropped} dropped");
    let want_add: Vec<f32> = want.iter().zip(&presidual).map(|(d, r)| r + d).collect();

    for (name, gpu) in gpus() {
        let g_rows = gpu.upload_i32(&[rows.len()], &rows).unwrap();
        let g_x = gpu.upload_f32(&packed_shape, &px).unwrap();
        let y = gpu.dropout_forward(&g_x, key, Some(&g_rows)).unwrap();
        assert_eq!(
            bits(&y.to_vec_f32().unwrap()),
            bits(&want),
            "forward {name}"
        );
        let dx = gpu.dropout_backward(&g_x, key, Some(&g_rows)).unwrap();
        assert_eq!(
            bits(&dx.to_vec_f32().unwrap()),
            bits(&want),
            "backward {name}"
        );
        let sum = gpu
            .dropout_add_forward(
                &gpu.upload_f32(&packed_shape, &presidual).unwrap(),
                &g_x,
                key,
                Some(&g_rows),
            )
            .unwrap();
        assert_eq!(
            bits(&sum.to_vec_f32().unwrap()),
            bits(&want_add),
            "add {name}"
        );
    }

    let padded_bf16 = want_bf16(&x, &padded_shape, key, false);
    let (want_bf16_rows, _) = packed_rows(&padded_bf16, seq, width, &lengths);
    for (name, gpu) in gpus_bf16() {
        let g_rows = gpu.upload_i32(&[rows.len()], &rows).unwrap();
        let y = gpu
            .dropout_forward(&upload_bf16(&gpu, &packed_shape, &px), key, Some(&g_rows))
            .unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        assert_eq!(
            bits(&y.to_vec_f32().unwrap()),
            bits(&want_bf16_rows),
            "bf16 forward {name}"
        );
    }
}
