//! The reference's learning-rate schedule: LinearLR warmup, then cosine annealing to zero,
//! advanced once per optimiser step.

/// `lr(s)` for optimiser steps `s = 0 .. total-1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// The peak learning rate.
    pub base: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// Steps the schedule spans.
    pub total_steps: u64,
}

impl LrSchedule {
    /// `warmup_steps = floor(warmup * total)`, as the reference computes it (`int(...)`).
    pub fn new(base: f64, warmup: f64, total_steps: u64) -> Self {
        LrSchedule {
            base,
            warmup_steps: (warmup * total_steps as f64) as u64,
            total_steps,
        }
    }

    /// The learning rate used by optimiser step `step` (0-based).
    ///
    /// Warmup (`s < w`): `base * (1/w + (1 - 1/w) * s / w)`, LinearLR from `base / w` to `base`.
    /// Then `base * (1 + cos(pi * (s - w) / (total - w))) / 2`. With `w == 0`, where the reference
    /// divides by zero, there is simply no warmup. Steps past the total stay at the cosine's end.
    pub fn lr(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            let w = w as f64;
            return self.base * (1.0 / w + (1.0 - 1.0 / w) * step as f64 / w);
        }
        let decay = self.total_steps.saturating_sub(w).max(1) as f64;
        let progress = ((step - w) as f64).min(decay);
        self.base * (1.0 + (std::f64::consts::PI * progress / decay).cos()) / 2.0
    }
}
