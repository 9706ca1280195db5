//! Inverted dropout (kept elements scaled by `1 / (1 - p)`), alone or fused into the residual add
//! after it. Masks come from Philox keyed by [`DropoutKey`], so every backend draws the same and
//! the backward regenerates them instead of storing them.
//!
//! Element `(r, c)` of a `[rows, width]` operand draws Philox's uniform number `r * width + c`, or,
//! given `rows` (a packed batch's place of each row in the padded batch, see
//! [`Sequences::dropout_rows`]), number `rows[r] * width + c`: a packed step drops exactly what the
//! padded step would.
//!
//! [`Sequences::dropout_rows`]: super::sequences::Sequences::dropout_rows

use super::checks::{check_dropout_probability, check_same_shape, rows_cols};
use super::elementwise::AddRule;
use super::{activation, expect, host_ints};
use crate::backend::{Backend, DropoutKey};
use crate::error::{Error, Result};
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::Tensor;

pub trait DropoutKernels {
    /// `y = x * mask / (1 - p)`, or with `residual`, `y = residual + x * mask / (1 - p)`. `p` is in
    /// `[0, 1)`; operands of one shape and activation type, not empty. `rows`, when given, is I32
    /// with one entry per row of `x` (`[rows, width]`, width > 0).
    fn dropout_into(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        key: DropoutKey,
        rows: Option<&Tensor>,
        y: &mut Tensor,
    ) -> Result<()>;
}

impl dyn Backend + '_ {
    /// Dropout of `x`; `rows` as in the module's documentation.
    pub fn dropout_forward(
        &self,
        x: &Tensor,
        key: DropoutKey,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.dropout_then_add(x, None, key, rows)
    }

    /// Inverted dropout is its own adjoint: the same mask, the same scale.
    pub fn dropout_backward(
        &self,
        dy: &Tensor,
        key: DropoutKey,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.dropout_then_add(dy, None, key, rows)
    }

    /// `residual + dropout(x)` in one pass on the GPU. The backward is that of the two ops apart.
    pub fn dropout_add_forward(
        &self,
        residual: &Tensor,
        x: &Tensor,
        key: DropoutKey,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_same_shape(residual, x, "add")?;
        self.dropout_then_add(x, Some(residual), key, rows)
    }

    fn dropout_then_add(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        key: DropoutKey,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_dropout_probability(key.p)?;
        let dtype = activation(self, x, "dropout input")?;
        if let Some(r) = residual {
            expect(self, r, dtype, "add")?;
        }
        if let Some(rows) = rows {
            let (count, width) = rows_cols(x, "dropout input")?;
            let places = host_ints(self, rows, "dropout rows")?;
            if let Some((row, &place)) = places.iter().enumerate().find(|(_, p)| **p < 0) {
                return Err(Error::IndexOutOfRange {
                    what: format!("row {row}'s place in the padded batch"),
                    index: i64::from(place),
                    len: i32::MAX as usize,
                });
            }
            if *rows.shape() != [count] || width == 0 {
                return Err(Error::shape(
                    "dropout rows",
                    format!("[{count}], one per row of a non-empty [{count}, width] input"),
                    rows.shape(),
                ));
            }
        }
        let mut y = self.alloc(x.shape(), dtype)?;
        if x.numel() > 0 {
            self.dropout_into(x, residual, key, rows, &mut y)?;
        }
        Ok(y)
    }
}

struct DropoutRule<'a> {
    x: Var,
    out: Var,
    key: DropoutKey,
    rows: Option<&'a Tensor>,
}

impl Rule for DropoutRule<'_> {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let dx = pass.backend.dropout_backward(&dy, self.key, self.rows)?;
        pass.accumulate(self.x, dx)
    }
}

impl<'a> Tape<'a> {
    /// Dropout with probability `key.p`; the identity (and no node) when `key` is `None` or p == 0.
    /// `rows` as in the module's documentation.
    pub fn dropout(
        &mut self,
        x: Var,
        key: Option<DropoutKey>,
        rows: Option<&'a Tensor>,
    ) -> Result<Var> {
        let Some(key) = key.filter(|k| k.p > 0.0) else {
            return Ok(x);
        };
        let y = self.backend().dropout_forward(self.value(x)?, key, rows)?;
        let out = self.push(y);
        self.record(DropoutRule { x, out, key, rows });
        Ok(out)
    }

    /// `residual + dropout(x)`: with dropout active, computed in one call (one fused pass on the
    /// GPU) and recorded as the two ops; the dropped values themselves are never stored, since
    /// neither backward reads them. Without dropout, a plain add.
    pub fn dropout_add(
        &mut self,
        residual: Var,
        x: Var,
        key: Option<DropoutKey>,
        rows: Option<&'a Tensor>,
    ) -> Result<Var> {
        let Some(key) = key.filter(|k| k.p > 0.0) else {
            return self.add(residual, x);
        };
        let y =
            self.backend()
                .dropout_add_forward(self.value(residual)?, self.value(x)?, key, rows)?;
        let dropped = self.push_unstored();
        self.record(DropoutRule {
            x,
            out: dropped,
            key,
            rows,
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
