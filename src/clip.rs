//! In-place clipping: by global norm, by a given norm, by value, and plain scaling.

use crate::arch::Kernels;
use crate::chunk::NormCtx;
use crate::dtype::{Element, NanBits};
use crate::error::{Error, NonFinite};
use crate::exact::{ExactPartial, Summation};
use crate::exact_norm::exact_partial_impl;
use crate::grads::GradMut;
use crate::isa::Isa;
use crate::norm::{
    any_nan_from, finite_norm, first_nonfinite_or_panic_free, short_circuit_partial,
};
use crate::norm_type::NormType;
use crate::parallel::{reduce_set, scale_set};

/// What [`clip_grad_norm_`] does when a gradient holds NaN or ±inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinitePolicy {
    /// Return [`Error::NonFinite`] naming the first offending element; modify nothing.
    #[default]
    Error,
    /// Modify nothing and return a report with `nonfinite` set, as mixed-precision trainers skip
    /// the step.
    Skip,
    /// PyTorch's behaviour: the total norm is NaN (any NaN) or +inf, the coefficient
    /// `max_norm / (norm + eps)` is NaN or 0, and every element is multiplied by it. (Finite
    /// gradients whose P norm exceeds f64 are not "non-finite": they give
    /// [`Error::NormOverflow`] under every policy.)
    Propagate,
}

/// Options of [`clip_grad_norm_`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOptions {
    /// The norm to clip (default L2).
    pub norm_type: NormType,
    /// Added to the norm before dividing (default 1e-6, as PyTorch).
    pub eps: f64,
    /// NaN/inf policy (default [`NonFinitePolicy::Error`]).
    pub on_nonfinite: NonFinitePolicy,
    /// How L2 and L1 norms are summed (default [`Summation::Compensated`]).
    /// [`Summation::Exact`] gives the same norm, hence the same clipped gradients, for any split
    /// of the data; Inf is exact either way and P(p) norms are always compensated.
    pub summation: Summation,
}

impl Default for ClipOptions {
    fn default() -> Self {
        ClipOptions {
            norm_type: NormType::L2,
            eps: 1e-6,
            on_nonfinite: NonFinitePolicy::Error,
            summation: Summation::Compensated,
        }
    }
}

/// What a clip did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipReport {
    /// The total norm before clipping (NaN or +inf when the input was not finite).
    pub total_norm: f64,
    /// `min(1, max_norm / (total_norm + eps))` in f64 (NaN propagates); 1 when nothing was done.
    pub clip_coef: f64,
    /// True when the buffers were rewritten, i.e. when `f32(clip_coef) != 1`: every element is
    /// multiplied by the coefficient rounded to f32, so a coefficient within 2^-25 of 1 (a total
    /// norm a hair above `max_norm`) multiplies by exactly 1 and nothing is written. `clipped`
    /// is then false although `clip_coef < 1`.
    pub clipped: bool,
    /// The first non-finite element, when there was one and the policy was `Skip` or `Propagate`.
    pub nonfinite: Option<NonFinite>,
}

fn kernels(isa: Option<Isa>) -> Result<&'static Kernels, Error> {
    match isa {
        None => Ok(Kernels::selected()),
        Some(isa) => Kernels::for_isa(isa).ok_or(Error::IsaUnavailable(isa)),
    }
}

fn check_max_norm(max_norm: f64) -> Result<(), Error> {
    if max_norm.is_finite() && max_norm > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidMaxNorm(max_norm))
    }
}

/// The clip coefficient `min(1, max_norm / (total_norm + eps))` in f64, as
/// [`clip_grad_norm_`] computes it; a NaN propagates (`f64::min` would drop it). Validates
/// `max_norm` (finite, > 0), `eps` (finite, >= 0) and `total_norm` (not negative: NaN and +inf
/// are accepted), as [`clip_grads_with_norm_`] does.
///
/// ```
/// assert_eq!(gradclip::clip_coefficient(1.0, 12.5, 1e-6).unwrap(), 1.0 / (12.5 + 1e-6));
/// assert_eq!(gradclip::clip_coefficient(1.0, 0.5, 1e-6).unwrap(), 1.0);
/// ```
pub fn clip_coefficient(max_norm: f64, total_norm: f64, eps: f64) -> Result<f64, Error> {
    check_max_norm(max_norm)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidEps(eps));
    }
    check_total_norm(total_norm)?;
    Ok(coefficient(max_norm, total_norm, eps))
}

/// A total norm is never negative; NaN and +inf are accepted (they propagate).
fn check_total_norm(total_norm: f64) -> Result<(), Error> {
    if total_norm < 0.0 {
        Err(Error::InvalidTotalNorm(total_norm))
    } else {
        Ok(())
    }
}

/// `min(1, max_norm / (total + eps))`, NaN propagating (`f64::min` would drop it).
fn coefficient(max_norm: f64, total: f64, eps: f64) -> f64 {
    let c = max_norm / (total + eps);
    if c.is_nan() {
        c
    } else {
        c.min(1.0)
    }
}

