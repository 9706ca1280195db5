//! LayerNorm over the last axis, alone or fused with the residual add before it, and its backward.

use super::checks::{
    check_disjoint_slots, check_param, check_same_shape, layernorm_backward_dims, rows_cols,
};
use super::elementwise::AddRule;
use super::{activation, expect, expect_buffer};
use crate::backend::{Backend, LayerNormOut, Param};
use crate::error::Result;
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::{DType, Tensor};

pub trait LayerNormKernels {
    /// `y = LayerNorm(x)` with its per-row `mean` and `rstd`, or with `residual = Some((r, sum))`,
    /// `sum = x + r` and `y = LayerNorm(sum)` in one pass. Every operand is checked: `x`, `r`,
    /// `sum` and `y` share shape and activation type, `rows > 0`, the slots hold `features`
    /// elements of the f32 `params`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward_into(
        &self,
        x: &Tensor,
        residual: Option<(&Tensor, &mut Tensor)>,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
        out: &mut LayerNormOut,
    ) -> Result<()>;

    /// Writes `dx`; adds dweight and dbias into their (disjoint) slots of `grads`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward_into(
        &self,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
        dx: &mut Tensor,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    pub fn layernorm_forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<LayerNormOut> {
        self.layernorm_after_add(x, None, params, weight, bias, eps)
            .map(|(_, out)| out)
    }

    /// `s = a + b` and `LayerNorm(s)`: the residual add and the LayerNorm after it, one pass on the
    /// GPU. Returns `s` (LayerNorm's input, kept for its backward) and the LayerNorm output.
    pub fn add_layernorm_forward(
        &self,
        a: &Tensor,
        b: &Tensor,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<(Tensor, LayerNormOut)> {
        check_same_shape(a, b, "add")?;
        let (sum, out) = self.layernorm_after_add(a, Some(b), params, weight, bias, eps)?;
        Ok((sum.expect("a sum is made when there is a residual"), out))
    }

    fn layernorm_after_add(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        params: &Tensor,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<(Option<Tensor>, LayerNormOut)> {
        let (rows, c) = rows_cols(x, "layernorm input")?;
        let dtype = activation(self, x, "layernorm input")?;
        if let Some(r) = residual {
            expect(self, r, dtype, "add")?;
        }
        expect_buffer(self, params, "parameters")?;
        check_param(weight, c, params.numel(), "layernorm weight")?;
        check_param(bias, c, params.numel(), "layernorm bias")?;
        let mut sum = residual.map(|_| self.alloc(x.shape(), dtype)).transpose()?;
        let mut out = LayerNormOut {
            y: self.alloc(x.shape(), dtype)?,
            mean: self.alloc(&[rows], DType::F32)?,
            rstd: self.alloc(&[rows], DType::F32)?,
        };
        if rows > 0 {
            let residual = residual.zip(sum.as_mut());
            self.layernorm_forward_into(x, residual, params, weight, bias, eps, &mut out)?;
        }
        Ok((sum, out))
    }

    /// Returns dx; adds dweight and dbias into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        params: &Tensor,
        grads: &mut Tensor,
        weight: Param,
        bias: Param,
    ) -> Result<Tensor> {
        let (rows, c) = layernorm_backward_dims(dy, x, mean, rstd)?;
        let dtype = activation(self, x, "layernorm input")?;
        expect(self, dy, dtype, "layernorm dy")?;
        expect(self, mean, DType::F32, "layernorm mean")?;
        expect(self, rstd, DType::F32, "layernorm rstd")?;
        expect_buffer(self, params, "parameters")?;
        check_param(weight, c, params.numel(), "layernorm weight")?;
        expect_buffer(self, grads, "gradients")?;
        check_param(bias, c, grads.numel(), "layernorm bias")?;
        check_disjoint_slots(&[weight, bias], grads.numel(), "layernorm")?;
        let mut dx = self.alloc(x.shape(), dtype)?;
        if rows > 0 {
            self.layernorm_backward_into(dy, x, mean, rstd, params, grads, weight, bias, &mut dx)?;
        }
        Ok(dx)
    }
}

/// LayerNorm's backward, from the statistics its forward saved.
struct LayerNormRule {
    x: Var,
    out: Var,
    mean: Tensor,
    rstd: Tensor,
    weight: Param,
    bias: Param,
}

impl Rule for LayerNormRule {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let x = pass.value(self.x)?;
        let dx = pass.backend.layernorm_backward(
            &dy,
            x,
            &self.mean,
            &self.rstd,
            pass.weights.values,
            pass.grads,
            self.weight,
            self.bias,
        )?;
        pass.accumulate(self.x, dx)
    }
}

impl Tape<'_> {
    pub fn layernorm(&mut self, x: Var, weight: Param, bias: Param, eps: f32) -> Result<Var> {
        let r = self.backend().layernorm_forward(
            self.value(x)?,
            self.weights().values,
            weight,
            bias,
            eps,
        )?;
        let out = self.push(r.y);
        self.record(LayerNormRule {
            x,
            out,
            mean: r.mean,
            rstd: r.rstd,
            weight,
            bias,
        });
        Ok(out)
    }

    /// `s = a + b` then `LayerNorm(s)`, computed in one call (a fused kernel on the GPU) and
    /// recorded as the two ops. Returns `(s, LayerNorm(s))`.
    pub fn add_layernorm(
        &mut self,
        a: Var,
        b: Var,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<(Var, Var)> {
        let (sum, r) = self.backend().add_layernorm_forward(
            self.value(a)?,
            self.value(b)?,
            self.weights().values,
            weight,
            bias,
            eps,
        )?;
        let s = self.push(sum);
        self.record(AddRule { a, b, out: s });
        let out = self.push(r.y);
        self.record(LayerNormRule {
            x: s,
            out,
            mean: r.mean,
            rstd: r.rstd,
            weight,
            bias,
        });
        Ok((s, out))
    }
}
