//! The fixed-point long accumulator behind [`ExactPartial`], and the chunk-local form the kernels
//! deposit into.
//!
//! # Representation
//!
//! An exact sum is a non-negative integer multiple of 2^[`LSB_EXP`] = 2^-320 below 2^384, held as
//! eleven little-endian 64-bit limbs (704 bits). Every term the kernels add is a multiple of
//! 2^-298 (the square of the smallest f32 subnormal, 2^-149) and below 2^256 (the square of
//! anything under 2^128), so a sum of fewer than 2^128 terms is exact in this range. A binary
//! integer has one representation: the limbs of a partial are a function of the multiset of
//! terms, not of how they were grouped, which is what makes the bytes of a partial independent of
//! the split.
//!
//! Inside a chunk the kernels add signed 64-bit block sums at arbitrary bit positions. They go
//! into [`ChunkAcc`], a redundant form (signed 64-bit digits of weight 2^(32 i)) that needs no
//! carry propagation per add; it is normalised into limbs once per chunk.

use bytemuck::{Pod, Zeroable};

use crate::norm_type::NormType;

/// Limbs of the long accumulator.
pub(crate) const LIMBS: usize = 11;
/// Exponent of the weight of bit 0 of limb 0.
pub(crate) const LSB_EXP: i32 = -320;
/// Signed 32-bit-weight digits of [`ChunkAcc`]: the 704 bits of the limbs plus two spare digits,
/// so that the top digits can hold the (transient) sign of a chunk's running sum.
const DIGITS: usize = 2 * LIMBS + 2;

/// `kind` byte of an [`ExactPartial`].
pub(crate) const KIND_NONE: u8 = 0;
pub(crate) const KIND_L1: u8 = 1;
pub(crate) const KIND_L2: u8 = 2;
pub(crate) const KIND_INF: u8 = 3;

/// `flags` bits of an [`ExactPartial`].
pub(crate) const FLAG_INF: u8 = 1;
pub(crate) const FLAG_NAN: u8 = 2;
/// The exact value reached 2^384: only possible by merging crafted partials (it takes more than
/// 2^128 squares of f32 values).
pub(crate) const FLAG_OVERFLOW: u8 = 4;
const FLAGS_KNOWN: u8 = FLAG_INF | FLAG_NAN | FLAG_OVERFLOW;

/// The exact partial state of an L1, L2 or Inf norm over part of the data: the exact sum of
/// squares (L2) or of magnitudes (L1) as a fixed-point integer, the largest magnitude seen, the
/// norm kind and NaN/inf flags.
///
/// `#[repr(C)]`, [`Pod`], 96 bytes: send `bytemuck::bytes_of(&partial)` through any collective.
/// Merging is integer addition, so it is exact, associative and commutative, and the bytes of a
/// partial depend only on the multiset of elements that went into it: one buffer or the same
/// numbers cut into 148 tensors, two ranks or three, any merge order, any thread count and any
/// instruction set give the same 96 bytes, hence the same norm.
///
/// [`ExactPartial::EMPTY`] (all bytes zero) is the identity of [`ExactPartial::merge`]. A partial
/// that saw a NaN or an infinity keeps only its flags (sum and maximum are zeroed, so the bytes
/// stay canonical); merging partials of two different norm kinds gives a NaN result.
///
/// ```
/// use gradclip::{exact_partial, ExactPartial, Grad, NormType};
/// let data: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
/// let whole = exact_partial(&[Grad::from(&data)], NormType::L2).unwrap();
/// // Three "ranks" holding shards cut at arbitrary element boundaries.
/// let (a, rest) = data.split_at(123);
/// let (b, c) = rest.split_at(500);
/// let parts = [a, b, c].map(|s| exact_partial(&[Grad::from(s)], NormType::L2).unwrap());
/// let merged = parts.iter().fold(ExactPartial::EMPTY, |acc, p| acc.merge(*p));
/// assert_eq!(bytemuck::bytes_of(&merged), bytemuck::bytes_of(&whole));
/// assert_eq!(merged.finish(), whole.finish());
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ExactPartial {
    /// The exact sum times 2^320, little-endian 64-bit limbs.
    limbs: [u64; LIMBS],
    /// f32 bits of the largest magnitude seen (every supported dtype widens exactly to f32).
    max_bits: u32,
    /// 0 = no kind yet (the identity), 1 = L1, 2 = L2, 3 = Inf.
    kind: u8,
    /// Bit 0: an infinity went in; bit 1: a NaN went in (or kinds were mixed); bit 2: overflow.
    flags: u8,
    /// Always zero.
    reserved: u16,
}

