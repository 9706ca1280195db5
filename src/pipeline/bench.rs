//! `maskedlm bench`: training throughput, inference latency and throughput, and peak memory of
//! this crate on one device, for the side-by-side comparison with PyTorch.
//!
//! The metrics, their definitions and the JSON schema are those of `scripts/peer_pytorch.py`, so
//! that `scripts/compare.sh` can put the two in one table:
//!
//! - `train_tokens_per_s`: one full training step (forward with dropout, the masked-LM loss over
//!   the ~15% labelled positions, backward, AdamW) at `batch x seq`, every position real;
//!   tokens = batch x seq, over the median step time.
//! - `infer_latency_b1_ms`: one sequence of `seq` tokens with 15% of them `[MASK]`, from the token
//!   ids on the host to the predicted ids on the host ([`Model::infer_batch`]); median.
//! - `infer_tokens_per_s_b64`: the same for a batch of 64 (or `--infer-batch`) sequences.
//! - `peak_memory_mib`: on a GPU the most device memory the backend's tensors held during a
//!   training step (PyTorch: `torch.cuda.max_memory_allocated`); on the CPU the process's peak
//!   resident set (PyTorch: the same), which includes everything the process ever held.
//! - With a file of function lengths (`benches/data/function_lengths.json`): batches of real
//!   functions' lengths, rows padded to 512 as the tokenizer pads them, run twice: packed (the
//!   variant's own name: only real tokens computed, what training runs) and padded (`f32-padded`:
//!   every position, as the reference computes them). `lengths_pad512_real_tokens_per_s` trains on
//!   them, `lengths_padlongest_real_tokens_per_s` (padded only) trains on the rows cut to each
//!   batch's longest, `lengths_eval_real_tokens_per_s` evaluates them (the evaluation collator's
//!   masks) and `lengths_infer_real_tokens_per_s` fills their `[MASK]`s. Real (unpadded) tokens
//!   over the time of one pass. Batch `i` takes the lengths at `i * batch .. (i + 1) * batch` of
//!   the file (its order is already a random sample), so both implementations run the same
//!   batches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backend::HostTraffic;
use crate::data::{Example, MaskedBatch, RowKeyedCollator};
use crate::device::{Device, Precision};
use crate::error::{Error, Result};
use crate::model::{Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Packing, Size};
use crate::tensor::Tensor;
use crate::train::{Trainer, TrainerOptions};

/// The `[MASK]` and `[NEXT]` ids of the benchmark's vocabulary (the reference tokenizer's order).
const MASK_ID: i32 = 4;
const NEXT_ID: i32 = 5;
/// The first id that is not a special token.
const FIRST_ORDINARY_ID: i32 = 6;
/// The share of positions masked for inference, as the collator masks for training.
const MASKED_SHARE: f64 = 0.15;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub device: Device,
    /// Each precision is measured in turn (bf16 needs a GPU or an AVX512_BF16 CPU).
    pub precisions: Vec<Precision>,
    /// `tiny`, `small` or `medium`.
    pub preset: String,
    pub vocab: usize,
    /// Training batch size.
    pub batch: usize,
    /// Batch size of the inference throughput measurement.
    pub infer_batch: usize,
    /// Measured repetitions of each timing (the median is reported).
    pub repeats: usize,
    /// Unmeasured repetitions before them.
    pub warmup: usize,
    /// A JSON file `{"source": ..., "lengths": [...]}` of function lengths in tokens.
    pub lengths: Option<PathBuf>,
    /// Training batches drawn from `lengths`.
    pub length_batches: usize,
    pub seed: u64,
    /// Show progress bars on standard error.
    pub progress: bool,
}

