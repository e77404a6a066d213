//! The aarch64 backend: NEON (baseline on every aarch64 Linux target; detection still goes
//! through the token, like every backend).
//!
//! The same 32 virtual f64 lanes as every backend, in sixteen `float64x2_t`; four-lane 32-bit
//! registers for the scale. f16 is widened and narrowed with the bit logic of [`crate::lanes`]
//! on NEON registers, bf16 with the even/odd word split of [`super::generic::bf16_lane_source`].

mod exact_neon;

use std::arch::aarch64::*;

use half::{bf16, f16};

use super::generic::{Backend, LANES};
use super::{kernel_table, Kernels};
use crate::compensated::F64Ops;
use crate::isa::Isa;
use crate::lanes::{self, Lanes32};

/// Proof that the CPU supports NEON.
#[derive(Clone, Copy, Debug)]
pub(super) struct Neon(());

static NEON_KERNELS: Kernels = kernel_table!(
    Neon,
    Isa::Neon,
    [#[target_feature(enable = "neon")]],
    token = Neon(())
);

impl Neon {
    /// A token if this CPU supports NEON (always, on aarch64 Linux).
    pub(super) fn detect() -> Option<Self> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Neon(()))
    }

    /// The NEON kernels.
    pub(super) fn kernels(self) -> &'static Kernels {
        &NEON_KERNELS
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

impl F64Ops for Neon {
    type V = float64x2_t;
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
}

impl Lanes32 for Neon {
    type U = uint32x4_t;
    type F = float32x4_t;
    type M = uint32x4_t;
    #[inline(always)]
    fn splat(self, x: u32) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vdupq_n_u32(x) }
    }
    #[inline(always)]
    fn splat_f(self, x: f32) -> float32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    fn and(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vandq_u32(a, b) }
    }
    #[inline(always)]
    fn or(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vorrq_u32(a, b) }
    }
    #[inline(always)]
    fn add(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vaddq_u32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vsubq_u32(a, b) }
    }
    #[inline(always)]
    fn shl<const N: u32>(self, a: uint32x4_t) -> uint32x4_t {
        // Immediate forms for the counts the crate uses (a const generic cannot be converted to
        // the intrinsics' `i32` parameter); the register form for any other count.
        // SAFETY: NEON is baseline on aarch64.
        unsafe {
            match N {
                13 => vshlq_n_u32::<13>(a),
                16 => vshlq_n_u32::<16>(a),
                _ => vshlq_u32(a, vdupq_n_s32(N as i32)),
            }
        }
    }
    #[inline(always)]
    fn shr<const N: u32>(self, a: uint32x4_t) -> uint32x4_t {
        // As `shl`; a negative register count shifts right (logical for u32).
        // SAFETY: NEON is baseline on aarch64.
        unsafe {
            match N {
                13 => vshrq_n_u32::<13>(a),
                16 => vshrq_n_u32::<16>(a),
                _ => vshlq_u32(a, vdupq_n_s32(-(N as i32))),
            }
        }
    }
    #[inline(always)]
    fn gt(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vcgtq_u32(a, b) }
    }
    #[inline(always)]
    fn select(self, m: uint32x4_t, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vbslq_u32(m, a, b) }
    }
    #[inline(always)]
    fn to_bits(self, x: float32x4_t) -> uint32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vreinterpretq_u32_f32(x) }
    }
    #[inline(always)]
    fn bits_to_f(self, u: uint32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vreinterpretq_f32_u32(u) }
    }
    #[inline(always)]
    fn mul_f(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    fn add_f(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { vaddq_f32(a, b) }
    }
}

impl Backend for Neon {
    type Acc = [float64x2_t; 16];
    const W: usize = 4;

    #[inline(always)]
    fn zero(self) -> Self::Acc {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { [vdupq_n_f64(0.0); 16] }
    }

