//! aarch64 kernels: NEON (baseline on every aarch64 Linux target, so no run-time check is needed).
//!
//! The same 32 virtual f64 lanes as every backend, in sixteen `float64x2_t`. f16 is widened with
//! the same branch-free bit logic as [`crate::dtype::f16_bits_to_f32`] (magnitude only: squares
//! and absolute values do not need the sign), bf16 with the even/odd word split of
//! [`super::generic::bf16_lane_source`]. The max and scale passes are the portable ones, which the
//! compiler vectorises with NEON on this target.

use std::arch::aarch64::*;

use half::{bf16, f16};

use super::generic::{self, Backend, LANES};
use super::{portable, Isa, Kernels};

/// Token for NEON (always present on aarch64).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

impl Neon {
    /// NEON is part of the aarch64 baseline.
    pub(crate) fn is_available() -> bool {
        std::arch::is_aarch64_feature_detected!("neon")
    }
}

/// `acc + x*x` (fused; the square is exact, so this equals the portable mul-then-add) or `acc + |x|`.
#[inline(always)]
fn term<const SQ: bool>(acc: float64x2_t, x: float64x2_t) -> float64x2_t {
    // SAFETY: NEON is baseline on aarch64.
    unsafe {
        if SQ {
            vfmaq_f64(acc, x, x)
        } else {
            vaddq_f64(acc, vabsq_f64(x))
        }
    }
}

/// Adds the four f32 of `x`, widened, to lanes `acc[i]` (low two) and `acc[i + 1]` (high two).
#[inline(always)]
fn accum_f32x4<const SQ: bool>(acc: &mut [float64x2_t; 16], i: usize, x: float32x4_t) {
    // SAFETY: NEON is baseline on aarch64.
    unsafe {
        acc[i] = term::<SQ>(acc[i], vcvt_f64_f32(vget_low_f32(x)));
        acc[i + 1] = term::<SQ>(acc[i + 1], vcvt_high_f64_f32(x));
    }
}

/// |x| of four f16 (given as u32 words holding the bits), as f32: the magnitude shifted into an
/// f32 and multiplied by 2^112 (exact, subnormals included); inf/NaN rebuilt with their payload.
#[inline(always)]
fn f16_magnitude_x4(h: uint32x4_t) -> float32x4_t {
    // SAFETY: NEON is baseline on aarch64.
    unsafe {
        let abs = vandq_u32(h, vdupq_n_u32(0x7FFF));
        let shifted = vshlq_n_u32::<13>(abs);
        let finite = vmulq_f32(
            vreinterpretq_f32_u32(shifted),
            vdupq_n_f32(f32::from_bits((127 + 112) << 23)),
        );
        let special = vorrq_u32(
            vdupq_n_u32(0x7F80_0000),
            vandq_u32(shifted, vdupq_n_u32(0x03FF << 13)),
        );
        let is_special = vcgeq_u32(abs, vdupq_n_u32(0x7C00));
        vbslq_f32(is_special, vreinterpretq_f32_u32(special), finite)
    }
}

// SAFETY: per lane the same IEEE operations as the portable backend (exact widening, a fused
// exact square plus one rounded add or a rounded add of |x|, the same compare-and-select fold),
// with acc[k] lane i holding virtual lane 2k + i fed by the element the portable backend assigns.
unsafe impl Backend for Neon {
    type V = float64x2_t;
    type Acc = [float64x2_t; 16];

    #[inline(always)]
    fn zero(self) -> Self::Acc {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { [vdupq_n_f64(0.0); 16] }
    }

    #[inline(always)]
    fn accum_f32<const SQ: bool>(self, mut acc: Self::Acc, g: &[f32; LANES]) -> Self::Acc {
        for k in 0..8 {
            // SAFETY: 4 floats at 4k stay inside `g`.
            let x = unsafe { vld1q_f32(g.as_ptr().add(4 * k)) };
            accum_f32x4::<SQ>(&mut acc, 2 * k, x);
        }
        acc
    }

