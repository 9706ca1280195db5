//! Launch wrappers for `kernels/convert.cu`: f32 <-> bf16.

use super::int;
use crate::backend::cuda::GpuBackend;
use crate::backend::cuda::launch::{DevicePtr, KernelArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 132 * 16;

/// Converts `n` elements at `src` (of `from`) into `dst` (of `to`); f32 <-> bf16 only.
pub(crate) fn convert(
    backend: &GpuBackend,
    src: DevicePtr,
    from: DType,
    dst: DevicePtr,
    to: DType,
    n: usize,
) -> Result<()> {
    let kernel = match (from, to) {
        (DType::F32, DType::BF16) => "convert_f32_to_bf16",
        (DType::BF16, DType::F32) => "convert_bf16_to_f32",
        _ => {
            return Err(Error::Config(format!(
                "no conversion from {from:?} to {to:?} on the GPU"
            )));
        }
    };
    if n == 0 {
        return Ok(());
    }
    let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
    let mut args = KernelArgs::new().ptr(src).ptr(dst).i32(int(n, "elements")?);
    backend.runtime().launch(
        kernel,
        &LaunchConfig::linear(blocks as u32, THREADS, 0),
        &mut args,
    )
}

/// A copy of `t` with element type `dtype` (f32 or bf16); the same tensor when it already has it.
pub fn cast(backend: &GpuBackend, t: &Tensor, dtype: DType) -> Result<Tensor> {
    let from = t.dtype();
    let src = backend.ptr(t, from, "cast")?;
    if from == dtype {
        return Ok(t.clone());
    }
    let out = backend.empty(t.shape(), dtype)?;
    convert(
        backend,
        src,
        from,
        backend.ptr(&out, dtype, "cast output")?,
        dtype,
        t.numel(),
    )?;
    Ok(out)
}
