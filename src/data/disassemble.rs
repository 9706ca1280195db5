//! Functions of ELF x86-64 binaries, disassembled into the reference's pre-tokenized format.
//!
//! The reference (the `undertale` Python package) builds its corpus from Binary Ninja's disassembly
//! and flattens each function into *pre-tokenized* text: whitespace-separated tokens, one instruction
//! after another, `[NEXT]` between instructions:
//!
//! ```text
//! push rbp [NEXT] mov rbp rsp [NEXT] mov dword [ rbp - 20 ] edi [NEXT] xor eax eax [NEXT] ret
//! ```
//!
//! This module produces the same shape with [iced-x86](https://docs.rs/iced-x86)'s Intel formatter,
//! driven through a [`FormatterOutput`] that receives every piece of text with its kind
//! (mnemonic, register, number, keyword, punctuation, ...) and turns it into tokens.
//!
//! # Format
//!
//! * Mnemonics, prefixes (`rep`, `repe`, `lock`, `notrack`, `bnd`, ...), registers, `[`, `]`, `+`,
//!   `-`, `*`, the size words `byte` `word` `dword` `qword` `tword` `xmmword` `ymmword` `zmmword`
//!   (and `fword` for far pointers) and `rel` are tokens of their own. Everything is lower case.
//! * Operand commas are dropped, and so is Intel's `ptr` (Binary Ninja writes `dword [rbp-0x14]`).
//!   Every memory operand carries its size word, as in Binary Ninja, even where the register operand
//!   already implies it (`movzx eax byte [ rdi ]`, `mov dword [ rbp - 20 ] edi`).
//! * Every number is a non-negative decimal integer, written without prefix, suffix or digit
//!   separators, so that every token is either a word or matches `^[0-9]+$` (the tokenizer's BPE runs
//!   over the integer tokens only). Every other token matches `^[a-z0-9_]+$` or is one of
//!   `[ ] + - *` (and `[NEXT]` between instructions).
//! * **Branch targets** (`call`, `jmp`, `jcc`, `loop`, ...) are the absolute target address:
//!   `call 0x1130` at any address becomes `call 4400`.
//! * **RIP-relative memory** is written as the absolute address it refers to, marked by `rel` right
//!   after the bracket, as Binary Ninja's `[rel 0x4010]`: `mov rax, [rip+0x2ff9]` at 0x1010 becomes
//!   `mov rax qword [ rel 16400 ]`.
//! * **Displacements** are signed: `[rbp-0x14]` becomes `[ rbp - 20 ]`, `[rbx+rcx*8+0x10]` becomes
//!   `[ rbx + rcx * 8 + 16 ]`. A scale of 1 and a zero displacement next to a register are not
//!   written. A displacement alone is an address: `[ 305419896 ]`.
//! * **Immediates** are written as the *unsigned* value at the operand's size, as Binary Ninja's
//!   integer tokens carry them: `mov eax, -1` becomes `mov eax 4294967295`, `add rsp, -8` (a
//!   sign-extended imm8 in a 64-bit operation) becomes `add rsp 18446744073709551608`. This keeps
//!   every number a single non-negative integer token, and `-` appears only inside brackets.
//! * **Segment overrides** go inside the brackets and are joined to the address with `+`, exactly as
//!   the reference's pre-tokenizer rewrites Binary Ninja's `[fs:0x28]` (it turns the `:` after a
//!   segment register into `+`): `mov rax, fs:[0x28]` becomes `mov rax qword [ fs + 40 ]`. A
//!   negative offset from the segment alone (thread-local variables, `fs:[-0xf8]`) is written
//!   `[ fs - 248 ]`, not as the 64-bit address it sign-extends to. With a RIP-relative address the
//!   order is `[ rel fs + N ]`. A segment register used as a plain operand (`mov ax, fs`) stays a
//!   register token.
//! * **No pseudo-ops**: every operand is written (`imul eax eax 4294967288`, `fmulp st1 st0`,
//!   `cmpps xmm0 xmm1 0`), so mnemonics are exactly iced's `Mnemonic` names. String instructions
//!   carry iced's memory operands (`rep movsb byte [ rdi ] byte [ rsi ]`, `rep stosq qword [ rdi ]`).
//! * x87 stack registers are `st0` .. `st7` (Binary Ninja's spelling), not Intel's `st`/`st(1)`; the
//!   implicit `st0` operand iced writes is kept (`fld st0 tword [ rsp ]`).
//! * The x87 size `tbyte` is written `tword` (Binary Ninja's word). iced's pseudo-sizes for
//!   environment/state blocks (`fpuenv14`, `fpuenv28`, `fpustate94`, `fpustate108`, `mem384`) are
//!   dropped, as Binary Ninja writes no size for those operands (`fnstenv [ rax ]`).
//! * AVX-512 decorators keep their content as one word, braces dropped and `-` written `_`:
//!   `{k1}` -> `k1`, `{z}` -> `z`, `{rd-sae}` -> `rd_sae`, `{1to16}` -> `1to16`
//!   (`vmovdqu64 zmm16 k1 z zmmword [ rsi ]`, `vaddps zmm0 zmm0 dword [ rax ] 1to16`). Any other
//!   character outside `[a-z0-9_]` in a word becomes `_` (the branch hint `hint-taken` ->
//!   `hint_taken`).
//! * `call $+5` (a call to the next instruction, how position-independent code reads its own
//!   address) is written `call rel 5`, as the reference's pre-tokenizer rewrites Binary Ninja's
//!   `$+5`.
//!
//! # Functions
//!
//! [`disassemble_file`] takes every `STT_FUNC` symbol with a nonzero size from both the symbol table
//! and the dynamic symbol table (so stripped binaries still yield their exported functions), whose
//! section is executable (`SHF_EXECINSTR`) and has bytes in the file (not `SHT_NOBITS`).
//! `STT_GNU_IFUNC` symbols are not taken: their address is the resolver, not the function the name
//! promises. Symbols at the same address in the same section are one function, named by the best
//! of its symbols: a non-empty name, then the fewest leading underscores (`fopen` over
//! `_IO_fopen`), then global over weak over local (`fopen` over `fopen64`), then the first seen
//! (symbol table before dynamic symbol table, file order within each); its size is that symbol's.
//! Functions whose range does not lie wholly inside their section's bytes are skipped.
//!
//! The bytes `[address, address + size)` are decoded linearly (no control-flow analysis, so
//! alignment padding inside the range is kept, unlike Binary Ninja, which only shows reachable
//! blocks). Decoding **stops at the first undecodable instruction** (including one cut off by the
//! end of the range): the function keeps the instructions before it, and a function with no
//! decodable instruction at all is skipped. Functions are sorted by address (then section).
//!
//! A file that is ELF x86-64 by its header but cannot be parsed (truncated, bad section or symbol
//! tables) is an [`Error::Disassembly`]; nothing in here panics on bad input. In relocatable objects
//! (`.o`, `ET_REL`) a symbol's value is an offset into its section; it is used as the address as
//! is, and call targets are unrelocated.

