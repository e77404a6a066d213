//! Safetensors gradient dumps: strict validation, norms and clipping of a whole file.
//!
//! This is the library side of `gradclip norm` and `gradclip clip` (feature `safetensors`), kept out of
//! the binary so fuzz targets and embedders reach the exact code path the command line runs.
//! Printing and file handling stay in the binary.
//!
//! A file is `u64 little-endian header length N`, `N bytes of JSON header`, then the data section.
//! [`parse`] checks everything before any number is computed: the header length, that the header
//! is a UTF-8 JSON object, each tensor's dtype (F32, F16, BF16 only), shape and `data_offsets`
//! (no overlap, no gap, no byte past the end, `product(shape) * size_of(dtype) == end - start`
//! in checked arithmetic), and no repeated key in any JSON object, all in one pass over the
//! header. It accepts nothing the `safetensors` crate rejects (the fuzz oracle checks that
//! through the `safetensors` crate's own parser).
//!
//! [`read_layout`] does the same for an open file, reading only the header. [`norms`] and
//! [`clip`] read tensor data from a [`Source`] (a byte slice, or an open file through positioned
//! reads: never a shared memory map, which kills the process with SIGBUS when another process
//! truncates the file) into one reused buffer of at most [`SCRATCH_BYTES`], so memory does not
//! grow with the file. A file that ends early is an error ([`StError::Read`]), and
//! [`Clipped::write_to`] checks, tensor by tensor, that the data it writes has the partials that
//! were measured ([`StError::Changed`] otherwise).
//!
//! Tensors are kept in **file order**: ascending data offset, ties (zero-size tensors at the
//! same offset) broken by their position in the header. The JSON map's own order is not used.
//!
//! By concern: `error` (why a file or call is refused), `header` (the one-pass parse into a
//! [`Layout`]), `source` (positioned reads from a slice or a file), `data` (tensor bytes as
//! elements, the bounded scratch), `norms` (per-tensor and total partials, merged in the
//! library's tree), `clip` (the coefficient and the scaled data as it is written, checked
//! against the measurement), `args` (command-line values shared by `norm` and `clip`).

mod args;
mod clip;
mod data;
mod error;
mod header;
mod norms;
mod pass;
mod source;

pub use args::{parse_max_norm, parse_norm_type};
pub use clip::{clip, clip_coefficient, Clipped};
pub use data::{tensor_data, TensorData, SCRATCH_BYTES};
pub use error::{one_line, Located, StError, MAX_HEADER_LEN};
pub use header::{dtype_str, parse, read_layout, Layout, TensorInfo};
pub use norms::{norms, NormSummary};
pub use source::Source;

/// Floats in messages, as the command line prints them (see [`Compact`]).
pub use crate::error::Compact;
