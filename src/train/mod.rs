//! Training: the optimiser, the schedule, the loop and its checkpoints.

pub mod adamw;
pub mod schedule;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::LrSchedule;
pub use trainer::{StepReport, Trainer, TrainerState, batches_per_epoch};
