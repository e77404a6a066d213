//! The adapter's refusals and the library's errors, as `candle_core::Error` values whose message
//! names the variable (its index in `vars`, its shape and dtype) and, for a NaN/inf, the flat
//! index and the value.

use std::fmt;

use candle_core::{DType, Tensor};

/// Which gradient an error is about: its variable's index in `vars` and how it looks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Who {
    pub var: usize,
    pub dims: Vec<usize>,
    pub dtype: DType,
}

impl Who {
    pub fn of(var: usize, grad: &Tensor) -> Who {
        Who {
            var,
            dims: grad.dims().to_vec(),
            dtype: grad.dtype(),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "var {} (shape {:?}, {})",
            self.var,
            self.dims,
            self.dtype.as_str()
        )
    }
}

/// Everything the adapter refuses or reports, before it becomes a `candle_core::Error`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClipError {
    /// The gradient lives on a CUDA or Metal device.
    NotCpu { who: Who, device: String },
    /// A dtype other than f32, f16 and bf16.
    UnsupportedDtype { who: Who },
    /// Two gradients share memory: in-place writes through both would alias.
    Aliased {
        first: Who,
        second: Who,
        first_range: (usize, usize),
        second_range: (usize, usize),
    },
    /// A gradient holds NaN or ±inf (the library's `NonFinite`, with the variable named).
    NonFinite { who: Who, index: usize, value: f64 },
    /// Any other error of the library (invalid `max_norm`, `eps`, norm type, ...).
    Core(gradclip::Error),
    /// A layout that does not fit its storage (candle never builds one; refused, not trusted).
    BadLayout { who: Who, end: usize, len: usize },
}

impl fmt::Display for ClipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClipError::NotCpu { who, device } => write!(
                f,
                "gradclip: the gradient of {who} is on {device}; only CPU gradients are supported \
                 (move them to the CPU, or clip them with candle ops)"
            ),
            ClipError::UnsupportedDtype { who } => write!(
                f,
                "gradclip: the gradient of {who} has an unsupported dtype; gradclip clips f32, \
                 f16 and bf16 gradients"
            ),
            ClipError::Aliased {
                first,
                second,
                first_range,
                second_range,
            } => write!(
                f,
                "gradclip: the gradients of {first} and {second} share memory (elements \
                 {}..{} and {}..{} of one storage); refusing to modify aliased gradients in place",
                first_range.0, first_range.1, second_range.0, second_range.1
            ),
            ClipError::NonFinite { who, index, value } => write!(
                f,
                "gradclip: non-finite gradient value {value} in {who} at flat index {index}; \
                 nothing was modified"
            ),
            ClipError::Core(e) => write!(f, "gradclip: {e}"),
            ClipError::BadLayout { who, end, len } => write!(
                f,
                "gradclip: the gradient of {who} ends at element {end} of a storage of {len} \
                 elements"
            ),
        }
    }
}

impl std::error::Error for ClipError {}

impl From<ClipError> for candle_core::Error {
    fn from(e: ClipError) -> Self {
        candle_core::Error::wrap(e)
    }
}