use std::collections::HashMap;
use std::path::Path;

use iced_x86::{
    Code, Decoder, DecoderOptions, Formatter, FormatterOutput, FormatterTextKind, Instruction,
    IntelFormatter, MemorySizeOptions, NumberBase, NumberKind, Register,
};
use object::elf;
use object::read::elf::{ElfFile64, SectionHeader, Sym};
use object::{Endianness, SectionIndex};

use crate::{Error, Result};

/// The token written between two instructions.
pub const NEXT_TOKEN: &str = "[NEXT]";

/// One function: its symbol name, start address and pre-tokenized disassembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The name of the best of the symbols at its address (see the module documentation), as the
    /// symbol table spells it (not demangled).
    pub name: String,
    /// The symbol's value: the virtual address of the function's first byte.
    pub address: u64,
    /// Whitespace-separated tokens in the module's format, [`NEXT_TOKEN`] between two
    /// instructions.
    pub disassembly: String,
}

/// What `disassemble_file` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFunctions {
    /// An ELF x86-64 file and the functions found in it, sorted by address (possibly none).
    Elf(Vec<Function>),
    /// Not an ELF x86-64 file (wrong magic, another architecture, 32-bit): nothing to read.
    NotElf,
}

/// Reads a file; if it is not an ELF x86-64 file (wrong magic, other architecture, 32-bit) returns
/// NotElf (the caller skips and counts it). Otherwise the functions from the symbol table AND the
/// dynamic symbol table (deduplicated by address; STT_FUNC symbols with nonzero size defined in an
/// executable section), each disassembled over [address, address+size) with iced-x86 in 64-bit mode.
pub fn disassemble_file(path: &Path) -> Result<FileFunctions> {
    let data =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    disassemble_bytes(path, &data)
}

