//! Exact norms over sets of gradient buffers ([`crate::exact`] has the math): the reduction tree
//! over chunks and the public functions.
//!
//! The tree is the one of [`crate::parallel`] (fixed chunks, the same split rules, `rayon::join`
//! above the same size threshold, nothing allocated). Its shape no longer matters for the bits —
//! merging exact partials is integer addition — but keeping it keeps the hot path's behaviour
//! (work split, early stop on a non-finite chunk) the same as the compensated mode's.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::arch::exact::{ExactKernel, ExactKernels};
use crate::error::Error;
use crate::exact::accumulator::{FLAG_INF, KIND_L1, KIND_L2};
use crate::exact::{ExactPartial, Summation};
use crate::grads::{AsGrad, Grad};
use crate::isa::Isa;
use crate::norm::{first_nonfinite_or_panic_free, get_total_norm, get_total_norm_with_isa};
use crate::norm_type::NormType;
use crate::parallel::{buffer_split, join_if, par_min_bytes, set_split};

/// What an exact reduction needs to know.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    kernels: &'static ExactKernels,
    kind: u8,
    /// When set, the first chunk that sees a non-finite value raises it and later chunks are
    /// skipped (the caller then rescans for the first offending element).
    stop: Option<&'a AtomicBool>,
}

fn chunk_partial<T: ExactKernel>(ctx: &Ctx<'_>, d: &[T]) -> ExactPartial {
    if let Some(stop) = ctx.stop {
        if stop.load(Ordering::Relaxed) {
            return ExactPartial::nonfinite(ctx.kind, FLAG_INF);
        }
    }
    let f = match ctx.kind {
        KIND_L2 => T::sum_sq(ctx.kernels),
        KIND_L1 => T::sum_abs(ctx.kernels),
        _ => T::max_abs(ctx.kernels),
    };
    let part = f(d);
    if !part.is_finite() {
        if let Some(stop) = ctx.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
    part
}

fn reduce_buffer<T: ExactKernel>(ctx: &Ctx<'_>, d: &[T]) -> ExactPartial {
    let Some(mid) = buffer_split(d.len()) else {
        return chunk_partial(ctx, d);
    };
    let (l, r) = d.split_at(mid);
    let parallel = std::mem::size_of_val(d) >= par_min_bytes();
    let (a, b) = join_if(parallel, || reduce_buffer(ctx, l), || reduce_buffer(ctx, r));
    a.merge(b)
}

fn reduce_set<G: AsGrad>(ctx: &Ctx<'_>, grads: &[G], may_fork: bool) -> ExactPartial {
    match grads {
        [] => ExactPartial::of_kind(ctx.kind),
        [g] => match g.grad() {
            Grad::F32(s) => reduce_buffer(ctx, s),
            Grad::F16(s) => reduce_buffer(ctx, s),
            Grad::BF16(s) => reduce_buffer(ctx, s),
        },
        _ => {
            let (gl, gr) = grads.split_at(set_split(grads.len()));
            let parallel = may_fork
                && grads.iter().map(|g| g.grad().byte_len()).sum::<usize>() >= par_min_bytes();
            let (a, b) = join_if(
                parallel,
                || reduce_set(ctx, gl, parallel),
                || reduce_set(ctx, gr, parallel),
            );
            a.merge(b)
        }
    }
}

fn kernels(isa: Option<Isa>) -> Result<&'static ExactKernels, Error> {
    match isa {
        None => Ok(ExactKernels::selected()),
        Some(isa) => {
            let k = ExactKernels::for_isa(isa).ok_or(Error::IsaUnavailable(isa))?;
            debug_assert_eq!(k.isa, isa);
            Ok(k)
        }
    }
}

fn exact_kind(norm_type: NormType) -> Result<u8, Error> {
    let nt = norm_type.validated()?;
    ExactPartial::kind_of(nt).ok_or(Error::ExactUnsupported { p: nt.exponent() })
}

