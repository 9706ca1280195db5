//! The autograd tape: records each forward op with what its backward needs, then walks the record
//! in reverse, handing activation gradients from op to op and adding parameter gradients into one
//! flat buffer aligned with the flat parameter buffer.
//!
//! Values live in an arena indexed by [`Var`]. A tape made with [`Tape::inference`] records
//! nothing, and [`Tape::keep_only`] lets the model drop a finished layer's activations, so
//! inference holds one layer's activations at a time.

use crate::backend::{Backend, DropoutKey, Param};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A value on the tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var(usize);

/// One recorded op: the vars it read and wrote, and whatever else its backward needs.
enum Node {
    Embedding {
        tokens: Var,
        out: Var,
        next_token_id: i32,
        tables: [Param; 3],
    },
    LayerNorm {
        x: Var,
        out: Var,
        mean: Tensor,
        rstd: Tensor,
        weight: Param,
        bias: Param,
    },
    Linear {
        x: Var,
        out: Var,
        weight: Param,
        bias: Param,
    },
    Gelu {
        x: Var,
        out: Var,
    },
    /// `out = GELU(z)`, `z = x W^T + b`: one node so that the backward can be fused too.
    LinearGelu {
        x: Var,
        z: Var,
        out: Var,
        weight: Param,
        bias: Param,
    },
    Attention {
        qkv: Var,
        mask: Var,
        out: Var,
        lse: Tensor,
        heads: usize,
    },
    Add {
        a: Var,
        b: Var,
        out: Var,
    },
    Dropout {
        x: Var,
        out: Var,
        key: DropoutKey,
    },
    GatherRows {
        x: Var,
        rows: Var,
        out: Var,
        n: usize,
    },
}

pub struct Tape<'a> {
    backend: &'a dyn Backend,
    params: &'a Tensor,
    values: Vec<Option<Tensor>>,
    nodes: Vec<Node>,
    recording: bool,
}

impl<'a> Tape<'a> {
    /// A tape that records for backward.
    pub fn new(backend: &'a dyn Backend, params: &'a Tensor) -> Self {
        Tape {
            backend,
            params,
            values: Vec::new(),
            nodes: Vec::new(),
            recording: true,
        }
    }

    /// A tape that only computes: nothing is recorded and [`Tape::keep_only`] frees memory.
    pub fn inference(backend: &'a dyn Backend, params: &'a Tensor) -> Self {
        Tape {
            recording: false,
            ..Tape::new(backend, params)
        }
    }

