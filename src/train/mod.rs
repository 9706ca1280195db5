//! Training: the optimiser, the schedule, the loop, early stopping, metrics and their plot.

pub mod adamw;
pub mod early_stopping;
pub mod metrics;
pub mod plot;
pub mod schedule;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use early_stopping::{EarlyStopping, Goal};
pub use schedule::LrSchedule;
pub use trainer::{
    Continue, EpochEnd, StepReport, Trainer, TrainerOptions, TrainerState, batches_per_epoch,
};
