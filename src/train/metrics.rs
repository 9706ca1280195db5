//! `metrics.jsonl`: one JSON object per optimiser step and one per epoch, appended and flushed as
//! they happen so a crash loses nothing already written; and the PNG plot of the curves.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// After an optimiser step (`"kind": "step"`).
    Step {
        /// 1-based optimiser step.
        step: u64,
        /// 1-based number of the epoch the step belongs to.
        epoch: u64,
        /// None for a batch in which nothing was masked (it has no loss).
        loss: Option<f32>,
        /// The learning rate this step used.
        lr: f64,
        /// Real (unpadded) tokens in the step's batch.
        tokens: usize,
        /// Real tokens per second, averaged over the steps this process has run (a resumed run
        /// starts counting afresh).
        tokens_per_second: f64,
    },
    /// After an epoch (`"kind": "epoch"`).
    Epoch {
        /// 1-based number of the finished epoch.
        epoch: u64,
        /// Optimiser steps taken in all when the epoch finished.
        step: u64,
        /// Mean training loss over the epoch's steps, weighted by batch size.
        train_loss: f64,
        /// Mean masked-LM loss on the validation rows; absent without validation.
        #[serde(skip_serializing_if = "Option::is_none")]
        validation_loss: Option<f64>,
        /// Masked-token accuracy (the reference's micro-F1) on the validation rows; absent
        /// without validation.
        #[serde(skip_serializing_if = "Option::is_none")]
        validation_f1: Option<f64>,
        /// The reference's fill-mask probes and what the model filled in.
        probes: Vec<(String, String)>,
    },
}

/// Appends records to a metrics file.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `path` for appending. When resuming at `resume_step`, records past that step (written
    /// by the interrupted run after its last checkpoint) are dropped first, so the file describes
    /// one consistent run.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        if let Some(step) = resume_step.filter(|_| path.exists()) {
            // Keep the original lines byte for byte: only whole records up to the step survive.
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut kept = String::new();
            for (line, record) in text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .zip(read_records(path)?)
            {
                let (Record::Step { step: s, .. } | Record::Epoch { step: s, .. }) = record;
                if s <= step {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            let text = kept;
            std::fs::write(path, text)
                .map_err(|e| Error::io(format!("rewriting {}", path.display()), e))?;
        } else if resume_step.is_none() && path.exists() {
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `record` as one JSON line and flushes it.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::Json {
            context: "serialising a metrics record".into(),
            source: e,
        })?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of a metrics file, in order.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(i, line)| {
            let line = line.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            serde_json::from_str(&line).map_err(|e| Error::Json {
                context: format!("{} line {}", path.display(), i + 1),
                source: e,
            })
        })
        .collect()
}
