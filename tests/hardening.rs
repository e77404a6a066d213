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
        assert!(
            want.is_finite() && n.powf(1.0 / p).is_infinite(),
            "case {n} {p}"
        );
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
        assert!(
            v.iter().all(|x| x.to_bits() == 1),
            "{isa:?}: gradients changed"
        );
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

// ---------------------------------------------------------------------------------------------
// 3. NaN bits: the same on every path. A NaN element stays that NaN, quieted, payload kept; a
// NaN coefficient turns every other element into the canonical quiet NaN; inf * 0 is the
// canonical quiet NaN; finite * 0 is a zero with the IEEE sign.

/// Bit layout of a dtype: (exponent mask, quiet bit, canonical quiet NaN, sign bit).
fn layout(d: gradclip::DType) -> (u32, u32, u32, u32) {
    match d {
        gradclip::DType::F32 => (0x7F80_0000, 0x0040_0000, 0x7FC0_0000, 0x8000_0000),
        gradclip::DType::F16 => (0x7C00, 0x0200, 0x7E00, 0x8000),
        gradclip::DType::BF16 => (0x7F80, 0x0040, 0x7FC0, 0x8000),
    }
}

/// Every NaN class of a dtype: signalling and quiet, both signs, payload bits low, high, all.
fn nan_patterns(d: gradclip::DType) -> Vec<u32> {
    let (exp, quiet, _, sign) = layout(d);
    let payload_mask = quiet - 1;
    let payloads = [1, quiet >> 1, payload_mask, (quiet >> 1) | 1];
    let mut out = Vec::new();
    for s in [0, sign] {
        for &pl in &payloads {
            out.push(s | exp | pl); // signalling
            out.push(s | exp | quiet | pl); // quiet with payload
        }
        out.push(s | exp | quiet); // quiet, no payload
    }
    if d == gradclip::DType::F32 {
        out.push(0xFFA0_0005); // the reproduction
    }
    out
}

/// Ordinary and infinite values in a dtype's bits.
fn other_patterns(d: gradclip::DType, with_inf: bool) -> Vec<u32> {
    let vals = [1.0f32, -2.5, 0.0, -0.0, 3.0e-5, -65504.0, 1e-7];
    let mut out: Vec<u32> = vals.iter().map(|&v| to_bits(d, v)).collect();
    if with_inf {
        let (exp, _, _, sign) = layout(d);
        out.extend([exp, sign | exp]);
    }
    out
}

fn to_bits(d: gradclip::DType, v: f32) -> u32 {
    match d {
        gradclip::DType::F32 => v.to_bits(),
        gradclip::DType::F16 => f16::from_f32(v).to_bits() as u32,
        gradclip::DType::BF16 => bf16::from_f32(v).to_bits() as u32,
    }
}

fn from_bits(d: gradclip::DType, bits: &[u32]) -> Buf {
    match d {
        gradclip::DType::F32 => Buf::F32(bits.iter().map(|&b| f32::from_bits(b)).collect()),
        gradclip::DType::F16 => Buf::F16(bits.iter().map(|&b| f16::from_bits(b as u16)).collect()),
        gradclip::DType::BF16 => {
            Buf::BF16(bits.iter().map(|&b| bf16::from_bits(b as u16)).collect())
        }
    }
}

/// The rule, element by element, through `half`'s conversions (not gradclip's).
fn expected_bits(d: gradclip::DType, x: u32, c: f32) -> u32 {
    let (exp, quiet, canonical, sign) = layout(d);
    let is_nan = x & !sign > exp;
    if is_nan {
        return x | quiet;
    }
    let wide = match d {
        gradclip::DType::F32 => f32::from_bits(x),
        gradclip::DType::F16 => f16::from_bits(x as u16).to_f32(),
        gradclip::DType::BF16 => bf16::from_bits(x as u16).to_f32(),
    };
    let r = wide * c;
    if r.is_nan() {
        canonical
    } else {
        to_bits(d, r)
    }
}

const DTYPES: [gradclip::DType; 3] = [
    gradclip::DType::F32,
    gradclip::DType::F16,
    gradclip::DType::BF16,
];

/// Buffers of every dtype, `len` elements cycling through `patterns` from `start`.
fn nan_buffers(len: usize, start: usize, nans: bool, infs: bool) -> Vec<Buf> {
    DTYPES
        .iter()
        .map(|&d| {
            let mut pat = other_patterns(d, infs);
            if nans {
                pat.extend(nan_patterns(d));
            }
            let bits: Vec<u32> = (0..len).map(|i| pat[(start + i) % pat.len()]).collect();
            from_bits(d, &bits)
        })
        .collect()
}

fn dtype_of(b: &Buf) -> gradclip::DType {
    match b {
        Buf::F32(_) => gradclip::DType::F32,
        Buf::F16(_) => gradclip::DType::F16,
        Buf::BF16(_) => gradclip::DType::BF16,
    }
}

/// Checks `after` against the rule applied to `before` with coefficient `c`.
fn assert_rule(before: &[Buf], after: &[Buf], c: f32, what: &str) {
    for (b, a) in before.iter().zip(after) {
        let d = dtype_of(b);
        for (i, (&x, &y)) in b.bits().iter().zip(&a.bits()).enumerate() {
            let want = expected_bits(d, x, c);
            assert_eq!(
                y, want,
                "{what} {d:?}[{i}]: {x:#x} * {c:e} gave {y:#x}, want {want:#x}"
            );
        }
    }
}