const _: () = assert!(std::mem::size_of::<ExactPartial>() == 96);

impl Default for ExactPartial {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// `a + b` over the 704-bit limbs; the carry out of the top limb.
#[inline]
fn add_limbs(a: &[u64; LIMBS], b: &[u64; LIMBS]) -> ([u64; LIMBS], bool) {
    let mut out = [0u64; LIMBS];
    let mut carry = false;
    for i in 0..LIMBS {
        let (s1, c1) = a[i].overflowing_add(b[i]);
        let (s2, c2) = s1.overflowing_add(carry as u64);
        out[i] = s2;
        carry = c1 | c2;
    }
    (out, carry)
}

/// `2^e` for an exponent inside the normal f64 range.
#[inline]
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// The f64 nearest to `limbs × 2^LSB_EXP`, ties to even. Every value in range is a normal f64
/// (between 2^-320 and 2^384), so there is no subnormal or overflow case.
pub(crate) fn limbs_to_f64(limbs: &[u64; LIMBS]) -> f64 {
    let Some(top) = limbs.iter().rposition(|&l| l != 0) else {
        return 0.0;
    };
    let lz = limbs[top].leading_zeros();
    // Number of significant bits of the integer.
    let bitlen = 64 * top as i32 + 64 - lz as i32;
    // The top 64 bits, most significant bit at bit 63, and whether any bit below them is set.
    let (head, sticky) = match (top, lz) {
        (0, _) => (limbs[0] << lz, false),
        (_, 0) => (limbs[top], limbs[..top].iter().any(|&l| l != 0)),
        _ => {
            let below = limbs[top - 1];
            let head = (limbs[top] << lz) | (below >> (64 - lz));
            let sticky = below << lz != 0 || limbs[..top - 1].iter().any(|&l| l != 0);
            (head, sticky)
        }
    };
    let mut mant = head >> 11;
    let rest = head & 0x7FF;
    let round_up = rest > 0x400 || (rest == 0x400 && (sticky || mant & 1 == 1));
    let mut exp = bitlen - 53 + LSB_EXP;
    if round_up {
        mant += 1;
        if mant == 1 << 53 {
            mant >>= 1;
            exp += 1;
        }
    }
    // mant < 2^53 is exact in f64 and the product by a power of two stays normal: exact.
    mant as f64 * pow2(exp)
}

impl ExactPartial {
    /// The all-zero partial: the identity of [`ExactPartial::merge`] for every norm kind.
    pub const EMPTY: ExactPartial = ExactPartial {
        limbs: [0; LIMBS],
        max_bits: 0,
        kind: KIND_NONE,
        flags: 0,
        reserved: 0,
    };

    pub(crate) fn kind_of(norm_type: NormType) -> Option<u8> {
        match norm_type {
            NormType::L1 => Some(KIND_L1),
            NormType::L2 => Some(KIND_L2),
            NormType::Inf => Some(KIND_INF),
            NormType::P(_) => None,
        }
    }

    /// The empty partial of a kind (a partial of no elements).
    pub(crate) const fn of_kind(kind: u8) -> Self {
        ExactPartial {
            kind,
            ..Self::EMPTY
        }
    }

    /// A finite partial from normalised limbs and the largest magnitude's f32 bits.
    pub(crate) const fn from_parts(kind: u8, limbs: [u64; LIMBS], max_bits: u32) -> Self {
        ExactPartial {
            limbs,
            max_bits,
            kind,
            flags: 0,
            reserved: 0,
        }
    }

    /// A partial that saw non-finite input: flags only.
    pub(crate) const fn nonfinite(kind: u8, flags: u8) -> Self {
        ExactPartial {
            flags: flags & FLAGS_KNOWN,
            kind,
            ..Self::EMPTY
        }
    }

    /// The norm kind (`None` for [`ExactPartial::EMPTY`], or for bytes that are no partial).
    pub fn norm_type(&self) -> Option<NormType> {
        match self.kind {
            KIND_L1 => Some(NormType::L1),
            KIND_L2 => Some(NormType::L2),
            KIND_INF => Some(NormType::Inf),
            _ => None,
        }
    }

    /// True when no NaN or ±inf went into this partial (and its sum is in range).
    pub fn is_finite(&self) -> bool {
        self.flags == 0
    }

    /// True when a NaN went into this partial (or partials of different kinds were merged).
    pub fn has_nan(&self) -> bool {
        self.flags & FLAG_NAN != 0
    }

