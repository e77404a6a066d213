//! Compensated f64 arithmetic, written once: the Fast2Sum of two non-negative values and the
//! merge of two compensated pairs, generic over [`F64Ops`] so that the per-lane fold of the
//! kernels (SIMD registers, in `arch/`), the merge of lanes and chunks, and [`crate::NormPartial`]
//! all run the very same sequence of IEEE operations.
//!
//! A compensated value is a pair `(s, c)`: `s` the rounded running sum, `c` the accumulated
//! rounding errors. Every operand is non-negative (squares, magnitudes, sums of them), so
//! Fast2Sum with the larger operand first is error-free: for `t = fl(a + b)` with `a >= b >= 0`,
//! `(a - t) + b` is exactly `a + b - t`.

/// The lane-wise operations compensated arithmetic needs, on one value or one register of f64.
///
/// Each method must be the correctly rounded IEEE operation lane by lane; `max`/`min` of two
/// non-negative non-NaN values may return either operand when they are equal (same bits).
pub(crate) trait F64Ops: Copy {
    /// A value or a register of f64 lanes.
    type V: Copy;
    /// Lane-wise `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a - b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise larger of two non-negative values.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise smaller of two non-negative values.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
}

pub(crate) use crate::lanes::Scalar;

/// One f64 value.
impl F64Ops for Scalar {
    type V = f64;
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
}

/// Fast2Sum of two non-negative values: `(t, e)` with `t = fl(a + b)` and `e = a + b - t`
/// exactly (the larger operand goes first).
#[inline(always)]
pub(crate) fn fast_two_sum<O: F64Ops>(o: O, a: O::V, b: O::V) -> (O::V, O::V) {
    let t = o.add(a, b);
    let e = o.add(o.sub(o.max(a, b), t), o.min(a, b));
    (t, e)
}

/// `(s, c) + b`: a term added to a compensated pair.
#[inline(always)]
pub(crate) fn add_term<O: F64Ops>(o: O, s: O::V, c: O::V, b: O::V) -> (O::V, O::V) {
    let (t, e) = fast_two_sum(o, s, b);
    (t, o.add(c, e))
}

/// `(s1, c1) + (s2, c2)`: two compensated pairs merged (heads by Fast2Sum, tails added).
#[inline(always)]
pub(crate) fn merge<O: F64Ops>(o: O, s1: O::V, c1: O::V, s2: O::V, c2: O::V) -> (O::V, O::V) {
    let (t, e) = fast_two_sum(o, s1, s2);
    (t, o.add(o.add(c1, c2), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_two_sum_is_error_free() {
        let (t, e) = fast_two_sum(Scalar, 1.0, 1e-17);
        assert_eq!((t, e), (1.0, 1e-17));
        let (t, e) = fast_two_sum(Scalar, 1e-17, 1.0);
        assert_eq!((t, e), (1.0, 1e-17));
        let (t, e) = fast_two_sum(Scalar, 3.0, 2f64.powi(-52));
        assert_eq!(t + e, 3.0 + 2f64.powi(-52));
        assert_eq!(t, 3.0);
    }

    #[test]
    fn merge_keeps_small_terms() {
        let (mut s, mut c) = (1e32, 0.0);
        for _ in 0..1000 {
            (s, c) = merge(Scalar, s, c, 1.0, 0.0);
        }
        assert_eq!((s, c), (1e32, 1000.0));
        let (s2, c2) = add_term(Scalar, 1e32, 0.0, 1.0);
        assert_eq!((s2, c2), (1e32, 1.0));
    }
}
