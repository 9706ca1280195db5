//! The autograd tape: records each forward op with what its backward needs, then walks the record
//! in reverse, handing activation gradients from op to op and adding parameter gradients into one
//! flat buffer aligned with the flat parameter buffer.
//!
//! The tape knows no op: each front module in [`crate::ops`] adds its recording method to `Tape`
//! (`tape.layernorm(..)`) and defines the `Rule` its backward replays.
//!
//! Values live in an arena indexed by [`Var`]. A tape made with [`Tape::inference`] records
//! nothing, and [`Tape::keep_only`] lets the model drop a finished layer's activations, so
//! inference holds one layer's activations at a time.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::Weights;
use crate::tensor::Tensor;

/// A value on the tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// The backward of one recorded op.
pub(crate) trait Rule {
    /// The value whose gradient this rule consumes.
    fn output(&self) -> Var;

    /// Given `dy`, the gradient of [`output`](Self::output), adds the gradients of the op's inputs
    /// into `pass` (activations with [`BackwardPass::accumulate`], parameters into its gradient
    /// buffer).
    fn backward(self: Box<Self>, pass: &mut BackwardPass<'_, '_>, dy: Tensor) -> Result<()>;
}

pub struct Tape<'a> {
    backend: &'a dyn Backend,
    weights: Weights<'a>,
    values: Vec<Option<Tensor>>,
    rules: Vec<Box<dyn Rule + 'a>>,
    recording: bool,
}

impl<'a> Tape<'a> {
    /// A tape that records for backward, over these parameters.
    pub fn new(backend: &'a dyn Backend, weights: impl Into<Weights<'a>>) -> Self {
        Tape {
            backend,
            weights: weights.into(),
            values: Vec::new(),
            rules: Vec::new(),
            recording: true,
        }
    }

    /// A tape that only computes: nothing is recorded and [`Tape::keep_only`] frees memory.
    pub fn inference(backend: &'a dyn Backend, weights: impl Into<Weights<'a>>) -> Self {
        Tape {
            recording: false,
            ..Tape::new(backend, weights)
        }
    }

    pub fn backend(&self) -> &'a dyn Backend {
        self.backend
    }

    pub(crate) fn weights(&self) -> Weights<'a> {
        self.weights
    }

    /// Puts a tensor that needs no gradient (tokens, masks, indices) on the tape.
    pub fn input(&mut self, t: Tensor) -> Var {
        self.push(t)
    }

    pub fn value(&self, v: Var) -> Result<&Tensor> {
        value(&self.values, v)
    }

    /// Takes a value off the tape (the tape must not need it again).
    pub fn take(&mut self, v: Var) -> Result<Tensor> {
        self.values
            .get_mut(v.0)
            .and_then(Option::take)
            .ok_or_else(|| released(v))
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

    pub(crate) fn push(&mut self, t: Tensor) -> Var {
        self.values.push(Some(t));
        Var(self.values.len() - 1)
    }

    /// A var that holds no value: an intermediate that no backward reads (dropout's output inside
    /// a fused dropout-add), whose gradient still flows through it.
    pub(crate) fn push_unstored(&mut self) -> Var {
        self.values.push(None);
        Var(self.values.len() - 1)
    }

    pub(crate) fn record(&mut self, rule: impl Rule + 'a) {
        if self.recording {
            self.rules.push(Box::new(rule));
        }
    }

    /// Back-propagates `seed_grad` (d loss / d `seed`) through every recorded op, adding parameter
    /// gradients into `grads` (the flat buffer aligned with the parameters).
    pub fn backward(mut self, seed: Var, seed_grad: Tensor, grads: &mut Tensor) -> Result<()> {
        if !self.recording {
            return Err(Error::Config("backward on an inference tape".into()));
        }
        let rules = std::mem::take(&mut self.rules);
        let mut pass = BackwardPass {
            backend: self.backend,
            weights: self.weights,
            values: &self.values,
            grads,
            dvals: vec![None; self.values.len()],
        };
        pass.dvals[seed.0] = Some(seed_grad);
        for rule in rules.into_iter().rev() {
            // An op whose output never reached the loss contributes nothing.
            let Some(dy) = pass.dvals[rule.output().0].take() else {
                continue;
            };
            rule.backward(&mut pass, dy)?;
        }
        Ok(())
    }
}

/// What a [`Rule`] sees while the tape runs backward.
pub(crate) struct BackwardPass<'p, 'a> {
    pub backend: &'a dyn Backend,
    pub weights: Weights<'a>,
    values: &'p [Option<Tensor>],
    /// The flat parameter-gradient buffer.
    pub grads: &'p mut Tensor,
    dvals: Vec<Option<Tensor>>,
}

impl<'p> BackwardPass<'p, '_> {
    /// A forward value the tape kept (borrowed from the tape, not from this pass, so that the
    /// gradient buffer can be borrowed mutably beside it).
    pub fn value(&self, v: Var) -> Result<&'p Tensor> {
        value(self.values, v)
    }

    /// Adds `g` into the gradient of `v`.
    pub fn accumulate(&mut self, v: Var, g: Tensor) -> Result<()> {
        match &mut self.dvals[v.0] {
            Some(acc) => self.backend.add_assign(acc, &g),
            slot @ None => {
                *slot = Some(g);
                Ok(())
            }
        }
    }
}

fn value(values: &[Option<Tensor>], v: Var) -> Result<&Tensor> {
    values
        .get(v.0)
        .and_then(Option::as_ref)
        .ok_or_else(|| released(v))
}

fn released(v: Var) -> Error {
    Error::Config(format!("tape value {} was released", v.0))
}
