//! `y = x W^T + b` with `W` stored `[out, in]` like `torch.nn.Linear`, and the feed-forward block's
//! first layer `GELU(x W^T + b)`, whose backward fuses GELU's into the bias gradient's pass.

use super::checks::{
    check_disjoint_slots, check_param, check_same_shape, linear_backward_dims, rows_cols,
};
use super::{Weights, activation, check_weights, expect, expect_buffer, with_last};
use crate::backend::{Backend, Param};
use crate::error::Result;
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::Tensor;

pub trait LinearKernels {
    /// `y = x W^T + b`: `x` `[rows, in]` and `y` `[rows, out]` of the activation type, which the
    /// GEMM copy of the weights has too; `W` is `weight`'s slot of `weights.gemm`, `b` is `bias`'s
    /// slot of the f32 `weights.values`. `rows`, `in` and `out` are positive.
    fn linear_forward_into(
        &self,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        y: &mut Tensor,
    ) -> Result<()>;

    /// `z = x W^T + b` and `y = GELU(z)` (bias and GELU in one pass after the GEMM on the GPU).
    fn linear_gelu_forward_into(
        &self,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        z: &mut Tensor,
        y: &mut Tensor,
    ) -> Result<()>;

    /// With `dz = dy`, or `dz = dy GELU'(z)` when `gelu_input` is `Some(z)`: writes `dx = dz W`,
    /// adds `dW += dz^T x` and `db += sum_rows dz` into the (disjoint) slots of the f32 `grads`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_into(
        &self,
        dy: &Tensor,
        gelu_input: Option<&Tensor>,
        x: &Tensor,
        weights: Weights<'_>,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
        dx: &mut Tensor,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    /// `x`: `[.., in]`; returns `[.., out_features]` of `x`'s element type.
    pub fn linear_forward<'w>(
        &self,
        x: &Tensor,
        weights: impl Into<Weights<'w>>,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Tensor> {
        let weights = weights.into();
        let rows = self.check_linear(x, weights, weight, bias, out_features)?;
        let mut y = self.alloc(&with_last(x, out_features), x.dtype())?;
        if rows > 0 && out_features > 0 {
            self.linear_forward_into(x, weights, weight, bias, &mut y)?;
        }
        Ok(y)
    }

    /// `z = x W^T + b` and `GELU(z)`: returns `(z, GELU(z))`, both of `x`'s element type; the
    /// backward is `linear_gelu_backward`.
    pub fn linear_gelu_forward<'w>(
        &self,
        x: &Tensor,
        weights: impl Into<Weights<'w>>,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<(Tensor, Tensor)> {
        let weights = weights.into();
        let rows = self.check_linear(x, weights, weight, bias, out_features)?;
        let shape = with_last(x, out_features);
        let mut z = self.alloc(&shape, x.dtype())?;
        let mut y = self.alloc(&shape, x.dtype())?;
        if rows > 0 && out_features > 0 {
            self.linear_gelu_forward_into(x, weights, weight, bias, &mut z, &mut y)?;
        }
        Ok((z, y))
    }

    /// The forward's checks; returns the number of rows.
    fn check_linear(
        &self,
        x: &Tensor,
        weights: Weights<'_>,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<usize> {
        let (rows, inp) = rows_cols(x, "linear input")?;
        let dtype = activation(self, x, "linear input")?;
        check_weights(self, weights, dtype)?;
        let n = weights.values.numel();
        check_param(weight, out_features * inp, n, "linear weight")?;
        check_param(bias, out_features, n, "linear bias")?;
        Ok(rows)
    }

    /// Returns dx; adds dW and db into `grads`.
    pub fn linear_backward<'w>(
        &self,
        dy: &Tensor,
        x: &Tensor,
        weights: impl Into<Weights<'w>>,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        self.linear_backward_through(dy, None, x, weights.into(), grads, weight, bias)
    }

    /// The backward of `linear_gelu_forward`: given `dy` (the gradient
    /// of `GELU(z)`), `z` and the layer's input `x`, returns dx and adds dW and db into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_gelu_backward<'w>(
        &self,
        dy: &Tensor,
        x: &Tensor,
        z: &Tensor,
        weights: impl Into<Weights<'w>>,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        check_same_shape(z, dy, "gelu dy")?;
        self.linear_backward_through(dy, Some(z), x, weights.into(), grads, weight, bias)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_backward_through(
        &self,
        dy: &Tensor,
        gelu_input: Option<&Tensor>,
        x: &Tensor,
        weights: Weights<'_>,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        let (rows, inp, out) = linear_backward_dims(dy, x)?;
        // x sets the activation type; dy, its gradient, must have the same, and so must z.
        let dtype = activation(self, x, "linear input")?;
        expect(self, dy, dtype, "linear dy")?;
        if let Some(z) = gelu_input {
            expect(self, z, dtype, "gelu input")?;
        }
        check_weights(self, weights, dtype)?;
        check_param(weight, out * inp, weights.values.numel(), "linear weight")?;
        expect_buffer(self, grads, "gradients")?;
        check_param(bias, out, grads.numel(), "linear bias")?;
        check_disjoint_slots(&[weight, bias], grads.numel(), "linear")?;
        let mut dx = self.alloc(x.shape(), dtype)?;
        // Zero rows: nothing to add (rows_cols counts no rows when in or out is 0, too).
        if rows > 0 {
            self.linear_backward_into(dy, gelu_input, x, weights, grads, weight, bias, &mut dx)?;
        }
        Ok(dx)
    }
}

/// A linear layer's backward; with `z`, of `GELU(z)`, `z = x W^T + b` (the feed-forward block's
/// first layer, recorded as one rule so that GELU's backward is fused into the bias gradient's).
struct LinearRule {
    x: Var,
    z: Option<Var>,
    out: Var,
    weight: Param,
    bias: Param,
}

impl Rule for LinearRule {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let x = pass.value(self.x)?;
        let z = self.z.map(|z| pass.value(z)).transpose()?;
        let dx = match z {
            Some(z) => pass.backend.linear_gelu_backward(
                &dy,
                x,
                z,
                pass.weights,
                pass.grads,
                self.weight,
                self.bias,
            )?,
            None => pass.backend.linear_backward(
                &dy,
                x,
                pass.weights,
                pass.grads,
                self.weight,
                self.bias,
            )?,
        };
        pass.accumulate(self.x, dx)
    }
}

impl Tape<'_> {
    pub fn linear(
        &mut self,
        x: Var,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Var> {
        let y = self.backend().linear_forward(
            self.value(x)?,
            self.weights(),
            weight,
            bias,
            out_features,
        )?;
        let out = self.push(y);
        self.record(LinearRule {
            x,
            z: None,
            out,
            weight,
            bias,
        });
        Ok(out)
    }

    /// `GELU(x W^T + b)`, computed in one call (the bias and GELU fused after the GEMM on the GPU)
    /// and recorded as one rule, whose backward is fused as well.
    pub fn linear_gelu(
        &mut self,
        x: Var,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Var> {
        let (z, y) = self.backend().linear_gelu_forward(
            self.value(x)?,
            self.weights(),
            weight,
            bias,
            out_features,
        )?;
        let z = self.push(z);
        let out = self.push(y);
        self.record(LinearRule {
            x,
            z: Some(z),
            out,
            weight,
            bias,
        });
        Ok(out)
    }
}
