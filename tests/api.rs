//! The public API's contracts: PyTorch clip semantics, the non-finite policies, the split API,
//! value clipping, validation errors, mergeable partials.

mod common;

use common::*;
use gradclip::{
    bf16, clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, f16, get_total_norm, reference,
    scale_, total_norm_partial, ClipOptions, Error, Grad, GradMut, NonFinite, NonFinitePolicy,
    NormPartial, NormType,
};

#[test]
fn clip_matches_pytorch_formula_for_every_dtype() {
    let mut rng = Rng(1);
    // Keep every value inside f16's range (65504).
    let v: Vec<f32> = rng
        .vec_f32(sized(10_000))
        .into_iter()
        .map(|x| x.clamp(-6e4, 6e4))
        .collect();
    for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(3.0)] {
        let mut bufs = Buf::all_dtypes(&v).to_vec();
        let orig = bufs.clone();
        let grads: Vec<Grad<'_>> = orig.iter().map(Buf::grad).collect();
        let total = get_total_norm(&grads, nt).unwrap();
        let max_norm = total / 3.0;
        let opts = ClipOptions {
            norm_type: nt,
            ..ClipOptions::default()
        };
        let mut views: Vec<GradMut<'_>> = bufs.iter_mut().map(Buf::grad_mut).collect();
        let r = clip_grad_norm_(&mut views, max_norm, opts).unwrap();
        assert_eq!(r.total_norm, total);
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        assert_eq!(r.clip_coef, coef);
        assert!(r.clipped && r.nonfinite.is_none());
        let c = coef as f32;
        for (got, o) in bufs.iter().zip(&orig) {
            let want = match o {
                Buf::F32(x) => Buf::F32(x.iter().map(|&e| reference::scale_f32(e, c)).collect()),
                Buf::F16(x) => Buf::F16(x.iter().map(|&e| reference::scale_f16(e, c)).collect()),
                Buf::BF16(x) => Buf::BF16(x.iter().map(|&e| reference::scale_bf16(e, c)).collect()),
            };
            assert_eq!(got.bits(), want.bits());
        }
    }
}

#[test]
fn no_clip_needed_leaves_every_bit_alone() {
    let mut a = vec![0.25f32, -0.5, 0.0];
    let mut b = vec![f16::from_f32(0.1)];
    let before = (a.clone(), b.clone());
    let r = clip_grad_norm_(
        &mut [GradMut::from(&mut a), GradMut::from(&mut b)],
        10.0,
        ClipOptions::default(),
    )
    .unwrap();
    assert_eq!(r.clip_coef, 1.0);
    assert!(!r.clipped);
    assert_eq!((a, b), before);
}

