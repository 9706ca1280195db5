//! `maskedlm`: the whole undertale masked-LM workflow in one binary.
//!
//! With no arguments it runs `quickstart`: this machine's binaries are disassembled, a tokenizer
//! is trained, the functions are tokenized, the `tiny` model is pretrained and the reference's
//! probes are filled, all in one work folder.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What only the binary needs (not part of the library).
mod cli {
    pub mod interrupt;
}
use cli::interrupt;
use undertale_maskedlm::checkpoint::{load_model, resolve_tokenizer};
use undertale_maskedlm::data::parquet::{read_corpus, write_tokenized};
use undertale_maskedlm::data::synthetic::{Vocabulary, dataset};
use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
use undertale_maskedlm::device::Precision;
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::pipeline::bench::{BenchOptions, format_report};
use undertale_maskedlm::pipeline::corpus::disassemble_to_parquet;
use undertale_maskedlm::pipeline::corpus::tokenize_rows;
use undertale_maskedlm::pipeline::dataset::load_examples;
use undertale_maskedlm::pipeline::evaluate::evaluate;
use undertale_maskedlm::pipeline::infer::{InputName, OutputFormat, fill_inputs};
use undertale_maskedlm::pipeline::pretrain::{PretrainOptions, check_tokenizer_matches, pretrain};
use undertale_maskedlm::pipeline::quickstart::{QuickstartOptions, quickstart};
use undertale_maskedlm::train::{Continue, Trainer, TrainerOptions, batches_per_epoch};
use undertale_maskedlm::{Device, Error, Result, Tensor};

/// Candidates per mask in `infer --json` when `--top-k` is not given.
const DEFAULT_TOP_K: usize = 5;

