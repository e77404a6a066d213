//! Scalar reference implementations: obviously correct, slow, independent of the kernels.
//!
//! Tests, fuzz targets and the bench report compare the fast paths with these. Sums are
//! accumulated in double-double (TwoSum into a head and a tail), so the reference is within a few
//! units of 2^-106 of the exact value, far below the 1e-14 the kernels promise; widening and
//! narrowing go through the `half` crate, not through gradclip's own conversions.

use half::{bf16, f16};

use crate::grads::Grad;
use crate::norm_type::NormType;

/// Double-double accumulator of non-negative terms.
#[derive(Debug, Clone, Copy, Default)]
pub struct DoubleDouble {
    hi: f64,
    lo: f64,
}

impl DoubleDouble {
    /// Adds `t` with an exact TwoSum.
    pub fn add(&mut self, t: f64) {
        let s = self.hi + t;
        let bp = s - self.hi;
        let err = (self.hi - (s - bp)) + (t - bp);
        let lo = self.lo + err;
        let hi = s + lo;
        self.lo = lo - (hi - s);
        self.hi = hi;
    }

    /// The value, rounded to f64.
    pub fn value(&self) -> f64 {
        self.hi + self.lo
    }

    /// The natural logarithm of the value (positive), to about one unit in the last place.
    pub fn ln(&self) -> f64 {
        self.hi.ln() + self.lo / self.hi
    }
}

fn widened(g: Grad<'_>) -> Vec<f64> {
    match g {
        Grad::F32(s) => s.iter().map(|&x| x as f64).collect(),
        Grad::F16(s) => s.iter().map(|x| x.to_f64()).collect(),
        Grad::BF16(s) => s.iter().map(|x| x.to_f64()).collect(),
    }
}

