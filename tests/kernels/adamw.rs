//! kernels/adamw.cu against the CPU backend over several steps, from non-zero moments.

use crate::harness::{assert_close, cpu, gpus, random, rng};
use undertale_maskedlm::Error;
use undertale_maskedlm::backend::{AdamWStep, Backend};

/// The same f32 operations in the same order on the same f32 scalars: the emulator (no fused
/// multiply-add) reproduces the CPU exactly; the tolerance leaves room for a GPU's FMAs.
const REL: f32 = 1e-6;

fn steps() -> [AdamWStep; 3] {
    let step = |lr, weight_decay, t| AdamWStep {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        t,
    };
    [step(1e-3, 0.01, 1), step(3e-4, 0.1, 2), step(2e-2, 0.0, 3)]
}

#[test]
fn adamw_matches_the_cpu_over_several_steps() {
    let mut rng = rng(1);
    // 4099 = 4 * 1024 + 3: the float4 loop and the scalar tail both run.
    let shape = [4099];
    let n = shape[0];
    let params = random(&mut rng, n, 1.0);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, n, 0.1)).collect();
    let m0 = random(&mut rng, n, 0.05);
    let v0: Vec<f32> = random(&mut rng, n, 1e-3).iter().map(|v| v.abs()).collect();

    let cpu = cpu();
    let mut cp = cpu.upload_f32(&shape, &params).unwrap();
    let mut cm = cpu.upload_f32(&shape, &m0).unwrap();
    let mut cv = cpu.upload_f32(&shape, &v0).unwrap();
    let mut want = Vec::new();
    for (step, g) in steps().into_iter().zip(&grads) {
        let cg = cpu.upload_f32(&shape, g).unwrap();
        cpu.adamw_step(&mut cp, &cg, &mut cm, &mut cv, step)
            .unwrap();
        want.push([&cp, &cm, &cv].map(|t| t.to_vec_f32().unwrap()));
    }

    for (order, gpu) in gpus() {
        let mut gp = gpu.upload_f32(&shape, &params).unwrap();
        let mut gm = gpu.upload_f32(&shape, &m0).unwrap();
        let mut gv = gpu.upload_f32(&shape, &v0).unwrap();
        // A clone shares the buffer until written: the step must leave it alone.
        let kept = gp.clone();
        for ((step, g), want) in steps().into_iter().zip(&grads).zip(&want) {
            let gg = gpu.upload_f32(&shape, g).unwrap();
            gpu.adamw_step(&mut gp, &gg, &mut gm, &mut gv, step)
                .unwrap();
            for (name, got, want) in [
                ("params", &gp, &want[0]),
                ("m", &gm, &want[1]),
                ("v", &gv, &want[2]),
            ] {
                assert_close(
                    &format!("adamw {name} step {} {order:?}", step.t),
                    &got.to_vec_f32().unwrap(),
                    want,
                    REL,
                    0.0,
                );
            }
            assert_eq!(gg.to_vec_f32().unwrap(), *g, "gradients are read only");
        }
        assert_eq!(kept.to_vec_f32().unwrap(), params, "copy on write");
    }
}

#[test]
fn adamw_rejects_what_the_cpu_rejects() {
    let cpu = cpu();
    let (order, gpu) = gpus().swap_remove(0);
    for (m_len, v_len) in [(9, 10), (10, 11)] {
        let run = |b: &dyn Backend| -> Error {
            let mut p = b.upload_f32(&[10], &[1.0; 10]).unwrap();
            let g = b.upload_f32(&[10], &[0.5; 10]).unwrap();
            let mut m = b.upload_f32(&[m_len], &vec![0.0; m_len]).unwrap();
            let mut v = b.upload_f32(&[v_len], &vec![0.0; v_len]).unwrap();
            b.adamw_step(&mut p, &g, &mut m, &mut v, steps()[0])
                .unwrap_err()
        };
        let (want, got) = (run(&cpu), run(gpu.as_ref()));
        assert!(matches!(got, Error::Shape { .. }), "{order:?}: {got}");
        assert_eq!(got.to_string(), want.to_string(), "{order:?}");
    }
}
