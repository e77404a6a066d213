//! Error types. Every bad input is reported as a value of [`Error`]; nothing in the public API panics
//! on user input.

use std::fmt;

/// A float for messages: the shortest text that reads back as the same f64, in exponent form
/// when it is tiny or huge (`|x| < 1e-4` or `|x| >= 1e16`), so no message carries hundreds of
/// digits (`1e-308`, `2.99678138824832e27`, `0.5`, `12.5`).
#[derive(Debug, Clone, Copy)]
pub struct Compact(pub f64);

impl fmt::Display for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        if x == 0.0 || !x.is_finite() || (1e-4..1e16).contains(&x.abs()) {
            write!(f, "{x}")
        } else {
            write!(f, "{x:e}")
        }
    }
}

/// The first non-finite element (NaN or ±inf) found in a set of gradient buffers, in buffer order:
/// lowest buffer index first, then lowest element index inside that buffer.
///
/// Two reports are equal when they name the same element and the same value bits (so a NaN
/// report equals itself).
#[derive(Debug, Clone, Copy)]
pub struct NonFinite {
    /// Index of the buffer in the slice passed to the call.
    pub buffer: usize,
    /// Flat element index inside that buffer.
    pub index: usize,
    /// The offending value, widened to f64 (`NaN`, `inf` or `-inf`).
    pub value: f64,
}

impl PartialEq for NonFinite {
    fn eq(&self, other: &Self) -> bool {
        self.buffer == other.buffer
            && self.index == other.index
            && self.value.to_bits() == other.value.to_bits()
    }
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "non-finite gradient value {} in buffer {} at index {}",
            self.value, self.buffer, self.index
        )
    }
}

impl std::error::Error for NonFinite {}

/// Everything that can go wrong in a gradclip call.
///
/// Equality compares the numbers in a variant by their bits, so an error carrying a NaN equals
/// itself.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Error {
    /// A gradient holds NaN or ±inf (and the policy asked for an error). Nothing was modified.
    NonFinite(NonFinite),
    /// `NormType::P(p)` with `p` not a finite number greater than zero.
    InvalidNormType {
        /// The rejected exponent.
        p: f64,
    },
    /// The norm of finite gradients exceeds the f64 range. Only a P norm with a small exponent
    /// can do this (`(Σ|x|^p)^(1/p)` grows like `n^(1/p)`); L1, L2 and Inf never overflow.
    NormOverflow {
        /// The exponent of the norm.
        p: f64,
    },
    /// An exact partial was asked for a P(p) norm: exact summation covers L1, L2 and Inf only
    /// (`|x|^p` is not exact in floating point).
    ExactUnsupported {
        /// The exponent of the norm.
        p: f64,
    },
    /// `max_norm` is not a finite number greater than zero.
    InvalidMaxNorm(f64),
    /// `eps` is not a finite number greater than or equal to zero.
    InvalidEps(f64),
    /// A total norm handed to [`crate::clip_grads_with_norm_`] is negative.
    InvalidTotalNorm(f64),
    /// A scale factor is not finite, or is not finite once rounded to f32.
    InvalidFactor(f64),
    /// A `clip_value` that is NaN or negative.
    InvalidClipValue(f64),
    /// A loss scale that is not finite and > 0, or whose reciprocal is not finite in f32.
    InvalidLossScale(f64),
    /// An output slice whose length does not match the number of buffers.
    LengthMismatch {
        /// The length that was needed.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// An instruction set was forced that this CPU (or this build) does not support.
    IsaUnavailable(crate::isa::Isa),
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        use Error::*;
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits();
        match (self, other) {
            (NonFinite(a), NonFinite(b)) => a == b,
            (InvalidNormType { p: a }, InvalidNormType { p: b })
            | (NormOverflow { p: a }, NormOverflow { p: b })
            | (ExactUnsupported { p: a }, ExactUnsupported { p: b }) => same(*a, *b),
            (InvalidMaxNorm(a), InvalidMaxNorm(b))
            | (InvalidEps(a), InvalidEps(b))
            | (InvalidTotalNorm(a), InvalidTotalNorm(b))
            | (InvalidFactor(a), InvalidFactor(b))
            | (InvalidClipValue(a), InvalidClipValue(b))
            | (InvalidLossScale(a), InvalidLossScale(b)) => same(*a, *b),
            (
                LengthMismatch {
                    expected: e1,
                    got: g1,
                },
                LengthMismatch {
                    expected: e2,
                    got: g2,
                },
            ) => e1 == e2 && g1 == g2,
            (IsaUnavailable(a), IsaUnavailable(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NonFinite(nf) => nf.fmt(f),
            Error::InvalidNormType { p } => {
                let p = Compact(*p);
                write!(f, "invalid norm type: p must be finite and > 0, got {p}")
            }
            Error::ExactUnsupported { p } => write!(
                f,
                "no exact partial for the norm with p = {p}: exact summation covers L1, L2 and Inf"
            ),
            Error::NormOverflow { p } => write!(
                f,
                "the norm with p = {} of these finite gradients exceeds the f64 range",
                Compact(*p)
            ),
            Error::InvalidMaxNorm(v) => {
                let v = Compact(*v);
                write!(f, "invalid max_norm {v}: must be finite and > 0")
            }
            Error::InvalidEps(v) => {
                let v = Compact(*v);
                write!(f, "invalid eps {v}: must be finite and >= 0")
            }
            Error::InvalidTotalNorm(v) => {
                let v = Compact(*v);
                write!(f, "invalid total_norm {v}: must be >= 0")
            }
            Error::InvalidFactor(v) => {
                let v = Compact(*v);
                write!(f, "invalid scale factor {v}: must be finite in f32")
            }
            Error::InvalidClipValue(v) => {
                let v = Compact(*v);
                write!(f, "invalid clip_value {v}: must be >= 0 and not NaN")
            }
            Error::InvalidLossScale(v) => write!(
                f,
                "invalid loss scale {v}: must be finite and > 0, with 1/scale finite in f32"
            ),
            Error::LengthMismatch { expected, got } => {
                write!(f, "output length {got} does not match {expected} buffers")
            }
            Error::IsaUnavailable(isa) => {
                write!(f, "instruction set {isa:?} is not available on this CPU")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::NonFinite(nf) => Some(nf),
            _ => None,
        }
    }
}

impl From<NonFinite> for Error {
    fn from(nf: NonFinite) -> Self {
        Error::NonFinite(nf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_is_short_and_reads_back() {
        for (x, want) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (0.5, "0.5"),
            (12.5, "12.5"),
            (1e-4, "0.0001"),
            (9.5e-5, "9.5e-5"),
            (1e15, "1000000000000000"),
            (1e16, "1e16"),
            (1e-308, "1e-308"),
            (2.996_781_388_248_32e27, "2.99678138824832e27"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let s = Compact(x).to_string();
            assert_eq!(s, want);
            if x.is_finite() {
                assert_eq!(s.parse::<f64>().unwrap().to_bits(), x.to_bits());
            }
        }
        let e = Error::NormOverflow { p: 1e-308 }.to_string();
        assert!(e.contains("p = 1e-308") && e.len() < 100, "{e}");
    }
}
