//! Launch wrappers for `kernels/convert.cu`: f32 <-> bf16.

use super::int;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::ops::convert::ConvertKernels;
use crate::tensor::{DType, Tensor};

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 132 * 16;

impl ConvertKernels for GpuBackend {
    fn convert_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()> {
        let kernel = match (x.dtype(), out.dtype()) {
            (DType::F32, DType::BF16) => "convert_f32_to_bf16",
            (DType::BF16, DType::F32) => "convert_bf16_to_f32",
            (from, to) => {
                return Err(Error::Config(format!(
                    "no conversion from {from:?} to {to:?} on the GPU"
                )));
            }
        };
        let n = x.numel();
        let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
        let mut args = KernelArgs::new()
            .ptr(self.ptr(x)?)
            .ptr(self.ptr_mut(out)?)
            .i32(int(n, "elements")?);
        self.runtime().launch(
            kernel,
            &LaunchConfig::linear(blocks as u32, THREADS, 0),
            &mut args,
        )
    }
}
