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
    //! bf16 mixed precision: AdamW keeps the parameters' bf16 shadow (the GEMMs' copy of the
    //! weights) current in its own pass.

    use std::sync::{Arc, Mutex};

    use super::REL;
    use crate::harness::{assert_close, cpu, gpus_bf16, random, rng, round_bf16, upload_bf16};
    use undertale_maskedlm::backend::cuda::GpuBackend;
    use undertale_maskedlm::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
    use undertale_maskedlm::backend::cuda::runtime::{
        Allocation, GemmSpec, GpuRuntime, MemoryMeter, PendingDownload,
    };
    use undertale_maskedlm::backend::traffic::TrafficMeter;
    use undertale_maskedlm::backend::{AdamWStep, Backend, Param};
    use undertale_maskedlm::device::Precision;
    use undertale_maskedlm::{Device, Result, Tensor};

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
        fn download_async(&self, src: DevicePtr, bytes: usize) -> Result<PendingDownload> {
            self.inner.download_async(src, bytes)
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
    }

    /// Reads the bf16 shadow of `params` as the GEMMs see it, exactly: a linear layer's dx = dy W
    /// with dy = [[1]] and W = [1, len - 1] a slice of the parameters is that slice of the shadow
    /// (one product by 1, exact; a bf16 value rounded to bf16, unchanged). Two such slices, with
    /// the bias slot at the last element and then at the first, cover the whole buffer. The
    /// inputs are uploaded once beforehand (`ReadInputs`), so that reading launches no conversion
    /// of its own.
    struct ReadInputs {
        dy: Tensor,
        x: Tensor,
        scratch: Tensor,
    }

    impl ReadInputs {
        fn new(gpu: &GpuBackend, len: usize) -> Self {
            let mut rng = rng(7);
            ReadInputs {
                dy: upload_bf16(gpu, &[1, 1], &[1.0]),
                x: upload_bf16(gpu, &[1, len - 1], &random(&mut rng, len - 1, 1.0)),
                scratch: gpu.upload_f32(&[len], &vec![0.5; len]).unwrap(),
            }
        }

        fn read(&self, gpu: &GpuBackend, params: &Tensor) -> Vec<f32> {
            let len = params.numel();
            let slice = |offset: usize, bias: usize| {
                let weight = Param {
                    offset,
                    len: len - 1,
                };
                let bias = Param {
                    offset: bias,
                    len: 1,
                };
                let mut g = self.scratch.clone();
                gpu.linear_backward(&self.dy, &self.x, params, &mut g, weight, bias)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap()
            };
            let head = slice(0, len - 1);
            let tail = slice(1, 0);
            assert_eq!(head[1..], tail[..len - 2], "the two slices overlap");
            let mut all = head;
            all.push(tail[len - 2]);
            all
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

    /// Over five steps: without a shadow the step only updates the f32 state; once the GEMMs have
    /// made a shadow (one conversion), each step leaves it equal to the new parameters rounded to
    /// bf16 with no conversion, in the one AdamW launch; the f32 update is the CPU's either way. A
    /// step on parameters shared with a clone copies them first, and leaves the clone's shadow
    /// alone.
    #[test]
    fn adamw_rewrites_the_bf16_shadow_in_the_same_pass() {
        let mut rng = rng(11);
        // 4099 = 4 * 1024 + 3: the float4 loop (8-byte shadow stores) and the scalar tail both run.
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
        let (want_m, want_v) = (cm.to_vec_f32().unwrap(), cv.to_vec_f32().unwrap());

        for (name, gpu) in gpus_bf16() {
            let recording = Arc::new(Recording {
                inner: gpu.runtime().clone(),
                launched: Mutex::default(),
            });
            let gpu = GpuBackend::new(recording.clone()).with_precision(Precision::Bf16);
            let reader = ReadInputs::new(&gpu, n);
            let mut gp = gpu.upload_f32(&shape, &params).unwrap();
            let mut gm = gpu.upload_f32(&shape, &m0).unwrap();
            let mut gv = gpu.upload_f32(&shape, &v0).unwrap();
            let gg: Vec<Tensor> = grads
                .iter()
                .map(|g| gpu.upload_f32(&shape, g).unwrap())
                .collect();
            let conversions = |launched: &[String]| {
                launched
                    .iter()
                    .filter(|k| k.starts_with("convert_"))
                    .count()
            };
            let mut kept = None;
            for (i, step) in steps().into_iter().enumerate() {
                let t = step.t;
                let what = |part: &str| format!("{name}: step {t} {part}");
                if t == 4 {
                    // A clone shares the parameters: the step copies them first.
                    kept = Some(gp.clone());
                }
                recording.take();
                gpu.adamw_step(&mut gp, &gg[i], &mut gm, &mut gv, step)
                    .unwrap();
                assert_eq!(recording.take(), ["adamw_f32"], "{}", what("launches"));
                let now = gp.to_vec_f32().unwrap();
                assert_close(&what("params"), &now, &want[t as usize], REL, 0.0);
                if t == 4 {
                    // The clone kept step 3's parameters (copy on write), and with them the
                    // shadow, which the step did not offer to AdamW: still current for the clone,
                    // read without a conversion.
                    let kept = kept.as_ref().unwrap();
                    assert_eq!(kept.to_vec_f32().unwrap(), want[3], "{}", what("clone"));
                    assert_eq!(
                        reader.read(&gpu, kept),
                        round_bf16(&want[3]),
                        "{}",
                        what("clone's shadow")
                    );
                    assert_eq!(
                        conversions(&recording.take()),
                        0,
                        "{}",
                        what("conversions when reading the clone's shadow")
                    );
                }
                let shadow = reader.read(&gpu, &gp);
                assert_eq!(shadow, round_bf16(&now), "{}", what("shadow"));
                // One conversion where there was no shadow of these parameters to rewrite: before
                // the GEMMs first asked for one, and after the copy of step 4. Otherwise none.
                let expected_conversions = usize::from(t == 1 || t == 4);
                assert_eq!(
                    conversions(&recording.take()),
                    expected_conversions,
                    "{}",
                    what("conversions when reading the shadow")
                );
            }
            assert_close(
                &format!("{name}: m"),
                &gm.to_vec_f32().unwrap(),
                &want_m,
                REL,
                0.0,
            );
            assert_close(
                &format!("{name}: v"),
                &gv.to_vec_f32().unwrap(),
                &want_v,
                REL,
                0.0,
            );
        }
    }
}
