//! The portable backend: plain arrays of 32 f64 lanes. Always compiled, the reference the SIMD
//! backends must match bit for bit.

use half::{bf16, f16};

use super::generic::{self, Backend, LANES};
use crate::dtype::Element;

/// Token for the portable backend (no CPU feature required).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

#[inline(always)]
fn term<const SQ: bool>(x: f32) -> f64 {
    let x = x as f64;
    if SQ {
        x * x
    } else {
        x.abs()
    }
}

// SAFETY: this is the reference implementation the contract is defined by.
unsafe impl Backend for Portable {
    type V = f64;
    type Acc = [f64; LANES];

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
            acc[j] += term::<SQ>(Element::to_f32(g[generic::bf16_lane_source(j)]));
        }
        acc
    }

    #[inline(always)]
    fn add(self, a: f64, b: f64) -> f64 {
        a + b
    }

    #[inline(always)]
    fn sub(self, a: f64, b: f64) -> f64 {
        a - b
    }

    #[inline(always)]
    fn max(self, a: f64, b: f64) -> f64 {
        if a >= b {
            a
        } else {
            b
        }
    }

    #[inline(always)]
    fn min(self, a: f64, b: f64) -> f64 {
        if a >= b {
            b
        } else {
            a
        }
    }

    #[inline(always)]
    fn to_array(self, a: Self::Acc) -> [f64; LANES] {
        a
    }
}

pub(crate) fn sum_sq_f32(d: &[f32]) -> (f64, f64) {
    generic::sum_chunk::<Portable, f32, true>(Portable, d)
}
pub(crate) fn sum_sq_f16(d: &[f16]) -> (f64, f64) {
    generic::sum_chunk::<Portable, f16, true>(Portable, d)
}
pub(crate) fn sum_sq_bf16(d: &[bf16]) -> (f64, f64) {
    generic::sum_chunk::<Portable, bf16, true>(Portable, d)
}
pub(crate) fn sum_abs_f32(d: &[f32]) -> (f64, f64) {
    generic::sum_chunk::<Portable, f32, false>(Portable, d)
}
pub(crate) fn sum_abs_f16(d: &[f16]) -> (f64, f64) {
    generic::sum_chunk::<Portable, f16, false>(Portable, d)
}
pub(crate) fn sum_abs_bf16(d: &[bf16]) -> (f64, f64) {
    generic::sum_chunk::<Portable, bf16, false>(Portable, d)
}
pub(crate) fn max_abs_f32(d: &[f32]) -> u32 {
    generic::max_abs_bits(d)
}
pub(crate) fn max_abs_f16(d: &[f16]) -> u32 {
    generic::max_abs_bits(d)
}
pub(crate) fn max_abs_bf16(d: &[bf16]) -> u32 {
    generic::max_abs_bits(d)
}
pub(crate) fn scale_f32(d: &mut [f32], c: f32) {
    generic::scale_scalar(d, c)
}
pub(crate) fn scale_f16(d: &mut [f16], c: f32) {
    generic::scale_scalar(d, c)
}
pub(crate) fn scale_bf16(d: &mut [bf16], c: f32) {
    generic::scale_scalar(d, c)
}
