//! Baselines for benchmarks: what a naive loop achieves, and what memory bandwidth allows.
//!
//! The bench report and the criterion benches measure gradclip against these on the same bytes,
//! in the same run, and report ratios (absolute times on a shared machine mean little).

use rayon::prelude::*;

use crate::arch::{prefetch_hint, Kernel, Kernels};
use crate::error::Error;
use crate::grads::Grad;
use crate::isa::Isa;

/// Compute roofline of the norms on `isa`: every element widened to f64 and its square added to
/// 32 plain f64 lanes (the sums' registers and widening loads), with no compensation, no block
/// folds and no chunk tree. Run on cache-resident data it is the arithmetic an exact-grade sum
/// cannot avoid, so a kernel's ratio to it says whether a shortfall is the kernel's or the
/// design's. `Err(IsaUnavailable)` when this CPU cannot run `isa`.
pub fn compute_roofline(g: Grad<'_>, isa: Isa) -> Result<f64, Error> {
    fn run<T: Kernel>(k: &Kernels, d: &[T]) -> f64 {
        T::sum_sq_plain(k)(d)
    }
    let k = Kernels::for_isa(isa).ok_or(Error::IsaUnavailable(isa))?;
    Ok(match g {
        Grad::F32(d) => run(k, d),
        Grad::F16(d) => run(k, d),
        Grad::BF16(d) => run(k, d),
    })
}

/// `Σ x²` accumulated in f32, as `x.iter().map(|v| v * v).sum::<f32>()` (inaccurate, overflows).
#[inline(never)]
pub fn naive_sum_sq_f32(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>()
}

/// `Σ x²` accumulated in one plain f64 (no compensation, one dependency chain).
#[inline(never)]
pub fn naive_sum_sq_f64(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()
}

/// How far ahead the read-modify-write roofline prefetches (the distance the scale kernel uses).
const AHEAD_BYTES: usize = crate::arch::generic::SCALE_AHEAD_BYTES;

/// Read roofline: XOR of every 8-byte word of `bytes` (eight independent accumulators). Nothing
/// reads memory faster than this in plain code, so it stands for the read bandwidth.
#[inline(never)]
pub fn read_roofline(bytes: &[u8]) -> u64 {
    let (head, words, tail) = bytemuck::pod_align_to::<u8, u64>(bytes);
    let mut acc = [0u64; 8];
    let mut it = words.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            acc[j] ^= c[j];
        }
    }
    let mut r = acc.iter().fold(0u64, |a, &b| a ^ b);
    for &w in it.remainder() {
        r ^= w;
    }
    for &b in head.iter().chain(tail) {
        r ^= b as u64;
    }
    r
}

/// Read roofline over `threads`-way split (run inside a pool of that size).
pub fn read_roofline_par(bytes: &[u8], threads: usize) -> u64 {
    if threads <= 1 {
        return read_roofline(bytes);
    }
    let piece = bytes.len().div_ceil(threads).max(1);
    bytes
        .par_chunks(piece)
        .map(read_roofline)
        .reduce(|| 0, |a, b| a ^ b)
}

/// Read-modify-write roofline: `x *= factor` in place over f32 words, prefetching
/// [`crate::arch::generic::SCALE_AHEAD_BYTES`] ahead as the scale kernel does (without it this
/// loop ran at 0.7–0.8 of the scale kernel from memory on an Intel Xeon, so it was no roofline).
/// The read roofline does not prefetch: there the prefetch bought about 8% from memory but
/// cost 15% in cache.
#[inline(never)]
pub fn rmw_roofline(x: &mut [f32], factor: f32) {
    let mut lines = x.chunks_exact_mut(16);
    for l in &mut lines {
        prefetch_hint(l.as_ptr().cast::<u8>().wrapping_add(AHEAD_BYTES));
        for v in l {
            *v *= factor;
        }
    }
    for v in lines.into_remainder() {
        *v *= factor;
    }
}

/// Read-modify-write roofline over a `threads`-way split (run inside a pool of that size).
pub fn rmw_roofline_par(x: &mut [f32], factor: f32, threads: usize) {
    if threads <= 1 {
        return rmw_roofline(x, factor);
    }
    let piece = x.len().div_ceil(threads).max(1);
    x.par_chunks_mut(piece)
        .for_each(|c| rmw_roofline(c, factor));
}