impl BenchOptions {
    /// The defaults for a device: the `small` preset at batch 8 on the CPU, `medium` at batch 32 on
    /// a GPU; every precision the device runs (f32, and bf16 on a GPU or an AVX512_BF16 CPU).
    pub fn for_device(device: Device) -> Self {
        let gpu = !matches!(device, Device::Cpu);
        BenchOptions {
            device,
            precisions: device.precisions(),
            preset: if gpu { "medium" } else { "small" }.into(),
            vocab: 5000,
            batch: if gpu { 32 } else { 8 },
            infer_batch: 64,
            repeats: if gpu { 20 } else { 5 },
            warmup: if gpu { 3 } else { 1 },
            lengths: None,
            length_batches: 8,
            seed: 0,
            progress: true,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRecord {
    /// `f32` or `bf16`.
    pub variant: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub batch: usize,
    pub seq: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Training FLOPs per token of the model (see [`training_flops_per_token`]), on the
    /// `train_tokens_per_s` records: with the card's matrix rate, the model FLOP utilisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_flops_per_token: Option<f64>,
}

/// Everything one `maskedlm bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub implementation: String,
    pub version: String,
    pub device: String,
    pub preset: String,
    pub vocab: usize,
    pub results: Vec<BenchRecord>,
}

/// The lengths file's contents.
#[derive(Debug, Deserialize)]
struct LengthsFile {
    #[serde(default)]
    source: String,
    lengths: Vec<usize>,
}

/// Reads a lengths file, clipping each length to `1..=seq`.
pub fn read_lengths(path: &Path, seq: usize) -> Result<(String, Vec<usize>)> {
    let bad = |reason: String| Error::dataset(path, reason);
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: LengthsFile =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a lengths file: {e}")))?;
    if file.lengths.is_empty() {
        return Err(bad("no lengths".into()));
    }
    let lengths = file.lengths.iter().map(|&l| l.clamp(1, seq)).collect();
    Ok((file.source, lengths))
}

/// Training FLOPs per token: three times the forward's (forward, then backward's two products per
/// forward product). Per layer and token the forward multiplies by the QKV, output and two
/// feed-forward weights (2 FLOPs per weight) and forms the attention scores and their weighted
/// sum over `seq` keys (4 seq hidden); the head runs only at the ~15% labelled positions. The
/// embedding gathers, LayerNorms and the softmax are not counted, as is usual.
pub fn training_flops_per_token(config: &Config, seq: usize) -> f64 {
    let (h, i, v) = (
        config.hidden_dimensions as f64,
        config.intermediate_dimensions as f64,
        config.vocab_size as f64,
    );
    let layer = 2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * seq as f64 * h;
    let head = MASKED_SHARE * 2.0 * (h * h + h * v);
    3.0 * (config.depth as f64 * layer + head)
}

/// Runs every measurement of `options`.
pub fn run(options: &BenchOptions) -> Result<BenchReport> {
    if options.batch == 0 || options.infer_batch == 0 || options.repeats == 0 {
        return Err(Error::Config(
            "bench: batch, infer batch and repeats must be at least 1".into(),
        ));
    }
    if options.vocab <= FIRST_ORDINARY_ID as usize {
        return Err(Error::Config(format!(
            "bench: a vocabulary of {} has no ordinary token after the {FIRST_ORDINARY_ID} special ones",
            options.vocab
        )));
    }
    let size = Size::preset(&options.preset)?;
    let config = Config::new(size, options.vocab, NEXT_ID, MASK_ID);
    config.validate()?;
    let seq = config.sequence_length;
    let lengths = options
        .lengths
        .as_deref()
        .map(|path| read_lengths(path, seq))
        .transpose()?;

    let mut results = Vec::new();
    for &precision in &options.precisions {
        let model =
            Model::new(config.clone(), options.device, options.seed)?.with_precision(precision)?;
        let mut bench = Bench {
            options,
            seq,
            variant: precision.to_string(),
            trainer: Trainer::new(
                model,
                TrainerOptions {
                    batch_size: options.batch,
                    seed: options.seed,
                    ..TrainerOptions::new(1_000_000)
                },
            )?,
            rng: ChaCha8Rng::seed_from_u64(options.seed),
        };
        results.extend(bench.training(&config)?);
        results.extend(bench.inference()?);
        if let Some((source, lengths)) = &lengths {
            results.extend(bench.real_lengths(source, lengths)?);
        }
    }
    Ok(BenchReport {
        implementation: "undertale-maskedlm".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        device: device_description(options.device),
        preset: options.preset.clone(),
        vocab: options.vocab,
        results,
    })
}

/// The measurements of one precision, sharing a model.
struct Bench<'a> {
    options: &'a BenchOptions,
    seq: usize,
    variant: String,
    trainer: Trainer,
    rng: ChaCha8Rng,
}

impl Bench<'_> {
    fn record(&self, metric: &str, value: f64, unit: &str, batch: usize) -> BenchRecord {
        BenchRecord {
            variant: self.variant.clone(),
            metric: metric.into(),
            value,
            unit: unit.into(),
            batch,
            seq: self.seq,
            note: None,
            model_flops_per_token: None,
        }
    }

