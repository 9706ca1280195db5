//! Residual adds and GELU over whole tensors (GELU's math is in [`super::gelu`]).

use rayon::prelude::*;

use super::{CpuBackend, activation, bf16s, bf16s_mut, cast, gelu, write_activation};
use crate::error::Result;
use crate::ops::elementwise::ElementwiseKernels;
use crate::tensor::{DType, Tensor};

use super::simd::Level;

const CHUNK: usize = 4096;

/// `acc[i] += x[i]`.
fn add_assign(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(acc, x)| acc.iter_mut().zip(x).for_each(|(a, b)| *a += b));
}

impl ElementwiseKernels for CpuBackend {
    fn add_into(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        if a.dtype() == DType::BF16 && b.dtype() == DType::BF16 {
            let (a, b) = (bf16s(a, "add")?, bf16s(b, "add")?);
            cast::map_rows(bf16s_mut(y, "add output")?, 1, [a, b], |_, y, [a, b]| {
                y.iter_mut()
                    .zip(a)
                    .zip(b)
                    .for_each(|((y, a), b)| *y = a + b)
            });
            return Ok(());
        }
        let (a, b) = (activation(a, "add")?, activation(b, "add")?);
        write_activation(y, "add output", false, |y| {
            y.copy_from_slice(&a);
            add_assign(y, &b);
        })
    }

    fn add_assign_into(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        if acc.dtype() == DType::BF16 && x.dtype() == DType::BF16 {
            let x = bf16s(x, "add")?;
            cast::update_rows(bf16s_mut(acc, "add")?, 1, [x], |_, acc, [x]| {
                acc.iter_mut().zip(x).for_each(|(a, b)| *a += b)
            });
            return Ok(());
        }
        let x = activation(x, "add")?;
        write_activation(acc, "add", true, |acc| add_assign(acc, &x))
    }

    fn gelu_forward_into(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        if x.dtype() == DType::BF16 {
            let x = bf16s(x, "gelu input")?;
            let level = Level::best();
            cast::map_rows(bf16s_mut(y, "gelu output")?, 1, [x], |_, y, [x]| {
                gelu::forward_chunk(level, y, x)
            });
            return Ok(());
        }
        let x = activation(x, "gelu input")?;
        write_activation(y, "gelu output", false, |y| gelu::forward(y, &x))
    }

    fn gelu_backward_into(&self, dy: &Tensor, x: &Tensor, dx: &mut Tensor) -> Result<()> {
        if x.dtype() == DType::BF16 {
            let (dy, x) = (bf16s(dy, "gelu dy")?, bf16s(x, "gelu input")?);
            let level = Level::best();
            cast::map_rows(bf16s_mut(dx, "gelu dx")?, 1, [dy, x], |_, dx, [dy, x]| {
                gelu::backward_chunk(level, dx, dy, x)
            });
            return Ok(());
        }
        let (dy, x) = (activation(dy, "gelu dy")?, activation(x, "gelu input")?);
        write_activation(dx, "gelu dx", false, |dx| gelu::backward(dx, &dy, &x))
    }
}
