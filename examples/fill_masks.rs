//! Fills the `[MASK]` tokens of pre-tokenized disassembly from Rust.
//!
//! ```sh
//! cargo run --release --example fill_masks -- CHECKPOINT_DIR "push rbp [NEXT] mov rbp [MASK]"
//! ```
//!
//! With no checkpoint (no arguments), a tiny untrained model and the test fixtures' tokenizer are
//! used, so the example runs anywhere (its guesses are then random).

use std::path::Path;

use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
use undertale_maskedlm::{
    Config, Device, InstructionTraceTransformerEncoderForMaskedLM, MaskFiller, Result, Size,
};

const EXAMPLE: &str = "push rbp [NEXT] mov rbp rsp [NEXT] [MASK] eax eax [NEXT] pop rbp [NEXT] ret";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filler = match args.first() {
        Some(dir) => MaskFiller::from_checkpoint(dir, Device::Cpu)?,
        None => untrained()?,
    };
    let texts: Vec<&str> = match args.get(1..) {
        Some(texts) if !texts.is_empty() => texts.iter().map(String::as_str).collect(),
        _ => vec![EXAMPLE],
    };
    for filled in filler.candidates_batch(&texts, 3)? {
        println!("{}\n  -> {}", filled.input, filled.output);
        for mask in &filled.masks {
            let candidates: Vec<String> = mask
                .candidates
                .iter()
                .map(|c| format!("{} ({:.3})", c.token, c.probability))
                .collect();
            println!("  position {}: {}", mask.position, candidates.join(", "));
        }
    }
    Ok(())
}

/// A tiny randomly initialised model for the fixtures' tokenizer.
fn untrained() -> Result<MaskFiller> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_reference.json");
    let tokenizer = InstructionTokenizer::load(&path)?;
    let config = Config::for_tokenizer(Size::TINY, &tokenizer);
    let model = InstructionTraceTransformerEncoderForMaskedLM::new(config, Device::Cpu, 0)?;
    MaskFiller::new(model, tokenizer)
}
