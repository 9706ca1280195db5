//! A built-in corpus of instruction-like functions and a word-level vocabulary for it, so the
//! whole pipeline runs on any machine with nothing downloaded. The functions have structure a
//! model can learn: prologue and epilogue pairs, `xor r r` zeroing idioms, pushes undone by pops
//! in reverse order, stack-slot addressing off `rbp`.

use std::collections::HashMap;

use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;

use super::Example;
use crate::error::{Error, Result};

/// The special tokens, in the reference tokenizer's order (ids 0..5).
pub const SPECIAL_TOKENS: [&str; 6] = ["[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]", "[NEXT]"];

const MNEMONICS: [&str; 22] = [
    "push", "pop", "mov", "add", "sub", "xor", "and", "or", "cmp", "test", "lea", "call", "jmp",
    "je", "jne", "ret", "nop", "imul", "shl", "shr", "movzx", "leave",
];
const REGS64: [&str; 14] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r12", "r13", "r14", "r15",
];
const REGS32: [&str; 6] = ["eax", "ebx", "ecx", "edx", "esi", "edi"];
const REGS8: [&str; 4] = ["al", "bl", "cl", "dl"];
const SYMBOLS: [&str; 5] = ["[", "]", "+", "-", "*"];
const SIZES: [&str; 8] = [
    "byte", "word", "dword", "qword", "tword", "xmmword", "ymmword", "zmmword",
];
/// Immediates are decimal integers; this vocabulary keeps those below 256 as whole tokens.
const MAX_IMMEDIATE: usize = 256;

/// A whitespace word-level vocabulary.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    tokens: Vec<String>,
    index: HashMap<String, i32>,
}

impl Vocabulary {
    /// A vocabulary of these tokens, ids in order; it must hold every special token.
    pub fn new(tokens: Vec<String>) -> Result<Self> {
        let index: HashMap<String, i32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i32))
            .collect();
        for special in SPECIAL_TOKENS {
            if !index.contains_key(special) {
                return Err(Error::MissingSpecialToken {
                    token: special.to_string(),
                });
            }
        }
        Ok(Vocabulary { tokens, index })
    }

    /// The vocabulary of the synthetic corpus (and of the reference's probes).
    pub fn synthetic() -> Self {
        let words = SPECIAL_TOKENS
            .iter()
            .chain(&MNEMONICS)
            .chain(&REGS64)
            .chain(&REGS32)
            .chain(&REGS8)
            .chain(&SYMBOLS)
            .chain(&SIZES)
            .chain(&["rel", "rip"])
            .map(|s| s.to_string())
            .chain((0..MAX_IMMEDIATE).map(|i| i.to_string()))
            .collect();
        Vocabulary::new(words).expect("the synthetic vocabulary holds every special token")
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it has no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of a token.
    pub fn id(&self, token: &str) -> Option<i32> {
        self.index.get(token).copied()
    }

    fn special(&self, token: &str) -> i32 {
        self.index[token]
    }

    /// The id of `[PAD]`.
    pub fn pad_id(&self) -> i32 {
        self.special("[PAD]")
    }

    /// The id of `[MASK]`.
    pub fn mask_id(&self) -> i32 {
        self.special("[MASK]")
    }

    /// The id of `[NEXT]`.
    pub fn next_id(&self) -> i32 {
        self.special("[NEXT]")
    }

    /// Whitespace-split ids; unknown words become `[UNK]`.
    pub fn encode(&self, text: &str) -> Vec<i32> {
        let unk = self.index["[UNK]"];
        text.split_whitespace()
            .map(|w| self.id(w).unwrap_or(unk))
            .collect()
    }

    /// Space-joined tokens, special tokens kept, `[PAD]` dropped.
    pub fn decode(&self, ids: &[i32]) -> String {
        ids.iter()
            .filter(|&&i| i != self.pad_id())
            .map(|&i| self.tokens.get(i as usize).map_or("[UNK]", String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Ids padded (or truncated) to `length`, with the attention mask.
    pub fn encode_padded(&self, text: &str, length: usize) -> Example {
        let mut tokens = self.encode(text);
        tokens.truncate(length);
        let real = tokens.len();
        tokens.resize(length, self.pad_id());
        let mask = (0..length).map(|i| (i < real) as i32).collect();
        Example { tokens, mask }
    }
}

/// One random function in the reference's pre-tokenized format.
pub fn generate_function(rng: &mut impl Rng) -> String {
    let imm = |rng: &mut dyn rand::RngCore| rng.random_range(0..MAX_IMMEDIATE).to_string();
    let mut ins: Vec<String> = vec!["push rbp".into(), "mov rbp rsp".into()];
    let saved_count = rng.random_range(0..3);
    let saved: Vec<&str> = REGS64[..6]
        .choose_multiple(rng, saved_count)
        .copied()
        .collect();
    for r in &saved {
        ins.push(format!("push {r}"));
    }
    for _ in 0..rng.random_range(2..12) {
        let r64 = *REGS64[..6].choose(rng).expect("non-empty");
        let r32 = *REGS32.choose(rng).expect("non-empty");
        let line = match rng.random_range(0..10) {
            0 => format!("xor {r32} {r32}"),
            1 => format!("mov {r64} {}", imm(rng)),
            2 => format!("mov {r64} qword [ rbp - {} ]", 8 * rng.random_range(1..16)),
            3 => format!("mov qword [ rbp - {} ] {r64}", 8 * rng.random_range(1..16)),
            4 => format!("add {r64} {}", imm(rng)),
            5 => format!("cmp {r32} {} [NEXT] jne {}", imm(rng), imm(rng)),
            6 => format!("lea {r64} [ rip + {} ]", imm(rng)),
            7 => format!("call rel {}", imm(rng)),
            8 => format!("test {r32} {r32} [NEXT] je {}", imm(rng)),
            _ => format!("movzx {r32} byte [ {r64} ]"),
        };
        ins.push(line);
    }
    for r in saved.iter().rev() {
        ins.push(format!("pop {r}"));
    }
    ins.push("pop rbp".into());
    ins.push("ret".into());
    ins.join(" [NEXT] ")
}

/// `count` synthetic functions tokenized and padded to `sequence_length`, reproducible from `seed`.
pub fn dataset(
    vocab: &Vocabulary,
    count: usize,
    sequence_length: usize,
    seed: u64,
) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| vocab.encode_padded(&generate_function(&mut rng), sequence_length))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_use_only_vocabulary_words() {
        let vocab = Vocabulary::synthetic();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let f = generate_function(&mut rng);
            for w in f.split_whitespace() {
                assert!(vocab.id(w).is_some(), "{w:?} in {f:?}");
            }
            assert!(f.starts_with("push rbp [NEXT] mov rbp rsp"));
            assert!(f.ends_with("pop rbp [NEXT] ret"));
        }
        assert_eq!(
            vocab.encode("[PAD] [UNK] [SEP] [CLS] [MASK] [NEXT]"),
            vec![0, 1, 2, 3, 4, 5]
        );
    }
}
