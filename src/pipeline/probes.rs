//! The fill-mask probes the reference runs after every epoch.

use crate::data::tokenizer::InstructionTokenizer;
use crate::error::Result;
use crate::model::InstructionTraceTransformerEncoderForMaskedLM as Model;
use crate::tensor::Tensor;

/// The inputs filled after every epoch to show what the model has learned.
pub const PROBES: [&str; 13] = [
    "xor rax [MASK]",
    "add rax [MASK]",
    "jmp [MASK]",
    "mov [MASK] bl",
    "mov [MASK] eax",
    "mov [MASK] rax",
    "mov eax [MASK] [ esi ]",
    "mov rax [MASK] [ rsi ]",
    "movzx eax [MASK] [ esi ]",
    "test eax eax [NEXT] [MASK] [MASK]",
    "push [MASK] [NEXT] mov rbx 42 [NEXT] add rax rbx [NEXT] pop [MASK] [NEXT] ret",
    "[MASK] [MASK] [MASK] [MASK] [MASK]",
    "add rax [MASK] [NEXT] mov rax [MASK] [MASK] [MASK] [MASK] [MASK] [MASK]",
];

/// Encodes `text` with the tokenizer, fills its `[MASK]` tokens with the model's argmax and
/// decodes the result as the reference prints it.
pub fn fill(model: &Model, tokenizer: &InstructionTokenizer, text: &str) -> Result<String> {
    let real = tokenizer.encode(text)?.real_tokens();
    if real.is_empty() {
        return Ok(String::new());
    }
    let filled = model.infer(&Tensor::from_i32(&[real.len()], real)?, None)?;
    tokenizer.decode(&filled.to_vec_i32()?)
}

/// Every probe and its filled text.
pub fn fill_all(model: &Model, tokenizer: &InstructionTokenizer) -> Result<Vec<(String, String)>> {
    PROBES
        .iter()
        .map(|p| Ok((p.to_string(), fill(model, tokenizer, p)?)))
        .collect()
}
