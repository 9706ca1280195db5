//! Training: the optimiser, the schedule, the loop and its checkpoints.

pub mod adamw;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::LrSchedule;