/// The exact partial of a set of buffers on `isa` (`None`: the selected ISA), stopping early on
/// a non-finite chunk when `stop` is given.
pub(crate) fn exact_partial_impl<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
    stop: Option<&AtomicBool>,
) -> Result<ExactPartial, Error> {
    let ctx = Ctx {
        kernels: kernels(isa)?,
        kind: exact_kind(norm_type)?,
        stop,
    };
    Ok(reduce_set(&ctx, grads, true))
}

/// The exact partial of L1, L2 or Inf over all elements of all buffers, without short-circuit:
/// a NaN or ±inf is recorded in the partial's flags (its [`ExactPartial::finish`] is NaN if any
/// NaN went in, else +inf). This is what a data-parallel rank sends to the others: merged in any
/// order, the partials of any split of the data give the bytes of the partial of all of it.
///
/// P(p) norms have no exact partial: they return [`Error::ExactUnsupported`].
pub fn exact_partial<G: AsGrad>(grads: &[G], norm_type: NormType) -> Result<ExactPartial, Error> {
    exact_partial_impl(grads, norm_type, None, None)
}

/// [`exact_partial`] on a forced instruction set (for tests, fuzzing and benchmarks). Returns
/// [`Error::IsaUnavailable`] when this CPU cannot run `isa`.
pub fn exact_partial_with_isa<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Isa,
) -> Result<ExactPartial, Error> {
    exact_partial_impl(grads, norm_type, Some(isa), None)
}

/// The exact partial of the whole set, stopping at the first non-finite chunk (its flags then
/// say only that something was not finite).
pub(crate) fn short_circuit_exact<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
) -> Result<ExactPartial, Error> {
    let stop = AtomicBool::new(false);
    exact_partial_impl(grads, norm_type, isa, Some(&stop))
}

fn exact_norm_impl<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
) -> Result<f64, Error> {
    if let NormType::P(_) = norm_type.validated()? {
        return match isa {
            None => get_total_norm(grads, norm_type),
            Some(isa) => get_total_norm_with_isa(grads, norm_type, isa),
        };
    }
    let part = short_circuit_exact(grads, norm_type, isa)?;
    if part.is_finite() {
        Ok(part.finish())
    } else {
        Err(Error::NonFinite(first_nonfinite_or_panic_free(grads)))
    }
}

/// The total norm with the chosen [`Summation`]: [`crate::get_total_norm`] for
/// `Compensated`, the exactly rounded norm for `Exact` (same errors and short-circuit: a NaN or
/// ±inf stops the work early and returns [`Error::NonFinite`] naming the first such element).
///
/// ```
/// use gradclip::{get_total_norm_with, Grad, NormType, Summation};
/// let a = vec![0.1f32; 1000];
/// let (x, y) = a.split_at(337);
/// let whole = get_total_norm_with(&[Grad::from(&a)], NormType::L2, Summation::Exact).unwrap();
/// let split =
///     get_total_norm_with(&[Grad::from(x), Grad::from(y)], NormType::L2, Summation::Exact)
///         .unwrap();
/// assert_eq!(whole.to_bits(), split.to_bits());
/// ```
pub fn get_total_norm_with<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    summation: Summation,
) -> Result<f64, Error> {
    match summation {
        Summation::Compensated => get_total_norm(grads, norm_type),
        Summation::Exact => exact_norm_impl(grads, norm_type, None),
    }
}

/// The exactly rounded total norm: `get_total_norm_with(grads, norm_type, Summation::Exact)`.
pub fn get_total_norm_exact<G: AsGrad>(grads: &[G], norm_type: NormType) -> Result<f64, Error> {
    exact_norm_impl(grads, norm_type, None)
}

/// [`get_total_norm_exact`] on a forced instruction set (for tests, fuzzing and benchmarks).
/// Returns [`Error::IsaUnavailable`] when this CPU cannot run `isa`.
pub fn get_total_norm_exact_with_isa<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Isa,
) -> Result<f64, Error> {
    exact_norm_impl(grads, norm_type, Some(isa))
}