    /// Combines two partials: the exact sum of both, the larger maximum, the union of the flags.
    ///
    /// Exact, associative and commutative: any merge tree over the same partials gives the same
    /// bytes. Merging partials of two different kinds gives a partial flagged NaN.
    #[must_use]
    pub fn merge(self, other: ExactPartial) -> ExactPartial {
        let kind = self.kind.max(other.kind);
        let mut flags = (self.flags | other.flags) & FLAGS_KNOWN;
        let mixed = self.kind != KIND_NONE && other.kind != KIND_NONE && self.kind != other.kind;
        if mixed
            || kind > KIND_INF
            || (self.flags | other.flags) & !FLAGS_KNOWN != 0
            || self.reserved != 0
            || other.reserved != 0
        {
            flags |= FLAG_NAN;
        }
        if flags != 0 {
            return ExactPartial::nonfinite(kind, flags);
        }
        let (limbs, overflow) = add_limbs(&self.limbs, &other.limbs);
        if overflow {
            return ExactPartial::nonfinite(kind, FLAG_OVERFLOW);
        }
        ExactPartial::from_parts(kind, limbs, self.max_bits.max(other.max_bits))
    }

    /// The exact sum correctly rounded to f64 (ties to even): the sum of squares for L2, of
    /// magnitudes for L1; for Inf the largest magnitude. NaN if a NaN went in, else +inf if an
    /// infinity went in.
    pub fn sum(&self) -> f64 {
        if self.flags & FLAG_NAN != 0 {
            return f64::NAN;
        }
        if self.flags != 0 {
            return f64::INFINITY;
        }
        if self.kind == KIND_INF {
            return self.max_abs();
        }
        limbs_to_f64(&self.limbs)
    }

    /// The norm: `sqrt(sum())` for L2 (the IEEE square root of the correctly rounded sum of
    /// squares), `sum()` for L1, the largest magnitude for Inf, 0 for the empty partial. NaN if
    /// a NaN went in, else +inf if an infinity went in.
    pub fn finish(&self) -> f64 {
        let s = self.sum();
        if self.kind == KIND_L2 {
            s.sqrt()
        } else {
            s
        }
    }

    /// The largest magnitude that went into this partial (0 when it saw NaN or inf).
    pub fn max_abs(&self) -> f64 {
        f32::from_bits(self.max_bits) as f64
    }

    /// The exact sum as little-endian 64-bit limbs of its value times 2^320.
    pub fn limbs(&self) -> &[u64; LIMBS] {
        &self.limbs
    }
}

/// A chunk's running exact sum in redundant form: `Σ digits[i] · 2^(32 i + LSB_EXP)` with signed
/// 64-bit digits, so an add touches three digits and never propagates a carry. Each digit
/// receives addends below 2^32 in magnitude, so it takes 2^30 adds before it could overflow; a
/// chunk makes a few hundred.
#[derive(Clone, Copy)]
pub(crate) struct ChunkAcc {
    digits: [i64; DIGITS],
}

impl ChunkAcc {
    pub(crate) const ZERO: ChunkAcc = ChunkAcc {
        digits: [0; DIGITS],
    };

    /// Adds `v · 2^(pos + LSB_EXP)`.
    #[inline(always)]
    pub(crate) fn add_i64(&mut self, v: i64, pos: u32) {
        let q = (pos / 32) as usize;
        let w = (v as i128) << (pos % 32);
        debug_assert!(q + 2 < DIGITS);
        self.digits[q] += (w as u64 & 0xFFFF_FFFF) as i64;
        self.digits[q + 1] += ((w >> 32) as u64 & 0xFFFF_FFFF) as i64;
        self.digits[q + 2] += (w >> 64) as i64;
    }

    /// Adds `v · 2^(pos + LSB_EXP)` for an unsigned `v`.
    #[inline(always)]
    pub(crate) fn add_u64(&mut self, v: u64, pos: u32) {
        let q = (pos / 32) as usize;
        let w = (v as u128) << (pos % 32);
        debug_assert!(q + 2 < DIGITS);
        self.digits[q] += (w as u64 & 0xFFFF_FFFF) as i64;
        self.digits[q + 1] += ((w >> 32) as u64 & 0xFFFF_FFFF) as i64;
        self.digits[q + 2] += (w >> 64) as i64;
    }