    /// Rows of random ordinary tokens, the first `length` of each real.
    fn rows(&mut self, lengths: &[usize], padded_to: usize) -> Vec<Example> {
        let vocab = self.options.vocab as i32;
        lengths
            .iter()
            .map(|&length| Example {
                tokens: (0..padded_to)
                    .map(|j| {
                        if j < length {
                            self.rng.random_range(FIRST_ORDINARY_ID..vocab)
                        } else {
                            0
                        }
                    })
                    .collect(),
                mask: (0..padded_to).map(|j| i32::from(j < length)).collect(),
            })
            .collect()
    }

    fn progress(&self, what: &str, steps: usize) -> ProgressBar {
        if !self.options.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg:<34} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("{} {what}", self.variant));
        bar
    }

    /// `warmup` unmeasured calls of `f`, then the median of `repeats` timed ones.
    fn median_time(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<Duration> {
        let (warmup, repeats) = (self.options.warmup, self.options.repeats);
        let bar = self.progress(what, warmup + repeats);
        let backend = self.trainer.model().shared_backend();
        let mut times = Vec::with_capacity(repeats);
        for i in 0..warmup + repeats {
            let start = Instant::now();
            f(self)?;
            backend.synchronize()?;
            if i >= warmup {
                times.push(start.elapsed());
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        times.sort();
        Ok(times[times.len() / 2])
    }

    fn training(&mut self, config: &Config) -> Result<Vec<BenchRecord>> {
        let (batch, seq) = (self.options.batch, self.seq);
        let rows = self.rows(&vec![seq; batch], seq);
        let backend = self.trainer.model().shared_backend();
        let time = self.median_time("training step", |b| b.trainer.step(&rows).map(|_| ()))?;
        // One more step for the peak: the backend's own count on a GPU, the process's on the CPU.
        backend.reset_peak_memory();
        self.trainer.step(&rows)?;
        backend.synchronize()?;
        let (peak, note) = match backend.memory_use() {
            Some(memory) => (
                Some(memory.peak as f64 / (1 << 20) as f64),
                "device memory held by tensors",
            ),
            None => (peak_resident_mib(), "process peak resident set"),
        };
        let mut train = self.record(
            "train_tokens_per_s",
            (batch * seq) as f64 / time.as_secs_f64(),
            "tokens/s",
            batch,
        );
        train.model_flops_per_token = Some(training_flops_per_token(config, seq));
        let mut records = vec![train];
        if let Some(peak) = peak {
            let mut memory = self.record("peak_memory_mib", peak, "MiB", batch);
            memory.note = Some(note.into());
            records.push(memory);
        }
        // Host traffic of one steady-state step as training runs them: queued while the step
        // before it is in flight, then that step's loss read.
        let in_flight = self.trainer.queue_step(&rows)?;
        let before = backend.host_traffic();
        let queued = self.trainer.queue_step(&rows)?;
        self.trainer.finish_step(in_flight)?;
        let step = backend.host_traffic().since(&before);
        self.trainer.finish_step(queued)?;
        records.extend(self.traffic_records("train_step", &step, batch));
        Ok(records)
    }

    /// The host traffic of one call of `what`, as records.
    fn traffic_records(&self, what: &str, traffic: &HostTraffic, batch: usize) -> Vec<BenchRecord> {
        let note = "host <-> device traffic counted by the backend (zero on the CPU)";
        [
            ("downloads", traffic.downloads as f64, "count"),
            ("download_bytes", traffic.download_bytes as f64, "bytes"),
            ("synchronizations", traffic.synchronizations as f64, "count"),
            ("uploads", traffic.uploads as f64, "count"),
        ]
        .into_iter()
        .map(|(metric, value, unit)| {
            let mut record = self.record(&format!("host_{metric}_per_{what}"), value, unit, batch);
            record.note = Some(note.into());
            record
        })
        .collect()
    }

    /// `batch` sequences of random tokens with 15% of the positions `[MASK]`.
    fn masked_inputs(&mut self, batch: usize) -> Result<Tensor> {
        let rows = self.rows(&vec![self.seq; batch], self.seq);
        let tokens = rows
            .into_iter()
            .flat_map(|r| r.tokens)
            .map(|t| {
                if self.rng.random_bool(MASKED_SHARE) {
                    MASK_ID
                } else {
                    t
                }
            })
            .collect();
        Tensor::from_i32(&[batch, self.seq], tokens)
    }

    fn inference(&mut self) -> Result<Vec<BenchRecord>> {
        let one = self.masked_inputs(1)?;
        let latency = self.median_time("inference, batch 1", |b| {
            b.trainer.model().infer_batch(&one, None).map(|_| ())
        })?;
        let n = self.options.infer_batch;
        let many = self.masked_inputs(n)?;
        let time = self.median_time(&format!("inference, batch {n}"), |b| {
            b.trainer.model().infer_batch(&many, None).map(|_| ())
        })?;
        let backend = self.trainer.model().backend();
        let before = backend.host_traffic();
        self.trainer.model().infer_batch(&one, None)?;
        let call = backend.host_traffic().since(&before);
        let mut records = vec![
            self.record("infer_latency_b1_ms", latency.as_secs_f64() * 1e3, "ms", 1),
            self.record(
                &format!("infer_tokens_per_s_b{n}"),
                (n * self.seq) as f64 / time.as_secs_f64(),
                "tokens/s",
                n,
            ),
        ];
        records.extend(self.traffic_records("infer_call", &call, 1));
        Ok(records)
    }

    /// Training, evaluation and inference on batches of real lengths, packed (the variant's own
    /// name) and padded (`<variant>-padded`, every row computed to `seq` as the reference does).
    fn real_lengths(&mut self, source: &str, lengths: &[usize]) -> Result<Vec<BenchRecord>> {
        let batch = self.options.batch;
        let batches: Vec<&[usize]> = lengths
            .chunks_exact(batch)
            .take(self.options.length_batches)
            .collect();
        if batches.is_empty() {
            return Err(Error::Config(format!(
                "bench: {} lengths do not fill one batch of {batch}",
                lengths.len()
            )));
        }
        let real = (batches.len(), batches.iter().flat_map(|b| b.iter()).sum());
        let padded: Vec<Vec<Example>> = batches.iter().map(|b| self.rows(b, self.seq)).collect();
        let longest: Vec<Vec<Example>> = padded
            .iter()
            .zip(&batches)
            .map(|(rows, lengths)| {
                let width = *lengths.iter().max().expect("a batch is not empty");
                rows.iter()
                    .map(|r| Example {
                        tokens: r.tokens[..width].to_vec(),
                        mask: r.mask[..width].to_vec(),
                    })
                    .collect()
            })
            .collect();
        // Validation batches (the evaluation collator's masks) and, from them, inference inputs
        // whose [MASK] positions are the masked labels.
        let collator = RowKeyedCollator::new(
            MASK_ID,
            self.options.vocab,
            MASKED_SHARE as f32,
            self.options.seed,
        )?;
        let masked: Vec<MaskedBatch> = padded
            .iter()
            .enumerate()
            .map(|(i, rows)| collator.collate(rows, i * batch))
            .collect::<Result<_>>()?;

        let precision = self.variant.clone();
        let before = self.trainer.model().packing();
        let mut records = Vec::new();
        let mut measured = Ok(());
        for packing in [Packing::Packed, Packing::Padded] {
            self.trainer.set_packing(packing);
            self.variant = match packing {
                Packing::Packed => precision.clone(),
                Packing::Padded => format!("{precision}-padded"),
            };
            measured = self.lengths_pass(
                packing,
                [&padded, &longest],
                &masked,
                real,
                source,
                &mut records,
            );
            if measured.is_err() {
                break;
            }
        }
        // The model and the records' variant as they were, whatever happened.
        self.trainer.set_packing(before);
        self.variant = precision;
        measured.map(|()| records)
    }

    /// One packing's real-lengths records: training on the rows padded to `seq` (and, padded, on
    /// the rows cut to each batch's longest), evaluation and inference on the masked batches.
    fn lengths_pass(
        &mut self,
        packing: Packing,
        [padded, longest]: [&Vec<Vec<Example>>; 2],
        masked: &[MaskedBatch],
        real: (usize, usize),
        source: &str,
        records: &mut Vec<BenchRecord>,
    ) -> Result<()> {
        let how = match packing {
            Packing::Packed => "packed: real tokens only",
            Packing::Padded => "every position computed",
        };
        let mut runs: Vec<(&str, &Vec<Vec<Example>>, String)> = vec![(
            "lengths_pad512_real_tokens_per_s",
            padded,
            format!("rows padded to {}; {how}", self.seq),
        )];
        if packing == Packing::Padded {
            runs.push((
                "lengths_padlongest_real_tokens_per_s",
                longest,
                format!("rows padded to each batch's longest; {how}"),
            ));
        }
        for (metric, data, note) in runs {
            let time = self.median_time(&note, |b| {
                for rows in data {
                    b.trainer.step(rows)?;
                }
                Ok(())
            })?;
            records.push(self.lengths_record(metric, real, time, &note, source));
        }
        let note = format!("validation loss and accuracy; {how}");
        let time = self.median_time(&note, |b| {
            for m in masked {
                b.trainer.model().evaluate(&m.tokens, &m.mask, &m.labels)?;
            }
            Ok(())
        })?;
        records.push(self.lengths_record(
            "lengths_eval_real_tokens_per_s",
            real,
            time,
            &note,
            source,
        ));
        let note = format!("every [MASK] filled; {how}");
        let time = self.median_time(&note, |b| {
            for m in masked {
                b.trainer.model().infer_batch(&m.tokens, Some(&m.mask))?;
            }
            Ok(())
        })?;
        records.push(self.lengths_record(
            "lengths_infer_real_tokens_per_s",
            real,
            time,
            &note,
            source,
        ));
        Ok(())
    }

    /// A real-lengths record: real tokens over the time of one pass over the batches. `real`:
    /// the number of batches and the real tokens in them.
    fn lengths_record(
        &self,
        metric: &str,
        (batches, real): (usize, usize),
        time: Duration,
        how: &str,
        source: &str,
    ) -> BenchRecord {
        let batch = self.options.batch;
        let mut record = self.record(metric, real as f64 / time.as_secs_f64(), "tokens/s", batch);
        record.note = Some(format!(
            "{how}; {batches} batches, {real} real tokens; lengths: {source}"
        ));
        record
    }
}

/// The device in words: the CPU's model and thread count, or the GPU's ordinal.
fn device_description(device: Device) -> String {
    match device {
        Device::Cpu => {
            let model = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split(':').nth(1))
                        .map(|m| m.trim().to_string())
                })
                .unwrap_or_else(|| "unknown model".into());
            format!("cpu: {model} ({} threads)", rayon::current_num_threads())
        }
        other => other.to_string(),
    }
}

