//! The portable instance of the exact kernels ([`crate::exact::block`]): four f64 lanes as a
//! plain array (two SSE2 registers on baseline x86-64, so two or three bins and their operands
//! stay in the sixteen registers), safe code, every target.
//!
//! No fused multiply-add is needed (a software one would be slow on targets without it): the
//! square of a widened element is exact in f64, so `a + x * x` rounds once, like a fused
//! operation would.

use half::{bf16, f16};

use super::exact::{exact_table, ExactKernels};
use super::portable::Portable;
use crate::dtype::Element;
use crate::exact::accumulator::ChunkAcc;
use crate::exact::block::{self, ExactBackend, ExactElement, Plan};
use crate::isa::Isa;

static EXACT_KERNELS: ExactKernels = exact_table!(Portable, Isa::Portable, [], token = Portable);

/// The portable exact kernels (every CPU runs them).
pub(super) fn exact_kernels() -> &'static ExactKernels {
    &EXACT_KERNELS
}

const LANES: usize = 4;
type W = [f64; LANES];

#[inline(always)]
fn map2(a: W, b: W, f: impl Fn(f64, f64) -> f64) -> W {
    let mut out = [0.0; LANES];
    for j in 0..LANES {
        out[j] = f(a[j], b[j]);
    }
    out
}

#[inline(always)]
fn widen<T: Element>(g: &[T], abs: bool) -> W {
    let g: &[T; LANES] = g[..LANES].try_into().expect("LANES elements");
    let mut out = [0.0; LANES];
    for j in 0..LANES {
        let x = g[j].to_f32() as f64;
        out[j] = if abs { x.abs() } else { x };
    }
    out
}

/// Bounds keys as signed lanes of 32 bits: magnitudes are below the sign bit, and
/// `(magnitude − 1) & MASK` maps zero to `MASK` (no non-zero magnitude maps there), so every key
/// is non-negative and signed max/min (which baseline x86-64 vectorises more cheaply than
/// unsigned ones) order them like the magnitudes.
#[inline(always)]
fn bnd_keys(b: ([i32; LANES], [i32; LANES]), g: &[u32], mask: u32) -> ([i32; LANES], [i32; LANES]) {
    let g: &[u32; LANES] = g[..LANES].try_into().expect("LANES words");
    let (mut hi, mut lo) = b;
    for j in 0..LANES {
        let a = g[j] & mask;
        hi[j] = hi[j].max(a as i32);
        lo[j] = lo[j].min((a.wrapping_sub(1) & mask) as i32);
    }
    (hi, lo)
}

#[inline(always)]
fn bnd_done(b: ([i32; LANES], [i32; LANES]), mask: u32) -> (u32, u32) {
    let h = b.0.iter().copied().fold(0, i32::max) as u32;
    let l = b.1.iter().copied().fold(i32::MAX, i32::min) as u32 & mask;
    (h, if l == mask { u32::MAX } else { l })
}

impl ExactBackend for Portable {
    type W = W;
    const LANES: usize = LANES;
    const BLOCK: usize = 512;
    const MIN_U: usize = 2;

    #[inline(always)]
    fn splat(self, v: f64) -> W {
        [v; LANES]
    }
    #[inline(always)]
    fn add(self, a: W, b: W) -> W {
        map2(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: W, b: W) -> W {
        map2(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn sq_add(self, x: W, a: W) -> W {
        map2(x, a, |x, a| a + x * x)
    }
    #[inline(always)]
    fn sq_sub(self, x: W, d: W) -> W {
        map2(x, d, |x, d| x * x - d)
    }
    #[inline(always)]
    fn widen_f32(self, g: &[f32], abs: bool) -> W {
        widen(g, abs)
    }
    #[inline(always)]
    fn widen_f16(self, g: &[f16], abs: bool) -> W {
        widen(g, abs)
    }
    #[inline(always)]
    fn widen_bf16(self, g: &[bf16], abs: bool) -> W {
        widen(g, abs)
    }
    #[inline(always)]
    fn bits_sum(self, a: W) -> u64 {
        a.iter().fold(0u64, |s, x| s.wrapping_add(x.to_bits()))
    }
    type Bnd = ([i32; LANES], [i32; LANES]);
    #[inline(always)]
    fn bnd_zero(self) -> Self::Bnd {
        ([0; LANES], [i32::MAX; LANES])
    }
    #[inline(always)]
    fn bnd_u32(self, b: Self::Bnd, g: &[u32]) -> Self::Bnd {
        bnd_keys(b, g, 0x7FFF_FFFF)
    }
    #[inline(always)]
    fn bnd_u16(self, b: Self::Bnd, g: &[u16]) -> Self::Bnd {
        let g: &[u16; LANES] = g[..LANES].try_into().expect("LANES halves");
        bnd_keys(b, &g.map(u32::from), 0x7FFF)
    }
    #[inline(always)]
    fn bnd_finish_u32(self, b: Self::Bnd) -> (u32, u32) {
        bnd_done(b, 0x7FFF_FFFF)
    }
    #[inline(always)]
    fn bnd_finish_u16(self, b: Self::Bnd) -> (u32, u32) {
        bnd_done(b, 0x7FFF)
    }
    #[inline(always)]
    fn prefetch<T>(self, _s: &[T]) {
        // The hardware prefetcher has to do (no stable prefetch hint here).
    }
    #[inline(always)]
    fn run_bins<T: ExactElement, const SQ: bool>(
        self,
        block: &[T],
        next: &[T],
        ahead: &[T],
        plan: &Plan,
        acc: &mut ChunkAcc,
    ) -> (u32, u32) {
        match plan.k {
            1 => block::bins::<Self, T, SQ, 1, 4>(self, block, next, ahead, plan, acc),
            2 => block::bins::<Self, T, SQ, 2, 2>(self, block, next, ahead, plan, acc),
            _ => block::bins::<Self, T, SQ, 3, 2>(self, block, next, ahead, plan, acc),
        }
    }
}
