//! Inverted dropout (kept elements scaled by `1 / (1 - p)`), alone or fused into the residual add
//! after it. Masks come from Philox keyed by [`DropoutKey`], so every backend draws the same and
//! the backward regenerates them instead of storing them.

use super::checks::{check_dropout_probability, check_same_shape};
use super::elementwise::AddRule;
use super::{activation, expect};
use crate::backend::{Backend, DropoutKey};
use crate::error::Result;
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::Tensor;

pub trait DropoutKernels {
    /// `y = x * mask / (1 - p)`, or with `residual`, `y = residual + x * mask / (1 - p)`. `p` is in
    /// `[0, 1)`; operands of one shape and activation type, not empty.
    fn dropout_into(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        key: DropoutKey,
        y: &mut Tensor,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    pub fn dropout_forward(&self, x: &Tensor, key: DropoutKey) -> Result<Tensor> {
        self.dropout_then_add(x, None, key)
    }

    /// Inverted dropout is its own adjoint: the same mask, the same scale.
    pub fn dropout_backward(&self, dy: &Tensor, key: DropoutKey) -> Result<Tensor> {
        self.dropout_then_add(dy, None, key)
    }

    /// `residual + dropout(x)` in one pass on the GPU. The backward is that of the two ops apart.
    pub fn dropout_add_forward(
        &self,
        residual: &Tensor,
        x: &Tensor,
        key: DropoutKey,
    ) -> Result<Tensor> {
        check_same_shape(residual, x, "add")?;
        self.dropout_then_add(x, Some(residual), key)
    }

    fn dropout_then_add(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        key: DropoutKey,
    ) -> Result<Tensor> {
        check_dropout_probability(key.p)?;
        let dtype = activation(self, x, "dropout input")?;
        if let Some(r) = residual {
            expect(self, r, dtype, "add")?;
        }
        let mut y = self.alloc(x.shape(), dtype)?;
        if x.numel() > 0 {
            self.dropout_into(x, residual, key, &mut y)?;
        }
        Ok(y)
    }
}

struct DropoutRule {
    x: Var,
    out: Var,
    key: DropoutKey,
}

impl Rule for DropoutRule {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let dx = pass.backend.dropout_backward(&dy, self.key)?;
        pass.accumulate(self.x, dx)
    }
}

impl Tape<'_> {
    /// Dropout with probability `key.p`; the identity (and no node) when `key` is `None` or p == 0.
    pub fn dropout(&mut self, x: Var, key: Option<DropoutKey>) -> Result<Var> {
        let Some(key) = key.filter(|k| k.p > 0.0) else {
            return Ok(x);
        };
        let y = self.backend().dropout_forward(self.value(x)?, key)?;
        let out = self.push(y);
        self.record(DropoutRule { x, out, key });
        Ok(out)
    }

    /// `residual + dropout(x)`: with dropout active, computed in one call (one fused pass on the
    /// GPU) and recorded as the two ops; the dropped values themselves are never stored, since
    /// neither backward reads them. Without dropout, a plain add.
    pub fn dropout_add(&mut self, residual: Var, x: Var, key: Option<DropoutKey>) -> Result<Var> {
        let Some(key) = key.filter(|k| k.p > 0.0) else {
            return self.add(residual, x);
        };
        let y = self
            .backend()
            .dropout_add_forward(self.value(residual)?, self.value(x)?, key)?;
        let dropped = self.push_unstored();
        self.record(DropoutRule {
            x,
            out: dropped,
            key,
        });
        let out = self.push(y);
        self.record(AddRule {
            a: residual,
            b: dropped,
            out,
        });
        Ok(out)
    }
}