    #[inline(always)]
    fn accum_f32<const SQ: bool>(self, mut acc: Self::Acc, g: &[f32; LANES]) -> Self::Acc {
        for k in 0..8 {
            let x = self.load_f32(&g[4 * k..]);
            accum_f32x4::<SQ>(&mut acc, 2 * k, x);
        }
        acc
    }

    #[inline(always)]
    fn accum_f16<const SQ: bool>(self, mut acc: Self::Acc, g: &[f16; LANES]) -> Self::Acc {
        for q in 0..8 {
            let x = self.load_f16(&g[4 * q..]);
            accum_f32x4::<SQ>(&mut acc, 2 * q, x);
        }
        acc
    }

    #[inline(always)]
    fn accum_bf16<const SQ: bool>(self, mut acc: Self::Acc, g: &[bf16; LANES]) -> Self::Acc {
        for h in 0..2 {
            let a = self.load_bf16_words(&g[16 * h..]);
            let b = self.load_bf16_words(&g[16 * h + 8..]);
            let high = self.splat(0xFFFF_0000);
            // Lanes 0..8 of the half: even elements of words a then b; lanes 8..16: odd ones.
            let base = 8 * h;
            accum_f32x4::<SQ>(&mut acc, base, self.bits_to_f(self.shl::<16>(a)));
            accum_f32x4::<SQ>(&mut acc, base + 2, self.bits_to_f(self.shl::<16>(b)));
            accum_f32x4::<SQ>(&mut acc, base + 4, self.bits_to_f(self.and(a, high)));
            accum_f32x4::<SQ>(&mut acc, base + 6, self.bits_to_f(self.and(b, high)));
        }
        acc
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

    #[inline(always)]
    fn load_f32(self, s: &[f32]) -> float32x4_t {
        assert!(s.len() >= 4);
        // SAFETY: NEON is baseline; 16 bytes are in bounds (checked), byte-aligned load.
        unsafe { vreinterpretq_f32_u8(vld1q_u8(s.as_ptr() as *const u8)) }
    }
    #[inline(always)]
    fn store_f32(self, v: float32x4_t, s: &mut [f32]) {
        assert!(s.len() >= 4);
        // SAFETY: NEON is baseline; 16 bytes are in bounds (checked), byte-aligned store.
        unsafe { vst1q_u8(s.as_mut_ptr() as *mut u8, vreinterpretq_u8_f32(v)) }
    }
    #[inline(always)]
    fn load_bf16_words(self, s: &[bf16]) -> uint32x4_t {
        assert!(s.len() >= 8);
        // SAFETY: NEON is baseline; 16 bytes are in bounds (checked), byte-aligned load.
        unsafe { vreinterpretq_u32_u8(vld1q_u8(s.as_ptr() as *const u8)) }
    }
    #[inline(always)]
    fn store_bf16_words(self, v: uint32x4_t, s: &mut [bf16]) {
        assert!(s.len() >= 8);
        // SAFETY: NEON is baseline; 16 bytes are in bounds (checked), byte-aligned store.
        unsafe { vst1q_u8(s.as_mut_ptr() as *mut u8, vreinterpretq_u8_u32(v)) }
    }
    #[inline(always)]
    fn load_f16(self, s: &[f16]) -> float32x4_t {
        assert!(s.len() >= 4);
        // SAFETY: NEON is baseline; 8 bytes are in bounds (checked), byte-aligned load.
        let h = unsafe { vmovl_u16(vreinterpret_u16_u8(vld1_u8(s.as_ptr() as *const u8))) };
        lanes::f16_to_f32(self, h)
    }
    #[inline(always)]
    fn store_f16(self, v: float32x4_t, s: &mut [f16]) {
        assert!(s.len() >= 4);
        let h = lanes::f32_to_f16(self, v);
        // SAFETY: NEON is baseline; 8 bytes are in bounds (checked), byte-aligned store.
        unsafe { vst1_u8(s.as_mut_ptr() as *mut u8, vreinterpret_u8_u16(vmovn_u32(h))) }
    }
}
