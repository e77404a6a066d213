//! The reduction tree and the parallel scale pass.
//!
//! A buffer is cut into [`CHUNK`]-element chunks counted from its start; a range of chunks is
//! split at the chunk-aligned midpoint, a set of buffers at the middle index. The tree therefore
//! depends on the buffer lengths only. Whether a node's two halves run through `rayon::join` or
//! one after the other is decided by the node's size ([`PAR_MIN_BYTES`]); either way the same
//! partials are merged in the same order, so the result has the same bits for any thread count.
//! Nothing is allocated: the partials live on the (rayon or caller) stack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::arch::{Kernel, Kernels};
use crate::dtype::Element;
use crate::grads::{AsGrad, Grad, GradMut};
use crate::norm::NormType;
use crate::partial::{NormPartial, HAS_INF, HAS_NAN};

/// Elements per chunk, the leaf of the reduction tree.
pub(crate) const CHUNK: usize = 1 << 16;

/// Below this many bytes a node of the tree runs on the calling thread (the default; see
/// [`par_min_bytes`]). Measured on the 2-core development machine with data coming from memory
/// (sets of 8 buffers, 2 threads, forking vs not): 128 KiB 0.85×, 256 KiB 1.1–1.2×, 512 KiB 1.3×,
/// 1 MiB 1.45×. Below 256 KiB a `rayon::join` costs more than the second core gives.
pub(crate) const PAR_MIN_BYTES: usize = 256 << 10;

/// The fork threshold in force: [`PAR_MIN_BYTES`], or the environment variable
/// `GRADCLIP_PAR_MIN_BYTES` read once on first use (for tuning on other machines). It only decides
/// which nodes fork; the tree, and so every result bit, is the same for any value.
#[inline]
pub(crate) fn par_min_bytes() -> usize {
    static VALUE: OnceLock<usize> = OnceLock::new();
    *VALUE.get_or_init(|| {
        std::env::var("GRADCLIP_PAR_MIN_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(PAR_MIN_BYTES)
    })
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

fn chunk_partial<T: Kernel>(ctx: &NormCtx<'_>, d: &[T]) -> NormPartial {
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

fn reduce_buffer<T: Kernel>(ctx: &NormCtx<'_>, d: &[T]) -> NormPartial {
    if d.len() <= CHUNK {
        return chunk_partial(ctx, d);
    }
    let mid = (d.len().div_ceil(CHUNK) / 2) * CHUNK;
    let (l, r) = d.split_at(mid);
    let parallel = std::mem::size_of_val(d) >= par_min_bytes();
    let (a, b) = join_if(parallel, || reduce_buffer(ctx, l), || reduce_buffer(ctx, r));
    a.merge(b)
}

fn reduce_grad(ctx: &NormCtx<'_>, g: Grad<'_>) -> NormPartial {
    match g {
        Grad::F32(s) => reduce_buffer(ctx, s),
        Grad::F16(s) => reduce_buffer(ctx, s),
        Grad::BF16(s) => reduce_buffer(ctx, s),
    }
}

/// The partial of a whole set: a tree over the buffers (split at the middle index), each leaf the
/// tree of one buffer. `out`, when given, receives each buffer's own partial.
pub(crate) fn reduce_set<G: AsGrad>(
    ctx: &NormCtx<'_>,
    grads: &[G],
    out: Option<&mut [NormPartial]>,
    may_fork: bool,
) -> NormPartial {
    match grads.len() {
        0 => NormPartial::new(ctx.norm_type).unwrap_or_else(|_| NormPartial::zeroed()),
        1 => {
            let p = reduce_grad(ctx, grads[0].grad());
            if let Some(o) = out {
                o[0] = p;
            }
            p
        }
        n => {
            let mid = n / 2;
            let (gl, gr) = grads.split_at(mid);
            let parallel = may_fork
                && grads.iter().map(|g| g.grad().byte_len()).sum::<usize>() >= par_min_bytes();
            let (a, b) = match out {
                Some(o) => {
                    let (ol, or) = o.split_at_mut(mid);
                    join_if(
                        parallel,
                        || reduce_set(ctx, gl, Some(ol), parallel),
                        || reduce_set(ctx, gr, Some(or), parallel),
                    )
                }
                None => join_if(
                    parallel,
                    || reduce_set(ctx, gl, None, parallel),
                    || reduce_set(ctx, gr, None, parallel),
                ),
            };
            a.merge(b)
        }
    }
}

use bytemuck::Zeroable;

fn scale_buffer<T: Kernel>(k: &Kernels, d: &mut [T], c: f32) {
    if d.len() <= CHUNK {
        T::scale(k)(d, c);
        return;
    }
    let mid = (d.len().div_ceil(CHUNK) / 2) * CHUNK;
    let parallel = std::mem::size_of_val(d) >= par_min_bytes();
    let (l, r) = d.split_at_mut(mid);
    join_if(parallel, || scale_buffer(k, l, c), || scale_buffer(k, r, c));
}

/// `x = round_to_dtype(f32(x) * c)` on every element of every buffer.
pub(crate) fn scale_set(k: &Kernels, grads: &mut [GradMut<'_>], c: f32, may_fork: bool) {
    match grads.len() {
        0 => {}
        1 => match &mut grads[0] {
            GradMut::F32(s) => scale_buffer(k, s, c),
            GradMut::F16(s) => scale_buffer(k, s, c),
            GradMut::BF16(s) => scale_buffer(k, s, c),
        },
        n => {
            let parallel = may_fork
                && grads.iter().map(|g| g.as_grad().byte_len()).sum::<usize>() >= par_min_bytes();
            let (gl, gr) = grads.split_at_mut(n / 2);
            join_if(
                parallel,
                || scale_set(k, gl, c, parallel),
                || scale_set(k, gr, c, parallel),
            );
        }
    }
}
