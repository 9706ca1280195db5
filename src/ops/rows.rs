//! Row selection: gather and its adjoint scatter-add, argmax, and the softmax's top k.

use super::checks::{check_rows, check_top_k, rows_cols};
use super::{activation, host_ints};
use crate::backend::{Backend, TopK};
use crate::error::{Error, Result};
use crate::tape::{BackwardPass, Rule, Tape, Var};
use crate::tensor::{DType, Tensor};

pub trait RowKernels {
    /// `out[i] = x[rows[i]]`; every index is below `x`'s row count; not empty.
    fn gather_rows_into(&self, x: &Tensor, rows: &Tensor, out: &mut Tensor) -> Result<()>;
    /// `out` (`[n, width]`) zero except `out[rows[i]] += dy[i]`, repeats added in index order;
    /// `host_rows` are the indices' values, checked below `n`.
    fn scatter_rows_into(
        &self,
        dy: &Tensor,
        rows: &Tensor,
        host_rows: &[i32],
        out: &mut Tensor,
    ) -> Result<()>;
    /// The first index of the largest element of each row into the I32 `out`; not empty.
    fn argmax_rows_into(&self, x: &Tensor, out: &mut Tensor) -> Result<()>;
    /// The `k` (`1..=width`) most probable entries of each row's softmax, best first (see
    /// [`softmax_top_k`](crate::backend::Backend)); not empty.
    fn softmax_top_k_into(&self, logits: &Tensor, k: usize, out: &mut TopK) -> Result<()>;
}

impl dyn Backend + '_ {
    /// `out[i] = x[rows[i]]`: `[rows.numel(), width]`, of `x`'s element type.
    pub fn gather_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let (n, width) = rows_cols(x, "gather input")?;
        let idx = host_ints(self, rows, "gather rows")?;
        check_rows(&idx, n)?;
        let dtype = activation(self, x, "gather input")?;
        let mut out = self.alloc(&[idx.len(), width], dtype)?;
        if idx.len() * width > 0 {
            self.gather_rows_into(x, rows, &mut out)?;
        }
        Ok(out)
    }

    /// The adjoint of `gather_rows`: a `[n, features]` tensor, zero except `out[rows[i]] += dy[i]`.
    pub fn scatter_rows(&self, dy: &Tensor, rows: &Tensor, n: usize) -> Result<Tensor> {
        let (m, width) = rows_cols(dy, "scatter dy")?;
        let idx = host_ints(self, rows, "scatter rows")?;
        if idx.len() != m {
            return Err(Error::shape("scatter rows", format!("[{m}]"), rows.shape()));
        }
        check_rows(&idx, n)?;
        let dtype = activation(self, dy, "scatter dy")?;
        let mut out = self.alloc(&[n, width], dtype)?;
        self.fill_zero(&mut out)?;
        if m * width > 0 {
            self.scatter_rows_into(dy, rows, &idx, &mut out)?;
        }
        Ok(out)
    }

    /// Index of the largest element of each row (the first one on ties), `[rows]` i32.
    pub fn argmax_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (n, _) = rows_cols(x, "argmax input")?;
        activation(self, x, "argmax input")?;
        let mut out = self.alloc(&[n], DType::I32)?;
        if n > 0 {
            self.argmax_rows_into(x, &mut out)?;
        }
        Ok(out)
    }

    /// The `k` most probable entries of the softmax of each row of `logits` `[rows, width]`, best
    /// first: a larger logit first, the lower index first on ties (so entry 0 is
    /// `argmax_rows`' answer), NaN logits last. `k` must be in `1..=width`.
    pub fn softmax_top_k(&self, logits: &Tensor, k: usize) -> Result<TopK> {
        let (n, width) = rows_cols(logits, "top-k logits")?;
        check_top_k(k, width)?;
        activation(self, logits, "top-k logits")?;
        let mut out = TopK {
            ids: self.alloc(&[n, k], DType::I32)?,
            probabilities: self.alloc(&[n, k], DType::F32)?,
        };
        if n > 0 {
            self.softmax_top_k_into(logits, k, &mut out)?;
        }
        Ok(out)
    }
}

struct GatherRowsRule {
    x: Var,
    rows: Var,
    out: Var,
    n: usize,
}

impl Rule for GatherRowsRule {
    fn output(&self) -> Var {
        self.out
    }

    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()> {
        let dx = pass
            .backend
            .scatter_rows(&dy, pass.value(self.rows)?, self.n)?;
        pass.accumulate(self.x, dx)
    }
}

impl Tape<'_> {
    /// Rows `rows` (an I32 input) of `x`.
    pub fn gather_rows(&mut self, x: Var, rows: Var) -> Result<Var> {
        let xv = self.value(x)?;
        let (n, _) = rows_cols(xv, "gather input")?;
        let y = self.backend().gather_rows(xv, self.value(rows)?)?;
        let out = self.push(y);
        self.record(GatherRowsRule { x, rows, out, n });
        Ok(out)
    }
}
