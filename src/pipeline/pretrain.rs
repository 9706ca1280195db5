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
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::evaluate::Totals;
use super::probes;
use crate::checkpoint::save_model;
use crate::data::parquet::read_tokenized;
use crate::data::tokenizer::InstructionTokenizer;
use crate::data::{Example, MaskedLMCollator};
use crate::device::{Device, Precision};
use crate::error::{Error, Result};
use crate::model::{Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size};
use crate::train::metrics::{MetricsWriter, Record, read_records};
use crate::train::plot::plot_metrics;
use crate::train::{Continue, EarlyStopping, Goal, Trainer, TrainerOptions, batches_per_epoch};

/// Everything `pretrain` takes; the defaults are the reference's.
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    pub tokenizer: PathBuf,
    pub dataset: PathBuf,
    pub output: PathBuf,
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
    pub device: Device,
    /// f32, or bf16 mixed precision on a GPU. A resumed run may change it.
    pub precision: Precision,
    /// Default 0; a resumed run keeps its checkpoint's.
    pub seed: Option<u64>,
    pub max_steps: Option<u64>,
    /// Draw a progress bar on standard error.
    pub progress: bool,
}

pub const DEFAULT_BATCH_SIZE: usize = 8;
pub const DEFAULT_EPOCHS: u64 = 48;
pub const DEFAULT_CONFIG: &str = "medium";

impl PretrainOptions {
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
            progress: true,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainSummary {
    pub steps: u64,
    pub epochs_completed: u64,
    pub stopped_early: bool,
    pub last_checkpoint: PathBuf,
    pub validation_f1: Option<f64>,
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
        Config::new(size, vocab, next, mask)
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
        let mut config = Config::new(size, vocab, next, mask);
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

/// Reads tokenized rows and checks they fit the model.
pub fn load_examples(path: &Path, config: &Config) -> Result<Vec<Example>> {
    let rows = read_tokenized(path)?;
    if rows.is_empty() {
        return Err(Error::dataset(path, "it has no rows"));
    }
    for r in &rows {
        if let Some((j, &id)) = r
            .tokens
            .iter()
            .enumerate()
            .find(|(_, id)| **id < 0 || **id as usize >= config.vocab_size)
        {
            return Err(Error::dataset(
                path,
                format!(
                    "row {:?}: token id {id} at position {j} is not below vocab_size {}",
                    r.id, config.vocab_size
                ),
            ));
        }
        if let Some((j, &m)) = r
            .mask
            .iter()
            .enumerate()
            .find(|(_, m)| **m != 0 && **m != 1)
        {
            return Err(Error::dataset(
                path,
                format!(
                    "row {:?}: mask value {m} at position {j} is not 0 or 1",
                    r.id
                ),
            ));
        }
        if r.tokens.len() > config.sequence_length {
            return Err(Error::dataset(
                path,
                format!(
                    "row {:?} has {} tokens but the model's sequence_length is {}",
                    r.id,
                    r.tokens.len(),
                    config.sequence_length
                ),
            ));
        }
    }
    Ok(rows.into_iter().map(|r| r.example()).collect())
}

/// The collator that masks the validation rows: a fixed seed, so every epoch is scored on the
/// same masks.
fn validation_collator(config: &Config, seed: u64) -> Result<MaskedLMCollator> {
    MaskedLMCollator::new(
        config.mask_token_id,
        config.vocab_size,
        crate::data::collator::DEFAULT_PROBABILITY,
        seed,
    )
}

/// Whether the validation masks leave anything to score; checked before training, so a set too
/// small to score fails at once rather than after the first epoch.
fn validation_has_masks(
    config: &Config,
    rows: &[Example],
    batch_size: usize,
    seed: u64,
) -> Result<bool> {
    let mut collator = validation_collator(config, seed)?;
    for chunk in rows.chunks(batch_size) {
        if collator
            .collate(chunk)?
            .labels
            .to_vec_i32()?
            .iter()
            .any(|&l| l != -100)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Validation loss and F1 (masked-token accuracy) under a collator with a fixed seed, so every
/// epoch is scored on the same masks.
pub fn validate(
    model: &Model,
    rows: &[Example],
    batch_size: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let mut collator = validation_collator(model.config(), seed)?;
    let mut totals = Totals::default();
    for chunk in rows.chunks(batch_size) {
        let batch = collator.collate(chunk)?;
        totals.add(model.evaluate(&batch.tokens, &batch.mask, &batch.labels))?;
    }
    totals.finish()
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

/// Runs (or resumes) pretraining.
pub fn pretrain(options: &PretrainOptions) -> Result<PretrainSummary> {
    let tokenizer = InstructionTokenizer::load(&options.tokenizer)?;
    std::fs::create_dir_all(&options.output)
        .map_err(|e| Error::io(format!("creating {}", options.output.display()), e))?;
    let last = options.output.join("last");
    let best = options.output.join("best");
    let metrics_path = options.output.join("metrics.jsonl");
    let plot_path = options.output.join("metrics.png");

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
            let config = resolve_config(
                options.config.as_deref().unwrap_or(DEFAULT_CONFIG),
                &tokenizer,
                options.learning_rate,
                options.warmup,
            )?;
            let train = load_examples(&options.dataset, &config)?;
            let batch_size = options.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
            let epochs = options.epochs.unwrap_or(DEFAULT_EPOCHS);
            let total = epochs
                .checked_mul(batches_per_epoch(train.len(), batch_size))
                .ok_or_else(|| Error::Config(format!("--epochs {epochs} is too large")))?;
            let seed = options.seed.unwrap_or(0);
            let model =
                Model::new(config, options.device, seed)?.with_precision(options.precision)?;
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
    let batch_size = trainer.state().batch_size;
    // Unless told otherwise, run to the end of the schedule the run was planned with.
    let epochs = options.epochs.unwrap_or_else(|| {
        (trainer.state().total_steps / batches_per_epoch(train.len(), batch_size).max(1)).max(1)
    });
    let total = options.max_steps.map_or(trainer.state().total_steps, |m| {
        m.min(trainer.state().total_steps)
    });

    let resume_step = options.checkpoint.as_ref().map(|_| trainer.state().step);
    let validation_seed = trainer.state().dropout_seed.wrapping_add(1);
    if let (Some(rows), Some(path)) = (&validation, &options.validation)
        && !validation_has_masks(&config, rows, batch_size, validation_seed)?
    {
        return Err(Error::dataset(
            path,
            "the validation collator masks no token of it (too few real tokens to score)",
        ));
    }
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
        options.max_steps,
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
                .map(|rows| validate(&t.model, rows, batch_size, validation_seed))
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

    // A run cut short by --max-steps mid-epoch still leaves a checkpoint to resume from.
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