#[test]
fn empty_sets_and_buffers() {
    let empty: [Grad<'_>; 0] = [];
    assert_eq!(get_total_norm(&empty, NormType::L2), Ok(0.0));
    assert_eq!(get_total_norm(&empty, NormType::Inf), Ok(0.0));
    assert_eq!(get_total_norm(&empty, NormType::P(3.0)), Ok(0.0));
    let e: Vec<bf16> = vec![];
    assert_eq!(get_total_norm(&[Grad::from(&e)], NormType::L1), Ok(0.0));
    let r = clip_grad_norm_(&mut [], 1.0, ClipOptions::default()).unwrap();
    assert_eq!((r.total_norm, r.clip_coef, r.clipped), (0.0, 1.0, false));
}

#[test]
fn nonfinite_policies() {
    let make = || {
        (
            vec![1.0f32, 2.0],
            vec![f16::from_f32(3.0), f16::INFINITY, f16::NAN],
        )
    };
    let first = NonFinite {
        buffer: 1,
        index: 1,
        value: f64::INFINITY,
    };

    // Error: nothing modified, first element named.
    let (mut a, mut b) = make();
    let e = clip_grad_norm_(
        &mut [GradMut::from(&mut a), GradMut::from(&mut b)],
        1.0,
        ClipOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e, Error::NonFinite(first));
    assert_eq!(
        e.to_string(),
        "non-finite gradient value inf in buffer 1 at index 1"
    );
    assert_eq!(a, make().0);

    // Skip: nothing modified, reported; the norm is NaN because a NaN is present after the inf.
    let (mut a, mut b) = make();
    let opts = ClipOptions {
        on_nonfinite: NonFinitePolicy::Skip,
        ..ClipOptions::default()
    };
    let r = clip_grad_norm_(
        &mut [GradMut::from(&mut a), GradMut::from(&mut b)],
        1.0,
        opts,
    )
    .unwrap();
    assert!(r.total_norm.is_nan() && !r.clipped && r.clip_coef == 1.0);
    assert_eq!(r.nonfinite, Some(first));
    assert_eq!(a, make().0);

    // Skip with only an inf: the norm is +inf.
    let mut c = vec![1.0f32, f32::NEG_INFINITY];
    let r = clip_grad_norm_(&mut [GradMut::from(&mut c)], 1.0, opts).unwrap();
    assert_eq!(r.total_norm, f64::INFINITY);

    // Propagate (PyTorch): NaN norm, NaN coefficient, everything becomes NaN.
    let (mut a, mut b) = make();
    let opts = ClipOptions {
        on_nonfinite: NonFinitePolicy::Propagate,
        ..ClipOptions::default()
    };
    let r = clip_grad_norm_(
        &mut [GradMut::from(&mut a), GradMut::from(&mut b)],
        1.0,
        opts,
    )
    .unwrap();
    assert!(r.total_norm.is_nan() && r.clip_coef.is_nan() && r.clipped);
    assert!(a.iter().all(|x| x.is_nan()) && b.iter().all(|x| x.is_nan()));

    // Propagate with only an inf: coefficient 0, finite values become 0, the inf becomes NaN.
    let mut c = vec![1.0f32, -2.0, f32::INFINITY];
    let r = clip_grad_norm_(&mut [GradMut::from(&mut c)], 1.0, opts).unwrap();
    assert_eq!((r.total_norm, r.clip_coef), (f64::INFINITY, 0.0));
    assert_eq!(c[0].to_bits(), 0.0f32.to_bits());
    assert_eq!(c[1].to_bits(), (-0.0f32).to_bits());
    assert!(c[2].is_nan());
}

#[test]
fn validation_errors_are_values() {
    let mut v = vec![1.0f32; 3];
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let r = clip_grad_norm_(&mut [GradMut::from(&mut v)], bad, ClipOptions::default());
        assert!(matches!(r, Err(Error::InvalidMaxNorm(_))), "{bad}");
    }
    for p in [0.0, -2.0, f64::NAN, f64::INFINITY] {
        let r = get_total_norm(&[Grad::from(&v)], NormType::P(p));
        assert!(matches!(r, Err(Error::InvalidNormType { .. })), "{p}");
        assert!(total_norm_partial(&[Grad::from(&v)], NormType::P(p)).is_err());
    }
    let opts = ClipOptions {
        eps: -1.0,
        ..ClipOptions::default()
    };
    assert!(matches!(
        clip_grad_norm_(&mut [GradMut::from(&mut v)], 1.0, opts),
        Err(Error::InvalidEps(_))
    ));
    assert!(matches!(
        clip_grads_with_norm_(&mut [GradMut::from(&mut v)], 1.0, -3.0),
        Err(Error::InvalidTotalNorm(_))
    ));
    assert!(matches!(
        clip_grad_value_(&mut [GradMut::from(&mut v)], f64::NAN),
        Err(Error::InvalidClipValue(_))
    ));
    assert!(matches!(
        scale_(&mut [GradMut::from(&mut v)], f64::NAN),
        Err(Error::InvalidFactor(_))
    ));
    assert_eq!(v, vec![1.0f32; 3]);
    // Errors carrying NaN compare equal to themselves.
    assert_eq!(
        Error::InvalidMaxNorm(f64::NAN),
        Error::InvalidMaxNorm(f64::NAN)
    );
    assert_ne!(Error::InvalidMaxNorm(1.0), Error::InvalidEps(1.0));
    // Every error has a readable message.
    assert!(Error::InvalidMaxNorm(0.0).to_string().contains("max_norm"));
}

#[test]
fn p_one_and_two_are_l1_and_l2() {
    let v = Rng(8).vec_f32(1000);
    let g = [Grad::from(&v)];
    assert_eq!(
        get_total_norm(&g, NormType::P(1.0)),
        get_total_norm(&g, NormType::L1)
    );
    assert_eq!(
        get_total_norm(&g, NormType::P(2.0)),
        get_total_norm(&g, NormType::L2)
    );
}

#[test]
fn split_api_matches_the_fused_one() {
    let v = Rng(9).vec_f32(5000);
    let (mut a, mut b) = (v.clone(), v.clone());
    let r1 = clip_grad_norm_(&mut [GradMut::from(&mut a)], 0.3, ClipOptions::default()).unwrap();
    let total = get_total_norm(&[Grad::from(&b)], NormType::L2).unwrap();
    let r2 = clip_grads_with_norm_(&mut [GradMut::from(&mut b)], 0.3, total).unwrap();
    assert_eq!(a, b);
    assert_eq!(r1.clip_coef, r2.clip_coef);
    // scale_ with 1.0 writes nothing; with 2.0 doubles exactly.
    scale_(&mut [GradMut::from(&mut b)], 2.0).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| 2.0 * x == *y));
}

