//! Norms of every tensor of a file and of the whole file, in one pass over the data.

use super::data::{file_offset, slot, with_scratch, Scratch};
use super::error::{Located, StError};
use super::header::{Layout, TensorInfo};
use super::source::Source;
use crate::dtype::DType;
use crate::error::Error;
use crate::grads::GradMut;
use crate::norm::{first_nonfinite, per_buffer_partials, total_norm_partial};
use crate::norm_type::NormType;
use crate::parallel::{buffer_split, merge_set};
use crate::partial::NormPartial;

/// What the caller does with each piece of a tensor once its partial is taken.
pub(super) type EachPiece<'a> = dyn FnMut(GradMut<'_>) -> Result<(), StError> + 'a;

/// The partial of the `len` bytes at `offset` (whole elements of `dtype`: a tensor, or a part of
/// one that the library's reduction tree cuts off), read through `scratch`. A range larger than
/// the scratch is cut where the tree cuts it (at the chunk-aligned midpoint, see `parallel.rs`)
/// and the halves are merged, so the partial has the bits of the whole tensor's. `each` gets
/// every piece's elements, in file order, after the piece's partial was taken.
pub(super) fn piecewise_partial<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    len: usize,
    dtype: DType,
    norm_type: NormType,
    scratch: &mut Scratch,
    each: &mut EachPiece<'_>,
) -> Result<NormPartial, StError> {
    let size = dtype.size_of();
    if let (Some(mid), false) = (buffer_split(len / size), scratch.fits(len)) {
        let cut = mid * size;
        let a = piecewise_partial(src, offset, cut, dtype, norm_type, scratch, each)?;
        let b = piecewise_partial(
            src,
            offset + cut as u64,
            len - cut,
            dtype,
            norm_type,
            scratch,
            each,
        )?;
        return Ok(a.merge(b));
    }
    let g = scratch.read(src, offset, len, dtype)?;
    let p = total_norm_partial(&[g.as_grad()], norm_type).map_err(StError::Invalid)?;
    each(g)?;
    Ok(p)
}

/// The partial of the `len` bytes at `offset`, as [`piecewise_partial`] computes it, but with
/// the two halves of every cut read and reduced in parallel (`rayon::join`), each piece through
/// a scratch buffer of the thread that runs it.
fn parallel_partial<S: Source + ?Sized>(
    src: &S,
    offset: u64,
    len: usize,
    dtype: DType,
    norm_type: NormType,
    cap: usize,
) -> Result<NormPartial, StError> {
    let size = dtype.size_of();
    if let (Some(mid), true) = (buffer_split(len / size), len > cap) {
        let cut = mid * size;
        let (a, b) = rayon::join(
            || parallel_partial(src, offset, cut, dtype, norm_type, cap),
            || parallel_partial(src, offset + cut as u64, len - cut, dtype, norm_type, cap),
        );
        return Ok(a?.merge(b?));
    }
    with_scratch(|scratch| {
        let g = scratch.read(src, offset, len, dtype)?;
        total_norm_partial(&[g.as_grad()], norm_type).map_err(StError::Invalid)
    })
}

/// What one task of [`tensor_partials`] covers: consecutive tensors that fit in one scratch
/// buffer together, or one tensor that does not.
enum Job {
    Together(std::ops::Range<usize>),
    Alone(usize),
}

/// Each tensor's partial, in file order. The tensors are grouped into jobs (a run of
/// consecutive tensors that fit in one scratch buffer side by side: one read each and one
/// `per_buffer_partials` call; or one larger tensor, read in pieces by [`parallel_partial`]),
/// and the jobs run in parallel. Every tensor's partial has the bits of the library's own
/// reduction of that tensor, so the result does not depend on the grouping or the threads.
fn tensor_partials<S: Source + ?Sized>(
    src: &S,
    layout: &Layout,
    norm_type: NormType,
) -> Result<Vec<NormPartial>, StError> {
    use rayon::prelude::*;
    let ts = &layout.tensors;
    let cap = Scratch::new().cap();
    let bytes = |t: &TensorInfo| slot(t.end - t.start);
    let mut jobs = Vec::new();
    let mut i = 0;
    while i < ts.len() {
        if bytes(&ts[i]) > cap {
            jobs.push(Job::Alone(i));
            i += 1;
            continue;
        }
        let (mut j, mut sum) = (i, 0);
        while j < ts.len() && sum + bytes(&ts[j]) <= cap {
            sum += bytes(&ts[j]);
            j += 1;
        }
        jobs.push(Job::Together(i..j));
        i = j;
    }
    let done: Vec<Vec<NormPartial>> = jobs
        .par_iter()
        .map(|job| match job {
            Job::Alone(i) => {
                let t = &ts[*i];
                let (offset, len) = (file_offset(layout, t), t.end - t.start);
                Ok(vec![parallel_partial(
                    src, offset, len, t.dtype, norm_type, cap,
                )?])
            }
            Job::Together(range) => with_scratch(|scratch| {
                let views = scratch.read_tensors(src, layout, &ts[range.clone()])?;
                let mut parts = vec![NormPartial::EMPTY; views.len()];
                per_buffer_partials(&views, norm_type, &mut parts).map_err(StError::Invalid)?;
                Ok(parts)
            }),
        })
        .collect::<Result<_, StError>>()?;
    Ok(done.into_iter().flatten().collect())
}

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
    let parts = tensor_partials(src, layout, norm_type)?;
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
