//! Norms of every tensor of a file and of the whole file, in one pass over the data.

use super::data::{borrowed, raw_bytes, Scratch};
use super::error::{Located, StError};
use super::header::Layout;
use crate::dtype::DType;
use crate::error::Error;
use crate::grads::Grad;
use crate::norm::{first_nonfinite, per_buffer_partials, total_norm_partial};
use crate::norm_type::NormType;
use crate::parallel::{buffer_split, merge_set};
use crate::partial::NormPartial;

/// The partial of one tensor that cannot be borrowed, copied through `scratch`. A tensor larger
/// than the scratch is cut where the library's reduction tree cuts it (at the chunk-aligned
/// midpoint, see `parallel.rs`) and the halves are merged, so the partial has the bits of the
/// whole tensor's.
fn copied_partial(
    raw: &[u8],
    dtype: DType,
    norm_type: NormType,
    scratch: &mut Scratch,
) -> Result<NormPartial, Error> {
    let size = dtype.size_of();
    let split = buffer_split(raw.len() / size);
    let (Some(mid), false) = (split, scratch.fits(raw.len())) else {
        let g = scratch.load(raw, dtype);
        return total_norm_partial(&[g], norm_type);
    };
    let (l, r) = raw.split_at(mid * size);
    let a = copied_partial(l, dtype, norm_type, scratch)?;
    let b = copied_partial(r, dtype, norm_type, scratch)?;
    Ok(a.merge(b))
}

/// Each tensor's partial, in file order. A run of tensors that can be borrowed from the file goes
/// through one `per_buffer_partials` call (parallel across tensors); a tensor that cannot is
/// copied through `scratch` (one at a time, in pieces of at most the scratch size).
fn tensor_partials(
    bytes: &[u8],
    layout: &Layout,
    norm_type: NormType,
    scratch: &mut Scratch,
) -> Result<Vec<NormPartial>, StError> {
    let mut parts = vec![NormPartial::EMPTY; layout.tensors.len()];
    let mut run: Vec<Grad<'_>> = Vec::new();
    let mut run_start = 0;
    let flush = |run: &mut Vec<Grad<'_>>, parts: &mut [NormPartial]| -> Result<(), StError> {
        if !run.is_empty() {
            per_buffer_partials(run, norm_type, parts).map_err(StError::Invalid)?;
            run.clear();
        }
        Ok(())
    };
    for (i, t) in layout.tensors.iter().enumerate() {
        let raw = raw_bytes(bytes, layout, t)?;
        if let Some(g) = borrowed(raw, t.dtype) {
            if run.is_empty() {
                run_start = i;
            }
            run.push(g);
            continue;
        }
        flush(&mut run, &mut parts[run_start..i])?;
        parts[i] = copied_partial(raw, t.dtype, norm_type, scratch).map_err(StError::Invalid)?;
    }
    let end = parts.len();
    flush(&mut run, &mut parts[run_start..end])?;
    Ok(parts)
}

/// The first non-finite element of one tensor: (flat index, value).
fn first_nonfinite_in(raw: &[u8], dtype: DType, scratch: &mut Scratch) -> Option<(usize, f64)> {
    if let Some(g) = borrowed(raw, dtype) {
        return first_nonfinite(&[g]).map(|nf| (nf.index, nf.value));
    }
    let size = dtype.size_of();
    let piece = scratch.piece(size);
    raw.chunks(piece).enumerate().find_map(|(k, chunk)| {
        let g = scratch.load(chunk, dtype);
        first_nonfinite(&[g]).map(|nf| (k * (piece / size) + nf.index, nf.value))
    })
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
pub(super) fn analyse(
    bytes: &[u8],
    layout: &Layout,
    norm_type: NormType,
) -> Result<Analysis, StError> {
    let empty = NormPartial::new(norm_type).map_err(StError::Invalid)?;
    let mut scratch = Scratch::new();
    let parts = tensor_partials(bytes, layout, norm_type, &mut scratch)?;
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
            let raw = raw_bytes(bytes, layout, t)?;
            if let Some((index, value)) = first_nonfinite_in(raw, t.dtype, &mut scratch) {
                nonfinite = Some(Located {
                    tensor: i,
                    name: t.name.clone(),
                    index,
                    value,
                });
                break;
            }
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

/// Norms of every tensor and the total, in one pass over the data. Aligned tensors are read
/// where they lie in `bytes` (a memory map); others are copied through one bounded buffer
/// ([`SCRATCH_BYTES`]). The total has the bits of [`crate::get_total_norm`] over the tensors in
/// file order, for any thread count. A P norm too large for f64 gives
/// `StError::Invalid(Error::NormOverflow { .. })`.
pub fn norms(bytes: &[u8], layout: &Layout, norm_type: NormType) -> Result<NormSummary, StError> {
    let a = analyse(bytes, layout, norm_type)?;
    Ok(NormSummary {
        norm_type,
        total_norm: a.total.finish(),
        norms: a.parts.iter().map(NormPartial::finish).collect(),
        nonfinite: a.nonfinite,
    })
}
