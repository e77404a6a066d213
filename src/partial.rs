//! [`NormPartial`]: the mergeable, compensated state of a norm over part of the data.
//!
//! Every norm in gradclip is computed as a tree of partials: one per fixed-size chunk of a buffer,
//! merged pairwise in an order fixed by the buffer lengths alone. The same type is the unit of
//! exchange for sharded training:
//!
//! ```
//! use gradclip::{total_norm_partial, Grad, NormPartial, NormType};
//! // Each rank computes the partial of its own shard ...
//! let shard_a = vec![3.0f32; 10];
//! let shard_b = vec![4.0f32; 10];
//! let pa = total_norm_partial(&[Grad::from(&shard_a)], NormType::L2).unwrap();
//! let pb = total_norm_partial(&[Grad::from(&shard_b)], NormType::L2).unwrap();
//! // ... sends its bytes (`bytemuck::bytes_of(&pa)`, 40 bytes) through an all-gather, and every
//! // rank merges all partials in rank order, so every rank gets the same bits.
//! let total = pa.merge(pb).finish();
//! assert!((total - 250f64.sqrt()).abs() < 1e-12);
//! ```
//!
//! Merging is associative up to rounding (each merge is an exact two-sum plus a compensation
//! term); merge in a fixed order (rank order, or a fixed tree) and every rank gets the same bits.

use bytemuck::{Pod, Zeroable};

use crate::compensated::{self, Scalar};
use crate::norm_type::NormType;

/// Compensated partial state of a norm: `sum + comp` is the running value (a sum of squares for
/// L2, of magnitudes for L1, of `(|x|/scale)^p` for P), `scale` the largest magnitude seen (the
/// Inf norm, and the scale of the P sum).
///
/// `#[repr(C)]` and [`Pod`]: 40 bytes that can be sent through any collective as they are.
/// [`NormPartial::EMPTY`] (all bits zero) is the identity of [`NormPartial::merge`] for every norm
/// type; merging partials of two different norm types gives a NaN result.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct NormPartial {
    sum: f64,
    comp: f64,
    scale: f64,
    /// 0 = no type yet (identity), 1 = L1, 2 = L2, +inf = Inf, otherwise the P exponent.
    p: f64,
    /// 0 = all finite, 1 = an inf was seen, 2 = a NaN was seen (or the partial is poisoned).
    nonfinite: u64,
}

pub(crate) const FINITE: u64 = 0;
pub(crate) const HAS_INF: u64 = 1;
pub(crate) const HAS_NAN: u64 = 2;

/// Exact sum of two non-negative compensated values (see [`compensated::merge`]).
#[inline(always)]
fn merge_sums(s1: f64, c1: f64, s2: f64, c2: f64) -> (f64, f64) {
    compensated::merge(Scalar, s1, c1, s2, c2)
}

impl NormPartial {
    /// The all-zero partial: the identity of [`NormPartial::merge`] for every norm type.
    pub const EMPTY: NormPartial = NormPartial {
        sum: 0.0,
        comp: 0.0,
        scale: 0.0,
        p: 0.0,
        nonfinite: 0,
    };

    /// The empty partial of a norm type (the identity of merge).
    pub fn new(norm_type: NormType) -> Result<Self, crate::Error> {
        let p = norm_type.validated()?.exponent();
        Ok(NormPartial {
            p,
            ..Self::zeroed()
        })
    }

    pub(crate) fn from_sum(p: f64, sum: f64, comp: f64) -> Self {
        NormPartial {
            sum,
            comp,
            scale: 0.0,
            p,
            nonfinite: FINITE,
        }
    }

    pub(crate) fn from_scaled_sum(p: f64, scale: f64, sum: f64, comp: f64) -> Self {
        NormPartial {
            sum,
            comp,
            scale,
            p,
            nonfinite: FINITE,
        }
    }

    pub(crate) fn from_max(max: f64) -> Self {
        NormPartial {
            scale: max,
            p: f64::INFINITY,
            ..Self::zeroed()
        }
    }