#[test]
fn clip_grad_value_clamps_and_keeps_nan() {
    let mut a = vec![
        -5.0f32,
        -0.5,
        0.5,
        5.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let mut b: Vec<f16> = [-5.0f32, 0.05, 5.0]
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    clip_grad_value_(&mut [GradMut::from(&mut a), GradMut::from(&mut b)], 1.0).unwrap();
    assert_eq!(&a[..6], &[-1.0, -0.5, 0.5, 1.0, 1.0, -1.0]);
    assert!(a[6].is_nan());
    assert_eq!(
        b,
        vec![f16::from_f32(-1.0), f16::from_f32(0.05), f16::from_f32(1.0)]
    );
    // The threshold is rounded into the dtype: 0.1 in bf16.
    let mut c = vec![bf16::from_f32(3.0)];
    clip_grad_value_(&mut [GradMut::from(&mut c)], 0.1).unwrap();
    assert_eq!(c[0], bf16::from_f32(0.1));
}

#[test]
fn sharded_partials_merge_to_the_global_norm() {
    let mut rng = Rng(10);
    let shards: Vec<Vec<f32>> = (0..5).map(|i| rng.vec_f32(sized(1000 + i * 777))).collect();
    for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(4.0)] {
        let parts: Vec<NormPartial> = shards
            .iter()
            .map(|s| total_norm_partial(&[Grad::from(s)], nt).unwrap())
            .collect();
        // Through bytes, as a collective would send them.
        let bytes: Vec<u8> = parts
            .iter()
            .flat_map(|p| bytemuck::bytes_of(p).to_vec())
            .collect();
        let received: Vec<NormPartial> = bytemuck::pod_collect_to_vec(&bytes);
        let merged = received
            .iter()
            .fold(NormPartial::EMPTY, |acc, p| acc.merge(*p))
            .finish();
        let all: Vec<Grad<'_>> = shards.iter().map(Grad::from).collect();
        let want = reference::norm(&all, nt);
        assert!(rel_err(merged, want) <= 1e-13, "{nt:?}: {merged} vs {want}");
        assert_eq!(received[0].norm_type(), Some(nt));
    }
}

#[test]
fn first_nonfinite_across_scan_blocks() {
    // Past two 4096-element scan blocks, even under miri.
    let n = if cfg!(miri) { 8_200 } else { 20_000 };
    for pos in [0, 4095, 4096, 4097, 8191, n - 1] {
        for bad in [f32::NAN, f32::NEG_INFINITY] {
            let mut v = vec![1.0f32; n];
            v[pos] = bad;
            v[n - 1] = f32::INFINITY; // a later one must not be reported
            let b = gradclip::bf16::from_f32(bad);
            let mut w = vec![gradclip::bf16::from_f32(1.0); n];
            w[pos] = b;
            let got = gradclip::first_nonfinite(&[Grad::from(&v)]).unwrap();
            assert_eq!((got.buffer, got.index), (0, pos));
            let got = gradclip::first_nonfinite(&[Grad::from(&v[..0]), Grad::from(&w)]).unwrap();
            assert_eq!((got.buffer, got.index), (1, pos));
            assert_eq!(got.value.is_nan(), bad.is_nan());
        }
    }
}

#[test]
fn p_norm_overflow_is_an_error_not_a_zero_coefficient() {
    // (Σ 1^p)^(1/p) = n^(1/p) = 10000^100 = 1e400: beyond f64 although every element is 1.
    let mut v = vec![1.0f32; 10_000];
    let nt = NormType::P(0.01);
    assert_eq!(
        get_total_norm(&[Grad::from(&v)], nt),
        Err(Error::NormOverflow { p: 0.01 })
    );
    let opts = ClipOptions {
        norm_type: nt,
        ..ClipOptions::default()
    };
    for policy in [NonFinitePolicy::Error, NonFinitePolicy::Skip] {
        let r = clip_grad_norm_(
            &mut [GradMut::from(&mut v)],
            1.0,
            ClipOptions {
                on_nonfinite: policy,
                ..opts
            },
        );
        assert_eq!(r, Err(Error::NormOverflow { p: 0.01 }));
        assert!(v.iter().all(|&x| x == 1.0), "nothing may be written");
    }
    assert!(Error::NormOverflow { p: 0.01 }
        .to_string()
        .contains("exceeds"));
    // The partial says its input was finite although its value is not.
    let part = total_norm_partial(&[Grad::from(&v)], nt).unwrap();
    assert!(part.is_finite() && part.finish().is_infinite());
    // A moderate p on the same data is fine.
    let n = get_total_norm(&[Grad::from(&v)], NormType::P(0.5)).unwrap();
    assert!(rel_err(n, 1e8) < 1e-12);
}
