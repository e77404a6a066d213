//! Norms over sets of gradient buffers.

use std::sync::atomic::AtomicBool;

use crate::arch::{Kernel, Kernels};
use crate::chunk::NormCtx;
use crate::dtype::Element;
use crate::error::{Error, NonFinite};
use crate::grads::{AsGrad, Grad};
use crate::isa::Isa;
use crate::norm_type::NormType;
use crate::parallel::reduce_set;
use crate::partial::NormPartial;

/// The kernel table for a forced ISA, or the selected one.
pub(crate) fn kernels(isa: Option<Isa>) -> Result<&'static Kernels, Error> {
    match isa {
        None => Ok(Kernels::selected()),
        Some(isa) => Kernels::for_isa(isa).ok_or(Error::IsaUnavailable(isa)),
    }
}

/// The total norm of all elements of all buffers, as f64.
///
/// Finite input gives a finite result, within 1e-14 relative of the exact value for L2 and L1
/// (exact for Inf, 1e-12 for P), with the same bits for any thread count and any ISA. A NaN or ±inf
/// stops the work early and returns [`Error::NonFinite`] naming the first such element in buffer
/// order. A P norm whose exact value exceeds f64 (only possible for a small `p`) returns
/// [`Error::NormOverflow`].
///
/// ```
/// use gradclip::{get_total_norm, Grad, NormType};
/// use half::f16;
/// let w = vec![3.0f32, 0.0];
/// let b = vec![f16::from_f32(4.0)];
/// let n = get_total_norm(&[Grad::from(&w), Grad::from(&b)], NormType::L2).unwrap();
/// assert_eq!(n, 5.0);
/// ```
pub fn get_total_norm<G: AsGrad>(grads: &[G], norm_type: NormType) -> Result<f64, Error> {
    total_norm_impl(grads, norm_type, None)
}

/// [`get_total_norm`] on a forced instruction set (for tests, fuzzing and benchmarks).
/// Returns [`Error::IsaUnavailable`] when this CPU cannot run `isa`.
pub fn get_total_norm_with_isa<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Isa,
) -> Result<f64, Error> {
    total_norm_impl(grads, norm_type, Some(isa))
}

fn total_norm_impl<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
) -> Result<f64, Error> {
    let part = short_circuit_partial(grads, norm_type, isa)?;
    if part.is_finite() {
        finite_norm(&part)
    } else {
        Err(Error::NonFinite(first_nonfinite_or_panic_free(grads)))
    }
}

/// The value of a partial that saw only finite input, or [`Error::NormOverflow`] when that value
/// exceeds f64 (possible only for P norms with a small exponent).
pub(crate) fn finite_norm(part: &NormPartial) -> Result<f64, Error> {
    let v = part.finish();
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::NormOverflow {
            p: part.norm_type().map_or(f64::NAN, NormType::exponent),
        })
    }
}

/// The partial of the whole set, stopping at the first non-finite chunk.
pub(crate) fn short_circuit_partial<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
) -> Result<NormPartial, Error> {
    let stop = AtomicBool::new(false);
    let ctx = NormCtx {
        kernels: kernels(isa)?,
        norm_type: norm_type.validated()?,
        stop: Some(&stop),
    };
    Ok(reduce_set(&ctx, grads, None, true))
}

/// The first non-finite element; only called once the reduction saw one.
pub(crate) fn first_nonfinite_or_panic_free<G: AsGrad>(grads: &[G]) -> NonFinite {
    // The reduction only reports non-finite data when some element is non-finite, so the scan
    // always finds one; the fallback keeps this free of panics all the same.
    first_nonfinite(grads).unwrap_or(NonFinite {
        buffer: 0,
        index: 0,
        value: f64::NAN,
    })
}

/// The partial of the whole set, without short-circuit: a NaN or ±inf is recorded in the partial
/// (its [`NormPartial::finish`] gives NaN if any NaN went in, else +inf). This is the value a
/// data-parallel rank sends to the others; see [`NormPartial`].
pub fn total_norm_partial<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
) -> Result<NormPartial, Error> {
    let ctx = NormCtx {
        kernels: kernels(None)?,
        norm_type: norm_type.validated()?,
        stop: None,
    };
    Ok(reduce_set(&ctx, grads, None, true))
}

/// Each buffer's own partial (into `out`, one per buffer) and the partial of the whole set, in
/// one pass. The total has the same bits as [`total_norm_partial`] on the same buffers, and
/// `out[i].finish()` is buffer `i`'s norm (NaN or inf when it holds a non-finite element).
///
/// ```
/// use gradclip::{per_buffer_partials, Grad, NormPartial, NormType};
/// let a = vec![3.0f32];
/// let b = vec![f32::NAN, 1.0];
/// let mut out = [NormPartial::EMPTY; 2];
/// let total = per_buffer_partials(&[Grad::from(&a), Grad::from(&b)], NormType::L2, &mut out).unwrap();
/// assert_eq!(out[0].finish(), 3.0);
/// assert!(out[1].finish().is_nan() && total.finish().is_nan());
/// ```
pub fn per_buffer_partials<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    out: &mut [NormPartial],
) -> Result<NormPartial, Error> {
    if out.len() != grads.len() {
        return Err(Error::LengthMismatch {
            expected: grads.len(),
            got: out.len(),
        });
    }
    let ctx = NormCtx {
        kernels: kernels(None)?,
        norm_type: norm_type.validated()?,
        stop: None,
    };
    Ok(reduce_set(&ctx, grads, Some(out), true))
}

/// The norm of a single buffer (same kernels and guarantees as [`get_total_norm`]).
pub fn buffer_norm(grad: Grad<'_>, norm_type: NormType) -> Result<f64, Error> {
    get_total_norm(&[grad], norm_type)
}

/// First non-finite element of `d`: the vectorised max-abs kernel finds the first 4096-element
/// block that holds one, a scalar scan finds the element inside it.
fn first_in<T: Kernel>(d: &[T]) -> Option<(usize, f64)> {
    const BLOCK: usize = 4096;
    let max_abs = T::max_abs(Kernels::selected());
    d.chunks(BLOCK)
        .enumerate()
        .find(|(_, block)| max_abs(block) >= T::INF_BITS)
        .and_then(|(b, block)| {
            block
                .iter()
                .position(|x| x.is_nonfinite())
                .map(|i| (b * BLOCK + i, block[i].to_f32() as f64))
        })
}

/// The first NaN or ±inf in buffer order (lowest buffer index, then lowest element index).
pub fn first_nonfinite<G: AsGrad>(grads: &[G]) -> Option<NonFinite> {
    grads.iter().enumerate().find_map(|(buffer, g)| {
        let hit = match g.grad() {
            Grad::F32(s) => first_in(s),
            Grad::F16(s) => first_in(s),
            Grad::BF16(s) => first_in(s),
        };
        hit.map(|(index, value)| NonFinite {
            buffer,
            index,
            value,
        })
    })
}

/// True when some element at or after `from` (in buffer order) is NaN.
pub(crate) fn any_nan_from<G: AsGrad>(grads: &[G], from: NonFinite) -> bool {
    fn nan_in<T: Element>(d: &[T]) -> bool {
        d.iter().any(|x| x.is_nan_value())
    }
    grads.iter().enumerate().skip(from.buffer).any(|(b, g)| {
        let start = if b == from.buffer { from.index } else { 0 };
        match g.grad() {
            Grad::F32(s) => nan_in(&s[start.min(s.len())..]),
            Grad::F16(s) => nan_in(&s[start.min(s.len())..]),
            Grad::BF16(s) => nan_in(&s[start.min(s.len())..]),
        }
    })
}