#[derive(Parser)]
#[command(
    name = "maskedlm",
    version,
    about = "undertale's masked language model over disassembled binary code"
)]
struct Cli {
    /// Worker threads for the CPU backend; 0 (or leaving it out) means one per core, or
    /// RAYON_NUM_THREADS when that is set. At most four per core.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The whole workflow on built-in defaults (what `maskedlm` with no arguments runs).
    Quickstart(QuickstartArgs),
    /// Functions of ELF x86-64 binaries into a corpus Parquet file (id, name, disassembly).
    Disassemble {
        /// Binaries, shared libraries, or directories of them.
        #[arg(required = true)]
        binaries: Vec<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Train the reference's tokenizer on a corpus.
    TrainTokenizer {
        corpus: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Tokens per row, padded or cut: at most the model's positions (the `tiny` preset has
        /// 128; `small` and `medium` 512)
        #[arg(long, default_value_t = 512)]
        sequence_length: usize,
    },
    /// Tokenize a corpus into a dataset Parquet file (id, tokens, mask).
    Tokenize {
        corpus: PathBuf,
        tokenizer: PathBuf,
        output: PathBuf,
    },
    /// Pretrain the masked language model.
    Pretrain(PretrainArgs),
    /// Fill the `[MASK]` tokens of pre-tokenized disassembly (inputs from standard input, one per
    /// line, when none are given).
    ///
    /// One output line per input, in order: a blank input gives an empty line (with --json, an
    /// object with no masks). An input longer than the tokenizer's sequence length is truncated,
    /// as the reference does, with a warning; an input with no `[MASK]` is passed through (encoded
    /// and decoded) with a warning.
    /// Warnings and errors name the input: `line N` of standard input, or `input N` among the
    /// arguments. The first input that cannot be filled stops the run with an error naming it
    /// (exit status 1); the outputs of the inputs before it are already written.
    Infer {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The tokenizer (default: the checkpoint's tokenizer.json).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Candidates to list per mask, at least 1: with --json in each object (default 5),
        /// without it on one indented line per mask after the filled line,
        /// `    position P: token (probability), ...` (only the unindented lines are one per
        /// input).
        #[arg(long)]
        top_k: Option<usize>,
        /// One JSON object per input.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        device: Option<String>,
        /// f32, or bf16 mixed precision (a GPU, or a CPU with AVX512_BF16)
        #[arg(long, default_value = "f32")]
        precision: Precision,
        inputs: Vec<String>,
    },
    /// Masked-LM loss, accuracy and forward throughput of a checkpoint on a dataset.
    Evaluate {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The tokenizer (default: the checkpoint's tokenizer.json).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        dataset: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long)]
        device: Option<String>,
        /// f32, or bf16 mixed precision (a GPU, or a CPU with AVX512_BF16)
        #[arg(long, default_value = "f32")]
        precision: Precision,
        #[arg(long)]
        json: bool,
    },
    /// Train on built-in synthetic instruction traces (no files needed) and fill the probes.
    Demo(DemoArgs),
    /// Training and inference speed and peak memory on one device (the figures
    /// `scripts/peer_pytorch.py` measures for PyTorch; `scripts/compare.sh` runs both)
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct QuickstartArgs {
    /// The work folder for everything the job makes.
    #[arg(long, default_value = "maskedlm-quickstart")]
    work: PathBuf,
    /// Optimiser steps to aim for (rounded to whole epochs).
    #[arg(long, default_value_t = 1500)]
    steps: u64,
    /// Functions to collect from this machine's binaries.
    #[arg(long, default_value_t = 20000)]
    functions: usize,
    #[arg(long)]
    device: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
struct PretrainArgs {
    #[arg(long)]
    tokenizer: PathBuf,
    /// A tokenized Parquet file or a directory of them.
    dataset: PathBuf,
    /// Where checkpoints (OUTPUT/last, OUTPUT/best) and metrics go.
    output: PathBuf,
    #[arg(long)]
    validation: Option<PathBuf>,
    /// A training checkpoint to resume from (e.g. OUTPUT/last); it keeps its own batch size,
    /// seed, configuration and schedule.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// [default: 8]
    #[arg(long)]
    batch_size: Option<usize>,
    /// [default: 48, or on resume the epochs the run was planned for]
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Warmup as a fraction of all steps.
    #[arg(long)]
    warmup: Option<f64>,
    /// A size preset (tiny, small, medium) or a JSON file of constructor arguments [default:
    /// medium, the reference's 94M-parameter model, meant for a GPU; tiny trains on a CPU in minutes]
    #[arg(long)]
    config: Option<String>,
    #[arg(long)]
    device: Option<String>,
    /// f32, or bf16 mixed precision (a GPU, or a CPU with AVX512_BF16)
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many optimiser steps; a new run plans its learning-rate schedule over
    /// min(max-steps, epochs x batches) steps
    #[arg(long)]
    max_steps: Option<u64>,
    /// Replace the run already in OUTPUT (its last/, best/ and metrics) instead of refusing
    #[arg(long)]
    overwrite: bool,
}

#[derive(clap::Args)]
struct DemoArgs {
    #[arg(long, default_value = "tiny")]
    config: String,
    /// cpu, cuda or cuda:N [default: a GPU if there is one, else cpu]
    #[arg(long)]
    device: Option<String>,
    /// f32, or bf16 mixed precision (a GPU, or a CPU with AVX512_BF16)
    #[arg(long, default_value = "f32")]
    precision: Precision,
    #[arg(long, default_value_t = 600)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    #[arg(long, default_value_t = 4096)]
    functions: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// cpu, cuda or cuda:N [default: a GPU if there is one, else cpu]
    #[arg(long)]
    device: Option<String>,
    /// tiny, small or medium [default: small on the CPU, medium on a GPU]
    #[arg(long)]
    preset: Option<String>,
    /// f32, bf16 or all (bf16 on a GPU or a CPU with AVX512_BF16) [default: all]
    #[arg(long)]
    precision: Option<String>,
    /// Training batch size [default: 8 on the CPU, 32 on a GPU]
    #[arg(long)]
    batch: Option<usize>,
    /// Batch size of the inference throughput figure
    #[arg(long, default_value_t = 64)]
    infer_batch: usize,
    #[arg(long, default_value_t = 5000)]
    vocab: usize,
    /// Timed repetitions of each measurement (the median is reported) [default: 5 on the CPU, 20 on a GPU]
    #[arg(long)]
    repeats: Option<usize>,
    /// Untimed repetitions before them [default: 1 on the CPU, 3 on a GPU]
    #[arg(long)]
    warmup: Option<usize>,
    /// Function lengths for the real-data figures, e.g. benches/data/function_lengths.json
    #[arg(long)]
    lengths: Option<PathBuf>,
    /// Training batches drawn from the lengths
    #[arg(long, default_value_t = 8)]
    length_batches: usize,
    /// Also write the figures as JSON (the schema of scripts/peer_pytorch.py)
    #[arg(long)]
    json: Option<PathBuf>,
}

fn bench(args: &BenchArgs) -> Result<()> {
    let mut options = BenchOptions::for_device(device(&args.device)?);
    if let Some(preset) = &args.preset {
        options.preset.clone_from(preset);
    }
    match args.precision.as_deref() {
        None => {}
        Some("all") => options.precisions = options.device.precisions(),
        Some(one) => options.precisions = vec![one.parse()?],
    }
    options.batch = args.batch.unwrap_or(options.batch);
    options.repeats = args.repeats.unwrap_or(options.repeats);
    options.warmup = args.warmup.unwrap_or(options.warmup);
    options.infer_batch = args.infer_batch;
    options.vocab = args.vocab;
    options.lengths.clone_from(&args.lengths);
    options.length_batches = args.length_batches;
    let report = undertale_maskedlm::pipeline::bench::run(&options)?;
    print!("{}", format_report(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("serialisable");
        std::fs::write(path, text + "\n").map_err(|e| Error::Io {
            context: format!("writing {}", path.display()),
            source: e,
        })?;
    }
    Ok(())
}

/// The most `--threads` per core. The CPU backend's loops are compute-bound, so threads beyond
/// the cores only add switching; a few per core still allow for a core count that understates
/// the machine (a container's CPU quota). Thousands of threads take minutes just to start.
const THREADS_PER_CORE: usize = 4;

/// `--threads N` must be at most `THREADS_PER_CORE` per core (0 means one per core).
fn check_threads(threads: usize, cores: usize) -> Result<()> {
    let limit = THREADS_PER_CORE * cores.max(1);
    if threads > limit {
        return Err(Error::Config(format!(
            "--threads {threads} is more than {limit} ({THREADS_PER_CORE} per core on this \
             machine's {cores} cores); more threads than cores only slow the CPU backend down, \
             and --threads 0 uses one per core"
        )));
    }
    Ok(())
}

fn device(arg: &Option<String>) -> Result<Device> {
    arg.as_deref()
        .map_or(Ok(Device::best_available()), str::parse)
}

fn main() {
    let cli = Cli::parse();
    interrupt::install();
    if let Some(threads) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if let Err(e) = check_threads(threads, cores) {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        // rayon reads 0 as "choose": RAYON_NUM_THREADS if set, else one thread per core.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("error: cannot start {threads} threads: {e}");
            std::process::exit(2);
        }
    }
    let command = cli.command.unwrap_or(Command::Quickstart(QuickstartArgs {
        work: PathBuf::from("maskedlm-quickstart"),
        steps: 1500,
        functions: 20000,
        device: None,
        seed: 0,
    }));
    if let Err(e) = run(command) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Quickstart(args) => {
            let options = QuickstartOptions {
                work: args.work,
                max_functions: args.functions,
                target_steps: args.steps,
                device: device(&args.device)?,
                seed: args.seed,
                ..QuickstartOptions::default()
            };
            quickstart(&options).map(|_| ())
        }
        Command::Disassemble { binaries, output } => {
            let s = disassemble_to_parquet(&binaries, &output, true)?;
            for (path, reason) in &s.failed {
                eprintln!("warning: {}: {reason}", path.display());
            }
            // A system folder holds hundreds of stripped libraries: name a few, count the rest.
            const NAMED: usize = 5;
            for (path, functions) in s.stripped.iter().take(NAMED) {
                eprintln!(
                    "warning: {} is stripped (it has no symbol table), so only its {functions} \
                     exported functions were found",
                    path.display()
                );
            }
            if s.stripped.len() > NAMED {
                eprintln!(
                    "warning: {} more stripped files: only their exported functions were found",
                    s.stripped.len() - NAMED
                );
            }
            println!(
                "{} functions from {} ELF files ({} duplicate paths skipped) -> {} ({} files \
                 skipped: not ELF x86-64; {} unreadable)",
                s.functions,
                s.elf_files,
                s.duplicates_skipped,
                output.display(),
                s.skipped_not_elf,
                s.failed.len()
            );
            Ok(())
        }
        Command::TrainTokenizer {
            corpus,
            output,
            vocab_size,
            sequence_length,
        } => {
            let rows = read_corpus(&corpus)?;
            let tokenizer = InstructionTokenizer::train(
                rows.iter().map(|r| r.disassembly.as_str()),
                vocab_size,
                sequence_length,
            )?;
            tokenizer.save(&output)?;
            // The trainer stops merging when no pair of symbols is left; a small corpus gets there
            // long before `--vocab-size`, and its model then meets more `[UNK]`s on new code.
            if tokenizer.vocab_size() < vocab_size / 2 {
                eprintln!(
                    "warning: the trained vocabulary has {} tokens, under half the --vocab-size \
                     of {vocab_size}: the corpus ({} functions) is too small to learn more",
                    tokenizer.vocab_size(),
                    rows.len()
                );
            }
            println!(
                "tokenizer of {} tokens (sequence length {sequence_length}) trained on {} functions -> {}",
                tokenizer.vocab_size(),
                rows.len(),
                output.display()
            );
            Ok(())
        }
        Command::Tokenize {
            corpus,
            tokenizer,
            output,
        } => {
            let tokenizer = InstructionTokenizer::load(&tokenizer)?;
            let rows = read_corpus(&corpus)?;
            let (tokenized, truncated) = tokenize_rows(&tokenizer, &rows)?;
            write_tokenized(&output, &tokenized)?;
            println!(
                "{} rows -> {} ({truncated} truncated to {} tokens)",
                tokenized.len(),
                output.display(),
                tokenizer.sequence_length()
            );
            Ok(())
        }
        Command::Pretrain(args) => {
            let options = PretrainOptions {
                validation: args.validation,
                checkpoint: args.checkpoint,
                batch_size: args.batch_size,
                epochs: args.epochs,
                learning_rate: args.learning_rate,
                warmup: args.warmup,
                config: args.config,
                device: device(&args.device)?,
                precision: args.precision,
                seed: args.seed,
                max_steps: args.max_steps,
                overwrite: args.overwrite,
                interrupt: Some(interrupt::training_in(&args.output)),
                progress: true,
                ..PretrainOptions::new(args.tokenizer, args.dataset, args.output.clone())
            };
            let summary = pretrain(&options)?;
            if summary.interrupted {
                let step =
                    interrupt::checkpoint_step(&summary.last_checkpoint).unwrap_or(summary.steps);
                eprintln!(
                    "interrupted at step {step}; resume with --checkpoint {}",
                    summary.last_checkpoint.display()
                );
                std::process::exit(interrupt::EXIT_CODE);
            }
            println!(
                "{} steps, {} epochs{}; latest checkpoint {}",
                summary.steps,
                summary.epochs_completed,
                if summary.stopped_early {
                    ", stopped early"
                } else {
                    ""
                },
                summary.last_checkpoint.display()
            );
            Ok(())
        }
        Command::Infer {
            checkpoint,
            tokenizer,
            top_k,
            json,
            device: dev,
            precision,
            inputs,
        } => {
            if top_k == Some(0) {
                return Err(Error::Config(
                    "--top-k 0: at least one candidate per mask is needed".into(),
                ));
            }
            let model = load_model(&checkpoint, device(&dev)?)?.with_precision(precision)?;
            let tokenizer = resolve_tokenizer(&checkpoint, tokenizer.as_deref())?;
            check_compatible(&model, &tokenizer)?;
            let format = match (json, top_k) {
                (true, _) => OutputFormat::Json,
                (false, Some(_)) => OutputFormat::TextWithCandidates,
                (false, None) => OutputFormat::Text,
            };
            let top_k = top_k.unwrap_or(DEFAULT_TOP_K);
            let mut warn = |w: String| eprintln!("warning: {w}");
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if inputs.is_empty() {
                // Read as it comes, so a pipe gets each answer before the next line is typed.
                let lines = std::io::stdin()
                    .lock()
                    .lines()
                    .enumerate()
                    .map(|(i, line)| (InputName::Line(i + 1), line));
                fill_inputs(
                    &model, &tokenizer, lines, top_k, format, &mut out, &mut warn,
                )?;
            } else {
                let arguments = inputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, input)| (InputName::Argument(i + 1), Ok(input)));
                fill_inputs(
                    &model, &tokenizer, arguments, top_k, format, &mut out, &mut warn,
                )?;
            }
            Ok(())
        }
        Command::Evaluate {
            checkpoint,
            tokenizer,
            dataset,
            batch_size,
            device: dev,
            precision,
            json,
        } => {
            let model = load_model(&checkpoint, device(&dev)?)?.with_precision(precision)?;
            let tokenizer = resolve_tokenizer(&checkpoint, tokenizer.as_deref())?;
            check_compatible(&model, &tokenizer)?;
            // The check pretrain makes: a bad row is named by file, row id and position.
            let rows = load_examples(&dataset, model.config())?;
            let report = evaluate(&model, &rows, batch_size)?;
            if json {
                println!("{}", serde_json::to_string(&report).expect("serialisable"));
            } else {
                println!(
                    "loss {:.4}, accuracy (micro-F1) {:.4} over {} sequences; {:.1} sequences/s ({:.2}s in forward passes)",
                    report.loss,
                    report.accuracy,
                    report.sequences,
                    report.sequences_per_second,
                    report.seconds
                );
            }
            Ok(())
        }
        Command::Demo(args) => demo(&args),
        Command::Bench(args) => bench(&args),
    }
}

/// A checkpoint and a tokenizer must agree on the ids the model was built with and on the
/// sequence length.
fn check_compatible(model: &Model, tokenizer: &InstructionTokenizer) -> Result<()> {
    check_tokenizer_matches(model.config(), tokenizer)
}

fn demo(args: &DemoArgs) -> Result<()> {
    let vocab = Vocabulary::synthetic();
    let mut config = Config::new(
        Size::preset(&args.config)?,
        vocab.len(),
        vocab.next_id(),
        vocab.mask_id(),
    );
    config.lr = args.learning_rate;
    let seq = config.sequence_length;
    let train = dataset(&vocab, args.functions, seq, args.seed);
    let model =
        Model::new(config, device(&args.device)?, args.seed)?.with_precision(args.precision)?;
    println!(
        "model: {} preset on {} ({}), {} parameters; {} synthetic functions, {} steps of {}",
        args.config,
        model.device(),
        model.precision(),
        model.num_parameters(),
        train.len(),
        args.steps,
        args.batch_size
    );
    let mut trainer = Trainer::new(
        model,
        TrainerOptions {
            batch_size: args.batch_size,
            seed: args.seed,
            ..TrainerOptions::new(args.steps)
        },
    )?;
    let epochs = args
        .steps
        .div_ceil(batches_per_epoch(train.len(), args.batch_size).max(1));
    trainer.train(
        &train,
        epochs,
        Some(args.steps),
        |_, r| {
            if r.step % 100 == 0 {
                println!("step {:5}  loss {:.4}  lr {:.2e}", r.step, r.loss, r.lr);
            }
            Ok(())
        },
        |_, _| Ok(Continue::Yes),
    )?;
    for probe in undertale_maskedlm::pipeline::probes::PROBES {
        let ids = vocab.encode(probe);
        let filled = trainer
            .model
            .infer(&Tensor::from_i32(&[ids.len()], ids)?, None)?;
        println!("  {probe:<78} -> {}", vocab.decode(&filled.to_vec_i32()?));
    }
    Ok(())
}
