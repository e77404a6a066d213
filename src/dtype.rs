//! The element types gradclip works on: `f32`, [`half::f16`] and [`half::bf16`].
//!
//! [`Element`] is sealed: the kernels rely on facts that hold for exactly these three formats
//! (at most 24 significand bits, so a square is exact in f64; IEEE bit layouts, so `|x|` is
//! `bits & ABS_MASK` and "non-finite" is `abs_bits >= INF_BITS`).

use half::{bf16, f16};

use crate::lanes::{self, Scalar};

/// The storage format of a gradient buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the upper half of a binary32).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub const fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// `v` rounded once, to nearest with ties to even, to this dtype and widened back to f64
    /// (exactly): what a scalar of this dtype holds for the f64 value `v`, e.g. a norm returned
    /// as a 0-dim tensor. NaN stays NaN, values beyond the range become ±inf.
    ///
    /// One rounding, not two: going through f32 with round-to-nearest first could create a false
    /// tie (f64 → f32 → bf16 differs from f64 → bf16 near halfway points), so the f32 step rounds
    /// to odd, which keeps the sticky information the second rounding needs.
    ///
    /// ```
    /// use gradclip::DType;
    /// // 1 + 2^-8 + 2^-40 is just above the halfway point between two bf16 neighbours.
    /// let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    /// assert_eq!(DType::BF16.round_f64(v), 1.0 + 2f64.powi(-7));
    /// assert_eq!(DType::BF16.round_f64(1.0 + 2f64.powi(-8)), 1.0); // a true tie: to even
    /// assert_eq!(DType::F16.round_f64(1e6), f64::INFINITY);
    /// ```
    pub fn round_f64(self, v: f64) -> f64 {
        match self {
            DType::F32 => v as f32 as f64,
            DType::F16 => f16_bits_to_f32(f32_to_f16_bits_rne(f64_to_f32_round_to_odd(v))) as f64,
            DType::BF16 => {
                f32::from_bits((f32_to_bf16_bits_rne(f64_to_f32_round_to_odd(v)) as u32) << 16)
                    as f64
            }
        }
    }

    /// Lower-case name: `f32`, `f16`, `bf16`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A gradient element type: `f32`, `f16` or `bf16`. Sealed.
