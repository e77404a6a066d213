//! The exact kernels ([`crate::exact::block`]) on NEON: sixteen f64 lanes in eight
//! `float64x2_t`; one bin takes two such sets (32 lanes), two or three bins one set each, and a
//! 1024-element block gives at most 64 deposits per lane.
//!
//! Widening reuses the sums' loads ([`Backend::load_f32`], [`Backend::load_f16`] with the bit
//! logic of [`crate::lanes`], [`Backend::load_bf16_words`] split into even and odd words), then
//! `fcvtl`/`fcvtl2` to f64; the bounds scan is `umax`/`umin` of the element's width.

use std::arch::aarch64::*;

use half::{bf16, f16};

use super::super::exact::{exact_table, ExactKernels};
use super::super::generic::Backend;
use super::Neon;
use crate::exact::accumulator::ChunkAcc;
use crate::exact::block::{self, ExactBackend, ExactElement, Plan};
use crate::isa::Isa;

static EXACT_KERNELS: ExactKernels = exact_table!(
    Neon,
    Isa::Neon,
    [#[target_feature(enable = "neon")]],
    token = Neon(())
);

impl Neon {
    /// The NEON exact kernels.
    pub(in crate::arch) fn exact_kernels(self) -> &'static ExactKernels {
        &EXACT_KERNELS
    }
}

type W = [float64x2_t; 8];

/// Four f32 widened into two f64 registers at `out[i]`, `out[i + 1]`, magnitudes when `abs`.
#[inline(always)]
fn widen4(out: &mut W, i: usize, x: float32x4_t, abs: bool) {
    // SAFETY: NEON is baseline on aarch64.
    unsafe {
        let lo = vcvt_f64_f32(vget_low_f32(x));
        let hi = vcvt_high_f64_f32(x);
        out[i] = if abs { vabsq_f64(lo) } else { lo };
        out[i + 1] = if abs { vabsq_f64(hi) } else { hi };
    }
}

/// Even and odd bf16 of four words as two f32 registers.
#[inline(always)]
fn bf16_words(w: uint32x4_t) -> (float32x4_t, float32x4_t) {
    // SAFETY: NEON is baseline on aarch64.
    unsafe {
        let even = vreinterpretq_f32_u32(vshlq_n_u32::<16>(w));
        let odd = vreinterpretq_f32_u32(vandq_u32(w, vdupq_n_u32(0xFFFF_0000)));
        (even, odd)
    }
}

impl ExactBackend for Neon {
    type W = W;
    const LANES: usize = 16;
    const BLOCK: usize = 1024;
    const MIN_U: usize = 1;

