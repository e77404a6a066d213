//! [`NormType`]: which norm to take (vocabulary only).

use crate::error::Error;

/// Which norm to take over all elements of all buffers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum NormType {
    /// Euclidean norm `sqrt(Σ x²)` (the default, as in PyTorch).
    #[default]
    L2,
    /// `Σ |x|`.
    L1,
    /// `max |x|` (exact).
    Inf,
    /// `(Σ |x|^p)^(1/p)` for a finite `p > 0`; `P(1.0)` and `P(2.0)` are computed as L1 and L2.
    P(f64),
}

impl NormType {
    /// Checks `p` and maps `P(1)`/`P(2)` to the dedicated kernels.
    pub(crate) fn validated(self) -> Result<NormType, Error> {
        match self {
            NormType::P(p) if !(p.is_finite() && p > 0.0) => Err(Error::InvalidNormType { p }),
            NormType::P(1.0) => Ok(NormType::L1),
            NormType::P(2.0) => Ok(NormType::L2),
            other => Ok(other),
        }
    }

    /// The exponent: 1 for L1, 2 for L2, +inf for Inf, p for `P(p)`.
    pub fn exponent(self) -> f64 {
        match self {
            NormType::L1 => 1.0,
            NormType::L2 => 2.0,
            NormType::Inf => f64::INFINITY,
            NormType::P(p) => p,
        }
    }

    pub(crate) fn from_exponent(p: f64) -> Option<NormType> {
        if p == 1.0 {
            Some(NormType::L1)
        } else if p == 2.0 {
            Some(NormType::L2)
        } else if p == f64::INFINITY {
            Some(NormType::Inf)
        } else if p.is_finite() && p > 0.0 {
            Some(NormType::P(p))
        } else {
            None
        }
    }
}
