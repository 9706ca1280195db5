//! Moving data: uploads checked against their shapes, zero-filled tensors, copies between devices.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Host data to upload.
#[derive(Debug, Clone, Copy)]
pub enum HostData<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

impl HostData<'_> {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel != len {
        return Err(Error::shape(
            "tensor data",
            format!("{numel} elements for shape {shape:?}"),
            &[len],
        ));
    }
    Ok(())
}

impl dyn Backend + '_ {
    pub fn upload_f32(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        self.upload(shape, HostData::F32(data))
    }

    pub fn upload_i32(&self, shape: &[usize], data: &[i32]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        self.upload(shape, HostData::I32(data))
    }

    pub fn zeros_f32(&self, shape: &[usize]) -> Result<Tensor> {
        let mut t = self.alloc(shape, DType::F32)?;
        self.fill_zero(&mut t)?;
        Ok(t)
    }

    /// Copies any tensor (from any device) to this backend's device; bf16 arrives as f32.
    pub fn to_device(&self, t: &Tensor) -> Result<Tensor> {
        match t.dtype() {
            DType::F32 | DType::BF16 => self.upload_f32(t.shape(), &t.to_vec_f32()?),
            DType::I32 => self.upload_i32(t.shape(), &t.to_vec_i32()?),
        }
    }
}
