//! `maskedlm disassemble`: binaries in, a corpus Parquet file of functions out.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::data::disassemble::{FileFunctions, disassemble_file};
use crate::data::parquet::{CorpusRow, TokenizedRow, write_corpus};
use crate::data::tokenizer::InstructionTokenizer;
use crate::error::{Error, Result};

/// What a disassembly run read and wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorpusSummary {
    pub elf_files: usize,
    /// Files that are not ELF x86-64: skipped, not fatal.
    pub skipped_not_elf: usize,
    /// ELF files that could not be read, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    pub functions: usize,
}

/// Files named directly, plus the files directly inside named directories (sorted).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .map_err(|e| Error::io(format!("reading {}", input.display()), e))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| Error::io(format!("listing {}", input.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Disassembles every function of every ELF x86-64 file into corpus rows (`id` is
/// `FILE:0xADDRESS`), in input order.
pub fn corpus_rows(files: &[PathBuf], progress: bool) -> (Vec<CorpusRow>, CorpusSummary) {
    let bar = ProgressBar::with_draw_target(
        Some(files.len() as u64),
        if progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:28} {pos}/{len} files  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let mut rows = Vec::new();
    let mut summary = CorpusSummary::default();
    for file in files {
        match disassemble_file(file) {
            Ok(FileFunctions::Elf(functions)) => {
                summary.elf_files += 1;
                rows.extend(functions.into_iter().map(|f| CorpusRow {
                    id: format!("{}:{:#x}", file.display(), f.address),
                    name: f.name,
                    disassembly: f.disassembly,
                }));
            }
            Ok(FileFunctions::NotElf) => summary.skipped_not_elf += 1,
            Err(e) => summary.failed.push((file.clone(), e.to_string())),
        }
        bar.set_message(format!("{} functions", rows.len()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.functions = rows.len();
    (rows, summary)
}

/// The whole command: expands the inputs, disassembles, writes `output`.
pub fn disassemble_to_parquet(
    inputs: &[PathBuf],
    output: &Path,
    progress: bool,
) -> Result<CorpusSummary> {
    let files = expand_inputs(inputs)?;
    let (rows, summary) = corpus_rows(&files, progress);
    write_corpus(output, &rows)?;
    Ok(summary)
}

/// Tokenizes corpus rows as the reference's tokenize does (`id`, `tokens`, `mask`, padded and
/// truncated by the tokenizer); also returns how many rows were truncated.
pub fn tokenize_rows(
    tokenizer: &InstructionTokenizer,
    rows: &[CorpusRow],
) -> Result<(Vec<TokenizedRow>, usize)> {
    let texts: Vec<&str> = rows.iter().map(|r| r.disassembly.as_str()).collect();
    let encodings = tokenizer.encode_batch(&texts)?;
    let truncated = encodings.iter().filter(|e| e.truncated).count();
    let tokenized = rows
        .iter()
        .zip(encodings)
        .map(|(r, e)| TokenizedRow {
            id: r.id.clone(),
            tokens: e.tokens,
            mask: e.mask,
        })
        .collect();
    Ok((tokenized, truncated))
}
