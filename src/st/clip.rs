//! Clipping a whole file: the coefficient from the norms, then the scaled data as it is written.

use super::data::{into_le_bytes, raw_bytes, Scratch};
use super::error::StError;
use super::header::Layout;
use super::norms::analyse;
use crate::clip::{scale_, ClipOptions};
use crate::norm_type::NormType;

/// `min(1, max_norm / (total_norm + 1e-6))`, from the library (nothing is scaled).
pub fn clip_coefficient(max_norm: f64, total_norm: f64) -> Result<f64, StError> {
    crate::clip_coefficient(max_norm, total_norm, ClipOptions::default().eps)
        .map_err(StError::Invalid)
}

/// What clipping a file does: the norm, the coefficient, and (through
/// [`Clipped::write_to`]) the clipped data, produced while it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Clipped {
    /// The norm type used.
    pub norm_type: NormType,
    /// The total norm before clipping.
    pub total_norm: f64,
    /// The requested maximum norm.
    pub max_norm: f64,
    /// `min(1, max_norm / (total_norm + 1e-6))`.
    pub clip_coef: f64,
    /// True when `clip_coef < 1` (the data is rescaled).
    pub clipped: bool,
}

impl Clipped {
    /// Writes the clipped file: the 8-byte length and header of `bytes` verbatim (names,
    /// dtypes, shapes, offsets and `__metadata__` are unchanged), then the data in file order.
    /// When `clip_coef == 1` the data section is copied byte for byte; otherwise each tensor,
    /// in pieces of at most [`SCRATCH_BYTES`] cut at element boundaries, is copied into one
    /// reused buffer, scaled there by [`crate::scale_`] (`round_to_dtype(f32(x) *
    /// f32(clip_coef))`) and written.
    pub fn write_to<W: std::io::Write + ?Sized>(
        &self,
        bytes: &[u8],
        layout: &Layout,
        w: &mut W,
    ) -> std::io::Result<()> {
        let mismatch =
            || std::io::Error::new(std::io::ErrorKind::InvalidInput, "layout does not match");
        w.write_all(bytes.get(..layout.data_start).ok_or_else(mismatch)?)?;
        if self.clip_coef == 1.0 {
            return w.write_all(bytes.get(layout.data_start..).ok_or_else(mismatch)?);
        }
        let mut scratch = Scratch::new();
        for t in &layout.tensors {
            let raw = raw_bytes(bytes, layout, t).map_err(|_| mismatch())?;
            for piece in raw.chunks(scratch.piece(t.dtype.size_of())) {
                let mut g = scratch.load(piece, t.dtype);
                scale_(std::slice::from_mut(&mut g), self.clip_coef)
                    .map_err(std::io::Error::other)?;
                w.write_all(into_le_bytes(g))?;
            }
        }
        Ok(())
    }
}

/// The norm and clip coefficient of a validated file, with the semantics of [`clip_grad_norm_`]
/// (policy error, eps 1e-6): a non-finite element gives [`StError::NonFinite`] (the first in file
/// order), bad `max_norm` or norm type and a P norm too large for f64 give [`StError::Invalid`].
/// Nothing is copied here; [`Clipped::write_to`] produces the data.
///
/// [`clip_grad_norm_`]: crate::clip_grad_norm_
pub fn clip(
    bytes: &[u8],
    layout: &Layout,
    max_norm: f64,
    norm_type: NormType,
) -> Result<Clipped, StError> {
    // Validate the arguments before reading gigabytes.
    clip_coefficient(max_norm, 0.0)?;
    let a = analyse(bytes, layout, norm_type)?;
    if let Some(l) = a.nonfinite {
        return Err(StError::NonFinite(l));
    }
    if !a.total.is_finite() {
        return Err(StError::Format(
            "a non-finite value was seen but not located".into(),
        ));
    }
    let total_norm = a.total.finish();
    let clip_coef = clip_coefficient(max_norm, total_norm)?;
    Ok(Clipped {
        norm_type,
        total_norm,
        max_norm,
        clip_coef,
        clipped: clip_coef < 1.0,
    })
}