/// Scales every element by `c = f32(coef)` unless `c == 1` (then nothing is written: the
/// products would be the elements themselves); returns whether it wrote.
///
/// NaN bits are the same on every path. The SIMD kernels already agree for a finite nonzero
/// `c`: a NaN element comes out as itself, quieted (every instruction set propagates the NaN
/// operand of a product). For `c` NaN or ±0 the hardware's choice differs (which NaN operand
/// survives; the sign of the NaN that `inf * 0` makes), so those calls, rare by nature (a NaN or
/// infinite total norm, a zero factor), take [`scale_spelled`], which writes the rule out.
fn apply(k: &Kernels, grads: &mut [GradMut<'_>], coef: f64) -> bool {
    let c = coef as f32;
    if c == 1.0 {
        return false;
    }
    if c.is_nan() || c == 0.0 {
        for g in grads.iter_mut() {
            match g {
                GradMut::F32(s) => scale_spelled(s, c),
                GradMut::F16(s) => scale_spelled(s, c),
                GradMut::BF16(s) => scale_spelled(s, c),
            }
        }
    } else {
        scale_set(k, grads, c, true);
    }
    true
}

/// `x = round_to_dtype(f32(x) * c)` with the NaN rule spelled out, element by element, the same
/// code on every instruction set: a NaN element stays that NaN, quieted, payload kept; any other
/// NaN product (a NaN `c`, or `±inf * 0`) is the canonical quiet NaN; `finite * ±0` is a zero
/// with the IEEE sign.
fn scale_spelled<T: NanBits>(d: &mut [T], c: f32) {
    for x in d.iter_mut() {
        *x = if x.is_nan_value() {
            x.quieted()
        } else {
            let r = x.to_f32() * c;
            if r.is_nan() {
                T::CANONICAL_NAN
            } else {
                T::from_f32_rne(r)
            }
        };
    }
}

/// Clips the global norm of `grads` to `max_norm`, in place, with PyTorch's semantics.
///
/// `clip_coef = min(1, max_norm / (total_norm + eps))` in f64. When `f32(clip_coef)` is 1
/// nothing is written at all; otherwise every element becomes
/// `round_to_dtype(f32(x) * f32(clip_coef))` (one f32 multiply, then round-to-nearest-even into
/// the buffer's dtype; NaN bits as described at [`scale_`]).
///
/// ```
/// use gradclip::{clip_grad_norm_, ClipOptions, GradMut};
/// let mut w = vec![3.0f32, 4.0];
/// let r = clip_grad_norm_(&mut [GradMut::from(&mut w)], 1.0, ClipOptions::default()).unwrap();
/// assert_eq!(r.total_norm, 5.0);
/// assert!(r.clipped);
/// assert!((w[0] - 0.6).abs() < 1e-6 && (w[1] - 0.8).abs() < 1e-6);
/// ```
pub fn clip_grad_norm_(
    grads: &mut [GradMut<'_>],
    max_norm: f64,
    options: ClipOptions,
) -> Result<ClipReport, Error> {
    clip_impl(grads, max_norm, options, None)
}

/// [`clip_grad_norm_`] on a forced instruction set (for tests, fuzzing and benchmarks).
pub fn clip_grad_norm_with_isa_(
    grads: &mut [GradMut<'_>],
    max_norm: f64,
    options: ClipOptions,
    isa: Isa,
) -> Result<ClipReport, Error> {
    clip_impl(grads, max_norm, options, Some(isa))
}

fn clip_impl(
    grads: &mut [GradMut<'_>],
    max_norm: f64,
    options: ClipOptions,
    isa: Option<Isa>,
) -> Result<ClipReport, Error> {
    check_max_norm(max_norm)?;
    if !(options.eps.is_finite() && options.eps >= 0.0) {
        return Err(Error::InvalidEps(options.eps));
    }
    let k = kernels(isa)?;
    let eps = options.eps;
    let norm_type = options.norm_type.validated()?;
    let exact = options.summation == Summation::Exact && ExactPartial::kind_of(norm_type).is_some();
    if options.on_nonfinite == NonFinitePolicy::Propagate {
        let (total, nonfinite) = if exact {
            let part = exact_partial_impl(grads, norm_type, isa, None)?;
            let nonfinite = (!part.is_finite()).then(|| first_nonfinite_or_panic_free(grads));
            (part.finish(), nonfinite)
        } else {
            let ctx = NormCtx {
                kernels: k,
                norm_type,
                stop: None,
            };
            let part = reduce_set(&ctx, grads, None, true);
            // Finite input whose norm exceeds f64 is refused as under the other policies: its
            // true coefficient is not the 0 that an infinite total would give.
            if part.is_finite() {
                (finite_norm(&part)?, None)
            } else {
                (part.finish(), Some(first_nonfinite_or_panic_free(grads)))
            }
        };
        let clip_coef = coefficient(max_norm, total, eps);
        let clipped = apply(k, grads, clip_coef);
        return Ok(ClipReport {
            total_norm: total,
            clip_coef,
            clipped,
            nonfinite,
        });
    }
    // The norm when the input is finite (or the error of a finite P norm beyond f64), None when
    // a NaN or ±inf stopped the reduction.
    let total = if exact {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let part = exact_partial_impl(grads, norm_type, isa, Some(&stop))?;
        part.is_finite().then(|| Ok(part.finish()))
    } else {
        let part = short_circuit_partial(grads, norm_type, isa)?;
        // A finite input whose norm overflows f64 (a P norm with small p) is refused rather
        // than turned into a zero coefficient that would wipe every gradient.
        part.is_finite().then(|| finite_norm(&part))
    };
    let Some(total) = total else {
        let first = first_nonfinite_or_panic_free(grads);
        if options.on_nonfinite == NonFinitePolicy::Error {
            return Err(Error::NonFinite(first));
        }
        // Skip: report the norm PyTorch would have computed (NaN if any NaN, else +inf).
        let total = if first.value.is_nan() || any_nan_from(grads, first) {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Ok(ClipReport {
            total_norm: total,
            clip_coef: 1.0,
            clipped: false,
            nonfinite: Some(first),
        });
    };
    let total = total?;
    let clip_coef = coefficient(max_norm, total, eps);
    let clipped = apply(k, grads, clip_coef);
    Ok(ClipReport {
        total_norm: total,
        clip_coef,
        clipped,
        nonfinite: None,
    })
}

/// The second half of [`clip_grad_norm_`] for a norm computed elsewhere (for example merged from
/// the partials of several ranks): scales by `min(1, max_norm / (total_norm + 1e-6))`, writing
/// nothing when that is 1 in f32. A NaN or infinite `total_norm` propagates as in PyTorch (the
/// coefficient is NaN or 0); a negative one is [`Error::InvalidTotalNorm`].
pub fn clip_grads_with_norm_(
    grads: &mut [GradMut<'_>],
    max_norm: f64,
    total_norm: f64,
) -> Result<ClipReport, Error> {
    check_max_norm(max_norm)?;
    check_total_norm(total_norm)?;
    let clip_coef = coefficient(max_norm, total_norm, ClipOptions::default().eps);
    let clipped = apply(Kernels::selected(), grads, clip_coef);
    Ok(ClipReport {
        total_norm,
        clip_coef,
        clipped,
        nonfinite: None,
    })
}

/// Multiplies every element by `factor`: `x = round_to_dtype(f32(x) * f32(factor))`. Nothing is
/// written when `f32(factor) == 1`. `factor` must be finite, also once rounded to f32.
///
/// NaN bits are the same on every instruction set: a NaN element stays that NaN with the quiet
/// bit set (sign and payload kept); a NaN that the product makes (a NaN coefficient in
/// [`clip_grads_with_norm_`] or [`NonFinitePolicy::Propagate`], or `±inf * 0`) is the
/// canonical quiet NaN (f32 `0x7FC00000`, f16 `0x7E00`, bf16 `0x7FC0`); `finite * ±0` is a
/// zero with the IEEE sign.
pub fn scale_(grads: &mut [GradMut<'_>], factor: f64) -> Result<(), Error> {
    scale_impl(grads, factor, None)
}

/// [`scale_`] on a forced instruction set (for tests, fuzzing and benchmarks).
pub fn scale_with_isa_(grads: &mut [GradMut<'_>], factor: f64, isa: Isa) -> Result<(), Error> {
    scale_impl(grads, factor, Some(isa))
}

fn scale_impl(grads: &mut [GradMut<'_>], factor: f64, isa: Option<Isa>) -> Result<(), Error> {
    if !(factor.is_finite() && (factor as f32).is_finite()) {
        return Err(Error::InvalidFactor(factor));
    }
    let k = kernels(isa)?;
    apply(k, grads, factor);
    Ok(())
}

fn clamp_buffer<T: Element>(d: &mut [T], t: f32) {
    let hi = T::from_f32_rne(t);
    let lo = T::from_f32_rne(-t);
    let (hi_f, lo_f) = (hi.to_f32(), lo.to_f32());
    for x in d {
        let v = x.to_f32();
        if v > hi_f {
            *x = hi;
        } else if v < lo_f {
            *x = lo;
        }
    }
}

/// Clamps every element to `[-t, t]` with `t = round_to_dtype(f32(clip_value))`, writing only the
/// elements that change. NaN elements are left as they are (NaN is not ordered); ±inf become ±t.
/// `clip_value` must be ≥ 0 (and not NaN); `+inf` leaves everything finite untouched.
pub fn clip_grad_value_(grads: &mut [GradMut<'_>], clip_value: f64) -> Result<(), Error> {
    if clip_value.is_nan() || clip_value < 0.0 {
        return Err(Error::InvalidClipValue(clip_value));
    }
    let t = clip_value as f32;
    for g in grads.iter_mut() {
        match g {
            GradMut::F32(s) => clamp_buffer(s, t),
            GradMut::F16(s) => clamp_buffer(s, t),
            GradMut::BF16(s) => clamp_buffer(s, t),
        }
    }
    Ok(())
}
