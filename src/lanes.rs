//! Lane-wise 32-bit operations ([`Lanes32`]) and the bit logic written once over them: the
//! round-to-nearest-even narrowing f32 → bf16 and f32 → f16, and the exact widening f16 → f32.
//!
//! The scalar instantiation ([`Scalar`], one lane) is what [`crate::dtype`]'s conversions
//! are; the SIMD backends in [`crate::arch`] instantiate the same functions on their registers
//! (or use a hardware conversion that gives the same bits, such as x86 F16C, where the tests
//! check it against this logic on every 16-bit pattern).

/// Lane-wise operations on one register of 32-bit lanes, seen as `u32` ([`Lanes32::U`]) or as
/// `f32` ([`Lanes32::F`]). Every method is the plain lane-by-lane operation (integer ones
/// wrapping, float ones correctly rounded IEEE).
pub(crate) trait Lanes32: Copy {
    /// A register of u32 lanes.
    type U: Copy;
    /// The same lanes as f32.
    type F: Copy;
    /// A lane mask, as the compares produce it.
    type M: Copy;
    /// Every lane `x`.
    fn splat(self, x: u32) -> Self::U;
    /// Every lane `x`.
    fn splat_f(self, x: f32) -> Self::F;
    /// `a & b`.
    fn and(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a | b`.
    fn or(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a + b`, wrapping.
    fn add(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a - b`, wrapping.
    fn sub(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a << N`.
    fn shl<const N: u32>(self, a: Self::U) -> Self::U;
    /// `a >> N` (logical).
    fn shr<const N: u32>(self, a: Self::U) -> Self::U;
    /// `a > b` for lanes below 2^31 (so signed and unsigned compares agree).
    fn gt(self, a: Self::U, b: Self::U) -> Self::M;
    /// `m ? a : b`, lane by lane.
    fn select(self, m: Self::M, a: Self::U, b: Self::U) -> Self::U;
    /// The bits of `x`.
    fn to_bits(self, x: Self::F) -> Self::U;
    /// The f32 with bits `u`.
    fn bits_to_f(self, u: Self::U) -> Self::F;
    /// `a * b`, correctly rounded.
    fn mul_f(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a + b`, correctly rounded.
    fn add_f(self, a: Self::F, b: Self::F) -> Self::F;
}

/// Plain scalar arithmetic: one 32-bit lane here, one f64 lane for
/// [`crate::compensated::F64Ops`], and the portable backend of [`crate::arch`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

impl Lanes32 for Scalar {
    type U = u32;
    type F = f32;
    type M = bool;
    #[inline(always)]
    fn splat(self, x: u32) -> u32 {
        x
    }
    #[inline(always)]
    fn splat_f(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn and(self, a: u32, b: u32) -> u32 {
        a & b
    }
    #[inline(always)]
    fn or(self, a: u32, b: u32) -> u32 {
        a | b
    }
    #[inline(always)]
    fn add(self, a: u32, b: u32) -> u32 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn sub(self, a: u32, b: u32) -> u32 {
        a.wrapping_sub(b)
    }
    #[inline(always)]
    fn shl<const N: u32>(self, a: u32) -> u32 {
        a << N
    }
    #[inline(always)]
    fn shr<const N: u32>(self, a: u32) -> u32 {
        a >> N
    }
    #[inline(always)]
    fn gt(self, a: u32, b: u32) -> bool {
        a > b
    }
    #[inline(always)]
    fn select(self, m: bool, a: u32, b: u32) -> u32 {
        if m {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn to_bits(self, x: f32) -> u32 {
        x.to_bits()
    }
    #[inline(always)]
    fn bits_to_f(self, u: u32) -> f32 {
        f32::from_bits(u)
    }
    #[inline(always)]
    fn mul_f(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn add_f(self, a: f32, b: f32) -> f32 {
        a + b
    }
}

/// f32 bits → bfloat16 with round-to-nearest-even, the result in the **upper** 16 bits of each
/// lane (the lower 16 bits are garbage). A NaN keeps its top payload bits and is quieted;
/// overflow rounds to ±inf. The carry trick: adding `0x7FFF + lsb` to the bits rounds the
/// dropped half to nearest, ties to the even result, and a carry may roll into the exponent
/// (up to inf), which is correct.
#[inline(always)]
pub(crate) fn f32_to_bf16_high<L: Lanes32>(l: L, u: L::U) -> L::U {
    let abs = l.and(u, l.splat(0x7FFF_FFFF));
    let is_nan = l.gt(abs, l.splat(0x7F80_0000));
    let lsb = l.and(l.shr::<16>(u), l.splat(1));
    let rounded = l.add(l.add(u, l.splat(0x7FFF)), lsb);
    let quiet = l.or(u, l.splat(0x0040_0000));
    l.select(is_nan, quiet, rounded)
}

/// Exact binary16 → binary32 widening; `h` holds the f16 bits in the low 16 bits of each lane
/// (upper bits zero).
///
/// The magnitude bits shifted up by 13 are an f32 whose exponent is 112 too small; multiplying
/// by 2^112 fixes the exponent of normal numbers and, exactly, renormalises subnormals (an f16
/// subnormal becomes an f32 subnormal first). Inf and NaN (exponent field 31) are rebuilt with
/// the f32 all-ones exponent and the payload kept. Requires the default floating-point
/// environment (no flush-to-zero), as all of Rust does.
#[inline(always)]
pub(crate) fn f16_to_f32<L: Lanes32>(l: L, h: L::U) -> L::F {
    let sign = l.shl::<16>(l.and(h, l.splat(0x8000)));
    let abs = l.and(h, l.splat(0x7FFF));
    let shifted = l.shl::<13>(abs);
    let finite = l.to_bits(l.mul_f(
        l.bits_to_f(shifted),
        l.splat_f(f32::from_bits((127 + 112) << 23)),
    ));
    let special = l.or(l.splat(0x7F80_0000), l.and(shifted, l.splat(0x03FF << 13)));
    let is_special = l.gt(abs, l.splat(0x7BFF));
    l.bits_to_f(l.or(l.select(is_special, special, finite), sign))
}

/// binary32 → binary16 with round-to-nearest-even, the f16 bits in the low 16 bits of each lane
/// (upper bits zero): bit for bit what x86 F16C `vcvtps2ph` (rounding "nearest") produces, NaN
/// payloads included (a NaN keeps the top ten bits of its payload and gets the quiet bit).
///
/// Every case is computed and one is selected (no data-dependent branch):
/// - normal results: rebias the exponent and round the 13 dropped bits to nearest-even with
///   the `+ 0xFFF + lsb` carry trick (a carry may roll into the exponent, up to inf: correct);
/// - subnormal results (|x| < 2^-14): adding 0.5 (2^-1) in f32 leaves the 2^-24-unit integer
///   in the low significand bits, rounded to nearest-even by the hardware add itself;
/// - overflow (|x| ≥ 65520 after rounding) → ±inf; inf/NaN as F16C.
#[inline(always)]
pub(crate) fn f32_to_f16<L: Lanes32>(l: L, x: L::F) -> L::U {
    let u = l.to_bits(x);
    let sign = l.and(l.shr::<16>(u), l.splat(0x8000));
    let a = l.and(u, l.splat(0x7FFF_FFFF));
    // Normal f16 range; for smaller `a` this value is unused (and may wrap).
    let rebased = l.sub(a, l.splat(0x3800_0000)); // exponent 127 -> 15
    let lsb = l.and(l.shr::<13>(rebased), l.splat(1));
    let normal = l.shr::<13>(l.add(rebased, l.add(l.splat(0x0FFF), lsb)));
    // Subnormal range: f32 addition of 0.5 aligns units of 2^-24 to the last significand bit.
    let half = l.splat(0x3F00_0000); // 0.5 = 2^-1; its ulp is 2^-24
    let sub = l.sub(l.to_bits(l.add_f(l.bits_to_f(a), l.bits_to_f(half))), half);
    let nan = l.or(l.splat(0x7E00), l.and(l.shr::<13>(a), l.splat(0x03FF)));
    let big = l.select(l.gt(a, l.splat(0x477F_FFFF)), l.splat(0x7C00), normal);
    let finite = l.select(l.gt(a, l.splat(0x387F_FFFF)), big, sub);
    let magnitude = l.select(l.gt(a, l.splat(0x7F80_0000)), nan, finite);
    l.or(sign, magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_high_rounds_to_nearest_even() {
        let r = |u: u32| f32_to_bf16_high(Scalar, u) >> 16;
        assert_eq!(r(0x3F80_8000), 0x3F80); // tie, even stays
        assert_eq!(r(0x3F81_8000), 0x3F82); // tie, odd rounds up
        assert_eq!(r(0x3F80_8001), 0x3F81);
        assert_eq!(r(0x7F7F_FFFF), 0x7F80); // overflow to inf
        assert_eq!(r(0xFFA0_0005), 0xFFE0); // signalling NaN quieted, payload kept
    }
}
