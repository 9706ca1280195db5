//! Conversion between the flat parameter buffer and the reference's `state_dict`.
//!
//! Every parameter keeps its reference name except each layer's fused QKV, which the reference
//! stores as per-head Linear modules: head n's `q` weight is rows `n*d .. (n+1)*d` of the first
//! `H` rows of the fused `[3H, H]` weight, `k` the same rows of the second `H`, `v` of the third.

use std::collections::{BTreeMap, HashSet};

use super::{Config, InstructionTraceTransformerEncoderForMaskedLM};
use crate::error::{Error, Result};

/// Named f32 tensors as read from a file: name -> (shape, data).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// One named tensor of a state_dict.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The reference's state_dict name.
    pub name: String,
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

/// If `name` is a fused QKV parameter, its layer prefix and whether it is the weight.
fn fused_qkv(name: &str) -> Option<(&str, bool)> {
    let (prefix, leaf) = name.rsplit_once(".attention.qkv.")?;
    Some((prefix, leaf == "weight"))
}

const PARTS: [&str; 3] = ["q", "k", "v"];

/// The reference's tensors for a flat parameter buffer, in the reference's order.
pub fn to_state_dict(config: &Config, values: &[f32]) -> Result<Vec<NamedTensor>> {
    let layout = InstructionTraceTransformerEncoderForMaskedLM::layout_for(config);
    if values.len() != layout.len() {
        return Err(Error::shape(
            "parameters",
            format!("[{}]", layout.len()),
            &[values.len()],
        ));
    }
    let (h, d) = (config.hidden_dimensions, config.head_dim());
    let mut out = Vec::new();
    for e in layout.entries() {
        let data = &values[e.param.offset..][..e.param.len];
        match fused_qkv(&e.name) {
            None => out.push(NamedTensor {
                name: e.name.clone(),
                shape: e.shape.clone(),
                data: data.to_vec(),
            }),
            Some((prefix, is_weight)) => {
                // The reference registers heads.0.{q,k,v}.{weight,bias}, heads.1..., so weights
                // and biases interleave; emit the weight pass and let the bias pass follow in
                // `reference_order`.
                let width = if is_weight { h } else { 1 };
                let leaf = if is_weight { "weight" } else { "bias" };
                for n in 0..config.heads {
                    for (part, name) in PARTS.iter().enumerate() {
                        let start = (part * h + n * d) * width;
                        let mut shape = vec![d];
                        if is_weight {
                            shape.push(h);
                        }
                        out.push(NamedTensor {
                            name: format!("{prefix}.attention.heads.{n}.{name}.{leaf}"),
                            shape,
                            data: data[start..start + d * width].to_vec(),
                        });
                    }
                }
            }
        }
    }
    Ok(reference_order(out))
}

/// Orders per-head tensors as PyTorch registers them (`heads.n.q.weight, heads.n.q.bias, ...`);
/// everything else keeps layout order, which already is the reference's.
fn reference_order(tensors: Vec<NamedTensor>) -> Vec<NamedTensor> {
    let mut ordered: Vec<NamedTensor> = Vec::with_capacity(tensors.len());
    let mut pending: Vec<NamedTensor> = Vec::new();
    let flush = |pending: &mut Vec<NamedTensor>, ordered: &mut Vec<NamedTensor>| {
        // Sort key: (head, part) then weight before bias.
        pending.sort_by_key(|t| {
            let rest = t.name.split(".attention.heads.").nth(1).unwrap_or_default();
            let mut it = rest.split('.');
            let head: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let part = PARTS
                .iter()
                .position(|p| Some(*p) == it.next())
                .unwrap_or(0);
            let bias = it.next() == Some("bias");
            (head, part, bias)
        });
        ordered.append(pending);
    };
    for t in tensors {
        if t.name.contains(".attention.heads.") {
            pending.push(t);
        } else {
            flush(&mut pending, &mut ordered);
            ordered.push(t);
        }
    }
    flush(&mut pending, &mut ordered);
    ordered
}

/// The flat parameter buffer from the reference's tensors. Every expected name must be present
/// with its exact shape, and no other name may appear; the error lists what is wrong.
pub fn from_state_dict(
    config: &Config,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<Vec<f32>> {
    let zeros = vec![0.0; InstructionTraceTransformerEncoderForMaskedLM::layout_for(config).len()];
    let expected = to_state_dict(config, &zeros)?;
    let mut problems = Vec::new();
    let expected_names: HashSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    for t in &expected {
        match tensors.get(&t.name) {
            None => problems.push(format!("missing tensor {}", t.name)),
            Some((shape, data)) if *shape != t.shape || data.len() != t.data.len() => problems
                .push(format!(
                    "tensor {} has shape {:?}, expected {:?}",
                    t.name, shape, t.shape
                )),
            Some(_) => {}
        }
    }
    for name in tensors
        .keys()
        .filter(|n| !expected_names.contains(n.as_str()))
    {
        problems.push(format!("unexpected tensor {name}"));
    }
    if !problems.is_empty() {
        return Err(Error::Config(problems.join("; ")));
    }

    let layout = InstructionTraceTransformerEncoderForMaskedLM::layout_for(config);
    let (h, d) = (config.hidden_dimensions, config.head_dim());
    let mut values = vec![0.0f32; layout.len()];
    for e in layout.entries() {
        let dst = &mut values[e.param.offset..][..e.param.len];
        match fused_qkv(&e.name) {
            None => dst.copy_from_slice(&tensors[&e.name].1),
            Some((prefix, is_weight)) => {
                let width = if is_weight { h } else { 1 };
                let leaf = if is_weight { "weight" } else { "bias" };
                for n in 0..config.heads {
                    for (part, name) in PARTS.iter().enumerate() {
                        let src =
                            &tensors[&format!("{prefix}.attention.heads.{n}.{name}.{leaf}")].1;
                        let start = (part * h + n * d) * width;
                        dst[start..start + d * width].copy_from_slice(src);
                    }
                }
            }
        }
    }
    Ok(values)
}
