//! Regression tests for the defects of the hardening issue (#10) that live in the library: P
//! norms whose power overflows although the norm does not, NaN bits on every path, and the
//! coefficient and "written" rules.

mod common;

use common::*;
use gradclip::{
    bf16, clip_grad_norm_, clip_grad_norm_with_isa_, f16, get_total_norm, get_total_norm_with_isa,
    reference, total_norm_partial, ClipOptions, Error, Grad, GradMut, Isa, NonFinitePolicy,
    NormType,
};

// ---------------------------------------------------------------------------------------------
// 1. P norms: `scale * total^(1/p)` must not overflow in the second factor.

/// `s * n^(1/p)` for `n` equal magnitudes `s`, formed as `(s * h) * h` with `h = n^(1/(2p))`:
/// neither factor overflows for the inputs below, and the formula shares nothing with the
/// library's or the reference's.
fn split_pow(s: f64, n: f64, p: f64) -> f64 {
    let h = n.powf(0.5 / p);
    (s * h) * h
}

/// Inputs whose `total^(1/p)` exceeds f64 while the norm does not: `(dtype's smallest
/// subnormal, n, p)`.
fn tiny_cases() -> Vec<(Buf, f64, f64)> {
    let f32_tiny = f32::from_bits(1); // 1.4e-45
    let f16_tiny = f16::from_bits(1); // 6.0e-8
    let bf16_tiny = bf16::from_bits(1); // 9.2e-41
    vec![
        // The reproduction: the true norm is about 1.8e285.
        (Buf::F32(vec![f32_tiny; 2000]), f32_tiny as f64, 0.01),
        (Buf::F32(vec![-f32_tiny; 1300]), f32_tiny as f64, 0.01),
        (Buf::BF16(vec![bf16_tiny; 2000]), bf16_tiny.to_f64(), 0.01),
        (Buf::F16(vec![f16_tiny; 2000]), f16_tiny.to_f64(), 0.0105),
        // Several chunks, so partials of different chunks are merged first.
        (
            Buf::F32(vec![f32_tiny; sized(200_000)]),
            f32_tiny as f64,
            if cfg!(miri) { 0.01 } else { 0.016 },
        ),
    ]
}

#[test]
fn p_norm_is_finite_when_only_the_power_overflows() {
    for (buf, s, p) in tiny_cases() {
        let g = buf.grad();
        let n = g.len() as f64;
        let want = split_pow(s, n, p);
        assert!(want.is_finite() && n.powf(1.0 / p).is_infinite(), "case {n} {p}");
        let tol = 1e-12 / p;
        let portable = get_total_norm_with_isa(&[g], NormType::P(p), Isa::Portable);
        for isa in Isa::available() {
            let got = get_total_norm_with_isa(&[g], NormType::P(p), isa);
            assert_eq!(got, portable, "{isa:?} differs from portable");
            let got = got.unwrap_or_else(|e| panic!("{isa:?} n = {n}, p = {p}: {e}"));
            assert!(rel_err(got, want) <= tol, "{got:e} vs {want:e}");
        }
        // The partial's own value, and the scalar reference, agree.
        let part = total_norm_partial(&[g], NormType::P(p)).unwrap();
        assert_eq!(part.finish(), portable.unwrap());
        let r = reference::norm(&[g], NormType::P(p));
        assert!(rel_err(r, want) <= tol, "reference {r:e} vs {want:e}");
    }
}

#[test]
fn p_norm_overflows_only_when_the_norm_exceeds_f64() {
    // 2000 * 1.4e-45 with p = 0.0093: the norm is about 1e310.
    let tiny = f32::from_bits(1);
    let v = vec![tiny; 2000];
    let p = 0.0093;
    assert!(split_pow(tiny as f64, 2000.0, p).is_infinite());
    assert_eq!(
        get_total_norm(&[Grad::from(&v)], NormType::P(p)),
        Err(Error::NormOverflow { p })
    );
    assert!(reference::norm(&[Grad::from(&v)], NormType::P(p)).is_infinite());
    // The largest element a little below 1: p = 0.01 over 10,000 of them still overflows.
    let v = vec![0.5f32; 10_000];
    assert_eq!(
        get_total_norm(&[Grad::from(&v)], NormType::P(0.01)),
        Err(Error::NormOverflow { p: 0.01 })
    );
}

#[test]
fn propagate_never_zeroes_gradients_for_a_finite_norm() {
    let tiny = f32::from_bits(1);
    let opts = ClipOptions {
        norm_type: NormType::P(0.01),
        on_nonfinite: NonFinitePolicy::Propagate,
        ..ClipOptions::default()
    };
    for isa in Isa::available() {
        // The true norm is 1.8e285 < max_norm: the true coefficient is 1, nothing is written.
        let mut v = vec![tiny; 2000];
        let r = clip_grad_norm_with_isa_(&mut [GradMut::from(&mut v)], 1e300, opts, isa).unwrap();
        assert!(r.total_norm.is_finite(), "{isa:?}: {r:?}");
        assert_eq!((r.clip_coef, r.clipped), (1.0, false));
        assert!(v.iter().all(|x| x.to_bits() == 1), "{isa:?}: gradients changed");
    }
    // A finite input whose norm truly exceeds f64: refused as for the other policies (its
    // coefficient is not 0), nothing written.
    let mut v = vec![1.0f32; 10_000];
    let r = clip_grad_norm_(&mut [GradMut::from(&mut v)], 1e300, opts);
    assert_eq!(r, Err(Error::NormOverflow { p: 0.01 }));
    assert!(v.iter().all(|&x| x == 1.0));
}

#[test]
fn reference_p_norm_is_accurate_for_ordinary_inputs() {
    // The reference's log-space formula against exact values.
    let v = vec![3.0f32, 4.0];
    let r = reference::norm(&[Grad::from(&v)], NormType::P(2.5));
    let want = (3f64.powf(2.5) + 4f64.powf(2.5)).powf(0.4);
    assert!(rel_err(r, want) <= 1e-15, "{r} vs {want}");
    let v = vec![1.0f32; 1000];
    let r = reference::norm(&[Grad::from(&v)], NormType::P(0.5));
    assert!(rel_err(r, 1e6) <= 1e-15, "{r}");
    let v = vec![f32::MAX; 7];
    let r = reference::norm(&[Grad::from(&v)], NormType::P(3.0));
    assert!(rel_err(r, f32::MAX as f64 * 7f64.cbrt()) <= 1e-15, "{r}");
    let v = vec![0.0f32, -0.0];
    assert_eq!(reference::norm(&[Grad::from(&v)], NormType::P(3.0)), 0.0);
}
