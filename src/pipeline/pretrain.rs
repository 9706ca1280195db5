//! `maskedlm pretrain`: the reference's pretraining job.
//!
//! Tokenized Parquet rows are read in order (no shuffling: the reference shuffles before, not in,
//! the loader), batched with the last partial batch kept, masked by the collator and trained with
//! AdamW on the warmup + cosine schedule whose total is epochs x batches. After every epoch: the
//! validation loss and F1, early stopping (patience 5, min_delta 0.001, on validation F1 or
//! without validation on the training loss), the reference's probes, a training checkpoint written
//! atomically to `OUTPUT/last` (and the model alone to `OUTPUT/best` when the monitored value
//! improves), `OUTPUT/metrics.jsonl` and its plot `OUTPUT/metrics.png`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use super::dataset::load_examples;
use super::evaluate::{EVALUATION_SEED, evaluation_batches, score};
use super::probes;
use crate::checkpoint::save_model;
use crate::data::Example;
use crate::data::tokenizer::InstructionTokenizer;
use crate::device::{Device, Precision};
use crate::error::{Error, Result};
use crate::model::{Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size};
use crate::train::metrics::{MetricsWriter, Record, read_records};
use crate::train::plot::plot_metrics;
use crate::train::{Continue, EarlyStopping, Goal, Trainer, TrainerOptions, batches_per_epoch};

/// Everything `pretrain` takes; the defaults are the reference's.
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    /// The tokenizer file (`tokenizer.json`); its ids and length must match the configuration's.
    pub tokenizer: PathBuf,
    /// The tokenized training rows (Parquet).
    pub dataset: PathBuf,
    /// The run's folder: `last/`, `best/`, `metrics.jsonl` and `metrics.png` are written there.
    pub output: PathBuf,
    /// Tokenized validation rows (Parquet), scored after every epoch; without them early stopping
    /// monitors the training loss.
    pub validation: Option<PathBuf>,
    /// A training checkpoint to resume from.
    pub checkpoint: Option<PathBuf>,
    /// Default 8; a resumed run keeps its checkpoint's.
    pub batch_size: Option<usize>,
    /// Default 48; a resumed run defaults to the epochs its schedule was planned for.
    pub epochs: Option<u64>,
    /// Overrides the configuration's `lr`.
    pub learning_rate: Option<f64>,
    /// Overrides the configuration's `warmup` fraction.
    pub warmup: Option<f64>,
    /// A preset name or a JSON file of constructor arguments (default `medium`); a resumed run
    /// keeps its checkpoint's.
    pub config: Option<String>,
    /// Where the model runs (default the CPU).
    pub device: Device,
    /// f32, or bf16 mixed precision (a GPU, or a CPU with AVX512_BF16). A resumed run may change it.
    pub precision: Precision,
    /// Default 0; a resumed run keeps its checkpoint's.
    pub seed: Option<u64>,
    /// Stop after this many optimiser steps in all. A new run plans its learning-rate schedule
    /// over `min(max_steps, epochs x batches)` steps, as Lightning's `estimated_stepping_batches`
    /// does; a resumed run keeps the schedule it was planned with.
    pub max_steps: Option<u64>,
    /// Replace a run already in `output` (its `last/`, `best/` and metrics) instead of refusing.
    pub overwrite: bool,
    /// When this flag is set (by a Ctrl-C handler), training stops after the step in progress and
    /// `OUTPUT/last` is written; the summary says `interrupted`.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Draw a progress bar on standard error.
    pub progress: bool,
}

/// Rows per batch when [`PretrainOptions::batch_size`] is not given (the reference's).
pub const DEFAULT_BATCH_SIZE: usize = 8;
/// Epochs when [`PretrainOptions::epochs`] is not given (the reference's).
pub const DEFAULT_EPOCHS: u64 = 48;
/// The model preset when [`PretrainOptions::config`] is not given (the reference's).
pub const DEFAULT_CONFIG: &str = "medium";

