//! The main job on built-in defaults: this machine's own binaries in, a trained `tiny` model and
//! filled probes out, with every intermediate file left in one work folder:
//!
//! ```text
//! WORK/corpus.parquet          functions disassembled from system binaries and libraries
//! WORK/tokenizer.json          the reference's tokenizer recipe trained on that corpus
//! WORK/train.parquet           tokenized functions (95%)
//! WORK/validation.parquet      tokenized functions (5%)
//! WORK/model/                  checkpoints (last, best), metrics.jsonl, metrics.png
//! ```

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::corpus::{CorpusSummary, corpus_rows, distinct_files, tokenize_rows};
use super::pretrain::{PretrainOptions, PretrainSummary, pretrain};
use crate::checkpoint::load_model;
use crate::data::parquet::{CorpusRow, TokenizedRow, write_corpus, write_tokenized};
use crate::data::synthetic;
use crate::data::tokenizer::InstructionTokenizer;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::train::batches_per_epoch;

/// Where the built-in job looks for binaries, in order.
pub const BINARY_DIRECTORIES: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/bin",
    "/usr/sbin",
    "/lib/x86_64-linux-gnu",
];

/// What [`quickstart`] takes; [`Default`] gives the built-in job.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// The work folder (default `maskedlm-quickstart`); its `model/` run is replaced.
    pub work: PathBuf,
    /// Stop collecting binaries once this many functions are found (default 20,000).
    pub max_functions: usize,
    /// Optimiser steps to aim for (default 1,500), rounded up to whole epochs and bounded to 1
    /// to 48 epochs.
    pub target_steps: u64,
    /// Rows per training batch (default 32).
    pub batch_size: usize,
    /// The tokenizer's BPE vocabulary size over immediates (default 4096).
    pub vocab_size: usize,
    /// The peak learning rate (default 1e-3), overriding the `tiny` preset's.
    pub learning_rate: f64,
    /// Where the model trains (default the best device available).
    pub device: Device,
    /// Seeds the shuffle before the validation split, any synthetic functions and the model
    /// (default 0).
    pub seed: u64,
    /// Print each binary's function count and draw the training progress bar.
    pub progress: bool,
}

impl Default for QuickstartOptions {
    fn default() -> Self {
        QuickstartOptions {
            work: PathBuf::from("maskedlm-quickstart"),
            max_functions: 20_000,
            target_steps: 1_500,
            batch_size: 32,
            vocab_size: 4096,
            learning_rate: 1e-3,
            device: Device::best_available(),
            seed: 0,
            progress: true,
        }
    }
}

/// Binaries of this machine in a fixed (sorted) order; files of 16 KiB to 8 MiB only, so one huge
/// library cannot dominate, and each file once however many links name it.
fn candidate_binaries() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in BINARY_DIRECTORIES {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                std::fs::metadata(p)
                    .map(|m| m.is_file() && (16 << 10..8 << 20).contains(&m.len()))
                    .unwrap_or(false)
            })
            .collect();
        names.sort();
        files.extend(names);
    }
    distinct_files(files).0
}

/// Disassembles candidate binaries until `max_functions` functions are collected.
fn collect_corpus(max_functions: usize, progress: bool) -> (Vec<CorpusRow>, CorpusSummary, usize) {
    let mut rows = Vec::new();
    let mut total = CorpusSummary::default();
    let mut files_used = 0;
    for file in candidate_binaries() {
        if rows.len() >= max_functions {
            break;
        }
        let (mut found, summary) = corpus_rows(std::slice::from_ref(&file), false);
        // Functions too small to mask are noise for pretraining.
        found.retain(|r| r.disassembly.split_whitespace().count() >= 8);
        if !found.is_empty() {
            files_used += 1;
            if progress {
                eprintln!("  {}: {} functions", file.display(), found.len());
            }
        }
        total.elf_files += summary.elf_files;
        total.skipped_not_elf += summary.skipped_not_elf;
        total.failed.extend(summary.failed);
        rows.extend(found);
    }
    rows.truncate(max_functions);
    total.functions = rows.len();
    (rows, total, files_used)
}

