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

mod bf16_shadow {
    //! bf16 mixed precision: AdamW writes the GEMMs' bf16 copy of the weights in its own pass.

    use std::sync::{Arc, Mutex};

    use super::REL;
    use crate::harness::{assert_close, cpu, gpus_bf16, random, rng, round_bf16, upload_bf16};
    use undertale_maskedlm::backend::AdamWStep;
    use undertale_maskedlm::backend::cuda::GpuBackend;
    use undertale_maskedlm::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
    use undertale_maskedlm::backend::cuda::runtime::{
        Allocation, GemmSpec, GpuRuntime, MemoryMeter, PendingDownload,
    };
    use undertale_maskedlm::backend::traffic::TrafficMeter;
    use undertale_maskedlm::device::Precision;
    use undertale_maskedlm::{Device, Result};

    /// A runtime that passes everything on and records the names of the kernels launched.
    #[derive(Debug)]
    struct Recording {
        inner: Arc<dyn GpuRuntime>,
        launched: Mutex<Vec<String>>,
    }

    impl Recording {
        /// The kernels launched since the last call.
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.launched.lock().unwrap())
        }
    }

    impl GpuRuntime for Recording {
        fn device(&self) -> Device {
            self.inner.device()
        }
        fn alloc(&self, bytes: usize) -> Result<Allocation> {
            self.inner.alloc(bytes)
        }
        fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
            self.inner.upload(dst, src)
        }
        fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
            self.inner.download(src, dst)
        }
        fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
            self.inner.copy(dst, src, bytes)
        }
        fn memset_zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
            self.inner.memset_zero(dst, bytes)
        }
        fn launch(&self, kernel: &str, config: &LaunchConfig, args: &mut KernelArgs) -> Result<()> {
            self.launched.lock().unwrap().push(kernel.to_string());
            self.inner.launch(kernel, config, args)
        }
        fn gemm(&self, spec: &GemmSpec) -> Result<()> {
            self.inner.gemm(spec)
        }
        fn synchronize(&self) -> Result<()> {
            self.inner.synchronize()
        }
        fn memory(&self) -> &MemoryMeter {
            self.inner.memory()
        }
        fn traffic(&self) -> &TrafficMeter {
            self.inner.traffic()
        }
        fn download_async(&self, src: DevicePtr, bytes: usize) -> Result<PendingDownload> {
            self.inner.download_async(src, bytes)
        }
    }

    fn steps() -> Vec<AdamWStep> {
        (1..=5)
            .map(|t| AdamWStep {
                lr: 1e-3 * t as f64,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                t,
            })
            .collect()
    }

    /// Over five steps, the one AdamW launch leaves the bf16 copy equal to the new parameters
    /// rounded to bf16 (no conversion launched), and the f32 update is the CPU's.
    #[test]
    fn adamw_rewrites_the_bf16_copy_in_the_same_pass() {
        let mut rng = rng(11);
        // 4099 = 4 * 1024 + 3: the float4 loop (8-byte bf16 stores) and the scalar tail both run.
        let n = 4099;
        let shape = [n];
        let params = random(&mut rng, n, 1.0);
        let grads: Vec<Vec<f32>> = steps().iter().map(|_| random(&mut rng, n, 0.1)).collect();
        let m0 = random(&mut rng, n, 0.05);
        let v0: Vec<f32> = random(&mut rng, n, 1e-3).iter().map(|v| v.abs()).collect();

        let cpu = cpu();
        let mut cp = cpu.upload_f32(&shape, &params).unwrap();
        let mut cm = cpu.upload_f32(&shape, &m0).unwrap();
        let mut cv = cpu.upload_f32(&shape, &v0).unwrap();
        let mut want = vec![params.clone()];
        for (step, g) in steps().into_iter().zip(&grads) {
            let cg = cpu.upload_f32(&shape, g).unwrap();
            cpu.adamw_step(&mut cp, &cg, &mut cm, &mut cv, step)
                .unwrap();
            want.push(cp.to_vec_f32().unwrap());
        }

        for (name, gpu) in gpus_bf16() {
            let recording = Arc::new(Recording {
                inner: gpu.runtime().clone(),
                launched: Mutex::default(),
            });
            let gpu = GpuBackend::new(recording.clone()).with_precision(Precision::Bf16);
            let mut gp = gpu.upload_f32(&shape, &params).unwrap();
            // Poisoned: the first step must write every element.
            let mut copy = upload_bf16(&gpu, &shape, &vec![f32::NAN; n]);
            let mut gm = gpu.upload_f32(&shape, &m0).unwrap();
            let mut gv = gpu.upload_f32(&shape, &v0).unwrap();
            for (i, step) in steps().into_iter().enumerate() {
                let t = step.t;
                let g = gpu.upload_f32(&shape, &grads[i]).unwrap();
                recording.take();
                gpu.adamw_step_guarded(&mut gp, Some(&mut copy), &g, &mut gm, &mut gv, step, None)
                    .unwrap();
                assert_eq!(recording.take(), ["adamw_f32"], "{name}: step {t} launches");
                let now = gp.to_vec_f32().unwrap();
                assert_close(
                    &format!("{name}: step {t}"),
                    &now,
                    &want[t as usize],
                    REL,
                    0.0,
                );
                assert_eq!(
                    copy.to_vec_f32().unwrap(),
                    round_bf16(&now),
                    "{name}: step {t} bf16 copy"
                );
            }
        }
    }
}

