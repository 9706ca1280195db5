//! The flat parameter buffer's layout: every parameter's name, shape, offset and initialisation.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::backend::Param;

/// How a parameter starts, following PyTorch's module defaults (the reference sets none of its own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `nn.Linear` weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Linear { fan_in: usize },
    /// `nn.Embedding`: N(0, 1).
    Normal,
    /// `nn.LayerNorm` weight.
    Ones,
    /// `nn.LayerNorm` bias.
    Zeros,
}

/// One parameter of the layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamEntry {
    /// Internal name: the reference's state_dict key, except the fused
    /// `encoder.layers.{l}.attention.qkv.{weight,bias}` (see `checkpoint::names`).
    pub name: String,
    pub shape: Vec<usize>,
    pub param: Param,
    pub init: Init,
}

/// Parameters laid out back to back in one buffer, in registration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    len: usize,
}

impl ParamLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves the next `shape.product()` elements for `name`.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], init: Init) -> Param {
        let len = shape.iter().product();
        let param = Param {
            offset: self.len,
            len,
        };
        self.entries.push(ParamEntry {
            name: name.into(),
            shape: shape.to_vec(),
            param,
            init,
        });
        self.len += len;
        param
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Fresh values for every parameter, drawn in layout order from `rng`.
    pub fn initialise(&self, rng: &mut impl Rng) -> Vec<f32> {
        let mut values = Vec::with_capacity(self.len);
        for e in &self.entries {
            match e.init {
                Init::Linear { fan_in } => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    let dist = Uniform::new(-bound, bound).expect("bound is positive and finite");
                    values.extend((0..e.param.len).map(|_| dist.sample(rng)));
                }
                Init::Normal => {
                    values.extend((0..e.param.len).map(|_| -> f32 { StandardNormal.sample(rng) }));
                }
                Init::Ones => values.extend(std::iter::repeat_n(1.0, e.param.len)),
                Init::Zeros => values.extend(std::iter::repeat_n(0.0, e.param.len)),
            }
        }
        values
    }
}
