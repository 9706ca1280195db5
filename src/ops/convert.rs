//! Element-type conversion between f32 and bf16 (mixed precision's activations and weights).

use super::{activation, expect};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

pub trait ConvertKernels {
    /// `out = x` converted to `out`'s element type (f32 <-> bf16, rounding to nearest even).
    fn convert_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()>;
}

impl dyn Backend + '_ {
    /// A copy of `t` with element type `dtype` (f32 or bf16); the same tensor when it already has
    /// it. bf16 needs a backend that computes in it (a GPU).
    pub fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let from = activation(self, t, "cast")?;
        if from == dtype {
            return Ok(t.clone());
        }
        if dtype == DType::I32 {
            return Err(Error::Config(format!(
                "no conversion from {from:?} to {dtype:?}"
            )));
        }
        let mut out = self.alloc(t.shape(), dtype)?;
        expect(self, &out, dtype, "cast output")?;
        if t.numel() > 0 {
            self.convert_into(t, &mut out)?;
        }
        Ok(out)
    }
}