pub trait Element:
    sealed::Sealed + Copy + Default + PartialEq + bytemuck::Pod + Send + Sync + 'static
{
    /// The dtype tag of this type.
    const DTYPE: DType;
    /// Bit pattern of `+inf`; `abs_bits() >= INF_BITS` means NaN or ±inf.
    const INF_BITS: u32;
    /// The value zero.
    const ZERO: Self;

    /// Exact widening to f32.
    fn to_f32(self) -> f32;
    /// Round-to-nearest-even narrowing from f32 (NaN stays NaN, quieted; overflow gives ±inf).
    fn from_f32_rne(x: f32) -> Self;
    /// The bits of `|self|`, zero-extended to u32. Ordered like the magnitudes; NaN above inf.
    fn abs_bits(self) -> u32;
    /// Builds a value from `abs_bits`-style bits (sign clear).
    fn from_abs_bits(bits: u32) -> Self;

    /// True for NaN and ±inf.
    #[inline(always)]
    fn is_nonfinite(self) -> bool {
        self.abs_bits() >= Self::INF_BITS
    }

    /// True for NaN.
    #[inline(always)]
    fn is_nan_value(self) -> bool {
        self.abs_bits() > Self::INF_BITS
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    const INF_BITS: u32 = 0x7F80_0000;
    const ZERO: Self = 0.0;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32_rne(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn abs_bits(self) -> u32 {
        self.to_bits() & 0x7FFF_FFFF
    }
    #[inline(always)]
    fn from_abs_bits(bits: u32) -> Self {
        f32::from_bits(bits)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    const INF_BITS: u32 = 0x7C00;
    const ZERO: Self = f16::ZERO;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16_bits_to_f32(self.to_bits())
    }
    #[inline(always)]
    fn from_f32_rne(x: f32) -> Self {
        f16::from_bits(f32_to_f16_bits_rne(x))
    }
    #[inline(always)]
    fn abs_bits(self) -> u32 {
        (self.to_bits() & 0x7FFF) as u32
    }
    #[inline(always)]
    fn from_abs_bits(bits: u32) -> Self {
        f16::from_bits(bits as u16)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    const INF_BITS: u32 = 0x7F80;
    const ZERO: Self = bf16::ZERO;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32_rne(x: f32) -> Self {
        bf16::from_bits(f32_to_bf16_bits_rne(x))
    }
    #[inline(always)]
    fn abs_bits(self) -> u32 {
        (self.to_bits() & 0x7FFF) as u32
    }
    #[inline(always)]
    fn from_abs_bits(bits: u32) -> Self {
        bf16::from_bits(bits as u16)
    }
}

/// The NaN bits gradclip writes when a product's NaN would otherwise depend on the instruction
/// set (see `clip.rs`): an element that is NaN stays that NaN with the quiet bit set (payload and
/// sign kept); a NaN made by the arithmetic is the canonical quiet NaN, sign clear.
pub(crate) trait NanBits: Element {
    /// The canonical quiet NaN: f32 `0x7FC00000`, f16 `0x7E00`, bf16 `0x7FC0`.
    const CANONICAL_NAN: Self;
    /// `self` with the quiet bit set (meaningful for a NaN).
    fn quieted(self) -> Self;
}

impl NanBits for f32 {
    const CANONICAL_NAN: Self = f32::from_bits(0x7FC0_0000);
    #[inline(always)]
    fn quieted(self) -> Self {
        f32::from_bits(self.to_bits() | 0x0040_0000)
    }
}

impl NanBits for f16 {
    const CANONICAL_NAN: Self = f16::from_bits(0x7E00);
    #[inline(always)]
    fn quieted(self) -> Self {
        f16::from_bits(self.to_bits() | 0x0200)
    }
}

impl NanBits for bf16 {
    const CANONICAL_NAN: Self = bf16::from_bits(0x7FC0);
    #[inline(always)]
    fn quieted(self) -> Self {
        bf16::from_bits(self.to_bits() | 0x0040)
    }
}

/// Exact binary16 → binary32 widening, branch-free bit logic (no table, no CPU feature), so loops
/// over it vectorise: the lane-generic widening of the crate's `lanes` module, on one lane (the logic is explained there).
/// Requires the default floating-point environment (no flush-to-zero), as all of Rust does.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    lanes::f16_to_f32(Scalar, h as u32)
}

/// binary32 → binary16 with round-to-nearest-even, bit for bit what x86 F16C `vcvtps2ph`
/// (rounding mode "nearest") produces, NaN payloads included: a NaN keeps the top ten bits of its
/// payload and gets the quiet bit set. Branch-free: the lane-generic narrowing of the crate's `lanes` module, on one lane.
#[inline(always)]
pub fn f32_to_f16_bits_rne(x: f32) -> u16 {
    lanes::f32_to_f16(Scalar, x) as u16
}

/// binary32 → bfloat16 with round-to-nearest-even; a NaN keeps its top payload bits and is
/// quieted; overflow gives ±inf. The lane-generic narrowing of the crate's `lanes` module, on one lane.
#[inline(always)]
pub fn f32_to_bf16_bits_rne(x: f32) -> u16 {
    (lanes::f32_to_bf16_high(Scalar, x.to_bits()) >> 16) as u16
}

/// f64 → f32 rounding to odd: the truncation toward zero, with its last bit forced to 1 when
/// the conversion was inexact. A later round-to-nearest into a format at least two bits shorter
/// (f16, bf16) then gives the correctly rounded result of the original f64.
fn f64_to_f32_round_to_odd(v: f64) -> f32 {
    let r = v as f32;
    if v.is_nan() || r as f64 == v {
        return r;
    }
    // `r` is the nearest f32 (possibly ±inf); step back toward zero if it rounded away. `r` is
    // not zero there (|r| > |v| >= 0), so decrementing its magnitude bits is the next f32 down.
    let truncated = if (r as f64).abs() > v.abs() {
        f32::from_bits(r.to_bits() - 1)
    } else {
        r
    };
    f32::from_bits(truncated.to_bits() | 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest (ties to even) among a value's neighbours in `dtype`, found by comparing exact
    /// distances: independent of any conversion routine.
    fn nearest_by_distance(dtype: DType, v: f64) -> f64 {
        let widen = |b: u16| match dtype {
            DType::F16 => f16::from_bits(b).to_f64(),
            _ => bf16::from_bits(b).to_f64(),
        };
        // A start within a few ulps: truncate through half's f32 path, then scan neighbours.
        let start = match dtype {
            DType::F16 => f16::from_f32(v as f32).to_bits(),
            _ => bf16::from_f32(v as f32).to_bits(),
        };
        let sign = start & 0x8000;
        let mag = start & 0x7FFF;
        let inf = if dtype == DType::F16 { 0x7C00 } else { 0x7F80 };
        let mut best: Option<(f64, u16)> = None;
        for m in mag.saturating_sub(3)..=(mag + 3).min(inf) {
            let c = widen(sign | m);
            let d = if c.is_infinite() {
                // inf is the rounding of everything at or past the halfway point above MAX
                let max = widen(sign | (inf - 1));
                let half_ulp = (max - widen(sign | (inf - 2))).abs() / 2.0;
                if (v.abs() - max.abs()) >= half_ulp {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (v - c).abs()
            };
            let better = match best {
                None => true,
                Some((bd, bm)) => d < bd || (d == bd && m % 2 == 0 && bm % 2 == 1),
            };
            if better {
                best = Some((d, m));
            }
        }
        widen(sign | best.unwrap().1)
    }

    #[test]
    fn round_f64_is_one_correct_rounding() {
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = if cfg!(miri) { 200 } else { 200_000 };
        for dtype in [DType::F16, DType::BF16] {
            let (lo, hi) = if dtype == DType::F16 {
                (-26, 17)
            } else {
                (-135, 129)
            };
            for i in 0..n {
                let r = next();
                let e = lo + (r % (hi - lo) as u64) as i32;
                let mut v = (1.0 + (r >> 11) as f64 / (1u64 << 53) as f64) * 2f64.powi(e);
                if i % 2 == 1 {
                    // a halfway point between two neighbours, nudged by a few f64 ulps either way
                    let inf = if dtype == DType::F16 {
                        0x7C00u64
                    } else {
                        0x7F80
                    };
                    let m = (r % (inf - 1)) as u16;
                    let widen = |b: u16| match dtype {
                        DType::F16 => f16::from_bits(b).to_f64(),
                        _ => bf16::from_bits(b).to_f64(),
                    };
                    let mid = (widen(m) + widen(m + 1)) / 2.0;
                    let nudge = (r >> 60) as i64 - 8;
                    v = f64::from_bits((mid.to_bits() as i64 + nudge) as u64);
                }
                for s in [v, -v] {
                    assert_eq!(
                        dtype.round_f64(s).to_bits(),
                        nearest_by_distance(dtype, s).to_bits(),
                        "{dtype:?} {s:e}"
                    );
                }
            }
        }
        assert_eq!(DType::F32.round_f64(0.1), 0.1f32 as f64);
        assert!(DType::BF16.round_f64(f64::NAN).is_nan());
        assert_eq!(DType::BF16.round_f64(1e300), f64::INFINITY);
        assert_eq!(DType::F16.round_f64(65519.9), 65504.0);
        assert_eq!(DType::F16.round_f64(65520.0), f64::INFINITY);
        assert_eq!(DType::BF16.round_f64(1e-300), 0.0);
    }

    #[test]
    fn f16_widening_matches_half_for_every_pattern() {
        for h in 0..=u16::MAX {
            let ours = f16_bits_to_f32(h);
            let theirs = f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn f16_narrowing_matches_half_on_a_dense_sample() {
        // Every 2^32 pattern would take too long in debug builds; a dense odd stride hits every
        // exponent and every rounding situation many times.
        let mut u: u32 = 0;
        loop {
            let x = f32::from_bits(u);
            let ours = f32_to_f16_bits_rne(x);
            let theirs = f16::from_f32(x).to_bits();
            if x.is_nan() {
                assert_eq!(ours & 0x7E00, 0x7E00, "{u:#010x}");
            } else {
                assert_eq!(ours, theirs, "{u:#010x}");
            }
            match u.checked_add(if cfg!(miri) { 0x00FF_FFF1 } else { 4093 }) {
                Some(n) => u = n,
                None => break,
            }
        }
    }

    /// All 2^32 inputs against `half` (about a minute in release): `cargo test --release --lib
    /// -- --ignored exhaustive`.
    #[test]
    #[ignore]
    fn exhaustive_f16_narrowing_matches_half() {
        let bad = (0..=u32::MAX)
            .filter(|&u| {
                let x = f32::from_bits(u);
                let ours = f32_to_f16_bits_rne(x);
                let theirs = f16::from_f32(x).to_bits();
                if x.is_nan() {
                    ours != (theirs | 0x0200)
                } else {
                    ours != theirs
                }
            })
            .count();
        assert_eq!(bad, 0);
    }

    #[test]
    fn f16_narrowing_edge_cases() {
        let cases: &[(f32, u16)] = &[
            (65504.0, 0x7BFF),
            (65519.99, 0x7BFF),
            (65520.0, 0x7C00), // tie at the top rounds to even = inf
            (f32::MAX, 0x7C00),
            (5.960_464_5e-8, 0x0001), // 2^-24, smallest subnormal
            (2.980_232_2e-8, 0x0000), // 2^-25: tie, rounds to even zero
            (2.980_232_5e-8, 0x0001), // just above the tie
            (-0.0, 0x8000),
            (6.103_515_6e-5, 0x0400), // 2^-14, smallest normal
        ];
        for &(x, want) in cases {
            assert_eq!(f32_to_f16_bits_rne(x), want, "{x:e}");
        }
    }

    #[test]
    fn bf16_narrowing_matches_half() {
        let mut u: u32 = 0;
        loop {
            let x = f32::from_bits(u);
            assert_eq!(
                f32_to_bf16_bits_rne(x),
                bf16::from_f32(x).to_bits(),
                "{u:#010x}"
            );
            match u.checked_add(if cfg!(miri) { 0x00FF_FFF1 } else { 4093 }) {
                Some(n) => u = n,
                None => break,
            }
        }
    }
}
