//! Clipping a whole file: the coefficient from the norms, then the scaled data as it is written.

use super::error::StError;
use super::header::Layout;
use super::norms::analyse;
use super::pass::{pass, Output};
use super::source::Source;
use crate::clip::ClipOptions;
use crate::norm_type::NormType;
use crate::partial::NormPartial;

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
    /// True when `clip_coef < 1`. The data is multiplied by `f32(clip_coef)`, which is 1 for a
    /// coefficient within 2^-25 of 1: see [`Clipped::rewrites_data`].
    pub clipped: bool,
    /// Each tensor's partial as measured, checked again while the data is written.
    parts: Vec<NormPartial>,
}

impl Clipped {
    /// True when the clipped data differs from the input's: `f32(clip_coef) != 1`. When false,
    /// [`Clipped::write_to`] writes a byte-for-byte copy.
    pub fn rewrites_data(&self) -> bool {
        self.clip_coef as f32 != 1.0
    }

    /// Writes the clipped file: [`Layout::head`] (the 8-byte length and the header, verbatim:
    /// names, dtypes, shapes, offsets and `__metadata__` are unchanged), then the data in file
    /// order, read again from `src`. The data is cut into pieces of at most [`SCRATCH_BYTES`]
    /// (runs of small tensors, or parts of a large one cut where the reduction tree cuts it);
    /// a few threads read the next pieces into their own buffers, take their partials again,
    /// scale them there like [`crate::scale_`] (`round_to_dtype(f32(x) * f32(clip_coef))`,
    /// nothing when that factor is 1), and write them to `w` in file order, one at a time, so
    /// that while one piece is written the next ones are read.
    ///
    /// Every tensor's partial must have the bits measured by [`clip`]; if it does not, the file
    /// was rewritten in between and this returns [`StError::Changed`] (a file that shrank gives
    /// [`StError::Read`]), having written part of the data: the caller discards the output.
    ///
    /// [`SCRATCH_BYTES`]: super::SCRATCH_BYTES
    pub fn write_to<S: Source + ?Sized, W: std::io::Write + Send + ?Sized>(
        &self,
        src: &S,
        layout: &Layout,
        w: &mut W,
    ) -> Result<(), StError> {
        // `&mut W` is a sized writer, so it can be handed on as a trait object.
        let mut w = w;
        pass(
            src,
            layout,
            self.norm_type,
            Some(Output {
                head: layout.head(),
                scale: self.rewrites_data().then_some(self.clip_coef),
                expected: &self.parts,
                w: &mut w,
            }),
        )?;
        Ok(())
    }
}

/// The norm and clip coefficient of a validated file, read from `src`, with the semantics of
/// [`clip_grad_norm_`] (policy error, eps 1e-6): a non-finite element gives
/// [`StError::NonFinite`] (the first in file order), bad `max_norm` or norm type and a P norm
/// too large for f64 give [`StError::Invalid`]. Nothing is copied here; [`Clipped::write_to`]
/// produces the data.
///
/// [`clip_grad_norm_`]: crate::clip_grad_norm_
pub fn clip<S: Source + ?Sized>(
    src: &S,
    layout: &Layout,
    max_norm: f64,
    norm_type: NormType,
) -> Result<Clipped, StError> {
    // Validate the arguments before reading gigabytes.
    clip_coefficient(max_norm, 0.0)?;
    let a = analyse(src, layout, norm_type)?;
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
        parts: a.parts,
    })
}