/// The same on bytes already in memory (path only for error messages).
pub fn disassemble_bytes(path: &Path, data: &[u8]) -> Result<FileFunctions> {
    if !is_elf_x86_64(data) {
        return Ok(FileFunctions::NotElf);
    }
    let malformed = |reason: String| Error::Disassembly {
        path: path.to_path_buf(),
        reason,
    };
    let file = ElfFile64::<Endianness>::parse(data)
        .map_err(|e| malformed(format!("malformed ELF file: {e}")))?;
    let endian = file.endian();
    let sections = file.elf_section_table();

    // (section, address) -> candidate; insertion order kept in `order` for determinism.
    let mut candidates: HashMap<(usize, u64), Candidate> = HashMap::new();
    for table in [file.elf_symbol_table(), file.elf_dynamic_symbol_table()] {
        for (index, symbol) in table.enumerate() {
            if symbol.st_type() != elf::STT_FUNC {
                continue;
            }
            let size = symbol.st_size(endian);
            if size == 0 {
                continue;
            }
            let Ok(Some(section_index)) = table.symbol_section(endian, symbol, index) else {
                continue;
            };
            let name = match table.symbol_name(endian, symbol) {
                Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Err(_) => String::new(),
            };
            let address = symbol.st_value(endian);
            let binding = match symbol.st_bind() {
                elf::STB_LOCAL => 0,
                elf::STB_WEAK => 1,
                _ => 2,
            };
            let rank = Rank {
                named: !name.is_empty(),
                fewer_underscores: std::cmp::Reverse(
                    name.bytes().take_while(|&b| b == b'_').count(),
                ),
                binding,
            };
            let key = (section_index.0, address);
            let order = candidates.len();
            match candidates.get_mut(&key) {
                Some(existing) if existing.rank >= rank => {}
                Some(existing) => {
                    existing.rank = rank;
                    existing.name = name;
                    existing.size = size;
                }
                None => {
                    candidates.insert(
                        key,
                        Candidate {
                            name,
                            size,
                            rank,
                            order,
                        },
                    );
                }
            }
        }
    }

    let mut keyed: Vec<((usize, u64), Candidate)> = candidates.into_iter().collect();
    keyed.sort_by_key(|&((section, address), ref c)| (address, section, c.order));

    let mut disassembler = Disassembler::new();
    let mut functions = Vec::with_capacity(keyed.len());
    let mut section_bytes: HashMap<usize, Option<(&[u8], u64)>> = HashMap::new();
    for ((section_index, address), candidate) in keyed {
        let bytes = *section_bytes.entry(section_index).or_insert_with(|| {
            let header = sections.section(SectionIndex(section_index)).ok()?;
            if header.sh_type(endian) == elf::SHT_NOBITS
                || header.sh_flags(endian) & u64::from(elf::SHF_EXECINSTR) == 0
            {
                return None;
            }
            let bytes = header.data(endian, data).ok()?;
            Some((bytes, header.sh_addr(endian)))
        });
        let Some((bytes, section_address)) = bytes else {
            continue;
        };
        let Some(code) = address
            .checked_sub(section_address)
            .and_then(|start| {
                let end = start.checked_add(candidate.size)?;
                Some((usize::try_from(start).ok()?, usize::try_from(end).ok()?))
            })
            .and_then(|(start, end)| bytes.get(start..end))
        else {
            continue;
        };
        let disassembly = disassembler.disassemble(code, address);
        if disassembly.is_empty() {
            continue;
        }
        functions.push(Function {
            name: candidate.name,
            address,
            disassembly,
        });
    }
    Ok(FileFunctions::Elf(functions))
}

