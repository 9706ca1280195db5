//! Ctrl-C in the `maskedlm` binary.
//!
//! During `pretrain` the first Ctrl-C asks the trainer to stop after the step in progress; the run
//! then writes `OUTPUT/last` and says how to resume it. A second Ctrl-C, or one outside training,
//! exits at once (status 130, as the shell reports a SIGINT), saying what is left to resume from.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The exit status of a process ended by SIGINT (128 + 2), which scripts test for.
pub const EXIT_CODE: i32 = 130;

/// The output folder of the pretraining in progress, and the flag its trainer watches.
static TRAINING: Mutex<Option<(PathBuf, Arc<AtomicBool>)>> = Mutex::new(None);

/// Installs the handler. Without it (if the platform refuses one) Ctrl-C keeps its default effect.
pub fn install() {
    let _ = ctrlc::set_handler(on_interrupt);
}

/// Registers a pretraining run writing to `output`; returns the flag for its trainer.
pub fn training_in(output: &Path) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    *TRAINING.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((output.to_path_buf(), flag.clone()));
    flag
}

/// The step of the training checkpoint in `dir`, read from its trainer state.
pub fn checkpoint_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state.get("step")?.as_u64()
}

fn on_interrupt() {
    let training = TRAINING.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some((output, flag)) = training else {
        eprintln!("\ninterrupted");
        std::process::exit(EXIT_CODE);
    };
    if !flag.swap(true, Ordering::Relaxed) {
        eprintln!(
            "\ninterrupt: stopping after this step to write a checkpoint (Ctrl-C again to quit at once)"
        );
        return;
    }
    let last = output.join("last");
    match checkpoint_step(&last) {
        Some(step) => eprintln!(
            "\ninterrupted; the last checkpoint is at step {step}: resume with --checkpoint {}",
            last.display()
        ),
        None => eprintln!(
            "\ninterrupted; no checkpoint yet: the first is written at the end of epoch 1"
        ),
    }
    std::process::exit(EXIT_CODE);
}
