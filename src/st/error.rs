//! Why a file is rejected or a computation fails: [`StError`], one line when displayed.

use std::fmt;

use crate::error::Error;

/// Largest header the format allows (the `safetensors` crate's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Why a file was rejected, or why a computation failed. Its [`fmt::Display`] is one line
/// (control characters from the file are escaped).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StError {
    /// The file has no byte at all.
    Empty,
    /// The file ends before the 8-byte header length.
    TooShort {
        /// File size in bytes.
        len: usize,
    },
    /// The header length is larger than [`MAX_HEADER_LEN`].
    HeaderTooLong {
        /// The declared header length.
        header_len: u64,
    },
    /// The header length runs past the end of the file.
    HeaderPastEnd {
        /// The declared header length.
        header_len: u64,
        /// File size in bytes.
        file_len: usize,
    },
    /// The header is not UTF-8, not JSON, or not a JSON object.
    BadHeader(String),
    /// A tensor entry is malformed (missing field, wrong type, duplicate name, ...).
    BadTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a dtype other than F32, F16 or BF16.
    UnsupportedDtype {
        /// The tensor's name.
        name: String,
        /// The dtype string found in the header.
        dtype: String,
    },
    /// `product(shape) * size_of(dtype)` differs from the byte range (or overflows).
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// Bytes the shape and dtype need (`None` on overflow).
        needed: Option<u64>,
        /// Bytes the offsets give.
        got: u64,
    },
    /// Two tensors' byte ranges overlap.
    Overlap {
        /// The earlier tensor in file order.
        first: String,
        /// The tensor starting inside it.
        second: String,
    },
    /// Bytes of the data section belong to no tensor.
    Gap {
        /// First byte (data-section relative) not covered by a tensor.
        at: u64,
        /// The tensor after the gap.
        before: String,
    },
    /// A tensor's bytes extend past the end of the file.
    OutOfRange {
        /// The tensor's name.
        name: String,
        /// Its end offset in the data section.
        end: u64,
        /// The data section's size.
        data_len: u64,
    },
    /// Bytes after the last tensor.
    TrailingBytes {
        /// Where the last tensor ends.
        data_end: u64,
        /// The data section's size.
        data_len: u64,
    },
    /// The `safetensors` crate rejected a file this module accepted (should not happen).
    Format(String),
    /// An argument is invalid (norm type, max norm), as the library reported it.
    Invalid(Error),
    /// A command-line argument could not be parsed.
    Argument(String),
    /// A tensor holds NaN or ±inf.
    NonFinite(Located),
    /// Reading the file failed, or it ended early: it was truncated while it was read.
    Read {
        /// Where the failed read started.
        offset: u64,
        /// What went wrong (one line).
        reason: String,
    },
    /// A tensor's bytes differ between two reads: the file was rewritten while it was read, so a
    /// clipped copy would not hold the data that was measured.
    Changed {
        /// The tensor whose bytes changed.
        name: String,
    },
    /// Writing the clipped data failed.
    Write(String),
}

impl StError {
    /// The error for a failed read at `offset`; a read past the end means the file shrank.
    pub(crate) fn read(offset: u64, e: &std::io::Error) -> StError {
        let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the file ends there: it was truncated while it was read".to_string()
        } else {
            e.to_string()
        };
        StError::Read { offset, reason }
    }
}

/// A non-finite element, located by tensor (file-order index and name) and flat index.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// File-order index of the tensor.
    pub tensor: usize,
    /// The tensor's name.
    pub name: String,
    /// Row-major flat index inside the tensor.
    pub index: usize,
    /// The value: NaN, +inf or -inf.
    pub value: f64,
}

impl Located {
    /// `"NaN"`, `"inf"` or `"-inf"`.
    pub fn value_str(&self) -> &'static str {
        if self.value.is_nan() {
            "NaN"
        } else if self.value > 0.0 {
            "inf"
        } else {
            "-inf"
        }
    }
}

/// `s` with control characters escaped, so a message built from file content stays on one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for StError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |s: &str| one_line(s);
        match self {
            StError::Empty => write!(f, "the file is empty"),
            StError::TooShort { len } => write!(
                f,
                "the file is truncated: {len} bytes, a safetensors file starts with an 8-byte header length"
            ),
            StError::HeaderTooLong { header_len } => write!(
                f,
                "header length {header_len} is absurd (the format allows at most {MAX_HEADER_LEN} bytes)"
            ),
            StError::HeaderPastEnd {
                header_len,
                file_len,
            } => write!(
                f,
                "header length {header_len} runs past the end of the file ({file_len} bytes): truncated or not a safetensors file"
            ),
            StError::BadHeader(why) => write!(f, "corrupt header: {}", q(why)),
            StError::BadTensor { name, reason } => {
                write!(f, "tensor `{}`: {}", q(name), q(reason))
            }
            StError::UnsupportedDtype { name, dtype } => write!(
                f,
                "tensor `{}`: unsupported dtype `{}` (supported: F32, F16, BF16)",
                q(name),
                q(dtype)
            ),
            StError::ShapeMismatch { name, needed, got } => match needed {
                Some(n) => write!(
                    f,
                    "tensor `{}`: shape and dtype need {n} bytes but data_offsets give {got}",
                    q(name)
                ),
                None => write!(f, "tensor `{}`: shape is too large (overflow)", q(name)),
            },
            StError::Overlap { first, second } => write!(
                f,
                "tensors `{}` and `{}` have overlapping data_offsets",
                q(first),
                q(second)
            ),
            StError::Gap { at, before } => write!(
                f,
                "data bytes from offset {at} up to tensor `{}` belong to no tensor",
                q(before)
            ),
            StError::OutOfRange {
                name,
                end,
                data_len,
            } => write!(
                f,
                "tensor `{}`: data_offsets end at {end}, past the end of the data ({data_len} bytes): truncated file?",
                q(name)
            ),
            StError::TrailingBytes { data_end, data_len } => write!(
                f,
                "{} bytes after the last tensor (data ends at {data_end}, file data is {data_len} bytes)",
                data_len.saturating_sub(*data_end)
            ),
            StError::Format(why) => write!(f, "invalid safetensors file: {}", q(why)),
            StError::Invalid(e) => write!(f, "{e}"),
            StError::Argument(why) => f.write_str(why),
            StError::NonFinite(l) => write!(
                f,
                "non-finite value {} in tensor `{}` at index {}",
                l.value_str(),
                q(&l.name),
                l.index
            ),
            StError::Read { offset, reason } => {
                write!(f, "cannot read byte {offset} of the file: {}", q(reason))
            }
            StError::Changed { name } => write!(
                f,
                "tensor `{}` changed while it was read (its bytes differ between the two passes): the file was rewritten during the run",
                q(name)
            ),
            StError::Write(why) => write!(f, "cannot write the output: {}", q(why)),
        }
    }
}

impl std::error::Error for StError {}
