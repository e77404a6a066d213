//! A fixed-capacity ring buffer of `f64`: allocated once, O(1) push, never reallocates.

use crate::toolkit_error::ToolkitError;

/// The largest capacity of a [`Ring`] (and of every window of the monitor): 2^20 values (8 MiB).
/// Larger windows are rejected with an error instead of attempting a huge allocation.
pub const MAX_WINDOW: usize = 1 << 20;

/// The last `capacity` values pushed, oldest first.
#[derive(Debug, Clone)]
pub struct Ring {
    data: Vec<f64>,
    head: usize,
    len: usize,
}

impl Ring {
    /// An empty ring holding at most `capacity` values (1 ≤ `capacity` ≤ [`MAX_WINDOW`]; other
    /// capacities, and a failed allocation, are an error).
    pub fn new(capacity: usize) -> Result<Self, ToolkitError> {
        if !(1..=MAX_WINDOW).contains(&capacity) {
            return Err(ToolkitError::param(
                "ring capacity",
                capacity as f64,
                "in 1..=MAX_WINDOW (2^20)",
            ));
        }
        let mut data = Vec::new();
        data.try_reserve_exact(capacity).map_err(|_| {
            ToolkitError::param("ring capacity", capacity as f64, "an allocatable size")
        })?;
        data.resize(capacity, 0.0);
        Ok(Ring {
            data,
            head: 0,
            len: 0,
        })
    }

    /// Appends `x`, dropping the oldest value when full.
    pub fn push(&mut self, x: f64) {
        let cap = self.data.len();
        let idx = (self.head + self.len) % cap;
        self.data[idx] = x;
        if self.len < cap {
            self.len += 1;
        } else {
            self.head = (self.head + 1) % cap;
        }
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no value is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `len() == capacity`.
    pub fn is_full(&self) -> bool {
        self.len == self.data.len()
    }

    /// The `i`-th value, oldest first (`None` past the end).
    pub fn get(&self, i: usize) -> Option<f64> {
        (i < self.len).then(|| self.data[(self.head + i) % self.data.len()])
    }

    /// The oldest value held.
    pub fn first(&self) -> Option<f64> {
        self.get(0)
    }

    /// The newest value held.
    pub fn last(&self) -> Option<f64> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Values oldest first.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        (0..self.len).map(move |i| self.data[(self.head + i) % self.data.len()])
    }

    /// Forgets every value (keeps the allocation).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// Exponential moving mean and variance:
/// `μ ← β μ + (1 − β) x`, `v ← β v + (1 − β) (x − μ_new)²` (the update ZClip uses), with the
/// first value initialising `μ = x`, `v = 0`.
///
/// Bias correction: `v` starts at 0, so after the first value only `1 − β^(n−1)` of its weight
/// is data (Adam's correction). [`EmaStats::std`] and [`EmaStats::z`] use `v / (1 − β^(n−1))`,
/// so a few early values do not give a tiny σ and absurd z-scores. The mean needs no correction:
/// starting it at the first value already gives the data weight 1.
#[derive(Debug, Clone, Copy)]
pub struct EmaStats {
    beta: f64,
    mean: f64,
    var: f64,
    /// `1 − β^(n−1)`: the weight of data in `var`.
    var_weight: f64,
    count: u64,
}

impl EmaStats {
    /// Decay `beta` in [0, 1).
    pub fn new(beta: f64) -> Self {
        EmaStats {
            beta,
            mean: 0.0,
            var: 0.0,
            var_weight: 0.0,
            count: 0,
        }
    }

    /// Folds `x` in.
    pub fn update(&mut self, x: f64) {
        if self.count == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            self.mean = self.beta * self.mean + (1.0 - self.beta) * x;
            let d = x - self.mean;
            self.var = self.beta * self.var + (1.0 - self.beta) * d * d;
            self.var_weight = self.beta * self.var_weight + (1.0 - self.beta);
        }
        self.count += 1;
    }

    /// `(x − μ) / (σ + eps)` with the bias-corrected σ; 0 before any value.
    pub fn z(&self, x: f64, eps: f64) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (x - self.mean) / (self.std() + eps)
        }
    }

    /// The EMA mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The bias-corrected EMA standard deviation `√(v / (1 − β^(n−1)))` (0 before two values).
    pub fn std(&self) -> f64 {
        if self.var_weight > 0.0 {
            (self.var / self.var_weight).sqrt()
        } else {
            0.0
        }
    }

    /// Values folded in.
    pub fn count(&self) -> u64 {
        self.count
    }
}
