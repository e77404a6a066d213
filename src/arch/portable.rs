//! The portable backend: plain arrays of 32 f64 lanes and one-lane 32-bit registers. Always
//! compiled, the reference the SIMD backends must match bit for bit.

use half::{bf16, f16};

use super::generic::{bf16_lane_source, Backend, LANES};
use super::Kernels;
use crate::dtype::Element;
use crate::isa::Isa;
use crate::lanes;

/// The portable backend is plain scalar arithmetic; its token needs no CPU feature.
pub(super) use crate::lanes::Scalar as Portable;

static KERNELS: Kernels = super::kernel_table!(Portable, Isa::Portable, [], token = Portable);

/// The portable kernels (every CPU runs them).
pub(super) fn kernels() -> &'static Kernels {
    &KERNELS
}

#[inline(always)]
fn term<const SQ: bool>(x: f32) -> f64 {
    let x = x as f64;
    if SQ {
        x * x
    } else {
        x.abs()
    }
}

impl Backend for Portable {
    type Acc = [f64; LANES];
    const W: usize = 1;

    #[inline(always)]
    fn zero(self) -> Self::Acc {
        [0.0; LANES]
    }

    #[inline(always)]
    fn accum_f32<const SQ: bool>(self, mut acc: Self::Acc, g: &[f32; LANES]) -> Self::Acc {
        for j in 0..LANES {
            acc[j] += term::<SQ>(g[j]);
        }
        acc
    }

    #[inline(always)]
    fn accum_f16<const SQ: bool>(self, mut acc: Self::Acc, g: &[f16; LANES]) -> Self::Acc {
        for j in 0..LANES {
            acc[j] += term::<SQ>(Element::to_f32(g[j]));
        }
        acc
    }

    #[inline(always)]
    fn accum_bf16<const SQ: bool>(self, mut acc: Self::Acc, g: &[bf16; LANES]) -> Self::Acc {
        for j in 0..LANES {
            acc[j] += term::<SQ>(Element::to_f32(g[bf16_lane_source(j)]));
        }
        acc
    }

    #[inline(always)]
    fn to_array(self, a: Self::Acc) -> [f64; LANES] {
        a
    }

    #[inline(always)]
    fn load_f32(self, s: &[f32]) -> f32 {
        s[0]
    }
    #[inline(always)]
    fn store_f32(self, v: f32, s: &mut [f32]) {
        s[0] = v;
    }
    #[inline(always)]
    fn load_bf16_words(self, s: &[bf16]) -> u32 {
        s[0].to_bits() as u32 | (s[1].to_bits() as u32) << 16
    }
    #[inline(always)]
    fn store_bf16_words(self, v: u32, s: &mut [bf16]) {
        s[0] = bf16::from_bits(v as u16);
        s[1] = bf16::from_bits((v >> 16) as u16);
    }
    #[inline(always)]
    fn load_f16(self, s: &[f16]) -> f32 {
        lanes::f16_to_f32(self, s[0].to_bits() as u32)
    }
    #[inline(always)]
    fn store_f16(self, v: f32, s: &mut [f16]) {
        s[0] = f16::from_bits(lanes::f32_to_f16(self, v) as u16);
    }
}
