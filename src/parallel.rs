//! The reduction tree and the parallel scale pass.
//!
//! A buffer is cut into [`CHUNK`]-element chunks counted from its start; a range of chunks is
//! split at the chunk-aligned midpoint, a set of buffers at the middle index. The tree therefore
//! depends on the buffer lengths only. Whether a node's two halves run through `rayon::join` or
//! one after the other is decided by the node's size ([`PAR_MIN_BYTES`]); either way the same
//! partials are merged in the same order, so the result has the same bits for any thread count.
//! Nothing is allocated: the partials live on the (rayon or caller) stack.

use std::sync::OnceLock;

use crate::arch::{Kernel, Kernels};
use crate::chunk::{chunk_partial, NormCtx};
use crate::grads::{AsGrad, Grad, GradMut};
use crate::partial::NormPartial;

/// Elements per chunk, the leaf of the reduction tree.
pub(crate) const CHUNK: usize = 1 << 16;

/// Below this many bytes a node of the tree runs on the calling thread (the default; see
/// [`par_min_bytes`]). Measured on the 2-core development machine with data coming from memory
/// (sets of 8 buffers, 2 threads, forking vs not): 128 KiB 0.85×, 256 KiB 1.1–1.2×, 512 KiB 1.3×,
/// 1 MiB 1.45×. Below 256 KiB a `rayon::join` costs more than the second core gives.
pub(crate) const PAR_MIN_BYTES: usize = 256 << 10;

/// The fork threshold in force: [`PAR_MIN_BYTES`], or the environment variable
/// `GRADCLIP_PAR_MIN_BYTES` read once on first use (for tuning on other machines). It only decides
/// which nodes fork; the tree, and so every result bit, is the same for any value. A set of
/// buffers smaller than this runs entirely on the calling thread, so a binding can skip handing
/// such a call to its thread pool.
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

/// Where the tree splits a buffer of `len` elements: `None` for a leaf (at most one chunk),
/// else the chunk-aligned midpoint (the first half gets the extra chunk of an odd count).
/// Anything that computes part of a buffer's partial elsewhere (the safetensors reader, in
/// pieces) must cut where this says and merge the halves in order to get the same bits.
#[inline]
pub(crate) fn buffer_split(len: usize) -> Option<usize> {
    (len > CHUNK).then(|| len.div_ceil(CHUNK) / 2 * CHUNK)
}

/// Where the tree splits a set of `n >= 2` buffers: at the middle index (left half `n / 2`).
#[inline]
pub(crate) const fn set_split(n: usize) -> usize {
    n / 2
}

/// Merges per-buffer partials in the tree [`reduce_set`] uses over a set of buffers, so the
/// result has the bits of one call over all of them (`empty` for no buffer).
#[cfg(feature = "safetensors")]
pub(crate) fn merge_set(parts: &[NormPartial], empty: NormPartial) -> NormPartial {
    match parts {
        [] => empty,
        [p] => *p,
        _ => {
            let (l, r) = parts.split_at(set_split(parts.len()));
            merge_set(l, empty).merge(merge_set(r, empty))
        }
    }
}

#[inline]
pub(crate) fn join_if<A, B, RA, RB>(parallel: bool, a: A, b: B) -> (RA, RB)
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

fn reduce_buffer<T: Kernel>(ctx: &NormCtx<'_>, d: &[T]) -> NormPartial {
    let Some(mid) = buffer_split(d.len()) else {
        return chunk_partial(ctx, d);
    };
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
        0 => NormPartial::new(ctx.norm_type).unwrap_or(NormPartial::EMPTY),
        1 => {
            let p = reduce_grad(ctx, grads[0].grad());
            if let Some(o) = out {
                o[0] = p;
            }
            p
        }
        n => {
            let mid = set_split(n);
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

fn scale_buffer<T: Kernel>(k: &Kernels, d: &mut [T], c: f32) {
    let Some(mid) = buffer_split(d.len()) else {
        T::scale(k)(d, c);
        return;
    };
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
            let (gl, gr) = grads.split_at_mut(set_split(n));
            join_if(
                parallel,
                || scale_set(k, gl, c, parallel),
                || scale_set(k, gr, c, parallel),
            );
        }
    }
}
