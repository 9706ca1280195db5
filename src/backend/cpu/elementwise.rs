//! Residual adds and GELU over whole tensors (GELU's math is in [`super::gelu`]).

use rayon::prelude::*;

use super::{CpuBackend, f32s, f32s_mut, gelu};
use crate::error::Result;
use crate::ops::elementwise::ElementwiseKernels;
use crate::tensor::Tensor;

const CHUNK: usize = 4096;

/// `acc[i] += x[i]`.
fn add_assign(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(acc, x)| acc.iter_mut().zip(x).for_each(|(a, b)| *a += b));
}

impl ElementwiseKernels for CpuBackend {
    fn add_into(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        let y = f32s_mut(y, "add output")?;
        y.copy_from_slice(f32s(a, "add")?);
        add_assign(y, f32s(b, "add")?);
        Ok(())
    }

    fn add_assign_into(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        add_assign(f32s_mut(acc, "add")?, f32s(x, "add")?);
        Ok(())
    }

    fn gelu_forward_into(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        gelu::forward(f32s_mut(y, "gelu output")?, f32s(x, "gelu input")?);
        Ok(())
    }

    fn gelu_backward_into(&self, dy: &Tensor, x: &Tensor, dx: &mut Tensor) -> Result<()> {
        gelu::backward(
            f32s_mut(dx, "gelu dx")?,
            f32s(dy, "gelu dy")?,
            f32s(x, "gelu input")?,
        );
        Ok(())
    }
}