/// Whether `data` is an ELF x86-64 file with a symbol table (an `SHT_SYMTAB` section).
///
/// A *stripped* binary has none: [`disassemble_bytes`] then finds only the functions of the
/// dynamic symbol table, the ones the file exports, which for an executable are few or none.
/// Anything that is not a readable ELF x86-64 file gives `false`.
pub fn has_symbol_table(data: &[u8]) -> bool {
    if !is_elf_x86_64(data) {
        return false;
    }
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else {
        return false;
    };
    let endian = file.endian();
    file.elf_section_table()
        .iter()
        .any(|header| header.sh_type(endian) == elf::SHT_SYMTAB)
}

/// One instruction sequence: bytes decoded at `address` -> pre-tokenized text joined by `" [NEXT] "`.
///
/// Decoding stops at the first undecodable (or truncated) instruction; empty input, or input that
/// starts with undecodable bytes, gives an empty string.
pub fn disassemble_code(code: &[u8], address: u64) -> String {
    Disassembler::new().disassemble(code, address)
}

/// A symbol chosen to name the function at its (section, address).
struct Candidate {
    name: String,
    size: u64,
    /// How good a name this is: the highest rank wins, the first seen among equals.
    rank: Rank,
    /// The order in which the address was first seen (ties in sorting).
    order: usize,
}

/// Offsets in `e_ident` of the file class (32/64-bit) and data encoding (endianness).
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;

/// A symbol's claim to name its function, compared field by field: a non-empty name, then fewer
/// leading underscores (`fopen` over `_IO_fopen`, `malloc` over `__libc_malloc`), then the binding
/// (global over weak over local: `fopen` over `fopen64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    named: bool,
    fewer_underscores: std::cmp::Reverse<usize>,
    /// 2 global (or anything else that is not weak or local), 1 weak, 0 local.
    binding: u8,
}

/// Whether `data` starts with an ELF header for a 64-bit x86-64 file (ELFCLASS64, EM_X86_64).
fn is_elf_x86_64(data: &[u8]) -> bool {
    if data.len() < 20 || data[..4] != elf::ELFMAG {
        return false;
    }
    if data[EI_CLASS] != elf::ELFCLASS64 {
        return false;
    }
    let machine = match data[EI_DATA] {
        elf::ELFDATA2LSB => u16::from_le_bytes([data[18], data[19]]),
        elf::ELFDATA2MSB => u16::from_be_bytes([data[18], data[19]]),
        _ => return false,
    };
    machine == elf::EM_X86_64
}

/// A reusable decoder + formatter pair that writes the pre-tokenized text.
struct Disassembler {
    formatter: IntelFormatter,
    output: TokenOutput,
}

impl Disassembler {
    fn new() -> Self {
        let mut formatter = IntelFormatter::new();
        let options = formatter.options_mut();
        options.set_uppercase_all(false);
        options.set_number_base(NumberBase::Decimal);
        options.set_decimal_prefix("");
        options.set_decimal_suffix("");
        options.set_digit_separator("");
        options.set_leading_zeros(false);
        options.set_branch_leading_zeros(false);
        options.set_displacement_leading_zeros(false);
        options.set_small_hex_numbers_in_decimal(true);
        options.set_signed_immediate_operands(false);
        options.set_signed_memory_displacements(true);
        options.set_rip_relative_addresses(false);
        options.set_memory_size_options(MemorySizeOptions::Always);
        options.set_show_branch_size(false);
        options.set_show_zero_displacements(false);
        options.set_always_show_scale(false);
        options.set_scale_before_index(false);
        options.set_always_show_segment_register(false);
        options.set_show_useless_prefixes(false);
        options.set_use_pseudo_ops(false);
        options.set_show_symbol_address(false);
        Disassembler {
            formatter,
            output: TokenOutput::default(),
        }
    }