    #[inline(always)]
    fn splat(self, v: f64) -> W {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { [vdupq_n_f64(v); 8] }
    }
    #[inline(always)]
    fn add(self, a: W, b: W) -> W {
        let mut out = a;
        for (o, b) in out.iter_mut().zip(b) {
            // SAFETY: NEON is baseline on aarch64.
            *o = unsafe { vaddq_f64(*o, b) };
        }
        out
    }
    #[inline(always)]
    fn sub(self, a: W, b: W) -> W {
        let mut out = a;
        for (o, b) in out.iter_mut().zip(b) {
            // SAFETY: NEON is baseline on aarch64.
            *o = unsafe { vsubq_f64(*o, b) };
        }
        out
    }
    #[inline(always)]
    fn sq_add(self, x: W, a: W) -> W {
        let mut out = a;
        for (o, x) in out.iter_mut().zip(x) {
            // SAFETY: NEON is baseline on aarch64.
            *o = unsafe { vfmaq_f64(*o, x, x) };
        }
        out
    }
    #[inline(always)]
    fn sq_sub(self, x: W, d: W) -> W {
        let mut out = d;
        for (o, x) in out.iter_mut().zip(x) {
            // −d + x·x with one rounding (the negation is exact).
            // SAFETY: NEON is baseline on aarch64.
            *o = unsafe { vfmaq_f64(vnegq_f64(*o), x, x) };
        }
        out
    }
    #[inline(always)]
    fn widen_f32(self, g: &[f32], abs: bool) -> W {
        let g: &[f32; 16] = g[..16].try_into().expect("16 elements");
        let mut out = self.splat(0.0);
        for q in 0..4 {
            widen4(&mut out, 2 * q, self.load_f32(&g[4 * q..]), abs);
        }
        out
    }
    #[inline(always)]
    fn widen_f16(self, g: &[f16], abs: bool) -> W {
        let g: &[f16; 16] = g[..16].try_into().expect("16 elements");
        let mut out = self.splat(0.0);
        for q in 0..4 {
            widen4(&mut out, 2 * q, self.load_f16(&g[4 * q..]), abs);
        }
        out
    }
    #[inline(always)]
    fn widen_bf16(self, g: &[bf16], abs: bool) -> W {
        let g: &[bf16; 16] = g[..16].try_into().expect("16 elements");
        // Even elements, then odd ones: any lane order will do for an exact sum.
        let mut out = self.splat(0.0);
        for h in 0..2 {
            let (even, odd) = bf16_words(self.load_bf16_words(&g[8 * h..]));
            widen4(&mut out, 4 * h, even, abs);
            widen4(&mut out, 4 * h + 2, odd, abs);
        }
        out
    }
    #[inline(always)]
    fn bits_sum(self, a: W) -> u64 {
        // SAFETY: NEON is baseline on aarch64.
        unsafe {
            let mut s = vdupq_n_u64(0);
            for v in a {
                s = vaddq_u64(s, vreinterpretq_u64_f64(v));
            }
            vgetq_lane_u64::<0>(s).wrapping_add(vgetq_lane_u64::<1>(s))
        }
    }
    type Bnd = [uint32x4_t; 2];
    #[inline(always)]
    fn bnd_zero(self) -> Self::Bnd {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { [vdupq_n_u32(0), vdupq_n_u32(u32::MAX)] }
    }
    #[inline(always)]
    fn bnd_u32(self, b: Self::Bnd, g: &[u32]) -> Self::Bnd {
        let g: &[u32; 16] = g[..16].try_into().expect("16 words");
        let [mut hi, mut lo] = b;
        // SAFETY: NEON is baseline on aarch64; four loads of 4 words cover exactly `g`.
        unsafe {
            for k in 0..4 {
                let a = vandq_u32(vld1q_u32(g.as_ptr().add(4 * k)), vdupq_n_u32(0x7FFF_FFFF));
                hi = vmaxq_u32(hi, a);
                lo = vminq_u32(lo, vsubq_u32(a, vdupq_n_u32(1)));
            }
        }
        [hi, lo]
    }
    #[inline(always)]
    fn bnd_u16(self, b: Self::Bnd, g: &[u16]) -> Self::Bnd {
        let g: &[u16; 16] = g[..16].try_into().expect("16 halves");
        // SAFETY: NEON is baseline on aarch64; two loads of 8 halves cover exactly `g`. The
        // registers are read as eight 16-bit lanes.
        unsafe {
            let mut hi = vreinterpretq_u16_u32(b[0]);
            let mut lo = vreinterpretq_u16_u32(b[1]);
            for k in 0..2 {
                let a = vandq_u16(vld1q_u16(g.as_ptr().add(8 * k)), vdupq_n_u16(0x7FFF));
                hi = vmaxq_u16(hi, a);
                lo = vminq_u16(lo, vsubq_u16(a, vdupq_n_u16(1)));
            }
            [vreinterpretq_u32_u16(hi), vreinterpretq_u32_u16(lo)]
        }
    }
    #[inline(always)]
    fn bnd_finish_u32(self, b: Self::Bnd) -> (u32, u32) {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { (vmaxvq_u32(b[0]), vminvq_u32(b[1])) }
    }
    #[inline(always)]
    fn bnd_finish_u16(self, b: Self::Bnd) -> (u32, u32) {
        // SAFETY: NEON is baseline on aarch64.
        let (h, l) = unsafe {
            (
                vmaxvq_u16(vreinterpretq_u16_u32(b[0])),
                vminvq_u16(vreinterpretq_u16_u32(b[1])),
            )
        };
        (h as u32, if l == u16::MAX { u32::MAX } else { l as u32 })
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
            1 => block::bins::<Self, T, SQ, 1, 2>(self, block, next, ahead, plan, acc),
            2 => block::bins::<Self, T, SQ, 2, 1>(self, block, next, ahead, plan, acc),
            _ => block::bins::<Self, T, SQ, 3, 1>(self, block, next, ahead, plan, acc),
        }
    }
}
