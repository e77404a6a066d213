//! Exact norms: the same bits however the gradients are split.
//!
//! The compensated norms ([`Summation::Compensated`]) are bit-identical for any thread count and
//! instruction set, but not for any *partition* of the data: the same numbers as one buffer or as
//! 148 tensors, or sharded over two ranks or three, round differently in the last bits.
//! [`Summation::Exact`] removes rounding from the reduction altogether: the L2 and L1 sums are
//! computed exactly, as integers, and rounded once at the end, so every lane layout, partition,
//! merge order, thread count and instruction set gives the same bits *by construction*.
//!
//! # What is computed
//!
//! - L2: `S = Σ x²` exactly (a square of an f32, f16 or bf16 value is exact in f64: at most 48
//!   significant bits), then `sum = RN(S)` (the f64 nearest to `S`, ties to even) and
//!   `norm = sqrt(sum)`, the IEEE square root of that f64.
//! - L1: `S = Σ |x|` exactly, `norm = RN(S)`.
//! - Inf: `max |x|`, exact in both modes.
//!
//! P(p) norms cannot be summed exactly (`|x|^p` is not a dyadic rational in general); in exact
//! mode they are computed as in compensated mode.
//!
//! # How: bins per block, a long accumulator per chunk
//!
//! Every term `y` (`x²` or `|x|`) is a multiple of 2^-298 below 2^256, so `S` is an integer
//! multiple of 2^-320 below 2^384 for any realistic count: [`ExactPartial`] holds it as 704 bits
//! of fixed point (11 limbs) and merges by integer addition, which is associative and commutative.
//! Adding each term to the limbs would be slow; the kernels add whole blocks at once:
//!
//! 1. A block (1024–2048 elements) is scanned with integer max/min over the bit patterns: all its
//!    terms are below 2^T and multiples of 2^L.
//! 2. K f64 bins per lane are placed from (T, L) ([`block::Plan`]): bin 0 starts at 2^b0 with
//!    b0 = T + g (g guard bits = ⌈log2(deposits per lane)⌉ + 1), bin j + 1 sits 52 − g bits
//!    below bin j, the last bin's unit in the last place is 2^L. K is the least that reaches L:
//!    K = 1 + ⌈(T + g − 52 − L) / (52 − g)⌉.
//! 3. Each element is deposited with an error-free cascade (lane-wise, 16 lanes per group):
//!    ```text
//!    t = fma(x, x, A0); d = t − A0; r = fma(x, x, −d); A0 = t   // bin 0, r = x² − d exactly
//!    t = A1 + r;        d = t − A1; r = r − d;         A1 = t   // middle bins
//!    A_{K−1} = A_{K−1} + r                                      // last bin: exact
//!    ```
//!    Each bin stays inside its binade for the whole block (its deposits add up to less than
//!    half of it), so `t − A` is exact, each remainder is exactly representable, and the last
//!    bin's additions are exact because every remainder is a multiple of its unit.
//! 4. At the end of the block, `bits(A) − bits(A_start)` is the exact number of units in the
//!    last place a bin gained (both share a binade); the lanes' counts are summed as integers
//!    and added to the chunk's accumulator at the bin's bit position.
//!
//! Gradient-like blocks need K = 2 for f32 squares (K = 2 covers about 22 binades of |x|), and
//! K = 1 for f16/bf16 squares and for f32 magnitudes (one fused multiply-add per element). A
//! block whose range needs more than three bins (adversarial full-range data) takes an integer
//! path: per exponent, significands (or their squares) are summed in u64. Blocks holding NaN or
//! ±inf are only classified.
//!
//! The kernel is written once ([`block::bins`]) over a small vector trait; the portable,
//! AVX-512, AVX2 and NEON backends only supply widening loads, lane arithmetic and the bounds
//! scan. Since the result is exact, backends may use different lane counts and block sizes and
//! still agree bit for bit.
//!
//! # Finishing
//!
//! Chunks (the same fixed 65,536-element chunks as the compensated mode, forked with rayon above
//! the same size threshold) yield partials that merge by 704-bit addition. `finish` rounds the
//! integer to the nearest f64 (ties to even, from the top 64 bits and a sticky bit) and takes the
//! square root for L2.

use std::sync::atomic::{AtomicBool, Ordering};

use half::{bf16, f16};

mod accumulator;
pub(crate) mod block;
mod portable;

pub use accumulator::ExactPartial;
use accumulator::{FLAG_INF, KIND_L1, KIND_L2};

use crate::arch::Isa;
use crate::dtype::Element;
use crate::error::Error;
use crate::grads::{AsGrad, Grad};
use crate::norm::{first_nonfinite_or_panic_free, get_total_norm_with_isa, NormType};
use crate::parallel::{par_min_bytes, CHUNK};

/// How L2 and L1 sums are accumulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Summation {
    /// 32 f64 lanes with compensated (Fast2Sum) folds and a reduction tree fixed by the buffer
    /// lengths: within 1e-14 relative of the exact value, the same bits for any thread count and
    /// instruction set, not for a different split of the same numbers.
    #[default]
    Compensated,
    /// The exact sum, rounded once to the nearest f64 (see [`crate::exact`]): the same bits for
    /// any split of the data into buffers or shards, any merge order, thread count and
    /// instruction set. Inf is exact in both modes; P(p) norms are computed as in
    /// [`Summation::Compensated`].
    Exact,
}

