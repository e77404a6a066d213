//! [`AutoClip`]: clip to a percentile of the history of gradient norms (Seetharaman et al., 2020).
//!
//! At step n the norm `‖g_n‖` is appended to the history `h_1..h_n`, and the clipping threshold is
//! the p-th percentile of the history with linear interpolation (NumPy's default):
//!
//! ```text
//! r = (p / 100) · (n − 1),   k = ⌊r⌋,   threshold = s_k + (r − k) · (s_{k+1} − s_k)
//! ```
//!
//! where `s_0 ≤ s_1 ≤ … ≤ s_{n−1}` is the sorted history. The published default is p = 10.
//! [`AutoClip::clip_`] then clips the gradients to that threshold, as the authors' code
//! (github.com/pseeth/autoclip, `autoclip.py`: `np.percentile` of the history, then
//! `torch.nn.utils.clip_grad_norm_`) does — with one deliberate difference:
//!
//! **A zero threshold leaves the gradients as they are.** The threshold is exactly 0 when the
//! interpolation only touches zero norms: `s_k = 0` and (`r = k` or `s_{k+1} = 0`), i.e. when more
//! than about p % of the recorded norms are exactly zero (zero-gradient steps: masked or empty
//! batches, frozen phases). `clip_grad_norm_` with `max_norm = 0` multiplies by
//! `0 / (‖g‖ + 1e-6) = 0`, so the reference zeroes every such gradient: with p = 10, nine
//! zero-gradient steps and then `g = [3, 4]`, it zeroes that gradient and the next 71 as well
//! (the 10th percentile stays 0 until the history holds 82 norms); with a zero gradient on
//! every 4th step it zeroes 87 of the 90 non-zero gradients of a 120-step run. A zero norm carries no scale, and zeroing
//! a gradient is the same as skipping the step, which is rarely what clipping is asked for; so
//! here a threshold of 0 means "nothing to clip to yet": [`AutoClip::clip_`] returns a report
//! with `clipped = false`, `clip_coef = 1` and writes nothing. The zero norms stay in the
//! history (as in the reference), so once enough non-zero norms have been recorded the
//! threshold becomes positive and clipping resumes as in the reference — even a tiny positive
//! threshold is applied. [`AutoClip::observe`] and [`AutoClip::threshold`] return the
//! percentile itself (0 included), as `np.percentile` does. If zero-gradient steps are expected,
//! skip [`AutoClip::clip_`] on them so that the history holds only real norms.
//! `tests/toolkit_anchors.rs` checks the thresholds and clipped gradients against the reference's
//! own (`scripts/make_autoclip_fixtures.py`), this difference included.
//!
//! Exactness in O(log n) per step: `r` grows by `p/100 ≤ 1` per step, so the ranks `k` and `k + 1`
//! move by at most one. Two heaps hold the history split at rank k: a max-heap `low` with the
//! `k + 1` smallest values and a min-heap `high` with the rest; `s_k` is the top of `low` and
//! `s_{k+1}` the top of `high`. Each step pushes one value and moves at most two between heaps.
//! Memory is O(n), as the method keeps the whole history (NaN and ±inf norms are not recorded).
//!
//! ```
//! use gradclip::monitor::AutoClip;
//! let mut ac = AutoClip::new(50.0).unwrap();
//! for x in [4.0, 1.0, 3.0, 2.0] {
//!     ac.observe(x);
//! }
//! assert_eq!(ac.threshold(), Some(2.5)); // median of 1, 2, 3, 4
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::toolkit_error::ToolkitError;
use crate::{clip_grads_with_norm_, get_total_norm, ClipReport, GradMut, NormType};

/// A finite f64 ordered by `total_cmp`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Percentile clipping over the whole norm history; see the module docs.
#[derive(Debug, Clone)]
pub struct AutoClip {
    percentile: f64,
    low: BinaryHeap<Key>,
    high: BinaryHeap<Reverse<Key>>,
}

