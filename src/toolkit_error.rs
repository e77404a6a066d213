//! The error type of the toolkit modules ([`crate::monitor`], [`crate::stabilize`]), also used by
//! the demo's RNN in the `gradclip-cli` member.
//!
//! The kernels report [`crate::Error`]; the toolkit wraps it and adds the argument checks of its own
//! (shapes, thresholds, percentiles). No toolkit function panics on a bad argument: windows and
//! buffer sizes are bounded (e.g. [`crate::monitor::MAX_WINDOW`]), size products use checked
//! arithmetic, and shapes are validated before anything is allocated, so absurd arguments
//! (`usize::MAX` windows, shapes whose product overflows) return a [`ToolkitError`].

use std::fmt;

/// Everything a toolkit call can reject.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ToolkitError {
    /// A numeric parameter outside its domain (e.g. a non-positive threshold).
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// Buffer lengths that do not match the declared shape.
    ShapeMismatch {
        /// What was being checked.
        what: &'static str,
        /// The length that was needed.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// A kernel of the crate failed (non-finite gradient, bad `max_norm`, ...).
    Kernel(crate::Error),
}

impl ToolkitError {
    /// Shorthand for [`ToolkitError::InvalidParameter`].
    pub fn param(name: &'static str, value: f64, expected: &'static str) -> Self {
        ToolkitError::InvalidParameter {
            name,
            value,
            expected,
        }
    }

    /// Returns `Err(ShapeMismatch)` when `got != expected`.
    pub fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), Self> {
        if expected == got {
            Ok(())
        } else {
            Err(ToolkitError::ShapeMismatch {
                what,
                expected,
                got,
            })
        }
    }
}

impl fmt::Display for ToolkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolkitError::InvalidParameter {
                name,
                value,
                expected,
            } => write!(f, "invalid {name} = {value}: expected {expected}"),
            ToolkitError::ShapeMismatch {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected length {expected}, got {got}"),
            ToolkitError::Kernel(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ToolkitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ToolkitError::Kernel(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::Error> for ToolkitError {
    fn from(e: crate::Error) -> Self {
        ToolkitError::Kernel(e)
    }
}
