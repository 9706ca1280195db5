//! Where tensors live and ops run.

use std::fmt;
use std::sync::Arc;

use crate::backend::cuda::emulator::ScheduleOrder;
use crate::backend::cuda::{GpuBackend, emulated::EmulatedRuntime};
use crate::backend::{Backend, cpu::CpuBackend};
use crate::error::Result;

/// A compute device. Callers only ever ask a `Device` for its backend, so model, tape and trainer
/// code is the same on every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host's cores (the CPU backend).
    #[default]
    Cpu,
    /// The NVIDIA GPU of this ordinal, through the CUDA driver.
    Cuda(usize),
    /// The CUDA kernels run by the emulator on the CPU, in the given scheduling order: test
    /// equipment for machines without a GPU, never offered on the command line.
    #[doc(hidden)]
    Emulated(ScheduleOrder),
}

/// The arithmetic a backend runs the model in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32 everywhere: the reference's numbers, to rounding.
    #[default]
    F32,
    /// bf16 mixed precision: bf16 activations and GEMM operands, f32 accumulation, statistics,
    /// loss, master weights and optimiser state. On a GPU, or on a CPU with AVX512_BF16.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(crate::Error::Config(format!(
                "unknown precision {other:?}: expected f32 or bf16"
            ))),
        }
    }
}

impl Device {
    /// The backend that runs ops on this device, in f32.
    pub fn backend(self) -> Result<Arc<dyn Backend>> {
        self.backend_with(Precision::F32)
    }

    /// The backend that runs ops on this device in the given precision (bf16 needs a GPU or a
    /// CPU with AVX512_BF16).
    pub fn backend_with(self, precision: Precision) -> Result<Arc<dyn Backend>> {
        match (self, precision) {
            (Device::Cpu, _) => Ok(Arc::new(CpuBackend::with_precision(precision)?)),
            (Device::Cuda(ordinal), _) => Ok(Arc::new(
                GpuBackend::cuda(ordinal)?.with_precision(precision),
            )),
            (Device::Emulated(order), _) => Ok(Arc::new(
                GpuBackend::new(Arc::new(EmulatedRuntime::new(order))).with_precision(precision),
            )),
        }
    }
}

impl Device {
    /// The precisions this device runs: f32 everywhere; bf16 on a GPU, and on a CPU with
    /// AVX512_BF16.
    pub fn precisions(self) -> Vec<Precision> {
        let bf16 = match self {
            Device::Cpu => CpuBackend::with_precision(Precision::Bf16).is_ok(),
            Device::Cuda(_) | Device::Emulated(_) => true,
        };
        if bf16 {
            vec![Precision::F32, Precision::Bf16]
        } else {
            vec![Precision::F32]
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            Device::Emulated(order) => write!(f, "emulated cuda ({order:?} order)"),
        }
    }
}

impl Device {
    /// The best device this machine offers: the first CUDA GPU if its driver, cuBLASLt and a
    /// device of compute capability 8.0 or newer are there, else the CPU.
    pub fn best_available() -> Device {
        match GpuBackend::cuda(0) {
            Ok(_) => Device::Cuda(0),
            Err(_) => Device::Cpu,
        }
    }
}

/// Set to `1`, every "no GPU, skipped" of the GPU tests and checks becomes a failure that says why
/// the GPU could not be used (`gpu-check.sh` sets it, so that a GPU that fails to start is never
/// mistaken for a pass on the emulator alone).
pub const REQUIRE_GPU_VAR: &str = "MASKEDLM_REQUIRE_GPU";

impl Device {
    /// GPU 0 for a test or a check that also runs on a GPU when there is one: `Some` when it is
    /// usable; `None` when it is not, after printing `skipped: no usable GPU (why)`; and, when
    /// [`REQUIRE_GPU_VAR`] is `1`, an error saying why instead of the skip.
    pub fn gpu_for_checks() -> Result<Option<Device>> {
        match GpuBackend::cuda(0) {
            Ok(_) => Ok(Some(Device::Cuda(0))),
            Err(e) if std::env::var(REQUIRE_GPU_VAR).is_ok_and(|v| v == "1") => {
                Err(crate::Error::Config(format!(
                    "{REQUIRE_GPU_VAR}=1 but the GPU cannot be used: {e}"
                )))
            }
            Err(e) => {
                println!("skipped: no usable GPU ({e})");
                Ok(None)
            }
        }
    }
}

impl std::str::FromStr for Device {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(ordinal)) => Ok(Device::Cuda(ordinal)),
                _ => Err(crate::Error::Config(format!(
                    "unknown device {other:?}: expected cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}