impl AutoClip {
    /// The published default percentile.
    pub const DEFAULT_PERCENTILE: f64 = 10.0;

    /// A policy clipping to the `percentile`-th percentile (0 ≤ p ≤ 100) of the history.
    pub fn new(percentile: f64) -> Result<Self, ToolkitError> {
        if !(0.0..=100.0).contains(&percentile) {
            return Err(ToolkitError::param("percentile", percentile, "in [0, 100]"));
        }
        Ok(AutoClip {
            percentile,
            low: BinaryHeap::new(),
            high: BinaryHeap::new(),
        })
    }

    /// Like [`AutoClip::new`], with room for `capacity` norms reserved up front, so that the first
    /// `capacity` calls of [`AutoClip::observe`] allocate nothing (errors if the reservation
    /// fails, e.g. for an absurd `capacity`).
    pub fn with_capacity(percentile: f64, capacity: usize) -> Result<Self, ToolkitError> {
        let mut ac = AutoClip::new(percentile)?;
        let fail = |_| ToolkitError::param("capacity", capacity as f64, "an allocatable size");
        // Either heap may hold every value.
        ac.low.try_reserve_exact(capacity).map_err(fail)?;
        ac.high.try_reserve_exact(capacity).map_err(fail)?;
        Ok(ac)
    }

    /// The percentile in use.
    pub fn percentile(&self) -> f64 {
        self.percentile
    }

    /// Number of norms recorded.
    pub fn len(&self) -> usize {
        self.low.len() + self.high.len()
    }

    /// True before the first recorded norm.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rank(&self, n: usize) -> (usize, f64) {
        let r = self.percentile / 100.0 * (n - 1) as f64;
        let k = (r.floor() as usize).min(n - 1);
        (k, r - k as f64)
    }

    /// Records `norm` (ignored when NaN, infinite or negative) and returns the new threshold.
    pub fn observe(&mut self, norm: f64) -> Option<f64> {
        if norm.is_finite() && norm >= 0.0 {
            let key = Key(norm);
            match self.low.peek() {
                Some(top) if key > *top => self.high.push(Reverse(key)),
                _ => self.low.push(key),
            }
            let (k, _) = self.rank(self.len());
            // Rebalance so that `low` holds exactly k + 1 values.
            while self.low.len() > k + 1 {
                if let Some(x) = self.low.pop() {
                    self.high.push(Reverse(x));
                }
            }
            while self.low.len() < k + 1 {
                match self.high.pop() {
                    Some(Reverse(x)) => self.low.push(x),
                    None => break,
                }
            }
        }
        self.threshold()
    }

    /// The current threshold: the percentile of the history, 0 included (`None` before any
    /// norm was recorded).
    pub fn threshold(&self) -> Option<f64> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let (_, frac) = self.rank(n);
        let lo = self.low.peek()?.0;
        match self.high.peek() {
            Some(Reverse(hi)) if frac > 0.0 => Some(lo + frac * (hi.0 - lo)),
            _ => Some(lo),
        }
    }

    /// One training step: computes the L2 total norm of `grads` with the crate's kernels, records
    /// it, and clips to the new threshold with [`clip_grads_with_norm_`]. A threshold of 0 (the
    /// p-th percentile falls among zero norms; see the module docs) leaves the gradients
    /// untouched, whatever their norm — unlike the reference, which zeroes them. Non-finite
    /// gradients return [`crate::Error::NonFinite`], are not recorded and change nothing.
    pub fn clip_(&mut self, grads: &mut [GradMut<'_>]) -> Result<ClipReport, ToolkitError> {
        let total = get_total_norm(grads, NormType::L2)?;
        match self.observe(total) {
            Some(t) if t > 0.0 => Ok(clip_grads_with_norm_(grads, t, total)?),
            _ => Ok(ClipReport {
                total_norm: total,
                clip_coef: 1.0,
                clipped: false,
                nonfinite: None,
            }),
        }
    }
}
