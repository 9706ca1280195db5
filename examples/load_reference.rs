//! Loads a model the PyTorch reference trained.
//!
//! A Lightning checkpoint converts to a checkpoint directory with
//! `python3 scripts/convert_checkpoint.py to-dir model.ckpt DIR [--tokenizer tokenizer.json]`,
//! which then loads as any other:
//!
//! ```sh
//! cargo run --release --example load_reference -- DIR
//! ```
//!
//! With no argument, the example loads the reference's own float64 tensors from
//! `tests/fixtures/tiny_reference.safetensors` (written by `scripts/reference.py`: the
//! reference's parameters under their state_dict names, a batch of inputs and the logits the
//! reference computed for it), and checks that this crate computes the same logits.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use undertale_maskedlm::model::state_dict::from_state_dict;
use undertale_maskedlm::{
    Config, Device, Error, InstructionTraceTransformerEncoderForMaskedLM as Model, Result, Tensor,
};

fn main() -> Result<()> {
    match std::env::args().nth(1) {
        Some(dir) => {
            let model = Model::from_checkpoint(&dir, Device::Cpu)?;
            println!(
                "{dir}: {} parameters, {:?}",
                model.num_parameters(),
                model.config()
            );
        }
        None => {
            let worst = reference_logits_error()?;
            println!("largest difference from the reference's logits: {worst:.2e}");
        }
    }
    Ok(())
}

/// Loads the fixture's reference parameters, runs its inputs, and returns the largest absolute
/// difference from the logits the reference computed.
fn reference_logits_error() -> Result<f64> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_reference.safetensors");
    let bad = |reason: String| Error::Checkpoint {
        path: path.clone(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let config_json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .ok_or_else(|| bad("no config in the metadata".into()))?;
    let config: Config = serde_json::from_str(config_json).map_err(|e| bad(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;

    // The reference's parameters are float64 under `param.<state_dict name>`; the model takes f32.
    let mut state_dict = BTreeMap::new();
    let mut logits = Vec::new();
    let mut tokens = (Vec::new(), Vec::new());
    let mut mask = (Vec::new(), Vec::new());
    for (name, view) in file.tensors() {
        let shape = view.shape().to_vec();
        match (view.dtype(), name.as_str()) {
            (Dtype::F64, n) if n.starts_with("param.") => {
                let values = f64s(view.data()).map(|x| x as f32).collect();
                state_dict.insert(n["param.".len()..].to_string(), (shape, values));
            }
            (Dtype::F64, "output.logits") => logits = f64s(view.data()).collect(),
            (Dtype::I64, "input.tokens") => tokens = (shape, i64s(view.data()).collect()),
            (Dtype::I64, "input.mask") => mask = (shape, i64s(view.data()).collect()),
            _ => {}
        }
    }
    let values = from_state_dict(&config, &state_dict)?;
    let model = Model::from_parameters(config, Device::Cpu, &values)?;
    let tokens = Tensor::from_i32(&tokens.0, tokens.1)?;
    let mask = Tensor::from_i32(&mask.0, mask.1)?;
    let ours = model.forward(&tokens, Some(&mask))?.to_vec_f32()?;
    if ours.len() != logits.len() {
        return Err(bad(format!(
            "{} logits computed, the reference recorded {}",
            ours.len(),
            logits.len()
        )));
    }
    Ok(ours
        .iter()
        .zip(&logits)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max))
}

fn f64s(bytes: &[u8]) -> impl Iterator<Item = f64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn i64s(bytes: &[u8]) -> impl Iterator<Item = i32> + '_ {
    bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_parameters_give_the_reference_logits() {
        assert!(reference_logits_error().unwrap() < 1e-4);
    }
}
