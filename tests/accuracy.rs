//! The numerical promises: 1e-14 relative for L2 and L1 on any input, exact Inf, finite results
//! for finite inputs at the extremes of every dtype.

mod common;

use common::*;
use gradclip::{bf16, f16, get_total_norm, reference, Grad, Isa, NormType};

fn both_isas(grads: &[Grad<'_>], nt: NormType) -> f64 {
    let r = get_total_norm(grads, nt).unwrap();
    for isa in Isa::available() {
        let o = gradclip::get_total_norm_with_isa(grads, nt, isa).unwrap();
        assert_eq!(o.to_bits(), r.to_bits(), "{isa:?}");
    }
    r
}

#[test]
fn huge_value_followed_by_millions_of_ones() {
    // 2^30 squared is 2^60, whose f64 ulp is 256: a plain f64 sum drops every one after it.
    let n = sized(3_000_000);
    let mut v = vec![1.0f32; n + 1];
    v[0] = (1u64 << 30) as f32;
    let got = both_isas(&[Grad::from(&v)], NormType::L2);
    let exact = ((1u128 << 60) + n as u128) as f64; // exactly representable? close enough in f64
    let want = reference::norm(&[Grad::from(&v)], NormType::L2);
    assert!(rel_err(want, exact.sqrt()) < 1e-15);
    assert!(rel_err(got, want) <= 1e-14, "{got} vs {want}");
    // The ones matter at 1e-12 relative: a plain f64 loop is visibly off.
    let naive = gradclip::baseline::naive_sum_sq_f64(&v).sqrt();
    if !cfg!(miri) {
        assert!(rel_err(naive, want) > 1e-13);
    }
    let l1 = both_isas(&[Grad::from(&v)], NormType::L1);
    assert!(rel_err(l1, (1u64 << 30) as f64 + n as f64) <= 1e-14);
}

#[test]
fn extremes_of_f32_stay_finite_and_accurate() {
    let n = sized(1_000_000);
    let v = vec![f32::MAX; n];
    let got = both_isas(&[Grad::from(&v)], NormType::L2);
    let want = f32::MAX as f64 * (n as f64).sqrt();
    assert!(got.is_finite());
    assert!(rel_err(got, want) <= 1e-14);
    let l1 = both_isas(&[Grad::from(&v)], NormType::L1);
    assert!(rel_err(l1, f32::MAX as f64 * n as f64) <= 1e-14);

    let tiny = vec![f32::from_bits(1); n]; // 1.4e-45, the smallest subnormal
    let got = both_isas(&[Grad::from(&tiny)], NormType::L2);
    let want = f32::from_bits(1) as f64 * (n as f64).sqrt();
    assert!(
        got > 0.0 && rel_err(got, want) <= 1e-14,
        "{got:e} vs {want:e}"
    );
    assert_eq!(
        both_isas(&[Grad::from(&tiny)], NormType::Inf),
        f32::from_bits(1) as f64
    );
    // P norms with a large exponent neither overflow nor underflow.
    let p = both_isas(&[Grad::from(&v)], NormType::P(10.0));
    assert!(rel_err(p, f32::MAX as f64 * (n as f64).powf(0.1)) <= 1e-12);
    let p = both_isas(&[Grad::from(&tiny)], NormType::P(10.0));
    assert!(rel_err(p, f32::from_bits(1) as f64 * (n as f64).powf(0.1)) <= 1e-12);
}

#[test]
fn extremes_of_f16_and_bf16() {
    let n = sized(200_000);
    let h = vec![f16::MAX; n];
    let b = vec![bf16::MAX; n];
    let hs = vec![f16::from_bits(1); n];
    let bs = vec![bf16::from_bits(1); n];
    for (g, unit) in [
        (Grad::from(&h), f16::MAX.to_f64()),
        (Grad::from(&b), bf16::MAX.to_f64()),
        (Grad::from(&hs), f16::from_bits(1).to_f64()),
        (Grad::from(&bs), bf16::from_bits(1).to_f64()),
    ] {
        let got = both_isas(&[g], NormType::L2);
        assert!(rel_err(got, unit * (n as f64).sqrt()) <= 1e-14, "{got:e}");
        assert_eq!(both_isas(&[g], NormType::Inf), unit);
    }
}

#[test]
fn wide_dynamic_range_random() {
    // Values spread over 2^-126 .. 2^127: the sum is dominated by a few, the rest must not hurt.
    let mut rng = Rng(99);
    let n = sized(500_000);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let r = rng.next_u64();
            let e = (r % 250) as i32 - 125;
            let m = 1.0 + ((r >> 32) as f32 / u32::MAX as f32);
            let s = if r & (1 << 20) == 0 { 1.0 } else { -1.0 };
            s * m * 2f32.powi(e)
        })
        .collect();
    for nt in [NormType::L2, NormType::L1] {
        let got = both_isas(&[Grad::from(&v)], nt);
        let want = reference::norm(&[Grad::from(&v)], nt);
        assert!(rel_err(got, want) <= 1e-14, "{nt:?}");
    }
}

#[test]
fn many_equal_terms_worst_case_rounding() {
    // Terms chosen so that every plain addition rounds: 1 + 2^-24 squared has a long significand.
    let x = 1.0f32 + f32::EPSILON;
    let n = sized(2_000_000);
    let v = vec![x; n];
    let got = both_isas(&[Grad::from(&v)], NormType::L2);
    let want = reference::norm(&[Grad::from(&v)], NormType::L2);
    assert!(rel_err(got, want) <= 1e-14);
}