fn lengths() -> [usize; 5] {
    [1, 19, 37, 200, 1031]
}

#[test]
fn nan_bits_propagate_policy_every_isa() {
    let opts = ClipOptions {
        on_nonfinite: NonFinitePolicy::Propagate,
        ..ClipOptions::default()
    };
    // At least 19 elements, so every buffer holds an infinity and (with `nans`) a NaN.
    for len in lengths().into_iter().filter(|&n| n >= 19) {
        for start in [0, 5] {
            // With NaNs: coefficient NaN. With infinities only: coefficient 0.
            for (nans, c) in [(true, f32::NAN), (false, 0.0f32)] {
                let before = nan_buffers(len, start, nans, true);
                let mut portable = None;
                for isa in Isa::available() {
                    let mut after = before.clone();
                    let mut views: Vec<GradMut<'_>> = after.iter_mut().map(Buf::grad_mut).collect();
                    let r = clip_grad_norm_with_isa_(&mut views, 1.0, opts, isa).unwrap();
                    drop(views);
                    assert_eq!((r.clip_coef as f32).to_bits(), c.to_bits(), "{r:?}");
                    assert_rule(&before, &after, c, &format!("{isa:?} len {len}"));
                    let bits: Vec<Vec<u32>> = after.iter().map(Buf::bits).collect();
                    match &portable {
                        None => portable = Some(bits),
                        Some(p) => assert_eq!(p, &bits, "{isa:?} differs from portable"),
                    }
                }
            }
        }
    }
}

#[test]
fn nan_bits_clip_with_a_nan_total_norm() {
    for len in lengths() {
        let before = nan_buffers(len, 3, true, true);
        let mut after = before.clone();
        let mut views: Vec<GradMut<'_>> = after.iter_mut().map(Buf::grad_mut).collect();
        let r = gradclip::clip_grads_with_norm_(&mut views, 1.0, f64::NAN).unwrap();
        drop(views);
        assert!(r.clip_coef.is_nan() && r.clipped);
        assert_rule(&before, &after, f32::NAN, "clip_grads_with_norm_");
    }
}

#[test]
fn nan_bits_scale_by_zero_and_by_a_finite_factor_every_isa() {
    for len in lengths() {
        for start in [0, 2] {
            let before = nan_buffers(len, start, true, true);
            for factor in [0.0f64, -0.0, 0.5, -3.0, 1e-30] {
                let mut portable = None;
                for isa in Isa::available() {
                    let mut after = before.clone();
                    let mut views: Vec<GradMut<'_>> = after.iter_mut().map(Buf::grad_mut).collect();
                    gradclip::scale_with_isa_(&mut views, factor, isa).unwrap();
                    drop(views);
                    assert_rule(
                        &before,
                        &after,
                        factor as f32,
                        &format!("{isa:?} x{factor}"),
                    );
                    let bits: Vec<Vec<u32>> = after.iter().map(Buf::bits).collect();
                    match &portable {
                        None => portable = Some(bits),
                        Some(p) => assert_eq!(p, &bits, "{isa:?} differs from portable"),
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The coefficient and what is written.

#[test]
fn clip_coefficient_agrees_with_clip_grads_with_norm() {
    assert_eq!(
        gradclip::clip_coefficient(1.0, -5.0, 1e-6),
        Err(Error::InvalidTotalNorm(-5.0))
    );
    for total in [
        -5.0,
        -0.0,
        0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        3.0,
        -1e-300,
    ] {
        let mut v = vec![1.0f32; 4];
        let a = gradclip::clip_coefficient(1.0, total, 1e-6);
        let b = gradclip::clip_grads_with_norm_(&mut [GradMut::from(&mut v)], 1.0, total);
        match (&a, &b) {
            (Ok(c), Ok(r)) => assert_eq!(c.to_bits(), r.clip_coef.to_bits(), "{total}"),
            (Err(e), Err(f)) => assert_eq!(e, f, "{total}"),
            _ => panic!("total {total}: clip_coefficient {a:?}, clip_grads_with_norm_ {b:?}"),
        }
    }
}

#[test]
fn a_coefficient_that_is_one_in_f32_writes_nothing() {
    // [3, 4] with max_norm 5.00000095: coef = 0.99999999 < 1, but f32(coef) == 1.
    let max_norm = 5.000_000_95;
    for isa in Isa::available() {
        let mut v = vec![3.0f32, 4.0];
        let r = clip_grad_norm_with_isa_(
            &mut [GradMut::from(&mut v)],
            max_norm,
            ClipOptions::default(),
            isa,
        )
        .unwrap();
        assert!(r.clip_coef < 1.0 && r.clip_coef as f32 == 1.0, "{r:?}");
        assert!(!r.clipped, "{isa:?}: reported as rewritten: {r:?}");
        assert_eq!(v, [3.0, 4.0]);
    }
    // Nothing written means nothing: a signalling NaN is not even quieted.
    let snan = f32::from_bits(0x7F80_0001);
    let mut v = vec![snan, 2.0];
    gradclip::scale_(&mut [GradMut::from(&mut v)], 1.000_000_01).unwrap();
    assert_eq!(v[0].to_bits(), 0x7F80_0001);
    let mut h = vec![f16::from_bits(0x7C01)];
    let r = gradclip::clip_grads_with_norm_(&mut [GradMut::from(&mut h)], 5.000_000_95, 5.0);
    assert!(!r.unwrap().clipped);
    assert_eq!(h[0].to_bits(), 0x7C01);
}
