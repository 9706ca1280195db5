//! `maskedlm disassemble`: binaries in, a corpus Parquet file of functions out.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::data::disassemble::{FileFunctions, disassemble_bytes, has_symbol_table};
use crate::data::parquet::{CorpusRow, TokenizedRow, write_corpus};
use crate::data::tokenizer::InstructionTokenizer;
use crate::error::{Error, Result};

/// What a disassembly run read and wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorpusSummary {
    /// Files read that are ELF x86-64 (whether or not functions were found in them).
    pub elf_files: usize,
    /// Paths that named a file already read (a symlink or hard link to it): not read again.
    pub duplicates_skipped: usize,
    /// Files that are not ELF x86-64: skipped, not fatal.
    pub skipped_not_elf: usize,
    /// ELF files that could not be read, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// ELF files without a symbol table, with the functions found in them (their exported ones).
    pub stripped: Vec<(PathBuf, usize)>,
    /// ELF files in which no function was found.
    pub elf_without_functions: usize,
    /// Functions written to the corpus.
    pub functions: usize,
}

/// Files named directly, plus the files directly inside named directories (sorted), each file
/// once: see [`distinct_files`]. Also returns how many duplicate paths were dropped.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, usize)> {
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
    Ok(distinct_files(files))
}

/// What makes two paths the same file: the device and inode the path resolves to (so symlinks
/// and hard links to one file agree), or its canonical path where there are no inodes.
#[cfg(unix)]
type FileKey = (u64, u64);
#[cfg(not(unix))]
type FileKey = PathBuf;

#[cfg(unix)]
fn file_key(path: &Path) -> Option<FileKey> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_key(path: &Path) -> Option<FileKey> {
    std::fs::canonicalize(path).ok()
}

/// `paths` in order, each file once: a path that resolves to a file an earlier path already named
/// (a symlink to it, a hard link, the same file named twice) is dropped, so that no function is
/// read twice and lands in both a training and a validation split. Returns the kept paths and how
/// many were dropped. A path that cannot be resolved is kept, for its reader to report.
pub fn distinct_files(paths: impl IntoIterator<Item = PathBuf>) -> (Vec<PathBuf>, usize) {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    let mut dropped = 0;
    for path in paths {
        match file_key(&path) {
            Some(key) if !seen.insert(key) => dropped += 1,
            _ => kept.push(path),
        }
    }
    (kept, dropped)
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
        let read = std::fs::read(file)
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))
            .and_then(|data| {
                let functions = disassemble_bytes(file, &data)?;
                Ok((functions, has_symbol_table(&data)))
            });
        match read {
            Ok((FileFunctions::Elf(functions), symbol_table)) => {
                summary.elf_files += 1;
                if !symbol_table {
                    summary.stripped.push((file.clone(), functions.len()));
                }
                if functions.is_empty() {
                    summary.elf_without_functions += 1;
                }
                rows.extend(functions.into_iter().map(|f| CorpusRow {
                    id: format!("{}:{:#x}", file.display(), f.address),
                    name: f.name,
                    disassembly: f.disassembly,
                }));
            }
            Ok((FileFunctions::NotElf, _)) => summary.skipped_not_elf += 1,
            Err(e) => summary.failed.push((file.clone(), e.to_string())),
        }
        bar.set_message(format!("{} functions", rows.len()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.functions = rows.len();
    (rows, summary)
}

/// The whole command: expands the inputs (each file once), disassembles, writes `output`.
///
/// Finding no function at all is an [`Error::Disassembly`] that says why (the files were not ELF
/// x86-64, could not be read, were stripped of their symbols, ...), and nothing is written: an
/// empty corpus would only fail later, in tokenizer training.
pub fn disassemble_to_parquet(
    inputs: &[PathBuf],
    output: &Path,
    progress: bool,
) -> Result<CorpusSummary> {
    let (files, duplicates) = expand_inputs(inputs)?;
    let (rows, mut summary) = corpus_rows(&files, progress);
    summary.duplicates_skipped = duplicates;
    if rows.is_empty() {
        let named: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Disassembly {
            path: PathBuf::from(named.join(", ")),
            reason: no_functions_reason(files.len(), &summary),
        });
    }
    write_corpus(output, &rows)?;
    Ok(summary)
}

/// Why a run found no function, from its summary of `files` files.
fn no_functions_reason(files: usize, summary: &CorpusSummary) -> String {
    let mut causes = Vec::new();
    if summary.skipped_not_elf > 0 {
        causes.push(format!("{} not ELF x86-64", summary.skipped_not_elf));
    }
    if let Some((path, reason)) = summary.failed.first() {
        causes.push(format!(
            "{} unreadable (first: {}: {reason})",
            summary.failed.len(),
            path.display()
        ));
    }
    let stripped_empty = summary.stripped.iter().filter(|(_, n)| *n == 0).count();
    if stripped_empty > 0 {
        causes.push(format!(
            "{stripped_empty} stripped (no symbol table) and exporting no functions"
        ));
    }
    let unstripped_empty = summary.elf_without_functions - stripped_empty;
    if unstripped_empty > 0 {
        causes.push(format!(
            "{unstripped_empty} ELF with no function symbols that have code"
        ));
    }
    let causes = if causes.is_empty() {
        "the inputs hold no files".to_string()
    } else {
        causes.join("; ")
    };
    format!(
        "no functions found in {files} input file{}: {causes}",
        if files == 1 { "" } else { "s" }
    )
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
