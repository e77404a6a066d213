//! The fused mixed-precision step: unscale by the loss scale and clip, in one read pass and at
//! most one write pass.
//!
//! With a loss scale `S`, a trainer holds scaled gradients `g = S · ∇`. PyTorch's recipe is
//! `GradScaler.unscale_` (read and rewrite every element, checking for NaN/inf) followed by
//! `clip_grad_norm_` (read every element again for the norm, rewrite them a second time when
//! clipping). [`unscale_clip_grad_norm_`] does the same job as:
//!
//! 1. **one read pass** over the scaled gradients: the non-finite check and the norm `N` of the
//!    raw values, with the same kernels, chunk tree and merge order as [`crate::get_total_norm`]
//!    (so the same bits for any thread count and any ISA); with
//!    [`ClipOptions::summation`] set to [`Summation::Exact`], the exactly rounded norm of
//!    [`crate::get_total_norm_exact`] (L1, L2, Inf; P(p) norms stay compensated), the same bits
//!    for any split of the gradients into buffers;
//! 2. the norm of the unscaled gradients `N / S` (every norm is absolutely homogeneous), the clip
//!    coefficient `coef = min(1, max_norm / (N / S + eps))` in f64;
//! 3. **at most one write pass** with the factor `f32(coef / S)`:
//!    `x = round_to_dtype(f32(x) * f32(coef / S))`, skipped when that factor is exactly 1.
//!
//! When a gradient holds NaN or ±inf, nothing is written at all (the optimizer step is to be
//! skipped, as `GradScaler` does when it finds an inf); see [`AmpReport::found_inf`].
//!
//! **Against PyTorch's two-pass path.** `N / S` is exact when `S` is a power of two (as
//! `GradScaler`'s scales are, from the default `2^16` with growth 2 and backoff 0.5), so the norm
//! is the norm of the gradients PyTorch's `unscale_` would have produced (as long as they do not
//! underflow into subnormals); for other `S` it carries one more rounding (relative 2^-53). The
//! written values are rounded once, where PyTorch rounds twice (after unscaling, after clipping),
//! and PyTorch's coefficient comes from its own, less accurate norm in the gradients' dtype; so the
//! results agree up to those roundings. With a power-of-two `S`, f32 gradients and no clipping
//! (`coef == 1`) they agree bit for bit. On a non-finite gradient PyTorch still writes the
//! unscaled values (and `clip_grad_norm_` then multiplies them by a NaN or zero coefficient);
//! gradclip leaves them as they were.

use crate::clip::{clip_coefficient, ClipOptions, NonFinitePolicy};
use crate::error::{Error, NonFinite};
use crate::exact::{ExactPartial, Summation};
use crate::exact_norm::short_circuit_exact;
use crate::grads::GradMut;
use crate::isa::Isa;
use crate::norm::{
    any_nan_from, finite_norm, first_nonfinite_or_panic_free, kernels, short_circuit_partial,
};
use crate::parallel::scale_set;

/// What [`unscale_clip_grad_norm_`] found and did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmpReport {
    /// Norm of the unscaled gradients, `scaled_norm / loss_scale`; NaN (any NaN) or +inf (only
    /// infinities) when a gradient was not finite, as PyTorch would compute it.
    pub total_norm: f64,
    /// Norm of the gradients as they were passed in (still multiplied by the loss scale).
    pub scaled_norm: f64,
    /// `min(1, max_norm / (total_norm + eps))` in f64; 1 when a gradient was not finite.
    pub clip_coef: f64,
    /// The factor every element was multiplied by, `f32(clip_coef / loss_scale)`; 1 when nothing
    /// was written.
    pub factor: f32,
    /// True when the buffers were rewritten (`factor != 1`).
    pub written: bool,
    /// The first NaN or ±inf in buffer order, when there was one (the policy was not `Error`):
    /// nothing was written and the optimizer step should be skipped.
    pub found_inf: Option<NonFinite>,
}

impl AmpReport {
    /// True when `clip_coef < 1` (the unscaled norm exceeded `max_norm`).
    pub fn clipped(&self) -> bool {
        self.clip_coef < 1.0
    }
}