/// The norm of all elements of all buffers; NaN if any element is NaN, +inf if any is infinite.
/// `P(p)` with an invalid `p` gives NaN.
pub fn norm(grads: &[Grad<'_>], norm_type: NormType) -> f64 {
    let values: Vec<f64> = grads.iter().flat_map(|g| widened(*g)).collect();
    if values.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    if values.iter().any(|v| v.is_infinite()) {
        return f64::INFINITY;
    }
    let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    match norm_type {
        NormType::Inf => max,
        NormType::L1 => {
            let mut acc = DoubleDouble::default();
            values.iter().for_each(|v| acc.add(v.abs()));
            acc.value()
        }
        NormType::L2 => {
            let mut acc = DoubleDouble::default();
            values.iter().for_each(|v| acc.add(v * v)); // exact square
            acc.value().sqrt()
        }
        NormType::P(p) => {
            if !(p.is_finite() && p > 0.0) {
                return f64::NAN;
            }
            if max == 0.0 {
                return 0.0;
            }
            let mut acc = DoubleDouble::default();
            values.iter().for_each(|v| acc.add((v.abs() / max).powf(p)));
            // max * S^(1/p), where S^(1/p) alone may exceed f64 while the norm does not
            // (S >= 1; a small p): through the natural logarithm, ln(S) / p.
            mul_exp(max, acc.ln() / p)
        }
    }
}

/// `x * e^a` for `x > 0` and `a >= 0`, finite whenever the product is: `e^a = e^r * 2^k` with
/// `k = round(a / ln 2)` and `|r| <= ln(2) / 2` (Cody–Waite reduction: ln 2 in two parts, the
/// first with enough trailing zero bits that `k * LN2_HI` is exact), then
/// `((e^r * 2^k1) * x) * 2^k2` with `k1 + k2 = k`, `0 <= k1 <= k2`: the powers of two are exact
/// and no intermediate overflows or goes subnormal unless the result does. A formula of its
/// own, so the reference does not share a bug with the kernels' `NormPartial::finish`.
fn mul_exp(x: f64, a: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let k = (a / std::f64::consts::LN_2).round();
    // x >= 2^-149 (the smallest f32 subnormal), so 2^2046 * x is beyond f64.
    if k > 2046.0 {
        return f64::INFINITY;
    }
    let r = (a - k * LN2_HI) - k * LN2_LO;
    let k = k as i32;
    let (k1, k2) = (k / 2, k - k / 2);
    ((r.exp() * 2f64.powi(k1)) * x) * 2f64.powi(k2)
}

/// `round_to_dtype(f32(x) * c)` for an f32 element, with gradclip's NaN rule spelled out: a NaN
/// element stays that NaN, quieted (payload and sign kept); any other NaN product (a NaN `c`,
/// `±inf * 0`) is the canonical quiet NaN `0x7FC00000`.
pub fn scale_f32(x: f32, c: f32) -> f32 {
    if x.is_nan() {
        return f32::from_bits(x.to_bits() | 0x0040_0000);
    }
    let r = x * c;
    if r.is_nan() {
        f32::from_bits(0x7FC0_0000)
    } else {
        r
    }
}

/// `round_to_dtype(f32(x) * c)` for an f16 element, through `half`'s conversions; NaN as in
/// [`scale_f32`] (quiet bit `0x0200`, canonical NaN `0x7E00`).
pub fn scale_f16(x: f16, c: f32) -> f16 {
    if x.is_nan() {
        return f16::from_bits(x.to_bits() | 0x0200);
    }
    let r = x.to_f32() * c;
    if r.is_nan() {
        f16::from_bits(0x7E00)
    } else {
        f16::from_f32(r)
    }
}

/// `round_to_dtype(f32(x) * c)` for a bf16 element, through `half`'s conversions; NaN as in
/// [`scale_f32`] (quiet bit `0x0040`, canonical NaN `0x7FC0`).
pub fn scale_bf16(x: bf16, c: f32) -> bf16 {
    if x.is_nan() {
        return bf16::from_bits(x.to_bits() | 0x0040);
    }
    let r = x.to_f32() * c;
    if r.is_nan() {
        bf16::from_bits(0x7FC0)
    } else {
        bf16::from_f32(r)
    }
}

/// An unsigned big integer, little-endian 32-bit digits, for [`exact_sum`].
struct BigNat(Vec<u32>);

impl BigNat {
    /// Adds `v · 2^shift`.
    fn add_shifted(&mut self, v: u64, shift: usize) {
        let mut pos = shift / 32;
        // v · 2^(shift mod 32) as up to three 32-bit digits, then carries.
        let mut carry = (v as u128) << (shift % 32);
        while carry != 0 {
            if self.0.len() <= pos {
                self.0.resize(pos + 1, 0);
            }
            let s = self.0[pos] as u128 + (carry & 0xFFFF_FFFF);
            self.0[pos] = s as u32;
            carry = (carry >> 32) + (s >> 32);
            pos += 1;
        }
    }

    fn bit(&self, i: usize) -> bool {
        self.0.get(i / 32).is_some_and(|d| d >> (i % 32) & 1 == 1)
    }

    /// Number of significant bits (0 for zero).
    fn bit_len(&self) -> usize {
        match self.0.iter().rposition(|&d| d != 0) {
            None => 0,
            Some(i) => 32 * i + 32 - self.0[i].leading_zeros() as usize,
        }
    }
}

/// `m · 2^e` for a finite f32, with `m` an integer below 2^24, read off the bit pattern.
fn f32_integer_parts(x: f32) -> (u64, i32) {
    let b = x.to_bits();
    let field = ((b >> 23) & 0xFF) as i32;
    let frac = (b & 0x7F_FFFF) as u64;
    if field == 0 {
        (frac, -149)
    } else {
        (frac | 1 << 23, field - 150)
    }
}

/// The exact value `N · 2^(-offset)` rounded to the nearest f64, ties to even (`N` < 2^1000).
fn round_big(n: &BigNat, offset: i32) -> f64 {
    let len = n.bit_len();
    let (q, drop) = if len <= 53 {
        let q = (0..len).rev().fold(0u64, |q, i| q << 1 | n.bit(i) as u64);
        (q, 0)
    } else {
        let drop = len - 53;
        let q = (drop..len)
            .rev()
            .fold(0u64, |q, i| q << 1 | n.bit(i) as u64);
        // Round to nearest: the first dropped bit against the rest and q's parity.
        let round = n.bit(drop - 1);
        let sticky = (0..drop - 1).any(|i| n.bit(i));
        let q = if round && (sticky || q & 1 == 1) {
            q + 1
        } else {
            q
        };
        (q, drop)
    };
    // q ≤ 2^53 converts exactly; scaling by a power of two in the normal range is exact.
    let mut v = q as f64;
    let mut e = drop as i32 - offset;
    while e > 0 {
        v *= 2.0;
        e -= 1;
    }
    while e < 0 {
        v *= 0.5;
        e += 1;
    }
    if q == 0 {
        0.0
    } else {
        v
    }
}

/// The exact `Σ x²` (L2) or `Σ |x|` (L1) over all elements, rounded once to the nearest f64 (ties
/// to even); for Inf the largest magnitude. NaN if any element is NaN, else +inf if any is
/// infinite; NaN for P norms (they have no exact sum).
///
/// Independent of the kernels: every element is split into an integer significand and an
/// exponent from its f32 bit pattern (f16 and bf16 widened by `half`), squares are integer
/// products, and the sum is a big integer (32-bit digits, weight 2^-400 for digit 0) rounded
/// bit by bit. No floating-point arithmetic touches the sum.
pub fn exact_sum(grads: &[Grad<'_>], norm_type: NormType) -> f64 {
    const OFFSET: i32 = 400;
    let values: Vec<f32> = grads
        .iter()
        .flat_map(|g| -> Vec<f32> {
            match *g {
                Grad::F32(s) => s.to_vec(),
                Grad::F16(s) => s.iter().map(|x| x.to_f32()).collect(),
                Grad::BF16(s) => s.iter().map(|x| x.to_f32()).collect(),
            }
        })
        .collect();
    if values.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    if values.iter().any(|v| v.is_infinite()) {
        return f64::INFINITY;
    }
    let square = match norm_type {
        NormType::L2 => true,
        NormType::L1 => false,
        NormType::Inf => return values.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)),
        NormType::P(_) => return f64::NAN,
    };
    let mut n = BigNat(Vec::new());
    for &v in &values {
        let (m, e) = f32_integer_parts(v);
        if m == 0 {
            continue;
        }
        if square {
            n.add_shifted(m * m, (2 * e + OFFSET) as usize);
        } else {
            n.add_shifted(m, (e + OFFSET) as usize);
        }
    }
    round_big(&n, OFFSET)
}

/// The norm of [`exact_sum`]: its IEEE square root for L2, the sum itself for L1 and Inf.
pub fn exact_norm(grads: &[Grad<'_>], norm_type: NormType) -> f64 {
    let s = exact_sum(grads, norm_type);
    if norm_type == NormType::L2 {
        s.sqrt()
    } else {
        s
    }
}