    pub(crate) fn nonfinite(p: f64, kind: u64) -> Self {
        NormPartial {
            p,
            nonfinite: kind,
            ..Self::zeroed()
        }
    }

    /// The norm type this partial belongs to (`None` for the all-zero identity).
    pub fn norm_type(&self) -> Option<NormType> {
        NormType::from_exponent(self.p)
    }

    /// True when no NaN or ±inf went into this partial.
    pub fn is_finite(&self) -> bool {
        self.nonfinite == FINITE
    }

    /// True when a NaN went into this partial (or it was poisoned by a type mismatch).
    pub fn has_nan(&self) -> bool {
        self.nonfinite >= HAS_NAN
    }

    /// Combines two partials. Associative and commutative up to rounding; for reproducible bits,
    /// merge in a fixed order.
    #[must_use]
    pub fn merge(self, other: NormPartial) -> NormPartial {
        if self.p == 0.0 && self.nonfinite == FINITE && self.sum == 0.0 && self.scale == 0.0 {
            return other;
        }
        if other.p == 0.0 && other.nonfinite == FINITE && other.sum == 0.0 && other.scale == 0.0 {
            return self;
        }
        if self.p.to_bits() != other.p.to_bits() {
            return NormPartial::nonfinite(self.p, HAS_NAN);
        }
        let p = self.p;
        let nonfinite = self.nonfinite.max(other.nonfinite);
        if nonfinite != FINITE {
            return NormPartial::nonfinite(p, nonfinite);
        }
        if p == f64::INFINITY {
            return NormPartial::from_max(self.scale.max(other.scale));
        }
        if p == 1.0 || p == 2.0 {
            let (s, c) = merge_sums(self.sum, self.comp, other.sum, other.comp);
            return NormPartial::from_sum(p, s, c);
        }
        // General p: bring both sums to the larger scale.
        let scale = self.scale.max(other.scale);
        if scale == 0.0 {
            return NormPartial::from_scaled_sum(p, 0.0, 0.0, 0.0);
        }
        let f1 = if self.scale == scale {
            1.0
        } else {
            (self.scale / scale).powf(p)
        };
        let f2 = if other.scale == scale {
            1.0
        } else {
            (other.scale / scale).powf(p)
        };
        let (s, c) = merge_sums(
            self.sum * f1,
            self.comp * f1,
            other.sum * f2,
            other.comp * f2,
        );
        NormPartial::from_scaled_sum(p, scale, s, c)
    }

    /// The norm value: NaN if a NaN went in, +inf if an inf (and no NaN) went in. A P norm of
    /// finite input whose value exceeds f64 (small `p` only) also gives +inf; tell the two apart
    /// with [`NormPartial::is_finite`]. A P norm whose value fits in f64 is returned finite even
    /// when `total^(1/p)` alone would overflow (largest magnitude below 1, small `p`).
    pub fn finish(&self) -> f64 {
        match self.nonfinite {
            FINITE => {}
            HAS_INF => return f64::INFINITY,
            _ => return f64::NAN,
        }
        let total = self.sum + self.comp;
        if self.p == 2.0 {
            total.sqrt()
        } else if self.p == 1.0 || self.p == 0.0 {
            total
        } else if self.p == f64::INFINITY {
            self.scale
        } else if self.scale == 0.0 {
            0.0
        } else {
            p_norm_value(self.scale, total, self.p)
        }
    }
}