/// Unscales gradients that carry a loss scale and clips their global norm, in one read pass and
/// at most one write pass (see the [module docs](self) for the arithmetic and how it compares
/// with PyTorch's `unscale_` + `clip_grad_norm_`).
///
/// `loss_scale` must be finite and > 0 with `1 / loss_scale` finite in f32; `max_norm` finite
/// and > 0; `options.eps` finite and >= 0. On a NaN or ±inf, `options.on_nonfinite ==
/// NonFinitePolicy::Error` returns [`Error::NonFinite`]; `Skip` and `Propagate` both return a
/// report with [`AmpReport::found_inf`] set. In every case nothing is written.
///
/// ```
/// use gradclip::{unscale_clip_grad_norm_, ClipOptions, GradMut, NonFinitePolicy};
/// // Gradients (3, 4) scaled by 1024: unscaled norm 5, clipped to 1.
/// let mut g = vec![3.0f32 * 1024.0, 4.0 * 1024.0];
/// let opts = ClipOptions { on_nonfinite: NonFinitePolicy::Skip, ..ClipOptions::default() };
/// let r = unscale_clip_grad_norm_(&mut [GradMut::from(&mut g)], 1024.0, 1.0, opts).unwrap();
/// assert_eq!(r.total_norm, 5.0);
/// assert!(r.written && r.found_inf.is_none());
/// assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
/// ```
pub fn unscale_clip_grad_norm_(
    grads: &mut [GradMut<'_>],
    loss_scale: f64,
    max_norm: f64,
    options: ClipOptions,
) -> Result<AmpReport, Error> {
    amp_impl(grads, loss_scale, max_norm, options, None)
}

/// [`unscale_clip_grad_norm_`] on a forced instruction set (for tests, fuzzing and benchmarks).
pub fn unscale_clip_grad_norm_with_isa_(
    grads: &mut [GradMut<'_>],
    loss_scale: f64,
    max_norm: f64,
    options: ClipOptions,
    isa: Isa,
) -> Result<AmpReport, Error> {
    amp_impl(grads, loss_scale, max_norm, options, Some(isa))
}

fn amp_impl(
    grads: &mut [GradMut<'_>],
    loss_scale: f64,
    max_norm: f64,
    options: ClipOptions,
    isa: Option<Isa>,
) -> Result<AmpReport, Error> {
    if !(loss_scale.is_finite() && loss_scale > 0.0 && ((1.0 / loss_scale) as f32).is_finite()) {
        return Err(Error::InvalidLossScale(loss_scale));
    }
    // Validates max_norm and eps before reading anything.
    clip_coefficient(max_norm, 0.0, options.eps)?;
    let k = kernels(isa)?;
    let norm_type = options.norm_type.validated()?;
    // The norm of the scaled gradients when they are finite (or the error of a finite P norm
    // beyond f64), None when a NaN or ±inf stopped the reduction.
    let scaled =
        if options.summation == Summation::Exact && ExactPartial::kind_of(norm_type).is_some() {
            let part = short_circuit_exact(grads, norm_type, isa)?;
            part.is_finite().then(|| Ok(part.finish()))
        } else {
            let part = short_circuit_partial(grads, norm_type, isa)?;
            part.is_finite().then(|| finite_norm(&part))
        };
    let Some(scaled_norm) = scaled else {
        let first = first_nonfinite_or_panic_free(grads);
        if options.on_nonfinite == NonFinitePolicy::Error {
            return Err(Error::NonFinite(first));
        }
        let norm = if first.value.is_nan() || any_nan_from(grads, first) {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Ok(AmpReport {
            total_norm: norm,
            scaled_norm: norm,
            clip_coef: 1.0,
            factor: 1.0,
            written: false,
            found_inf: Some(first),
        });
    };
    let scaled_norm = scaled_norm?;
    let total_norm = scaled_norm / loss_scale;
    let clip_coef = clip_coefficient(max_norm, total_norm, options.eps)?;
    let factor = (clip_coef / loss_scale) as f32;
    let written = factor != 1.0;
    if written {
        scale_set(k, grads, factor, true);
    }
    Ok(AmpReport {
        total_norm,
        scaled_norm,
        clip_coef,
        factor,
        written,
        found_inf: None,
    })
}
