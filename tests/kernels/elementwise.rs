use crate::harness::{assert_close, cpu, gpus, random, rng};

#[test]
fn add_add_assign_and_gelu_match_the_cpu() {
    let mut rng = rng(1);
    // 1001 x 7 is not a multiple of 4: the float4 loop and the scalar tail both run.
    let shape = [1001, 7];
    let n = 1001 * 7;
    let (a, b) = (random(&mut rng, n, 4.0), random(&mut rng, n, 4.0));
    let cpu = cpu();
    let (ca, cb) = (
        cpu.upload_f32(&shape, &a).unwrap(),
        cpu.upload_f32(&shape, &b).unwrap(),
    );
    let want_add = cpu.add(&ca, &cb).unwrap().to_vec_f32().unwrap();
    let want_gelu = cpu.gelu_forward(&ca).unwrap().to_vec_f32().unwrap();
    let want_dgelu = cpu.gelu_backward(&cb, &ca).unwrap().to_vec_f32().unwrap();
    for (order, gpu) in gpus() {
        let (ga, gb) = (
            gpu.upload_f32(&shape, &a).unwrap(),
            gpu.upload_f32(&shape, &b).unwrap(),
        );
        let sum = gpu.add(&ga, &gb).unwrap();
        assert_close(
            &format!("add {order:?}"),
            &sum.to_vec_f32().unwrap(),
            &want_add,
            0.0,
            0.0,
        );
        let mut acc = ga.clone();
        gpu.add_assign(&mut acc, &gb).unwrap();
        assert_close(
            "add_assign",
            &acc.to_vec_f32().unwrap(),
            &want_add,
            0.0,
            0.0,
        );
        // The clone `acc` was written; `ga` must still hold `a` (copy on write).
        assert_eq!(ga.to_vec_f32().unwrap(), a);
        let y = gpu.gelu_forward(&ga).unwrap();
        assert_close("gelu", &y.to_vec_f32().unwrap(), &want_gelu, 1e-6, 1e-7);
        let dx = gpu.gelu_backward(&gb, &ga).unwrap();
        assert_close(
            "gelu backward",
            &dx.to_vec_f32().unwrap(),
            &want_dgelu,
            1e-6,
            1e-7,
        );
    }
}

#[test]
fn shape_mismatches_and_foreign_tensors_are_errors() {
    let gpu = &gpus()[0].1;
    let a = gpu.upload_f32(&[3, 4], &[1.0; 12]).unwrap();
    let b = gpu.upload_f32(&[4, 3], &[1.0; 12]).unwrap();
    assert!(gpu.add(&a, &b).unwrap_err().to_string().contains("add"));
    let host = cpu().upload_f32(&[3, 4], &[1.0; 12]).unwrap();
    let err = gpu.add(&a, &host).unwrap_err().to_string();
    assert!(err.contains("tensor is on cpu"), "{err}");
}

#[test]
fn bf16_casts_round_to_nearest_even_and_widen_exactly() {
    use crate::harness::{gpus_bf16, round_bf16, upload_bf16};
    use undertale_maskedlm::DType;
    let mut rng = rng(2);
    let values = random(&mut rng, 999, 3.0);
    for (name, gpu) in gpus_bf16() {
        let t = upload_bf16(&gpu, &[999], &values);
        assert_eq!(t.to_vec_f32().unwrap(), round_bf16(&values), "{name}");
        let back = gpu.cast(&t, DType::F32).unwrap();
        assert_eq!(back.dtype(), DType::F32);
        assert_eq!(back.to_vec_f32().unwrap(), round_bf16(&values), "{name}");
    }
}