    fn disassemble(&mut self, code: &[u8], address: u64) -> String {
        let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        let mut instruction = Instruction::default();
        self.output.text.clear();
        while decoder.can_decode() {
            decoder.decode_out(&mut instruction);
            if instruction.code() == Code::INVALID {
                break;
            }
            if !self.output.text.is_empty() {
                self.output.text.push(' ');
                self.output.text.push_str(NEXT_TOKEN);
            }
            if is_call_next(&instruction) {
                self.output.token("call");
                self.output.token("rel");
                self.output.token("5");
                continue;
            }
            self.output.begin(&instruction);
            self.formatter.format(&instruction, &mut self.output);
            self.output.finish();
        }
        std::mem::take(&mut self.output.text)
    }
}

/// `call $+5`: a 5-byte relative call to the instruction right after it.
fn is_call_next(instruction: &Instruction) -> bool {
    instruction.code() == Code::Call_rel32_64
        && instruction.len() == 5
        && instruction.near_branch_target() == instruction.next_ip()
}

/// Receives iced's text pieces and appends tokens to `text`, space-separated.
#[derive(Default)]
struct TokenOutput {
    text: String,
    /// The instruction being formatted has a RIP/EIP-relative memory operand.
    ip_relative: bool,
    /// A segment register written outside brackets, held until we know whether `:[` follows.
    pending_segment: Option<&'static str>,
    /// `:` was seen after `pending_segment`.
    segment_colon: bool,
    /// Inside a `[ seg + ...` memory operand, right after its `+`.
    after_segment_plus: bool,
    /// Reused buffer for cleaning words.
    scratch: String,
}

impl TokenOutput {
    fn begin(&mut self, instruction: &Instruction) {
        self.ip_relative = instruction.is_ip_rel_memory_operand();
        self.pending_segment = None;
        self.segment_colon = false;
        self.after_segment_plus = false;
    }

    fn finish(&mut self) {
        self.flush_segment();
    }

    /// Appends one token.
    fn token(&mut self, token: &str) {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(token);
    }

    /// Appends every whitespace-separated word of `text` as a word token: lower case, brackets,
    /// braces, parentheses, commas and colons dropped, any other character that is not a letter,
    /// digit or `_` written `_` (`{rn-sae}` -> `rn_sae`, `st(1)` -> `st1`, `hint-taken` ->
    /// `hint_taken`). A piece with nothing left is not written.
    fn words(&mut self, text: &str) {
        for piece in text.split_whitespace() {
            self.scratch.clear();
            for c in piece.chars() {
                match c {
                    '{' | '}' | '(' | ')' | '[' | ']' | ',' | ':' => {}
                    c if c.is_ascii_alphanumeric() || c == '_' => {
                        self.scratch.push(c.to_ascii_lowercase())
                    }
                    _ => self.scratch.push('_'),
                }
            }
            if !self.scratch.is_empty() {
                let word = std::mem::take(&mut self.scratch);
                self.token(&word);
                self.scratch = word;
            }
        }
    }

    /// A segment register that turned out not to prefix a memory operand: write it as is.
    fn flush_segment(&mut self) {
        if let Some(segment) = self.pending_segment.take() {
            self.token(segment);
            if self.segment_colon {
                self.token("+");
            }
            self.segment_colon = false;
        }
    }

    fn open_bracket(&mut self) {
        self.token("[");
        if self.ip_relative {
            self.token("rel");
        }
        if let Some(segment) = self.pending_segment.take() {
            self.token(segment);
            self.token("+");
            self.segment_colon = false;
            self.after_segment_plus = true;
        }
    }
}