    pub fn backend(&self) -> &'a dyn Backend {
        self.backend
    }

    /// Puts a tensor that needs no gradient (tokens, masks, indices) on the tape.
    pub fn input(&mut self, t: Tensor) -> Var {
        self.push(t)
    }

    pub fn value(&self, v: Var) -> Result<&Tensor> {
        self.values
            .get(v.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Config(format!("tape value {} was released", v.0)))
    }

    /// Takes a value off the tape (the tape must not need it again).
    pub fn take(&mut self, v: Var) -> Result<Tensor> {
        self.values
            .get_mut(v.0)
            .and_then(Option::take)
            .ok_or_else(|| Error::Config(format!("tape value {} was released", v.0)))
    }

    /// On an inference tape, frees every value except `keep`. A recording tape keeps everything.
    pub fn keep_only(&mut self, keep: &[Var]) {
        if self.recording {
            return;
        }
        for (i, slot) in self.values.iter_mut().enumerate() {
            if !keep.contains(&Var(i)) {
                *slot = None;
            }
        }
    }

    fn push(&mut self, t: Tensor) -> Var {
        self.values.push(Some(t));
        Var(self.values.len() - 1)
    }

    fn record(&mut self, node: Node) {
        if self.recording {
            self.nodes.push(node);
        }
    }

    pub fn embedding(
        &mut self,
        tokens: Var,
        next_token_id: i32,
        tables: [Param; 3],
        hidden: usize,
    ) -> Result<Var> {
        let [token, instruction, argument] = tables;
        let y = self.backend.embedding_forward(
            self.value(tokens)?,
            next_token_id,
            self.params,
            token,
            instruction,
            argument,
            hidden,
        )?;
        let out = self.push(y);
        self.record(Node::Embedding {
            tokens,
            out,
            next_token_id,
            tables,
        });
        Ok(out)
    }

    pub fn layernorm(&mut self, x: Var, weight: Param, bias: Param, eps: f32) -> Result<Var> {
        let r = self
            .backend
            .layernorm_forward(self.value(x)?, self.params, weight, bias, eps)?;
        let out = self.push(r.y);
        self.record(Node::LayerNorm {
            x,
            out,
            mean: r.mean,
            rstd: r.rstd,
            weight,
            bias,
        });
        Ok(out)
    }

    /// `s = a + b` then `LayerNorm(s)`, computed by the backend in one call (a fused kernel on the
    /// GPU) and recorded as the two ops. Returns `(s, LayerNorm(s))`.
    pub fn add_layernorm(
        &mut self,
        a: Var,
        b: Var,
        weight: Param,
        bias: Param,
        eps: f32,
    ) -> Result<(Var, Var)> {
        let (sum, r) = self.backend.add_layernorm_forward(
            self.value(a)?,
            self.value(b)?,
            self.params,
            weight,
            bias,
            eps,
        )?;
        let s = self.push(sum);
        self.record(Node::Add { a, b, out: s });
        let out = self.push(r.y);
        self.record(Node::LayerNorm {
            x: s,
            out,
            mean: r.mean,
            rstd: r.rstd,
            weight,
            bias,
        });
        Ok((s, out))
    }

    pub fn linear(
        &mut self,
        x: Var,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Var> {
        let y =
            self.backend
                .linear_forward(self.value(x)?, self.params, weight, bias, out_features)?;
        let out = self.push(y);
        self.record(Node::Linear {
            x,
            out,
            weight,
            bias,
        });
        Ok(out)
    }

    /// `GELU(x W^T + b)`, computed by the backend in one call (the bias and GELU fused after the
    /// GEMM on the GPU) and recorded as one node, whose backward is fused as well (GELU's backward
    /// in the bias gradient's pass).
    pub fn linear_gelu(
        &mut self,
        x: Var,
        weight: Param,
        bias: Param,
        out_features: usize,
    ) -> Result<Var> {
        let (z, y) = self.backend.linear_gelu_forward(
            self.value(x)?,
            self.params,
            weight,
            bias,
            out_features,
        )?;
        let z = self.push(z);
        let out = self.push(y);
        self.record(Node::LinearGelu {
            x,
            z,
            out,
            weight,
            bias,
        });
        Ok(out)
    }

    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        let y = self.backend.gelu_forward(self.value(x)?)?;
        let out = self.push(y);
        self.record(Node::Gelu { x, out });
        Ok(out)
    }

    pub fn attention(&mut self, qkv: Var, mask: Var, heads: usize) -> Result<Var> {
        let r = self
            .backend
            .attention_forward(self.value(qkv)?, self.value(mask)?, heads)?;
        let out = self.push(r.out);
        self.record(Node::Attention {
            qkv,
            mask,
            out,
            lse: r.lse,
            heads,
        });
        Ok(out)
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = self.backend.add(self.value(a)?, self.value(b)?)?;
        let out = self.push(y);
        self.record(Node::Add { a, b, out });
        Ok(out)
    }

    /// Dropout with probability `key.p`; the identity (and no node) when `key` is `None` or p == 0.
    pub fn dropout(&mut self, x: Var, key: Option<DropoutKey>) -> Result<Var> {
        let Some(key) = key.filter(|k| k.p > 0.0) else {
            return Ok(x);
        };
        let y = self.backend.dropout_forward(self.value(x)?, key)?;
        let out = self.push(y);
        self.record(Node::Dropout { x, out, key });
        Ok(out)
    }

    /// `residual + dropout(x)`: with dropout active, computed by the backend in one call (one fused
    /// pass on the GPU) and recorded as the two ops; the dropped values themselves are never
    /// stored, since neither backward reads them. Without dropout, a plain add.
    pub fn dropout_add(&mut self, residual: Var, x: Var, key: Option<DropoutKey>) -> Result<Var> {
        let Some(key) = key.filter(|k| k.p > 0.0) else {
            return self.add(residual, x);
        };
        let y = self
            .backend
            .dropout_add_forward(self.value(residual)?, self.value(x)?, key)?;
        self.values.push(None);
        let dropped = Var(self.values.len() - 1);
        self.record(Node::Dropout {
            x,
            out: dropped,
            key,
        });
        let out = self.push(y);
        self.record(Node::Add {
            a: residual,
            b: dropped,
            out,
        });
        Ok(out)
    }

    /// Rows `rows` (an I32 input) of `x`.
    pub fn gather_rows(&mut self, x: Var, rows: Var) -> Result<Var> {
        let xv = self.value(x)?;
        let n = xv.shape()[0];
        let y = self.backend.gather_rows(xv, self.value(rows)?)?;
        let out = self.push(y);
        self.record(Node::GatherRows { x, rows, out, n });
        Ok(out)
    }

    /// Back-propagates `seed_grad` (d loss / d `seed`) through every recorded op, adding parameter
    /// gradients into `grads` (the flat buffer aligned with the parameters).
    pub fn backward(mut self, seed: Var, seed_grad: Tensor, grads: &mut Tensor) -> Result<()> {
        if !self.recording {
            return Err(Error::Config("backward on an inference tape".into()));
        }
        let backend = self.backend;
        let params = self.params;
        let mut dvals: Vec<Option<Tensor>> = vec![None; self.values.len()];
        dvals[seed.0] = Some(seed_grad);
        let accumulate = |dvals: &mut Vec<Option<Tensor>>, v: Var, g: Tensor| -> Result<()> {
            match &mut dvals[v.0] {
                Some(acc) => backend.add_assign(acc, &g),
                slot @ None => {
                    *slot = Some(g);
                    Ok(())
                }
            }
        };
        let nodes = std::mem::take(&mut self.nodes);
        for node in nodes.into_iter().rev() {
            let out = match &node {
                Node::Embedding { out, .. }
                | Node::LayerNorm { out, .. }
                | Node::Linear { out, .. }
                | Node::Gelu { out, .. }
                | Node::LinearGelu { out, .. }
                | Node::Attention { out, .. }
                | Node::Add { out, .. }
                | Node::Dropout { out, .. }
                | Node::GatherRows { out, .. } => *out,
            };
            // An op whose output never reached the loss contributes nothing.
            let Some(dy) = dvals[out.0].take() else {
                continue;
            };
            match node {
                Node::Embedding {
                    tokens,
                    next_token_id,
                    tables: [t, i, a],
                    ..
                } => {
                    backend.embedding_backward(
                        &dy,
                        self.value(tokens)?,
                        next_token_id,
                        grads,
                        t,
                        i,
                        a,
                    )?;
                }
                Node::LayerNorm {
                    x,
                    mean,
                    rstd,
                    weight,
                    bias,
                    ..
                } => {
                    let dx = backend.layernorm_backward(
                        &dy,
                        self.value(x)?,
                        &mean,
                        &rstd,
                        params,
                        grads,
                        weight,
                        bias,
                    )?;
                    accumulate(&mut dvals, x, dx)?;
                }
                Node::Linear {
                    x, weight, bias, ..
                } => {
                    let dx = backend.linear_backward(
                        &dy,
                        self.value(x)?,
                        params,
                        grads,
                        weight,
                        bias,
                    )?;
                    accumulate(&mut dvals, x, dx)?;
                }
                Node::LinearGelu {
                    x, z, weight, bias, ..
                } => {
                    let dx = backend.linear_gelu_backward(
                        &dy,
                        self.value(x)?,
                        self.value(z)?,
                        params,
                        grads,
                        weight,
                        bias,
                    )?;
                    accumulate(&mut dvals, x, dx)?;
                }
                Node::Gelu { x, .. } => {
                    let dx = backend.gelu_backward(&dy, self.value(x)?)?;
                    accumulate(&mut dvals, x, dx)?;
                }
                Node::Attention {
                    qkv,
                    mask,
                    out,
                    lse,
                    heads,
                } => {
                    let dqkv = backend.attention_backward(
                        &dy,
                        self.value(qkv)?,
                        self.value(mask)?,
                        self.value(out)?,
                        &lse,
                        heads,
                    )?;
                    accumulate(&mut dvals, qkv, dqkv)?;
                }
                Node::Add { a, b, .. } => {
                    accumulate(&mut dvals, a, dy.clone())?;
                    accumulate(&mut dvals, b, dy)?;
                }
                Node::Dropout { x, key, .. } => {
                    let dx = backend.dropout_backward(&dy, key)?;
                    accumulate(&mut dvals, x, dx)?;
                }
                Node::GatherRows { x, rows, n, .. } => {
                    let dx = backend.scatter_rows(&dy, self.value(rows)?, n)?;
                    accumulate(&mut dvals, x, dx)?;
                }
            }
        }
        Ok(())
    }
}
