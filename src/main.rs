//! `maskedlm`: train undertale's masked language model and fill masks.
//!
//! With no arguments it runs `demo`: the `tiny` model trained on the CPU on built-in synthetic
//! instruction traces, then the reference's fill-mask probes.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use undertale_maskedlm::checkpoint::save_model;
use undertale_maskedlm::data::synthetic::{Vocabulary, dataset};
use undertale_maskedlm::model::{
    Config, InstructionTraceTransformerEncoderForMaskedLM as Model, Size,
};
use undertale_maskedlm::train::{Continue, Trainer, batches_per_epoch};
use undertale_maskedlm::{Device, Result, Tensor};

/// The probes the reference fills after every epoch.
const PROBES: [&str; 13] = [
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

#[derive(Parser)]
#[command(
    name = "maskedlm",
    version,
    about = "undertale's masked language model over disassembled binary code"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on built-in synthetic instruction traces and fill the reference's probes.
    Demo(DemoArgs),
}

#[derive(Parser)]
struct DemoArgs {
    /// Size preset: tiny, small or medium.
    #[arg(long, default_value = "tiny")]
    config: String,
    /// Optimiser steps.
    #[arg(long, default_value_t = 600)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Synthetic functions to train on.
    #[arg(long, default_value_t = 4096)]
    functions: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the trained model checkpoint.
    #[arg(long, default_value = "runs/demo")]
    output: PathBuf,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs::parse_from(["demo"])
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(threads) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
    {
        eprintln!("error: cannot start {threads} threads: {e}");
        std::process::exit(2);
    }
    let result = match cli.command.unwrap_or(Command::Demo(DemoArgs::default())) {
        Command::Demo(args) => demo(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
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
    let validation = dataset(&vocab, 256, seq, args.seed + 1);
    let model = Model::new(config.clone(), Device::Cpu, args.seed)?;
    println!(
        "model: {} preset, {} parameters, vocabulary {} tokens, sequence length {seq}",
        args.config,
        model.num_parameters(),
        vocab.len()
    );
    println!(
        "data: {} synthetic functions, {} optimiser steps of {} rows on {} threads",
        train.len(),
        args.steps,
        args.batch_size,
        rayon::current_num_threads()
    );

    let mut trainer = Trainer::new(model, args.batch_size, args.steps, args.seed)?;
    let epochs = args
        .steps
        .div_ceil(batches_per_epoch(train.len(), args.batch_size));
    let bar = ProgressBar::new(args.steps).with_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let mut tokens = 0usize;
    trainer.train(
        &train,
        epochs,
        Some(args.steps),
        |_, r| {
            tokens += r.tokens;
            let rate = tokens as f64 / start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {rate:.0} tok/s",
                r.loss, r.lr
            ));
            bar.inc(1);
            Ok(())
        },
        |_, _| Ok(Continue::Yes),
    )?;
    bar.finish();

    let model = &trainer.model;
    let (mut correct, mut count, mut loss) = (0, 0, 0.0);
    let mut collator =
        undertale_maskedlm::data::MaskedLMCollator::new(vocab.mask_id(), vocab.len(), 0.15, 1_000)?;
    for rows in validation.chunks(32) {
        let b = collator.collate(rows)?;
        let e = model.evaluate(&b.tokens, &b.mask, &b.labels)?;
        correct += e.correct;
        count += e.count;
        loss += e.loss as f64 * e.count as f64;
    }
    println!(
        "validation: loss {:.4}, masked-token accuracy (micro-F1) {:.3} over {count} masked tokens",
        loss / count as f64,
        correct as f64 / count as f64
    );

    println!("\nfill-mask probes:");
    for probe in PROBES {
        let ids = vocab.encode(probe);
        let filled = model.infer(&Tensor::from_i32(&[ids.len()], ids)?, None)?;
        println!("  {probe:<75} -> {}", vocab.decode(&filled.to_vec_i32()?));
    }
    save_model(&args.output, model)?;
    println!("\nsaved the model checkpoint to {}", args.output.display());
    Ok(())
}