/// `scale * total^(1/p)` without a spurious overflow.
///
/// `total` is at least 1 (the largest element contributes exactly 1), so only the power can
/// overflow, and for a small `p` it does (2000 elements, `p = 0.01`: `2000^100 = 1.3e330`) even
/// when `scale` is small enough to bring the product back into range (`1.4e-45 * 1.3e330`). The
/// usual path keeps its bits; when the power overflows, the product is formed from its base-2
/// logarithm, `log2(scale) + log2(total) / p`, split into an integer `k` and a fraction `f`:
/// `2^f` in [1, 2) times the exact power of two `2^k`. +inf only when that logarithm reaches
/// 1024, i.e. when the norm itself exceeds f64.
fn p_norm_value(scale: f64, total: f64, p: f64) -> f64 {
    let power = total.powf(1.0 / p);
    if power.is_finite() {
        return scale * power;
    }
    let lg = scale.log2() + total.log2() / p;
    if lg >= 1024.0 {
        return f64::INFINITY;
    }
    // `power` overflowed, so `log2(total) / p >= 1024` and `lg > 1024 - 149`: `k` is a normal
    // exponent and `2^k` is exact.
    let k = lg.floor();
    let two_k = f64::from_bits(((k as i64 + 1023) as u64) << 52);
    (lg - k).exp2() * two_k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_is_identity_for_every_type() {
        for nt in [NormType::L1, NormType::L2, NormType::Inf, NormType::P(3.0)] {
            let a = NormPartial::from_scaled_sum(nt.exponent(), 2.0, 5.0, 1e-17);
            assert_eq!(NormPartial::zeroed().merge(a), a);
            assert_eq!(a.merge(NormPartial::zeroed()), a);
            let e = NormPartial::new(nt).unwrap();
            assert_eq!(e.merge(NormPartial::zeroed()).finish(), 0.0);
        }
    }

    #[test]
    fn mismatched_types_poison() {
        let a = NormPartial::from_sum(2.0, 1.0, 0.0);
        let b = NormPartial::from_sum(1.0, 1.0, 0.0);
        assert!(a.merge(b).finish().is_nan());
    }

    #[test]
    fn nonfinite_wins_nan_over_inf() {
        let a = NormPartial::nonfinite(2.0, HAS_INF);
        let b = NormPartial::nonfinite(2.0, HAS_NAN);
        let f = NormPartial::from_sum(2.0, 4.0, 0.0);
        assert_eq!(a.merge(f).finish(), f64::INFINITY);
        assert!(a.merge(b).finish().is_nan());
    }

    #[test]
    fn merge_keeps_small_terms() {
        let big = NormPartial::from_sum(2.0, 1e32, 0.0);
        let mut acc = big;
        for _ in 0..1000 {
            acc = acc.merge(NormPartial::from_sum(2.0, 1.0, 0.0));
        }
        assert_eq!(acc.sum, 1e32);
        assert_eq!(acc.comp, 1000.0);
    }

    #[test]
    fn p_finish_forms_the_product_without_overflow() {
        // 2000 * 2^-149 with p = 0.01: 2000^100 = 1.3e330 overflows, the norm 1.8e285 does not.
        let tiny = f64::from_bits(0x36A0_0000_0000_0000); // 2^-149
        let a = NormPartial::from_scaled_sum(0.01, tiny, 2000.0, 0.0);
        let h = 2000f64.powf(50.0);
        let want = (tiny * h) * h;
        let got = a.finish();
        assert!(((got - want) / want).abs() < 1e-12, "{got:e} vs {want:e}");
        // Beyond f64: +inf, still flagged finite input.
        let b = NormPartial::from_scaled_sum(0.001, 1.0, 3.0, 0.0);
        assert!(b.finish().is_infinite() && b.is_finite());
        // Right at the top of the range.
        let c = NormPartial::from_scaled_sum(0.001, f64::MAX / 2.0f64.powf(1000.0), 2.0, 0.0);
        assert!(c.finish().is_finite());
    }

    #[test]
    fn p_merge_rescales() {
        // two chunks: scale 1 sum 2 (two ones), scale 2 sum 1 (one two), p = 3
        let a = NormPartial::from_scaled_sum(3.0, 1.0, 2.0, 0.0);
        let b = NormPartial::from_scaled_sum(3.0, 2.0, 1.0, 0.0);
        let want = (2.0f64 + 8.0).powf(1.0 / 3.0);
        assert!((a.merge(b).finish() - want).abs() < 1e-15 * want);
        assert_eq!(a.merge(b).finish(), b.merge(a).finish());
    }
}