/// Runs the whole workflow and returns the pretraining summary.
pub fn quickstart(options: &QuickstartOptions) -> Result<PretrainSummary> {
    let work = &options.work;
    std::fs::create_dir_all(work)
        .map_err(|e| Error::io(format!("creating {}", work.display()), e))?;
    println!("work folder: {}", work.display());

    println!("\n[1/4] disassembling this machine's binaries");
    let (mut rows, summary, files_used) = collect_corpus(options.max_functions, options.progress);
    println!(
        "  {} functions from {files_used} ELF files ({} files were not ELF x86-64, {} could not be read)",
        rows.len(),
        summary.skipped_not_elf,
        summary.failed.len()
    );
    if rows.len() < 1000 {
        // Not a Linux x86-64 machine, or a very bare one: top up with the built-in corpus.
        let needed = 2000 - rows.len();
        println!("  too few functions to train on; adding {needed} synthetic functions");
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        rows.extend((0..needed).map(|i| CorpusRow {
            id: format!("synthetic:{i}"),
            name: format!("synthetic_{i}"),
            disassembly: synthetic::generate_function(&mut rng),
        }));
    }
    let corpus_path = work.join("corpus.parquet");
    write_corpus(&corpus_path, &rows)?;

    println!("\n[2/4] training the tokenizer");
    let sequence_length = crate::model::Size::TINY.sequence_length;
    let tokenizer = InstructionTokenizer::train(
        rows.iter().map(|r| r.disassembly.as_str()),
        options.vocab_size,
        sequence_length,
    )?;
    let tokenizer_path = work.join("tokenizer.json");
    tokenizer.save(&tokenizer_path)?;
    println!(
        "  {} tokens, sequence length {sequence_length} -> {}",
        tokenizer.vocab_size(),
        tokenizer_path.display()
    );

    println!("\n[3/4] tokenizing");
    // The reference shuffles before its loader; hold out 5% for validation.
    rows.shuffle(&mut ChaCha8Rng::seed_from_u64(options.seed));
    let (tokenized, _) = tokenize_rows(&tokenizer, &rows)?;
    let held_out = (tokenized.len() / 20).max(1);
    let (train_rows, validation_rows) = tokenized.split_at(tokenized.len() - held_out);
    let train_path = work.join("train.parquet");
    let validation_path = work.join("validation.parquet");
    write_tokenized(&train_path, train_rows)?;
    write_tokenized(&validation_path, validation_rows)?;
    println!(
        "  {} training and {} validation rows",
        train_rows.len(),
        validation_rows.len()
    );

    println!("\n[4/4] pretraining the tiny model");
    let batches = batches_per_epoch(train_rows.len(), options.batch_size);
    let epochs = options.target_steps.div_ceil(batches).clamp(1, 48);
    let output = work.join("model");
    let mut pretrain_options =
        PretrainOptions::new(tokenizer_path.clone(), train_path, output.clone());
    pretrain_options.validation = Some(validation_path);
    pretrain_options.batch_size = Some(options.batch_size);
    pretrain_options.epochs = Some(epochs);
    pretrain_options.learning_rate = Some(options.learning_rate);
    pretrain_options.config = Some("tiny".into());
    pretrain_options.device = options.device;
    pretrain_options.seed = Some(options.seed);
    pretrain_options.progress = options.progress;
    // The work folder is the quickstart's own: running it again starts its model afresh.
    pretrain_options.overwrite = true;
    println!(
        "  {epochs} epochs of {batches} batches of {} on {}",
        options.batch_size, options.device
    );
    let result = pretrain(&pretrain_options)?;

    println!("\nfill-mask probes (the reference's), after training:");
    for (probe, filled) in &result.probes {
        println!("  {probe:<78} -> {filled}");
    }
    show_real_function(
        &result.last_checkpoint,
        &tokenizer,
        validation_rows,
        options.device,
    )?;
    println!("\neverything is in {}:", work.display());
    for entry in [
        "corpus.parquet",
        "tokenizer.json",
        "train.parquet",
        "validation.parquet",
        "model/",
    ] {
        println!("  {}", Path::new(&work).join(entry).display());
    }
    Ok(result)
}

/// Masks the first token (the mnemonic) of every third instruction of a held-out function and
/// shows what the model puts there. Works on token ids, so nothing is re-tokenized.
fn show_real_function(
    checkpoint: &Path,
    tokenizer: &InstructionTokenizer,
    validation: &[TokenizedRow],
    device: Device,
) -> Result<()> {
    let model = load_model(checkpoint, device)?;
    let Some(row) = validation.iter().find(|r| r.mask.iter().sum::<i32>() >= 24) else {
        return Ok(());
    };
    let next = tokenizer.next_token_id();
    let mask = tokenizer.mask_token_id();
    // The first eight instructions.
    let mut original = Vec::new();
    let mut instructions = 0;
    for (&t, &m) in row.tokens.iter().zip(&row.mask) {
        if m == 0 {
            break;
        }
        if t == next {
            instructions += 1;
            if instructions == 8 {
                break;
            }
        }
        original.push(t);
    }
    let mut masked = original.clone();
    let mut index = 0;
    for j in 0..masked.len() {
        if j == 0 || original[j - 1] == next {
            if index % 3 == 1 {
                masked[j] = mask;
            }
            index += 1;
        }
    }
    let filled = model.infer(&Tensor::from_i32(&[masked.len()], masked.clone())?, None)?;
    println!("\na held-out function ({}), mnemonics masked:", row.id);
    println!("  original: {}", tokenizer.decode(&original)?);
    println!("  masked:   {}", tokenizer.decode(&masked)?);
    println!("  filled:   {}", tokenizer.decode(&filled.to_vec_i32()?)?);
    Ok(())
}