fn segment_name(register: Register) -> Option<&'static str> {
    Some(match register {
        Register::ES => "es",
        Register::CS => "cs",
        Register::SS => "ss",
        Register::DS => "ds",
        Register::FS => "fs",
        Register::GS => "gs",
        _ => return None,
    })
}

impl FormatterOutput for TokenOutput {
    fn write(&mut self, text: &str, kind: FormatterTextKind) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.after_segment_plus = false;
        if self.pending_segment.is_some() {
            match text {
                ":" if !self.segment_colon => {
                    self.segment_colon = true;
                    return;
                }
                "[" if self.segment_colon => {
                    self.open_bracket();
                    return;
                }
                _ => self.flush_segment(),
            }
        }
        match kind {
            FormatterTextKind::Punctuation | FormatterTextKind::Operator => match text {
                "[" => self.open_bracket(),
                "]" | "+" | "-" | "*" => self.token(text),
                // Operand separators, decorator braces, a stray colon: not tokens.
                other => self.words(other),
            },
            FormatterTextKind::Keyword => match text {
                "ptr" | "fpuenv14" | "fpuenv28" | "fpustate94" | "fpustate108" | "mem384" => {}
                "tbyte" => self.token("tword"),
                other => self.words(other),
            },
            // x87 `st` (iced's name for the implicit st(0)) -> `st0`; `st(1)` becomes `st1` below.
            FormatterTextKind::Register if text == "st" => self.token("st0"),
            _ => self.words(text),
        }
    }

    fn write_register(
        &mut self,
        _instruction: &Instruction,
        _operand: u32,
        _instruction_operand: Option<u32>,
        text: &str,
        register: Register,
    ) {
        if let Some(segment) = segment_name(register) {
            self.flush_segment();
            self.pending_segment = Some(segment);
            self.segment_colon = false;
            return;
        }
        self.write(text, FormatterTextKind::Register);
    }

    fn write_number(
        &mut self,
        instruction: &Instruction,
        _operand: u32,
        _instruction_operand: Option<u32>,
        text: &str,
        value: u64,
        _number_kind: NumberKind,
        _kind: FormatterTextKind,
    ) {
        self.flush_segment();
        let after_segment_plus = std::mem::take(&mut self.after_segment_plus);
        // `fs:[-0xf8]` (a thread-local variable): iced writes the bare displacement as the 64-bit
        // address it sign-extends to; write it as a negative offset from the segment instead.
        if after_segment_plus
            && !self.ip_relative
            && instruction.memory_base() == Register::None
            && instruction.memory_index() == Register::None
            && (value as i64) < 0
            && self.text.ends_with(" +")
        {
            self.text.pop();
            self.text.push('-');
            self.token(&value.wrapping_neg().to_string());
            return;
        }
        // With the options set in `Disassembler::new` iced writes plain decimal digits (a negative
        // displacement's `-` comes as its own operator piece); never let anything else through.
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            self.token(text);
        } else {
            self.token(&value.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_magic_check() {
        assert!(!is_elf_x86_64(b"hello world, this is not an ELF file"));
        assert!(!is_elf_x86_64(b"\x7fELF"));
        let mut header = [0u8; 64];
        header[..4].copy_from_slice(&elf::ELFMAG);
        header[EI_CLASS] = elf::ELFCLASS64;
        header[EI_DATA] = elf::ELFDATA2LSB;
        header[18] = 62;
        assert!(is_elf_x86_64(&header));
        header[EI_CLASS] = elf::ELFCLASS32;
        assert!(!is_elf_x86_64(&header));
        header[EI_CLASS] = elf::ELFCLASS64;
        header[18] = 183; // EM_AARCH64
        assert!(!is_elf_x86_64(&header));
    }

    #[test]
    fn empty_and_invalid_code() {
        assert_eq!(disassemble_code(&[], 0), "");
        // 0x06 (push es) is invalid in 64-bit mode.
        assert_eq!(disassemble_code(&[0x06], 0), "");
        // A truncated instruction at the end stops decoding after `ret`.
        assert_eq!(disassemble_code(&[0xc3, 0x48, 0x8b], 0), "ret");
    }
}