type ExactFn<T> = fn(&[T]) -> ExactPartial;

/// One instruction set's exact kernels (each takes a chunk).
pub(crate) struct ExactKernels {
    pub sum_sq: (ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>),
    pub sum_abs: (ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>),
    pub max_abs: (ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>),
}

static PORTABLE: ExactKernels = ExactKernels {
    sum_sq: (
        portable::sum_sq_f32,
        portable::sum_sq_f16,
        portable::sum_sq_bf16,
    ),
    sum_abs: (
        portable::sum_abs_f32,
        portable::sum_abs_f16,
        portable::sum_abs_bf16,
    ),
    max_abs: (
        portable::max_abs_f32,
        portable::max_abs_f16,
        portable::max_abs_bf16,
    ),
};

impl ExactKernels {
    /// The table for an ISA this CPU runs.
    fn for_available(isa: Isa) -> &'static ExactKernels {
        let _ = isa;
        &PORTABLE
    }

    /// The table for `isa` (`None`: the process-wide selection), or an error when this CPU
    /// cannot run it.
    fn get(isa: Option<Isa>) -> Result<&'static ExactKernels, Error> {
        match isa {
            None => Ok(Self::for_available(Isa::selected())),
            Some(isa) if isa.is_available() => Ok(Self::for_available(isa)),
            Some(isa) => Err(Error::IsaUnavailable(isa)),
        }
    }
}

/// Picks a dtype's kernel out of an [`ExactKernels`] table.
trait ExactKernel: Element {
    fn pick(t: &(ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>)) -> ExactFn<Self>;
}
impl ExactKernel for f32 {
    fn pick(t: &(ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>)) -> ExactFn<Self> {
        t.0
    }
}
impl ExactKernel for f16 {
    fn pick(t: &(ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>)) -> ExactFn<Self> {
        t.1
    }
}
impl ExactKernel for bf16 {
    fn pick(t: &(ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>)) -> ExactFn<Self> {
        t.2
    }
}

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
    let k = ctx.kernels;
    let f = match ctx.kind {
        KIND_L2 => T::pick(&k.sum_sq),
        KIND_L1 => T::pick(&k.sum_abs),
        _ => T::pick(&k.max_abs),
    };
    let part = f(d);
    if !part.is_finite() {
        if let Some(stop) = ctx.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
    part
}

#[inline]
fn join_if<A, B, RA, RB>(parallel: bool, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    if parallel {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}

fn reduce_buffer<T: ExactKernel>(ctx: &Ctx<'_>, d: &[T]) -> ExactPartial {
    if d.len() <= CHUNK {
        return chunk_partial(ctx, d);
    }
    let mid = (d.len().div_ceil(CHUNK) / 2) * CHUNK;
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
            let (gl, gr) = grads.split_at(grads.len() / 2);
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

fn exact_kind(norm_type: NormType) -> Result<u8, Error> {
    let nt = norm_type.validated()?;
    ExactPartial::kind_of(nt).ok_or(Error::InvalidNormType { p: nt.exponent() })
}

fn partial_impl<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
    stop: Option<&AtomicBool>,
) -> Result<ExactPartial, Error> {
    let ctx = Ctx {
        kernels: ExactKernels::get(isa)?,
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
/// P(p) norms have no exact partial: they return [`Error::InvalidNormType`].
pub fn exact_partial<G: AsGrad>(grads: &[G], norm_type: NormType) -> Result<ExactPartial, Error> {
    partial_impl(grads, norm_type, None, None)
}

/// [`exact_partial`] on a forced instruction set (for tests, fuzzing and benchmarks). Returns
/// [`Error::IsaUnavailable`] when this CPU cannot run `isa`.
pub fn exact_partial_with_isa<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Isa,
) -> Result<ExactPartial, Error> {
    partial_impl(grads, norm_type, Some(isa), None)
}

/// The exact partial of the whole set, stopping at the first non-finite chunk.
pub(crate) fn short_circuit_exact<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
) -> Result<ExactPartial, Error> {
    let stop = AtomicBool::new(false);
    partial_impl(grads, norm_type, isa, Some(&stop))
}

fn exact_norm_impl<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Option<Isa>,
) -> Result<f64, Error> {
    if let NormType::P(_) = norm_type.validated()? {
        return match isa {
            None => crate::norm::get_total_norm(grads, norm_type),
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
        Summation::Compensated => crate::norm::get_total_norm(grads, norm_type),
        Summation::Exact => exact_norm_impl(grads, norm_type, None),
    }
}

/// The exactly rounded total norm (`get_total_norm_with(.., Summation::Exact)`).
pub fn get_total_norm_exact<G: AsGrad>(grads: &[G], norm_type: NormType) -> Result<f64, Error> {
    exact_norm_impl(grads, norm_type, None)
}

/// [`get_total_norm_exact`] on a forced instruction set (for tests, fuzzing and benchmarks).
pub fn get_total_norm_exact_with_isa<G: AsGrad>(
    grads: &[G],
    norm_type: NormType,
    isa: Isa,
) -> Result<f64, Error> {
    exact_norm_impl(grads, norm_type, Some(isa))
}
