//! The reference text's practical-guidelines table as a function: facts about a run in,
//! recommended actions with settings out.
//!
//! | situation | actions |
//! |---|---|
//! | training any RNN | clip the gradient norm, `max_norm = 1.0` |
//! | NaN/Inf loss | reduce the learning rate (×0.1, our choice), verify the initialisation (orthogonal recurrent weights), add clipping (`max_norm = 1.0`) |
//! | loss spikes | lower the clipping threshold (half the current one, or 0.5), check the data for outliers |
//! | deep RNN (3+ layers) | more aggressive clipping (`max_norm = 0.5`), use LSTM/GRU cells |
//! | long sequences (T > 100) | clipping plus truncated BPTT (k = 100, our choice: the table's own threshold) |
//!
//! When several rows ask for clipping, the smallest `max_norm` wins and clipping is listed once.
//!
//! ```
//! use gradclip::advisor::{advise, Action, RunFacts};
//! let facts = RunFacts { recurrent: true, layers: 3, seq_len: 200, ..RunFacts::default() };
//! let recs = advise(&facts);
//! assert!(recs.iter().any(|r| r.action == Action::ClipGradNorm { max_norm: 0.5 }));
//! assert!(recs.iter().any(|r| r.action == Action::TruncatedBptt { k: 100 }));
//! ```

use std::fmt;

/// What is known about a training run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunFacts {
    /// The model is recurrent (RNN, LSTM, GRU, …).
    pub recurrent: bool,
    /// The cell is gated (LSTM/GRU) rather than a vanilla RNN.
    pub gated: bool,
    /// Number of stacked layers (recurrent layers for an RNN).
    pub layers: u32,
    /// Sequence length backpropagated through (0 when not applicable).
    pub seq_len: usize,
    /// A NaN or Inf loss or gradient was seen.
    pub nan_seen: bool,
    /// Loss spikes were seen.
    pub spikes_seen: bool,
    /// The clipping threshold in use, if any.
    pub current_max_norm: Option<f64>,
}

/// One recommended action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// `clip_grad_norm_(…, max_norm)`.
    ClipGradNorm {
        /// The threshold.
        max_norm: f64,
    },
    /// Multiply the learning rate by `factor`.
    ReduceLearningRate {
        /// The factor (< 1).
        factor: f64,
    },
    /// Check the initialisation: orthogonal recurrent weights, Xavier input weights, zero biases.
    VerifyInitialization,
    /// Look for outliers in the training data.
    CheckDataOutliers,
    /// Replace vanilla cells by LSTM or GRU cells.
    UseGatedCells,
    /// Backpropagate through at most `k` steps.
    TruncatedBptt {
        /// The truncation length.
        k: usize,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ClipGradNorm { max_norm } => write!(f, "clip the gradient norm to {max_norm}"),
            Action::ReduceLearningRate { factor } => {
                write!(f, "multiply the learning rate by {factor}")
            }
            Action::VerifyInitialization => {
                write!(
                    f,
                    "verify the initialisation (orthogonal W_hh, Xavier W_xh, zero biases)"
                )
            }
            Action::CheckDataOutliers => write!(f, "check the data for outliers"),
            Action::UseGatedCells => write!(f, "use LSTM/GRU cells"),
            Action::TruncatedBptt { k } => write!(f, "truncate BPTT to k = {k} steps"),
        }
    }
}

/// An action and the situation (row of the table) that asks for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    /// What to do.
    pub action: Action,
    /// Why: the situation of the guidelines table.
    pub situation: &'static str,
}

/// The recommended actions for `facts`, in the table's order, clipping listed once with the
/// smallest threshold any row asks for.
pub fn advise(facts: &RunFacts) -> Vec<Recommendation> {
    let mut recs: Vec<Recommendation> = Vec::new();
    let mut push = |action: Action, situation: &'static str| {
        if let Action::ClipGradNorm { max_norm } = action {
            if let Some(existing) = recs.iter_mut().find_map(|r| match &mut r.action {
                Action::ClipGradNorm { max_norm: m } => Some((m, &mut r.situation)),
                _ => None,
            }) {
                if max_norm < *existing.0 {
                    *existing.0 = max_norm;
                    *existing.1 = situation;
                }
                return;
            }
        }
        if !recs.iter().any(|r| r.action == action) {
            recs.push(Recommendation { action, situation });
        }
    };
    if facts.recurrent {
        push(Action::ClipGradNorm { max_norm: 1.0 }, "training any RNN");
    }
    if facts.nan_seen {
        push(Action::ReduceLearningRate { factor: 0.1 }, "NaN/Inf loss");
        push(Action::VerifyInitialization, "NaN/Inf loss");
        push(Action::ClipGradNorm { max_norm: 1.0 }, "NaN/Inf loss");
    }
    if facts.spikes_seen {
        let lower = facts
            .current_max_norm
            .filter(|m| m.is_finite() && *m > 0.0)
            .map_or(0.5, |m| m / 2.0);
        push(Action::ClipGradNorm { max_norm: lower }, "loss spikes");
        push(Action::CheckDataOutliers, "loss spikes");
    }
    if facts.recurrent && facts.layers >= 3 {
        push(
            Action::ClipGradNorm { max_norm: 0.5 },
            "deep RNN (3+ layers)",
        );
        if !facts.gated {
            push(Action::UseGatedCells, "deep RNN (3+ layers)");
        }
    }
    if facts.recurrent && facts.seq_len > 100 {
        push(
            Action::ClipGradNorm { max_norm: 1.0 },
            "long sequences (T > 100)",
        );
        push(Action::TruncatedBptt { k: 100 }, "long sequences (T > 100)");
    }
    recs
}
