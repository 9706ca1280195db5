//! Residual adds and the exact (erf) GELU.

use super::checks::check_same_shape;
use super::{activation, expect};
use crate::backend::Backend;
use crate::error::Result;
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::Tensor;

pub trait ElementwiseKernels {
    /// `y = a + b`; all three of one shape and activation type, not empty.
    fn add_into(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()>;
    /// `acc += x`; of one shape and activation type, not empty.
    fn add_assign_into(&self, acc: &mut Tensor, x: &Tensor) -> Result<()>;
    /// `y = GELU(x)`, exact erf form; not empty.
    fn gelu_forward_into(&self, x: &Tensor, y: &mut Tensor) -> Result<()>;
    /// `dx = dy * GELU'(x)`; not empty.
    fn gelu_backward_into(&self, dy: &Tensor, x: &Tensor, dx: &mut Tensor) -> Result<()>;
}

impl dyn Backend + '_ {
    pub fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check_same_shape(a, b, "add")?;
        let dtype = activation(self, a, "add")?;
        expect(self, b, dtype, "add")?;
        let mut y = self.alloc(a.shape(), dtype)?;
        if a.numel() > 0 {
            self.add_into(a, b, &mut y)?;
        }
        Ok(y)
    }

    pub fn add_assign(&self, acc: &mut Tensor, x: &Tensor) -> Result<()> {
        check_same_shape(acc, x, "add")?;
        let dtype = activation(self, acc, "add")?;
        expect(self, x, dtype, "add")?;
        if acc.numel() == 0 {
            return Ok(());
        }
        self.add_assign_into(acc, x)
    }

    pub fn gelu_forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = activation(self, x, "gelu input")?;
        let mut y = self.alloc(x.shape(), dtype)?;
        if x.numel() > 0 {
            self.gelu_forward_into(x, &mut y)?;
        }
        Ok(y)
    }

    pub fn gelu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        check_same_shape(x, dy, "gelu dy")?;
        // The activation x sets the type; its gradient dy has the same.
        let dtype = activation(self, x, "gelu input")?;
        expect(self, dy, dtype, "gelu dy")?;
        let mut dx = self.alloc(x.shape(), dtype)?;
        if x.numel() > 0 {
            self.gelu_backward_into(dy, x, &mut dx)?;
        }
        Ok(dx)
    }
}

/// `out = a + b`: the gradient passes to both.
pub(crate) struct AddRule {
    pub a: Var,
    pub b: Var,
    pub out: Var,
}

impl Rule for AddRule {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        pass.accumulate(self.a, dy.clone())?;
        pass.accumulate(self.b, dy)
    }
}

struct GeluRule {
    x: Var,
    out: Var,
}

impl Rule for GeluRule {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let dx = pass.backend.gelu_backward(&dy, pass.value(self.x)?)?;
        pass.accumulate(self.x, dx)
    }
}

impl Tape<'_> {
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = self.backend().add(self.value(a)?, self.value(b)?)?;
        let out = self.push(y);
        self.record(AddRule { a, b, out });
        Ok(out)
    }

    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        let y = self.backend().gelu_forward(self.value(x)?)?;
        let out = self.push(y);
        self.record(GeluRule { x, out });
        Ok(out)
    }
}
