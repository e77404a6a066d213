//! The portable instance of the exact kernels ([`crate::exact::block`]): sixteen f64 lanes as a
//! plain array, safe code, every target.
//!
//! No fused multiply-add is needed (a software one would be slow on targets without it): the
//! square of a widened element is exact in f64, so `a + x * x` rounds once, like a fused
//! operation would.

use half::{bf16, f16};

use super::exact::{exact_table, ExactKernels};
use super::portable::Portable;
use crate::dtype::Element;
use crate::exact::accumulator::ChunkAcc;
use crate::exact::block::{self, ExactBackend, ExactElement, Plan, GROUP};
use crate::isa::Isa;

static EXACT_KERNELS: ExactKernels = exact_table!(Portable, Isa::Portable, [], token = Portable);

/// The portable exact kernels (every CPU runs them).
pub(super) fn exact_kernels() -> &'static ExactKernels {
    &EXACT_KERNELS
}

type W = [f64; GROUP];

#[inline(always)]
fn map2(a: W, b: W, f: impl Fn(f64, f64) -> f64) -> W {
    let mut out = [0.0; GROUP];
    for j in 0..GROUP {
        out[j] = f(a[j], b[j]);
    }
    out
}

#[inline(always)]
fn widen<T: Element>(g: &[T; GROUP], abs: bool) -> W {
    let mut out = [0.0; GROUP];
    for j in 0..GROUP {
        let x = g[j].to_f32() as f64;
        out[j] = if abs { x.abs() } else { x };
    }
    out
}

/// Largest masked word and smallest `masked - 1` (wrapping), 16 independent lanes so the
/// compiler vectorises the loop.
#[inline(always)]
fn bounds_masked<const M: u32>(words: impl ExactSizeIterator<Item = u32> + Clone) -> (u32, u32) {
    let mut hi = [0u32; 16];
    let mut lo = [u32::MAX; 16];
    for (i, w) in words.enumerate() {
        let a = w & M;
        hi[i % 16] = hi[i % 16].max(a);
        lo[i % 16] = lo[i % 16].min(a.wrapping_sub(1));
    }
    (
        hi.iter().copied().max().unwrap_or(0),
        lo.iter().copied().min().unwrap_or(u32::MAX),
    )
}

impl ExactBackend for Portable {
    type W = W;
    const BLOCK: usize = 1024;
    const MIN_U: usize = 1;

    #[inline(always)]
    fn splat(self, v: f64) -> W {
        [v; GROUP]
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
    fn widen_f32(self, g: &[f32; GROUP], abs: bool) -> W {
        widen(g, abs)
    }
    #[inline(always)]
    fn widen_f16(self, g: &[f16; GROUP], abs: bool) -> W {
        widen(g, abs)
    }
    #[inline(always)]
    fn widen_bf16(self, g: &[bf16; GROUP], abs: bool) -> W {
        widen(g, abs)
    }
    #[inline(always)]
    fn bits_sum(self, a: W) -> u64 {
        a.iter().fold(0u64, |s, x| s.wrapping_add(x.to_bits()))
    }
    #[inline(always)]
    fn bounds_u32(self, d: &[u32]) -> (u32, u32) {
        bounds_masked::<0x7FFF_FFFF>(d.iter().copied())
    }
    #[inline(always)]
    fn bounds_u16(self, d: &[u16]) -> (u32, u32) {
        bounds_masked::<0x7FFF>(d.iter().map(|&w| w as u32))
    }
    #[inline(always)]
    fn run_bins<T: ExactElement, const SQ: bool>(
        self,
        block: &[T],
        plan: &Plan,
        acc: &mut ChunkAcc,
    ) {
        match plan.k {
            1 => block::bins::<Self, T, SQ, 1, 1>(self, block, plan, acc),
            2 => block::bins::<Self, T, SQ, 2, 1>(self, block, plan, acc),
            _ => block::bins::<Self, T, SQ, 3, 1>(self, block, plan, acc),
        }
    }
}