/// bf16 in, bf16 out: every element is computed in f32 from the bf16 inputs and rounded once to
/// bf16 (nearest even). The CPU given the same bf16-valued inputs computes the same f32 values, so:
///
/// - add: the GPU's f32 sum is the CPU's exactly, and its bf16 rounding is `round_bf16` of it: the
///   same bits.
/// - GELU and its gradient: the f32 values can differ in their last bits (the GPU's `erff`, `expf`,
///   and fused multiply-adds), which can move a value across a bf16 rounding midpoint; either way
///   the bf16 result is within half a bf16 ulp of the exact value, and half an ulp is at most 2^-8
///   of the value's magnitude (8 significant bits). So |got - want| <= 2^-8 |want| plus the f32
///   difference (a few f32 ulps): a per-element bound, checked against the largest magnitude as
///   every comparison here is, with a little room for the f32 part.
#[test]
fn add_add_assign_and_gelu_in_bf16_match_the_cpu_on_bf16_inputs() {
    use crate::harness::{gpus_bf16, round_bf16, upload_bf16};
    use undertale_maskedlm::DType;
    const BF16_HALF_ULP: f32 = 1.0 / 256.0;
    let mut rng = rng(3);
    // 1001 x 7 = 7007 = 8 * 875 + 7: the 8-element vector loop and the scalar tail both run.
    let shape = [1001, 7];
    let n = 1001 * 7;
    let (a, b) = (random(&mut rng, n, 4.0), random(&mut rng, n, 4.0));
    let (ra, rb) = (round_bf16(&a), round_bf16(&b));
    let cpu = cpu();
    let (ca, cb) = (
        cpu.upload_f32(&shape, &ra).unwrap(),
        cpu.upload_f32(&shape, &rb).unwrap(),
    );
    let want_add = cpu.add(&ca, &cb).unwrap().to_vec_f32().unwrap();
    let want_gelu = cpu.gelu_forward(&ca).unwrap().to_vec_f32().unwrap();
    let want_dgelu = cpu.gelu_backward(&cb, &ca).unwrap().to_vec_f32().unwrap();
    for (name, gpu) in gpus_bf16() {
        let (ga, gb) = (upload_bf16(&gpu, &shape, &a), upload_bf16(&gpu, &shape, &b));
        let sum = gpu.add(&ga, &gb).unwrap();
        assert_eq!(sum.dtype(), DType::BF16, "{name}: add");
        assert_eq!(sum.shape(), shape);
        assert_eq!(
            sum.to_vec_f32().unwrap(),
            round_bf16(&want_add),
            "{name}: add"
        );
        let mut acc = ga.clone();
        gpu.add_assign(&mut acc, &gb).unwrap();
        assert_eq!(acc.dtype(), DType::BF16, "{name}: add_assign");
        assert_eq!(
            acc.to_vec_f32().unwrap(),
            round_bf16(&want_add),
            "{name}: add_assign"
        );
        // The clone `acc` was written; `ga` must still hold `a` (copy on write).
        assert_eq!(ga.to_vec_f32().unwrap(), ra, "{name}: copy on write");
        let y = gpu.gelu_forward(&ga).unwrap();
        assert_eq!(y.dtype(), DType::BF16, "{name}: gelu");
        assert_close(
            &format!("{name}: gelu"),
            &y.to_vec_f32().unwrap(),
            &want_gelu,
            BF16_HALF_ULP + 1e-5,
            0.0,
        );
        let dx = gpu.gelu_backward(&gb, &ga).unwrap();
        assert_eq!(dx.dtype(), DType::BF16, "{name}: gelu backward");
        assert_close(
            &format!("{name}: gelu backward"),
            &dx.to_vec_f32().unwrap(),
            &want_dgelu,
            BF16_HALF_ULP + 1e-5,
            0.0,
        );
        // Per element too: each output within half a bf16 ulp of its own value.
        for (what, got, want) in [
            ("gelu", &y, &want_gelu),
            ("gelu backward", &dx, &want_dgelu),
        ] {
            for (i, (g, w)) in got.to_vec_f32().unwrap().iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= BF16_HALF_ULP * w.abs() * (1.0 + 1e-3) + 1e-6,
                    "{name}: {what}[{i}]: got {g}, want {w}"
                );
            }
        }

        // f32 inputs on the same backend take the f32 path, with f32 outputs.
        let fa = gpu.upload_f32(&shape, &ra).unwrap();
        let f_sum = gpu.add(&fa, &gpu.upload_f32(&shape, &rb).unwrap()).unwrap();
        assert_eq!(f_sum.dtype(), DType::F32, "{name}: f32 add");
        assert_eq!(f_sum.to_vec_f32().unwrap(), want_add, "{name}: f32 add");

        // Mixed element types are errors, naming the op.
        let mixed = [
            gpu.add(&ga, &fa).unwrap_err(),
            gpu.add(&fa, &ga).unwrap_err(),
            gpu.add_assign(&mut ga.clone(), &fa).unwrap_err(),
            gpu.add_assign(&mut fa.clone(), &ga).unwrap_err(),
            gpu.gelu_backward(&fa, &ga).unwrap_err(),
            gpu.gelu_backward(&ga, &fa).unwrap_err(),
        ];
        for err in mixed {
            assert!(
                matches!(err, undertale_maskedlm::Error::DType { .. }),
                "{name}: {err}"
            );
        }
    }
}
