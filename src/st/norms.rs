//! Norms of every tensor of a file and of the whole file, in one pass over the data.

use super::data::{file_offset, Scratch};
use super::error::{Located, StError};
use super::header::Layout;
use super::pass::pass;
use super::source::Source;
use crate::dtype::DType;
use crate::error::Error;
use crate::norm::first_nonfinite;
use crate::norm_type::NormType;
use crate::parallel::merge_set;
use crate::partial::NormPartial;

/// The first non-finite element of the `len` bytes at `offset`: (flat index, value).
fn first_nonfinite_in<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    len: usize,
    dtype: DType,
    scratch: &mut Scratch,
) -> Result<Option<(usize, f64)>, StError> {
    let size = dtype.size_of();
    let piece = scratch.piece(size);
    let mut done = 0;
    while done < len {
        let n = piece.min(len - done);
        let g = scratch.read(src, offset + done as u64, n, dtype)?;
        if let Some(nf) = first_nonfinite(&[g]) {
            return Ok(Some((done / size + nf.index, nf.value)));
        }
        done += n;
    }
    Ok(None)
}

/// Partials of every tensor and of the file, and the first non-finite element.
pub(super) struct Analysis {
    pub(super) parts: Vec<NormPartial>,
    pub(super) total: NormPartial,
    pub(super) nonfinite: Option<Located>,
}

/// One pass over the data (then a scan of the first tensor holding a NaN or ±inf, if any).
/// A P norm of finite elements that exceeds f64, for the file or for one tensor, is
/// [`Error::NormOverflow`]: the norm type is unusable for this file, which is reported before
/// any non-finite element.
pub(super) fn analyse<S: Source + ?Sized>(
    src: &S,
    layout: &Layout,
    norm_type: NormType,
) -> Result<Analysis, StError> {
    let empty = NormPartial::new(norm_type).map_err(StError::Invalid)?;
    let parts = pass(src, layout, norm_type, None)?;
    let mut scratch = Scratch::new();
    let total = merge_set(&parts, empty);
    let overflows = |p: &NormPartial| p.is_finite() && p.finish().is_infinite();
    if overflows(&total) || parts.iter().any(overflows) {
        return Err(StError::Invalid(Error::NormOverflow {
            p: norm_type.exponent(),
        }));
    }
    let mut nonfinite = None;
    if !total.is_finite() {
        for (i, (t, p)) in layout.tensors.iter().zip(&parts).enumerate() {
            if p.is_finite() {
                continue;
            }
            let (offset, len) = (file_offset(layout, t), t.end - t.start);
            // The partial saw a NaN or ±inf here; a second read that finds none means the
            // bytes changed in between.
            let Some((index, value)) = first_nonfinite_in(src, offset, len, t.dtype, &mut scratch)?
            else {
                return Err(StError::Changed {
                    name: t.name.clone(),
                });
            };
            nonfinite = Some(Located {
                tensor: i,
                name: t.name.clone(),
                index,
                value,
            });
            break;
        }
    }
    Ok(Analysis {
        parts,
        total,
        nonfinite,
    })
}

/// Per-tensor norms and the total of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct NormSummary {
    /// The norm type used.
    pub norm_type: NormType,
    /// The total norm over all elements (NaN or +inf when an element is not finite).
    pub total_norm: f64,
    /// Each tensor's own norm, in file order (NaN or +inf when it holds a non-finite element).
    pub norms: Vec<f64>,
    /// The first non-finite element in file order.
    pub nonfinite: Option<Located>,
}

/// Norms of every tensor and the total, in one pass over the data, read from `src` (a byte
/// slice, or an open file: see [`Source`]) through one bounded buffer ([`SCRATCH_BYTES`]). The
/// total has the bits of [`crate::get_total_norm`] over the tensors in file order, for any
/// thread count. A P norm too large for f64 gives `StError::Invalid(Error::NormOverflow { .. })`;
/// a file that ends early (truncated while it is read) gives [`StError::Read`].
///
/// [`SCRATCH_BYTES`]: super::SCRATCH_BYTES
pub fn norms<S: Source + ?Sized>(
    src: &S,
    layout: &Layout,
    norm_type: NormType,
) -> Result<NormSummary, StError> {
    let a = analyse(src, layout, norm_type)?;
    Ok(NormSummary {
        norm_type,
        total_norm: a.total.finish(),
        norms: a.parts.iter().map(NormPartial::finish).collect(),
        nonfinite: a.nonfinite,
    })
}
