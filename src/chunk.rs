//! The partial of one chunk: the leaf of the reduction tree. One kernel call (sum of squares,
//! sum of magnitudes or max of magnitudes) turned into a [`NormPartial`], with the non-finite
//! check made on the result rather than on every element.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::arch::{Kernel, Kernels};
use crate::dtype::Element;
use crate::norm_type::NormType;
use crate::partial::{NormPartial, HAS_INF, HAS_NAN};

/// What a norm reduction needs to know.
#[derive(Clone, Copy)]
pub(crate) struct NormCtx<'a> {
    pub kernels: &'a Kernels,
    /// Canonical (validated) norm type.
    pub norm_type: NormType,
    /// When set, the first chunk that sees a non-finite value raises it and later chunks are
    /// skipped (their partial is a non-finite marker; the caller rescans for the first element).
    pub stop: Option<&'a AtomicBool>,
}

/// Scans a chunk known to hold a non-finite value: NaN or only infinities?
fn classify<T: Element>(d: &[T]) -> u64 {
    if d.iter().any(|x| x.is_nan_value()) {
        HAS_NAN
    } else {
        HAS_INF
    }
}

pub(crate) fn chunk_partial<T: Kernel>(ctx: &NormCtx<'_>, d: &[T]) -> NormPartial {
    let p = ctx.norm_type.exponent();
    if let Some(stop) = ctx.stop {
        if stop.load(Ordering::Relaxed) {
            return NormPartial::nonfinite(p, HAS_INF);
        }
    }
    let part = match ctx.norm_type {
        NormType::L2 | NormType::L1 => {
            let f = if ctx.norm_type == NormType::L2 {
                T::sum_sq(ctx.kernels)
            } else {
                T::sum_abs(ctx.kernels)
            };
            let (s, c) = f(d);
            if (s + c).is_finite() {
                NormPartial::from_sum(p, s, c)
            } else {
                NormPartial::nonfinite(p, classify(d))
            }
        }
        NormType::Inf => {
            let m = T::max_abs(ctx.kernels)(d);
            if m >= T::INF_BITS {
                NormPartial::nonfinite(p, classify(d))
            } else {
                NormPartial::from_max(T::from_abs_bits(m).to_f32() as f64)
            }
        }
        NormType::P(_) => {
            let m = T::max_abs(ctx.kernels)(d);
            if m >= T::INF_BITS {
                NormPartial::nonfinite(p, classify(d))
            } else if m == 0 {
                NormPartial::from_scaled_sum(p, 0.0, 0.0, 0.0)
            } else {
                let scale = T::from_abs_bits(m).to_f32() as f64;
                let (s, c) = p_sum(d, scale, p);
                NormPartial::from_scaled_sum(p, scale, s, c)
            }
        }
    };
    if !part.is_finite() {
        if let Some(stop) = ctx.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
    part
}

/// Neumaier sum of `(|x| / scale)^p`; every term is in [0, 1], so nothing overflows, and the
/// terms that underflow are below 2^-1074 of the largest one.
fn p_sum<T: Element>(d: &[T], scale: f64, p: f64) -> (f64, f64) {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in d {
        let t = ((x.to_f32() as f64).abs() / scale).powf(p);
        let n = s + t;
        c += if s >= t { (s - n) + t } else { (t - n) + s };
        s = n;
    }
    (s, c)
}
