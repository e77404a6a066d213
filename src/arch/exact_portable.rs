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

/// Largest magnitude (`w & MASK`) and smallest `magnitude − 1`, zeros counted as `u32::MAX`.
///
/// Written with signed lanes of the word's own width so that baseline x86-64 (SSE2, which has
/// signed 16-bit max/min but no unsigned 32-bit ones) vectorises it cheaply: magnitudes are
/// below the sign bit, and `(magnitude − 1) & MASK` maps zero to `MASK` (no non-zero magnitude
/// maps there), keeping every key non-negative.
macro_rules! bounds_signed {
    ($name:ident, $w:ty, $s:ty, $mask:expr) => {
        #[inline(always)]
        fn $name(d: &[$w]) -> (u32, u32) {
            const MASK: $w = $mask;
            let mut hi = [0 as $s; 16];
            let mut lo = [MASK as $s; 16];
            let mut it = d.chunks_exact(16);
            for g in &mut it {
                for j in 0..16 {
                    let a = g[j] & MASK;
                    hi[j] = hi[j].max(a as $s);
                    lo[j] = lo[j].min((a.wrapping_sub(1) & MASK) as $s);
                }
            }
            for &w in it.remainder() {
                let a = w & MASK;
                hi[0] = hi[0].max(a as $s);
                lo[0] = lo[0].min((a.wrapping_sub(1) & MASK) as $s);
            }
            let h = hi.iter().copied().fold(0, <$s>::max) as u32;
            let l = lo.iter().copied().fold(MASK as $s, <$s>::min) as u32;
            (h, if l == MASK as u32 { u32::MAX } else { l })
        }
    };
}
bounds_signed!(bounds_u32_signed, u32, i32, 0x7FFF_FFFF);
bounds_signed!(bounds_u16_signed, u16, i16, 0x7FFF);

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
    #[inline(always)]
    fn bounds_u32(self, d: &[u32]) -> (u32, u32) {
        bounds_u32_signed(d)
    }
    #[inline(always)]
    fn bounds_u16(self, d: &[u16]) -> (u32, u32) {
        bounds_u16_signed(d)
    }
    #[inline(always)]
    fn prefetch<T>(self, _s: &[T], _i: usize) {
        // The hardware prefetcher has to do (no stable prefetch hint here).
    }
    #[inline(always)]
    fn run_bins<T: ExactElement, const SQ: bool>(
        self,
        block: &[T],
        next: &[T],
        plan: &Plan,
        acc: &mut ChunkAcc,
    ) {
        match plan.k {
            1 => block::bins::<Self, T, SQ, 1, 4>(self, block, next, plan, acc),
            2 => block::bins::<Self, T, SQ, 2, 2>(self, block, next, plan, acc),
            _ => block::bins::<Self, T, SQ, 3, 2>(self, block, next, plan, acc),
        }
    }
}
