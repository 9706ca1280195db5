//! Early stopping as the reference configures Lightning's `EarlyStopping`: patience 5, min_delta
//! 0.001, on validation F1 (higher is better) or, without validation data, on the epoch's mean
//! training loss (lower is better).
//!
//! Lightning counts an epoch as an improvement when `current - min_delta > best` (maximising) or
//! `current + min_delta < best` (minimising); otherwise the wait grows, and training stops once the
//! wait reaches the patience.

use serde::{Deserialize, Serialize};

/// Epochs without improvement before stopping.
pub const PATIENCE: u32 = 5;
/// The smallest change that counts as an improvement.
pub const MIN_DELTA: f64 = 0.001;

/// Which way the monitored value should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Goal {
    /// Higher is better (an F1 score).
    Maximise,
    /// Lower is better (a loss).
    Minimise,
}

/// Stops training when the monitored value has not improved by `min_delta` for `patience` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Which way the value should move.
    pub goal: Goal,
    /// Epochs without improvement before stopping.
    pub patience: u32,
    /// The smallest change that counts as an improvement.
    pub min_delta: f64,
    /// Best value so far (None before the first epoch).
    pub best: Option<f64>,
    /// Epochs since the last improvement.
    pub wait: u32,
}

impl EarlyStopping {
    /// A monitor with the default patience and minimum change.
    pub fn new(goal: Goal) -> Self {
        EarlyStopping {
            goal,
            patience: PATIENCE,
            min_delta: MIN_DELTA,
            best: None,
            wait: 0,
        }
    }

    /// Records an epoch's value; returns whether it improved on the best.
    pub fn update(&mut self, value: f64) -> bool {
        let improved = match (self.best, self.goal) {
            (None, _) => value.is_finite(),
            (Some(best), Goal::Maximise) => value - self.min_delta > best,
            (Some(best), Goal::Minimise) => value + self.min_delta < best,
        };
        if improved {
            self.best = Some(value);
            self.wait = 0;
        } else {
            self.wait += 1;
        }
        improved
    }

    /// Whether training should stop now.
    pub fn should_stop(&self) -> bool {
        self.wait >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_a_min_delta_improvement() {
        let mut es = EarlyStopping::new(Goal::Maximise);
        assert!(es.update(0.50));
        assert!(es.update(0.52));
        // Gains of at most min_delta do not count.
        for v in [0.5205, 0.521, 0.5209, 0.52, 0.5] {
            assert!(!es.should_stop());
            assert!(!es.update(v));
        }
        assert!(es.should_stop());
        assert_eq!(es.best, Some(0.52));
    }

    #[test]
    fn minimising_resets_the_wait_on_improvement() {
        let mut es = EarlyStopping::new(Goal::Minimise);
        es.update(3.0);
        es.update(3.0);
        es.update(3.0);
        assert_eq!(es.wait, 2);
        assert!(es.update(2.5));
        assert_eq!(es.wait, 0);
        assert!(!es.update(2.4995));
    }
}