/// The loss guard: a non-finite loss skips the update on the device and raises the flag, which
/// then skips every later update, finite loss or not; lowering it lets updates through again. The
/// same on every backend.
#[test]
fn adamw_guard_skips_updates_after_a_non_finite_loss() {
    use undertale_maskedlm::ops::adamw::LossGuard;
    let mut rng = rng(5);
    let n = 1027;
    let params = random(&mut rng, n, 1.0);
    let grads = random(&mut rng, n, 0.1);
    let step = AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        t: 1,
    };
    let mut backends: Vec<(String, std::sync::Arc<dyn Backend>)> =
        vec![("cpu".into(), std::sync::Arc::new(cpu()))];
    backends.extend(gpus());
    for (name, b) in backends {
        let mut p = b.upload_f32(&[n], &params).unwrap();
        let g = b.upload_f32(&[n], &grads).unwrap();
        let mut m = b.zeros_f32(&[n]).unwrap();
        let mut v = b.zeros_f32(&[n]).unwrap();
        let mut halted = b.upload_i32(&[1], &[0]).unwrap();
        let nan = b.upload_f32(&[1], &[f32::NAN]).unwrap();
        let finite = b.upload_f32(&[1], &[2.5]).unwrap();
        for loss in [&nan, &finite] {
            let guard = LossGuard {
                loss: Some(loss),
                halted: &mut halted,
            };
            b.adamw_step_guarded(&mut p, None, &g, &mut m, &mut v, step, Some(guard))
                .unwrap();
            assert_eq!(p.to_vec_f32().unwrap(), params, "{name}: update skipped");
            assert_eq!(
                m.to_vec_f32().unwrap(),
                vec![0.0; n],
                "{name}: moments kept"
            );
            assert_eq!(halted.to_vec_i32().unwrap(), [1], "{name}: flag raised");
        }
        b.fill_zero(&mut halted).unwrap();
        let guard = LossGuard {
            loss: Some(&finite),
            halted: &mut halted,
        };
        b.adamw_step_guarded(&mut p, None, &g, &mut m, &mut v, step, Some(guard))
            .unwrap();
        assert_ne!(p.to_vec_f32().unwrap(), params, "{name}: update applied");
        assert_eq!(halted.to_vec_i32().unwrap(), [0], "{name}: flag left down");
    }
}