impl PretrainOptions {
    /// A new run on the CPU in f32 with every other option at its default, a progress bar, and
    /// no overwriting of an existing run.
    pub fn new(tokenizer: PathBuf, dataset: PathBuf, output: PathBuf) -> Self {
        PretrainOptions {
            tokenizer,
            dataset,
            output,
            validation: None,
            checkpoint: None,
            batch_size: None,
            epochs: None,
            learning_rate: None,
            warmup: None,
            config: None,
            device: Device::Cpu,
            precision: Precision::F32,
            seed: None,
            max_steps: None,
            overwrite: false,
            interrupt: None,
            progress: true,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainSummary {
    /// Optimiser steps taken in all, counting those before a resume.
    pub steps: u64,
    /// Epochs finished in all, counting those before a resume.
    pub epochs_completed: u64,
    /// Early stopping ended the run.
    pub stopped_early: bool,
    /// Stopped by [`PretrainOptions::interrupt`]; `last_checkpoint` holds the step reached.
    pub interrupted: bool,
    /// The training checkpoint written last (`OUTPUT/last`), to resume from.
    pub last_checkpoint: PathBuf,
    /// The validation F1 after the last finished epoch; `None` without validation rows or when
    /// no epoch finished in this run.
    pub validation_f1: Option<f64>,
    /// The reference's fill-mask probes and what the final model filled in.
    pub probes: Vec<(String, String)>,
}

const SIZE_KEYS: [&str; 5] = [
    "depth",
    "hidden_dimensions",
    "heads",
    "intermediate_dimensions",
    "sequence_length",
];
const OTHER_KEYS: [&str; 7] = [
    "vocab_size",
    "mask_token_id",
    "next_token_id",
    "dropout",
    "eps",
    "lr",
    "warmup",
];

/// The model configuration from `--config` (a preset name or a JSON file of the reference's
/// constructor arguments), the tokenizer's ids, and the command-line overrides.
pub fn resolve_config(
    spec: &str,
    tokenizer: &InstructionTokenizer,
    learning_rate: Option<f64>,
    warmup: Option<f64>,
) -> Result<Config> {
    let (vocab, mask, next) = (
        tokenizer.vocab_size(),
        tokenizer.mask_token_id(),
        tokenizer.next_token_id(),
    );
    let mut config = if let Ok(size) = Size::preset(spec) {
        Config::for_tokenizer(size, tokenizer)
    } else {
        let path = Path::new(spec);
        if !path.exists() {
            return Err(Error::Config(format!(
                "--config {spec:?} is neither a preset (tiny, small, medium) nor a file"
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {spec}"), e))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            context: format!("parsing {spec}"),
            source: e,
        })?;
        let object = value.as_object().ok_or_else(|| {
            Error::Config(format!(
                "{spec}: expected a JSON object of constructor arguments"
            ))
        })?;
        if let Some(key) = object
            .keys()
            .find(|k| !SIZE_KEYS.contains(&k.as_str()) && !OTHER_KEYS.contains(&k.as_str()))
        {
            return Err(Error::Config(format!("{spec}: unknown key {key:?}")));
        }
        let size_of = |key: &str| -> Result<usize> {
            object
                .get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config(format!("{spec}: missing or non-integer {key:?}")))
        };
        let size = Size {
            depth: size_of("depth")?,
            hidden_dimensions: size_of("hidden_dimensions")?,
            heads: size_of("heads")?,
            intermediate_dimensions: size_of("intermediate_dimensions")?,
            sequence_length: size_of("sequence_length")?,
        };
        let mut config = Config::for_tokenizer(size, tokenizer);
        for (key, from_tokenizer) in [
            ("vocab_size", vocab as i64),
            ("mask_token_id", mask as i64),
            ("next_token_id", next as i64),
        ] {
            if let Some(v) = object.get(key)
                && v.as_i64() != Some(from_tokenizer)
            {
                return Err(Error::Config(format!(
                    "{spec}: {key} is {v} but the tokenizer's is {from_tokenizer}"
                )));
            }
        }
        let float = |key: &str| object.get(key).and_then(|v| v.as_f64());
        if let Some(v) = float("dropout") {
            config.dropout = v as f32;
        }
        if let Some(v) = float("eps") {
            config.eps = v as f32;
        }
        if let Some(v) = float("lr") {
            config.lr = v;
        }
        if let Some(v) = float("warmup") {
            config.warmup = v;
        }
        config
    };
    if let Some(lr) = learning_rate {
        config.lr = lr;
    }
    if let Some(w) = warmup {
        config.warmup = w;
    }
    config.validate()?;
    Ok(config)
}

/// Whether the validation masks leave anything to score; checked before training, so a set too
/// small to score fails at once rather than after the first epoch.
fn validation_has_masks(
    config: &Config,
    rows: &[Example],
    batch_size: usize,
    seed: u64,
) -> Result<bool> {
    for batch in evaluation_batches(config, rows, batch_size, seed)? {
        if batch?.labels.to_vec_i32()?.iter().any(|&l| l != -100) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn progress_bar(total: u64, position: u64, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:28} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(position);
    bar
}

/// Kept here too, where the pretraining checks are.
pub use crate::checkpoint::check_tokenizer_matches;

/// On resume the checkpoint fixes the model, batch size, seed and schedule: a flag that asks for
/// something else is an error rather than silently ignored.
fn check_resume_flags(
    options: &PretrainOptions,
    trainer: &Trainer,
    tokenizer: &InstructionTokenizer,
) -> Result<()> {
    let state = trainer.state();
    let config = trainer.model.config();
    let conflict = |flag: &str, given: String, kept: String| {
        Err(Error::Config(format!(
            "{flag} {given} differs from the checkpoint's {kept}; a resumed run keeps its checkpoint's (drop the flag)"
        )))
    };
    if let Some(b) = options.batch_size.filter(|&b| b != state.batch_size) {
        return conflict("--batch-size", b.to_string(), state.batch_size.to_string());
    }
    if let Some(seed) = options.seed.filter(|&s| s != state.dropout_seed) {
        return conflict("--seed", seed.to_string(), state.dropout_seed.to_string());
    }
    if let Some(lr) = options.learning_rate.filter(|&lr| lr != config.lr) {
        return conflict("--learning-rate", lr.to_string(), config.lr.to_string());
    }
    if let Some(w) = options.warmup.filter(|&w| w != config.warmup) {
        return conflict("--warmup", w.to_string(), config.warmup.to_string());
    }
    if let Some(spec) = &options.config {
        let asked = resolve_config(spec, tokenizer, Some(config.lr), Some(config.warmup))?;
        if asked != *config {
            return conflict("--config", spec.clone(), "config.json".into());
        }
    }
    Ok(())
}

/// Says which model trains where, and for how long: the default configuration is the
/// reference's `medium`, which a first try on a CPU should not get by surprise.
fn announce(
    model: &Model,
    spec: &str,
    options: &PretrainOptions,
    rows: usize,
    batch_size: usize,
    total: u64,
) {
    let defaulted = if options.config.is_none() {
        " (the default)"
    } else {
        ""
    };
    eprintln!(
        "model: {spec}{defaulted}, {} parameters, on {} ({}); {rows} rows in batches of {batch_size}, {total} steps",
        model.num_parameters(),
        model.device(),
        model.precision()
    );
    if options.config.is_none() && model.device() == Device::Cpu {
        eprintln!(
            "note: --config defaults to the reference's {DEFAULT_CONFIG} model, slow on a CPU; --config tiny trains a small one in minutes"
        );
    }
}

/// What is already in an output folder from an earlier run.
fn earlier_run_files(output: &Path) -> Vec<PathBuf> {
    ["last", "best", "metrics.jsonl", "metrics.png"]
        .iter()
        .map(|name| output.join(name))
        .filter(|path| path.exists())
        .collect()
}

/// A new run refuses an output folder that holds another run, unless told to replace it; a run
/// resumed from that folder's own `last/` continues it.
fn prepare_output(options: &PretrainOptions) -> Result<()> {
    let earlier = earlier_run_files(&options.output);
    let last = options.output.join("last");
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    let continues_it = options
        .checkpoint
        .as_deref()
        .is_some_and(|c| same(c, &last));
    if earlier.is_empty() || continues_it {
        return Ok(());
    }
    if !options.overwrite {
        let names: Vec<String> = earlier
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        return Err(Error::Config(format!(
            "{} already holds a run ({}): resume it with --checkpoint {}, write to another folder, or pass --overwrite to replace it",
            options.output.display(),
            names.join(", "),
            last.display()
        )));
    }
    for path in earlier {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

/// Runs (or resumes) pretraining.
///
/// Everything is read and checked (tokenizer, configuration, datasets, the output folder) before
/// the output folder is created, so a run that cannot start leaves nothing behind.
pub fn pretrain(options: &PretrainOptions) -> Result<PretrainSummary> {
    let tokenizer = InstructionTokenizer::load(&options.tokenizer)?;
    let last = options.output.join("last");
    let best = options.output.join("best");
    let metrics_path = options.output.join("metrics.jsonl");
    let plot_path = options.output.join("metrics.png");
    if options.max_steps == Some(0) {
        return Err(Error::Config("--max-steps must be at least 1".into()));
    }

    // The dataset is read once, checked against the model's configuration.
    let (mut trainer, train) = match &options.checkpoint {
        Some(checkpoint) => {
            let mut trainer = Trainer::resume_with(checkpoint, options.device, options.precision)?;
            check_tokenizer_matches(trainer.model.config(), &tokenizer).map_err(|reason| {
                Error::checkpoint(
                    checkpoint,
                    format!("{reason} ({})", options.tokenizer.display()),
                )
            })?;
            trainer.set_tokenizer(Some(tokenizer.clone()))?;
            check_resume_flags(options, &trainer, &tokenizer)?;
            let train = load_examples(&options.dataset, trainer.model.config())?;
            (trainer, train)
        }
        None => {
            let spec = options.config.as_deref().unwrap_or(DEFAULT_CONFIG);
            let config = resolve_config(spec, &tokenizer, options.learning_rate, options.warmup)?;
            // Before the rows: a tokenizer longer than the model explains why they do not fit.
            check_tokenizer_matches(&config, &tokenizer).map_err(|e| match e {
                Error::Config(reason) => Error::Config(format!(
                    "--config {spec} with {}: {reason}, then tokenize the corpus again",
                    options.tokenizer.display()
                )),
                other => other,
            })?;
            let train = load_examples(&options.dataset, &config)?;
            let batch_size = options.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
            let epochs = options.epochs.unwrap_or(DEFAULT_EPOCHS);
            let planned = epochs
                .checked_mul(batches_per_epoch(train.len(), batch_size))
                .ok_or_else(|| Error::Config(format!("--epochs {epochs} is too large")))?;
            // The schedule spans the steps that will run, as Lightning plans it
            // (`estimated_stepping_batches`): a short try warms up and decays within its steps.
            let total = options.max_steps.map_or(planned, |m| m.min(planned));
            let seed = options.seed.unwrap_or(0);
            let model =
                Model::new(config, options.device, seed)?.with_precision(options.precision)?;
            announce(&model, spec, options, train.len(), batch_size, total);
            let trainer = Trainer::new(
                model,
                TrainerOptions {
                    batch_size,
                    total_steps: total,
                    seed,
                    tokenizer: Some(tokenizer.clone()),
                },
            )?;
            (trainer, train)
        }
    };
    let config = trainer.model.config().clone();
    let validation = options
        .validation
        .as_ref()
        .map(|v| load_examples(v, &config))
        .transpose()?;
    if trainer.early_stopping_mut().is_none() {
        let goal = if validation.is_some() {
            Goal::Maximise
        } else {
            Goal::Minimise
        };
        *trainer.early_stopping_mut() = Some(EarlyStopping::new(goal));
    }
    if let Some(flag) = &options.interrupt {
        trainer.stop_when(flag.clone());
    }
    let batch_size = trainer.state().batch_size;
    // A resumed run keeps its schedule, after whose end the learning rate is 0.
    if let Some(e) = options.epochs.filter(|_| options.checkpoint.is_some()) {
        let asked = e.saturating_mul(batches_per_epoch(train.len(), batch_size));
        let planned = trainer.state().total_steps;
        if asked > planned {
            return Err(Error::Config(format!(
                "--epochs {e} asks for {asked} steps, past the {planned} this run's learning-rate schedule was planned for (its rate is 0 after them); drop the flag to finish the run"
            )));
        }
    }
    // Unless told otherwise, run to the end of the schedule the run was planned with.
    let epochs = options.epochs.unwrap_or_else(|| {
        trainer
            .state()
            .total_steps
            .div_ceil(batches_per_epoch(train.len(), batch_size).max(1))
            .max(1)
    });
    let total = options.max_steps.map_or(trainer.state().total_steps, |m| {
        m.min(trainer.state().total_steps)
    });
    // A run planned with --max-steps ends where its schedule does, resumed or not.
    let stop_at = options.max_steps.or_else(|| {
        options
            .epochs
            .is_none()
            .then_some(trainer.state().total_steps)
    });

    let resume_step = options.checkpoint.as_ref().map(|_| trainer.state().step);
    // The seed `evaluate` masks with, so `evaluate` of OUTPUT/last on the validation file
    // reproduces the logged validation scores.
    if let (Some(rows), Some(path)) = (&validation, &options.validation)
        && !validation_has_masks(&config, rows, batch_size, EVALUATION_SEED)?
    {
        return Err(Error::dataset(
            path,
            "the validation collator masks no token of it (too few real tokens to score)",
        ));
    }
    prepare_output(options)?;
    std::fs::create_dir_all(&options.output)
        .map_err(|e| Error::io(format!("creating {}", options.output.display()), e))?;
    // Both callbacks append to the metrics file.
    let metrics = RefCell::new(MetricsWriter::open(&metrics_path, resume_step)?);
    let bar = progress_bar(total, trainer.state().step, options.progress);
    let start = Instant::now();
    let start_step = trainer.state().step;
    let mut tokens_seen = 0usize;
    let mut last_probes = Vec::new();
    let mut last_f1 = None;
    let mut saved_step = trainer.state().step;

    let outcome = trainer.train(
        &train,
        epochs,
        stop_at,
        |t, report| {
            tokens_seen += report.tokens;
            let rate = tokens_seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {rate:.0} tok/s",
                report.loss, report.lr
            ));
            bar.set_position(report.step);
            metrics.borrow_mut().write(&Record::Step {
                step: report.step,
                epoch: t.state().epoch + 1,
                loss: Some(report.loss).filter(|l| l.is_finite()),
                lr: report.lr,
                tokens: report.tokens,
                tokens_per_second: rate,
            })
        },
        |t, end| {
            let scores = validation
                .as_ref()
                .map(|rows| score(&t.model, rows, batch_size, EVALUATION_SEED))
                .transpose()?;
            let monitored = scores.map_or(end.mean_loss, |(_, f1)| f1);
            let early = t.early_stopping_mut().as_mut().expect("set above");
            let improved = early.update(monitored);
            let stop = early.should_stop();
            let filled = probes::fill_all(&t.model, &tokenizer)?;
            metrics.borrow_mut().write(&Record::Epoch {
                epoch: end.epoch,
                step: t.state().step,
                train_loss: end.mean_loss,
                validation_loss: scores.map(|s| s.0),
                validation_f1: scores.map(|s| s.1),
                probes: filled.clone(),
            })?;
            t.save(&last)?;
            saved_step = t.state().step;
            if improved {
                save_model(&best, &t.model, t.tokenizer())?;
            }
            plot_metrics(&read_records(&metrics_path)?, &plot_path)?;
            let mut line = format!("epoch {}: training loss {:.4}", end.epoch, end.mean_loss);
            if let Some((loss, f1)) = scores {
                line += &format!(", validation loss {loss:.4}, F1 {f1:.4}");
            }
            // Printed around the bar (and also when the bar is hidden, e.g. output to a file).
            bar.suspend(|| {
                println!("{line}");
                for (probe, out) in &filled {
                    println!("    {probe}  ->  {out}");
                }
            });
            last_probes = filled;
            last_f1 = scores.map(|s| s.1);
            Ok(if stop { Continue::Stop } else { Continue::Yes })
        },
    )?;
    bar.finish_and_clear();

    // A run cut short mid-epoch (by --max-steps or an interrupt) still leaves a checkpoint to
    // resume from.
    if trainer.state().step != saved_step || !last.exists() {
        trainer.save(&last)?;
        if last_probes.is_empty() {
            last_probes = probes::fill_all(&trainer.model, &tokenizer)?;
        }
        plot_metrics(&read_records(&metrics_path)?, &plot_path)?;
    }
    let steps_run = trainer.state().step - start_step;
    eprintln!(
        "trained {steps_run} steps in {:.1}s; checkpoint {}",
        start.elapsed().as_secs_f64(),
        last.display()
    );
    Ok(PretrainSummary {
        steps: trainer.state().step,
        epochs_completed: trainer.state().epoch,
        stopped_early: outcome == Continue::Stop,
        interrupted: trainer.stop_requested(),
        last_checkpoint: last,
        validation_f1: last_f1,
        probes: last_probes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> InstructionTokenizer {
        InstructionTokenizer::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_reference.json"),
        )
        .unwrap()
    }

    fn json_config(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        (dir, path.to_str().unwrap().to_string())
    }

    const SIZE: &str = r#""depth": 2, "hidden_dimensions": 32, "heads": 4, "intermediate_dimensions": 64, "sequence_length": 64"#;

    #[test]
    fn presets_take_their_ids_from_the_tokenizer_and_flags_override() {
        let t = tokenizer();
        let c = resolve_config("tiny", &t, Some(3e-4), Some(0.1)).unwrap();
        assert_eq!(
            (c.vocab_size, c.mask_token_id, c.next_token_id),
            (t.vocab_size(), 4, 5)
        );
        assert_eq!((c.lr, c.warmup, c.depth), (3e-4, 0.1, Size::TINY.depth));
    }

    #[test]
    fn json_configs_accept_the_reference_keys_and_check_the_tokenizer_ids() {
        let t = tokenizer();
        let (_d, path) = json_config(&format!(
            r#"{{{SIZE}, "dropout": 0.2, "eps": 1e-6, "lr": 0.01, "mask_token_id": 4}}"#
        ));
        let c = resolve_config(&path, &t, None, None).unwrap();
        assert_eq!(
            (c.hidden_dimensions, c.dropout, c.eps, c.lr),
            (32, 0.2, 1e-6, 0.01)
        );
        assert_eq!(resolve_config(&path, &t, Some(0.5), None).unwrap().lr, 0.5);

        let (_d, path) = json_config(&format!(r#"{{{SIZE}, "vocab_size": 7}}"#));
        let e = resolve_config(&path, &t, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vocab_size is 7") && e.contains(&t.vocab_size().to_string()),
            "{e}"
        );

        let (_d, path) = json_config(&format!(r#"{{{SIZE}, "layers": 3}}"#));
        assert!(
            resolve_config(&path, &t, None, None)
                .unwrap_err()
                .to_string()
                .contains("\"layers\"")
        );

        let (_d, path) = json_config(r#"{"depth": 2}"#);
        assert!(
            resolve_config(&path, &t, None, None)
                .unwrap_err()
                .to_string()
                .contains("hidden_dimensions")
        );
    }
}