/// The process's peak resident set in MiB, where the OS reports it.
#[cfg(target_os = "linux")]
fn peak_resident_mib() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call (and zeroed before it).
    ok.then(|| unsafe { usage.assume_init() }.ru_maxrss as f64 / 1024.0)
}

#[cfg(not(target_os = "linux"))]
fn peak_resident_mib() -> Option<f64> {
    None
}

/// The report as a table, one row per figure.
pub fn format_report(report: &BenchReport) -> String {
    let mut out = format!(
        "{} {} on {}, {} preset, vocabulary {}\n",
        report.implementation, report.version, report.device, report.preset, report.vocab
    );
    out += &format!(
        "{:<8} {:<40} {:>14}  {:<9} {}\n",
        "variant", "metric", "value", "unit", "shape"
    );
    for r in &report.results {
        out += &format!(
            "{:<8} {:<40} {:>14.2}  {:<9} {} x {}\n",
            r.variant, r.metric, r.value, r.unit, r.batch, r.seq
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_flops_count_the_products_of_the_medium_model() {
        // medium: 12 layers, hidden 768, intermediate 3072; vocabulary 5000, sequence 512.
        let config = Config::new(Size::MEDIUM, 5000, NEXT_ID, MASK_ID);
        let layer = 2.0 * (4.0 * 768.0 * 768.0 + 2.0 * 768.0 * 3072.0) + 4.0 * 512.0 * 768.0;
        let head = 0.15 * 2.0 * (768.0 * 768.0 + 768.0 * 5000.0);
        let want = 3.0 * (12.0 * layer + head);
        assert_eq!(training_flops_per_token(&config, 512), want);
    }

    #[test]
    fn options_that_leave_nothing_to_measure_are_config_errors() {
        let mut options = BenchOptions::for_device(Device::Cpu);
        options.vocab = 6;
        let err = run(&options).unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("vocabulary of 6")),
            "{err}"
        );
        let mut options = BenchOptions::for_device(Device::Cpu);
        options.repeats = 0;
        assert!(matches!(run(&options), Err(Error::Config(_))));
    }

    #[test]
    fn a_missing_or_empty_lengths_file_is_a_dataset_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        assert!(matches!(
            read_lengths(&missing, 512),
            Err(Error::Dataset { .. })
        ));
        let empty = dir.path().join("empty.json");
        std::fs::write(&empty, r#"{"lengths": []}"#).unwrap();
        assert!(matches!(
            read_lengths(&empty, 512),
            Err(Error::Dataset { .. })
        ));
        let clipped = dir.path().join("clipped.json");
        std::fs::write(&clipped, r#"{"source": "x", "lengths": [0, 7, 900]}"#).unwrap();
        assert_eq!(read_lengths(&clipped, 512).unwrap().1, vec![1, 7, 512]);
    }
}