    #[inline(always)]
    fn accum_f16<const SQ: bool>(self, mut acc: Self::Acc, g: &[f16; LANES]) -> Self::Acc {
        let p = g.as_ptr() as *const u16;
        for q in 0..4 {
            // SAFETY: 8 halves at 8q stay inside `g`; NEON is baseline.
            unsafe {
                let h = vld1q_u16(p.add(8 * q));
                let lo = f16_magnitude_x4(vmovl_u16(vget_low_u16(h)));
                let hi = f16_magnitude_x4(vmovl_high_u16(h));
                accum_f32x4::<SQ>(&mut acc, 4 * q, lo);
                accum_f32x4::<SQ>(&mut acc, 4 * q + 2, hi);
            }
        }
        acc
    }

    #[inline(always)]
    fn accum_bf16<const SQ: bool>(self, mut acc: Self::Acc, g: &[bf16; LANES]) -> Self::Acc {
        let p = g.as_ptr() as *const u32;
        for h in 0..2 {
            // SAFETY: 2 × 4 words (16 bf16) at 8h words stay inside `g`; NEON is baseline.
            unsafe {
                let a = vld1q_u32(p.add(8 * h));
                let b = vld1q_u32(p.add(8 * h + 4));
                let high = vdupq_n_u32(0xFFFF_0000);
                // Lanes 0..8 of the half: even elements of words a then b; lanes 8..16: odd ones.
                let base = 8 * h;
                accum_f32x4::<SQ>(&mut acc, base, vreinterpretq_f32_u32(vshlq_n_u32::<16>(a)));
                accum_f32x4::<SQ>(
                    &mut acc,
                    base + 2,
                    vreinterpretq_f32_u32(vshlq_n_u32::<16>(b)),
                );
                accum_f32x4::<SQ>(
                    &mut acc,
                    base + 4,
                    vreinterpretq_f32_u32(vandq_u32(a, high)),
                );
                accum_f32x4::<SQ>(
                    &mut acc,
                    base + 6,
                    vreinterpretq_f32_u32(vandq_u32(b, high)),
                );
            }
        }
        acc
    }

    #[inline(always)]
    fn add(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vaddq_f64(a, b) }
    }

    #[inline(always)]
    fn sub(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vsubq_f64(a, b) }
    }

    #[inline(always)]
    fn max(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // Compare-and-select, exactly the portable `if a >= b { a } else { b }`.
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vbslq_f64(vcgeq_f64(a, b), a, b) }
    }

    #[inline(always)]
    fn min(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vbslq_f64(vcgeq_f64(a, b), b, a) }
    }

    #[inline(always)]
    fn to_array(self, a: Self::Acc) -> [f64; LANES] {
        let mut out = [0.0f64; LANES];
        for (k, v) in a.iter().enumerate() {
            // SAFETY: 2 doubles at 2k stay inside `out`.
            unsafe { vst1q_f64(out.as_mut_ptr().add(2 * k), *v) };
        }
        out
    }
}

macro_rules! neon_sums {
    ($( $name:ident : $t:ty, $sq:literal ;)*) => {$(
        fn $name(d: &[$t]) -> (f64, f64) {
            generic::sum_chunk::<Neon, $t, $sq>(Neon(()), d)
        }
    )*};
}

neon_sums! {
    sum_sq_f32: f32, true;
    sum_sq_f16: f16, true;
    sum_sq_bf16: bf16, true;
    sum_abs_f32: f32, false;
    sum_abs_f16: f16, false;
    sum_abs_bf16: bf16, false;
}

pub(crate) static NEON_KERNELS: Kernels = Kernels {
    isa: Isa::Neon,
    sum_sq: (sum_sq_f32, sum_sq_f16, sum_sq_bf16),
    sum_abs: (sum_abs_f32, sum_abs_f16, sum_abs_bf16),
    max_abs: (
        portable::max_abs_f32,
        portable::max_abs_f16,
        portable::max_abs_bf16,
    ),
    scale: (
        portable::scale_f32,
        portable::scale_f16,
        portable::scale_bf16,
    ),
};
