use crate::harness::{assert_close, cpu, gpus, random, rng};
use undertale_maskedlm::backend::Backend;

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