    /// Canonical limbs of the value modulo 2^704 (the value is a sum of squares or magnitudes,
    /// non-negative and far below 2^384, so this is the value itself).
    pub(crate) fn normalized(&self) -> [u64; LIMBS] {
        let mut out = [0u64; LIMBS];
        let mut carry: i64 = 0;
        for (i, &d) in self.digits.iter().enumerate().take(2 * LIMBS) {
            // |d| < 2^62 and |carry| < 2^31: no overflow.
            let c = d + carry;
            out[i / 2] |= ((c as u64) & 0xFFFF_FFFF) << (32 * (i % 2));
            carry = c >> 32;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_u128(v: u128, shift: usize) -> [u64; LIMBS] {
        let mut l = [0u64; LIMBS];
        let lo = shift / 64;
        let s = shift % 64;
        let w = [v as u64, (v >> 64) as u64, 0];
        for (k, &x) in w.iter().enumerate() {
            if s == 0 {
                if lo + k < LIMBS {
                    l[lo + k] |= x;
                }
            } else {
                if lo + k < LIMBS {
                    l[lo + k] |= x << s;
                }
                if lo + k + 1 < LIMBS {
                    l[lo + k + 1] |= x >> (64 - s);
                }
            }
        }
        l
    }

    #[test]
    fn rounding_of_small_integers_is_exact() {
        // 2^320 is limb 5 bit 0: the integer 1.
        for v in [1u128, 3, 255, (1 << 53) - 1, 1 << 53] {
            assert_eq!(limbs_to_f64(&from_u128(v, 320)), v as f64);
        }
    }

    #[test]
    fn rounding_ties_go_to_even() {
        // 2^53 + 1 is a tie between 2^53 and 2^53 + 2: even is 2^53.
        let t = (1u128 << 53) + 1;
        assert_eq!(limbs_to_f64(&from_u128(t, 320)), 9007199254740992.0);
        // 2^53 + 3: tie between 2^53 + 2 and 2^53 + 4: even mantissa is 2^53 + 4.
        let t = (1u128 << 53) + 3;
        assert_eq!(limbs_to_f64(&from_u128(t, 320)), 9007199254740996.0);
        // A tie broken by a sticky bit far below: rounds up.
        let mut l = from_u128((1u128 << 53) + 1, 320);
        l[0] = 1;
        assert_eq!(limbs_to_f64(&l), 9007199254740994.0);
        // Carry out of the mantissa: 2^54 - 1 rounds to 2^54.
        assert_eq!(
            limbs_to_f64(&from_u128((1u128 << 54) - 1, 320)),
            18014398509481984.0
        );
    }

    #[test]
    fn chunk_acc_handles_signed_adds_at_every_offset() {
        for pos in [0u32, 1, 31, 32, 63, 64, 65, 300, 500, 600] {
            let mut a = ChunkAcc::ZERO;
            a.add_i64(1_000_000_007, pos);
            a.add_i64(-7, pos);
            a.add_i64(-1_000_000_000, pos);
            a.add_u64(u64::MAX, pos);
            a.add_i64(i64::MIN / 2, pos);
            a.add_i64(-(i64::MIN / 2), pos);
            let want = add_limbs(&from_u128(u64::MAX as u128, pos as usize), &[0; LIMBS]).0;
            assert_eq!(a.normalized(), want, "pos {pos}");
        }
    }

    #[test]
    fn merge_is_exact_and_canonical() {
        let a = ExactPartial::from_parts(KIND_L2, from_u128(u128::MAX, 100), 5);
        let b = ExactPartial::from_parts(KIND_L2, from_u128(1, 100), 9);
        let ab = a.merge(b);
        assert_eq!(ab, b.merge(a));
        assert_eq!(ab.limbs, from_u128(1, 228));
        assert_eq!(ab.max_bits, 9);
        assert_eq!(ExactPartial::EMPTY.merge(a), a);
        assert_eq!(a.merge(ExactPartial::EMPTY), a);
    }

    #[test]
    fn flags_zero_the_state_and_mixed_kinds_poison() {
        let a = ExactPartial::from_parts(KIND_L2, from_u128(77, 0), 5);
        let inf = ExactPartial::nonfinite(KIND_L2, FLAG_INF);
        let m = a.merge(inf);
        assert_eq!(m, ExactPartial::nonfinite(KIND_L2, FLAG_INF));
        assert_eq!(m.finish(), f64::INFINITY);
        let l1 = ExactPartial::from_parts(KIND_L1, from_u128(77, 0), 5);
        assert!(a.merge(l1).finish().is_nan());
        assert_eq!(a.merge(l1), l1.merge(a));
    }

    #[test]
    fn overflow_is_flagged_not_wrapped() {
        let mut top = [0u64; LIMBS];
        top[LIMBS - 1] = 1 << 63;
        let a = ExactPartial::from_parts(KIND_L2, top, 0);
        let m = a.merge(a);
        assert!(!m.is_finite());
        assert_eq!(m.finish(), f64::INFINITY);
    }
}
