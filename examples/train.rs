//! Trains a `tiny` model for a few steps on synthetic functions, saves a checkpoint (with its
//! tokenizer), loads it back and fills a mask.
//!
//! ```sh
//! cargo run --release --example train -- [STEPS] [OUTPUT_DIR]
//! ```

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use undertale_maskedlm::data::Example;
use undertale_maskedlm::data::synthetic::generate_function;
use undertale_maskedlm::data::tokenizer::InstructionTokenizer;
use undertale_maskedlm::train::{Continue, Trainer, TrainerOptions, batches_per_epoch};
use undertale_maskedlm::{
    Config, Device, Error, InstructionTraceTransformerEncoderForMaskedLM, MaskFiller, Result, Size,
};

const PROBE: &str = "push rbp [NEXT] mov rbp rsp [NEXT] [MASK] rbp [NEXT] ret";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let steps = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| Error::Config(format!("STEPS must be a number of steps, got {s:?}")))?,
        None => 40,
    };
    let output = args.next().map_or_else(
        || std::env::temp_dir().join("maskedlm-example"),
        PathBuf::from,
    );
    let filled = train_save_and_fill(steps, &output)?;
    println!("{PROBE}\n  -> {filled}");
    Ok(())
}

/// The whole example: returns the probe with its mask filled by the reloaded checkpoint.
fn train_save_and_fill(steps: u64, output: &Path) -> Result<String> {
    // A corpus of synthetic functions, and a tokenizer trained on it that cuts at 64 tokens.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let corpus: Vec<String> = (0..256).map(|_| generate_function(&mut rng)).collect();
    let texts: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let tokenizer = InstructionTokenizer::train(texts.iter().copied(), 512, 64)?;
    let rows: Vec<Example> = tokenizer
        .encode_batch(&texts)?
        .into_iter()
        .map(|e| Example {
            tokens: e.tokens,
            mask: e.mask,
        })
        .collect();

    // `tiny` takes 128 positions: more than the tokenizer ever gives it.
    let config = Config::for_tokenizer(Size::TINY, &tokenizer);
    let model = InstructionTraceTransformerEncoderForMaskedLM::new(config, Device::Cpu, 0)?;
    let options = TrainerOptions {
        batch_size: 16,
        seed: 0,
        // Saved into every checkpoint, so the checkpoint alone is enough to fill masks.
        tokenizer: Some(tokenizer),
        ..TrainerOptions::new(steps)
    };
    let mut trainer = Trainer::new(model, options)?;
    let epochs = steps.div_ceil(batches_per_epoch(rows.len(), 16));
    trainer.train(
        &rows,
        epochs,
        Some(steps),
        |_, report| {
            if report.step % 10 == 0 {
                println!("step {:3}  loss {:.4}", report.step, report.loss);
            }
            Ok(())
        },
        |_, _| Ok(Continue::Yes),
    )?;

    let checkpoint = output.join("last");
    trainer.save(&checkpoint)?;
    let filler = MaskFiller::from_checkpoint(&checkpoint, Device::Cpu)?;
    filler.fill(PROBE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_trains_saves_reloads_and_fills() {
        let dir = tempfile::tempdir().unwrap();
        let filled = train_save_and_fill(3, dir.path()).unwrap();
        assert!(!filled.contains("[MASK]"), "{filled}");
        assert!(dir.path().join("last/tokenizer.json").exists());
        let resumed = Trainer::resume(&dir.path().join("last"), Device::Cpu).unwrap();
        assert_eq!(resumed.state().step, 3);
    }
}
