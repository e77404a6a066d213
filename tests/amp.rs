//! The fused AMP step (`unscale_clip_grad_norm_`): every ISA and thread count gives the same
//! bits, the norm is within 1e-14 of the scalar reference divided by the loss scale, every
//! written element is `round_to_dtype(f32(x) * f32(coef / S))`, non-finite input writes nothing,
//! and with a power-of-two scale it equals the two-pass `scale_(1/S)` + `clip_grad_norm_`. In
//! exact mode (`ClipOptions::summation`) the norm is the exactly rounded one, the same bits for
//! any split of the gradients into buffers.

mod common;

use common::*;
use gradclip::{
    clip_coefficient, clip_grad_norm_, get_total_norm, get_total_norm_exact, reference, scale_,
    unscale_clip_grad_norm_, unscale_clip_grad_norm_with_isa_, AmpReport, ClipOptions, Error, Grad,
    GradMut, Isa, NonFinite, NonFinitePolicy, NormType, Summation, CHUNK_ELEMS,
};

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

fn opts(norm_type: NormType, on_nonfinite: NonFinitePolicy) -> ClipOptions {
    ClipOptions {
        norm_type,
        on_nonfinite,
        ..ClipOptions::default()
    }
}

fn grads_of(set: &[Buf]) -> Vec<Grad<'_>> {
    set.iter().map(Buf::grad).collect()
}

/// Runs the fused step on a copy of `set`.
fn run(
    set: &[Buf],
    scale: f64,
    max_norm: f64,
    o: ClipOptions,
    isa: Isa,
    threads: usize,
) -> (Result<AmpReport, Error>, Vec<Buf>) {
    let mut out = set.to_vec();
    let r = in_pool(threads, || {
        let mut views: Vec<GradMut<'_>> = out.iter_mut().map(Buf::grad_mut).collect();
        unscale_clip_grad_norm_with_isa_(&mut views, scale, max_norm, o, isa)
    });
    (r, out)
}

/// Every element of `after` is `round_to_dtype(f32(x) * factor)` of `before`.
fn assert_scaled(before: &[Buf], after: &[Buf], factor: f32) {
    for (b, a) in before.iter().zip(after) {
        let want = match b {
            Buf::F32(v) => Buf::F32(v.iter().map(|&x| reference::scale_f32(x, factor)).collect()),
            Buf::F16(v) => Buf::F16(v.iter().map(|&x| reference::scale_f16(x, factor)).collect()),
            Buf::BF16(v) => Buf::BF16(
                v.iter()
                    .map(|&x| reference::scale_bf16(x, factor))
                    .collect(),
            ),
        };
        assert!(a.bits() == want.bits(), "factor {factor:e}: not x * factor");
    }
}

fn sets() -> Vec<Vec<Buf>> {
    let mut rng = Rng(0xA3F1);
    let c = CHUNK_ELEMS;
    let mut out = Vec::new();
    for len in [0, 1, 7, 33, c - 1, c, c + 1, 3 * c + 5] {
        let v = rng.vec_f32(sized(len));
        out.push(Buf::all_dtypes(&v).to_vec());
    }
    let mut mixed = Vec::new();
    for i in 0..sized(300) {
        let v = rng.vec_f32(1 + (i * 131) % 3000);
        mixed.push(Buf::all_dtypes(&v)[i % 3].clone());
    }
    mixed.push(Buf::F32(rng.vec_f32(sized(2 * c + 17))));
    out.push(mixed);
    out
}

#[test]
fn every_isa_and_thread_count_gives_the_same_bits_and_the_reference_values() {
    let norms = [NormType::L2, NormType::L1, NormType::Inf, NormType::P(3.0)];
    for set in sets() {
        for nt in norms {
            let raw = reference::norm(&grads_of(&set), nt);
            for scale in [1.0, 1024.0, 65536.0, 3.0, 0.5] {
                for max_norm in [1e-3, 1.0, 1e30] {
                    let o = opts(nt, NonFinitePolicy::Error);
                    let (want, want_out) = run(&set, scale, max_norm, o, Isa::Portable, 1);
                    let want = want.expect("finite input");
                    for isa in Isa::available() {
                        for threads in [1, 2, 3, 8] {
                            let (got, got_out) = run(&set, scale, max_norm, o, isa, threads);
                            let got = got.expect("finite input");
                            assert_eq!(got.total_norm.to_bits(), want.total_norm.to_bits());
                            assert_eq!(got.factor.to_bits(), want.factor.to_bits());
                            assert_eq!(got, want, "{isa:?} {threads} threads");
                            for (a, b) in got_out.iter().zip(&want_out) {
                                assert!(a.bits() == b.bits(), "{isa:?} {threads} threads");
                            }
                        }
                    }
                    // Against the scalar reference.
                    let ref_total = raw / scale;
                    let tol = if nt == NormType::P(3.0) { 1e-12 } else { 1e-14 };
                    assert!(
                        rel_err(want.total_norm, ref_total) <= tol,
                        "{nt:?} S={scale} {} vs {ref_total}",
                        want.total_norm
                    );
                    assert_eq!(want.scaled_norm / scale, want.total_norm);
                    let coef = clip_coefficient(max_norm, want.total_norm, 1e-6).unwrap();
                    assert_eq!(want.clip_coef, coef);
                    assert_eq!(want.factor, (coef / scale) as f32);
                    assert_eq!(want.written, want.factor != 1.0);
                    assert!(want.found_inf.is_none());
                    if want.written {
                        assert_scaled(&set, &want_out, want.factor);
                    } else {
                        for (a, b) in want_out.iter().zip(&set) {
                            assert!(a.bits() == b.bits(), "unit factor wrote");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn power_of_two_scale_equals_unscale_then_clip_bit_for_bit() {
    // Values stay far from the subnormals after unscaling, so x / S is exact in every dtype.
    let mut rng = Rng(77);
    for scale in [1.0f64, 2.0, 1024.0, 65536.0, 0.25] {
        for max_norm in [0.01, 1.0, 1e6] {
            // |x| in [1e-3, 1) before scaling: inside the f16 range after scaling by up to 2^16.
            let v: Vec<f32> = rng
                .vec_f32(sized(3 * CHUNK_ELEMS + 11))
                .into_iter()
                .map(|x| (x / 16384.0).abs().clamp(1e-3, 0.9).copysign(x) * scale as f32)
                .collect();
            let set = Buf::all_dtypes(&v).to_vec();
            let (fused, fused_out) = run(
                &set,
                scale,
                max_norm,
                ClipOptions::default(),
                Isa::selected(),
                2,
            );
            let fused = fused.unwrap();
            let mut two = set.clone();
            let mut views: Vec<GradMut<'_>> = two.iter_mut().map(Buf::grad_mut).collect();
            scale_(&mut views, 1.0 / scale).unwrap();
            let r = clip_grad_norm_(&mut views, max_norm, ClipOptions::default()).unwrap();
            assert_eq!(
                fused.total_norm.to_bits(),
                r.total_norm.to_bits(),
                "S={scale}"
            );
            assert_eq!(fused.clip_coef.to_bits(), r.clip_coef.to_bits());
            for (a, b) in fused_out.iter().zip(&two) {
                assert!(a.bits() == b.bits(), "S={scale} max_norm={max_norm}");
            }
        }
    }
}

#[test]
fn nonfinite_input_writes_nothing_and_names_the_first_element() {
    let mut rng = Rng(5);
    let n = sized(2 * CHUNK_ELEMS + 3);
    let base = rng.vec_f32(n);
    for (bad, pos) in [
        (f32::NAN, 0),
        (f32::INFINITY, n / 2),
        (f32::NEG_INFINITY, n - 1),
    ] {
        for dt in 0..3 {
            let mut v = base.clone();
            v[pos] = bad;
            let set = vec![
                Buf::all_dtypes(&base[..100])[dt].clone(),
                Buf::all_dtypes(&v)[dt].clone(),
            ];
            let first = NonFinite {
                buffer: 1,
                index: pos,
                value: bad as f64,
            };
            for isa in Isa::available() {
                let o = opts(NormType::L2, NonFinitePolicy::Error);
                let (r, out) = run(&set, 1024.0, 1.0, o, isa, 2);
                assert_eq!(r, Err(Error::NonFinite(first)));
                for (a, b) in out.iter().zip(&set) {
                    assert!(a.bits() == b.bits(), "{isa:?}: a buffer changed");
                }
                for policy in [NonFinitePolicy::Skip, NonFinitePolicy::Propagate] {
                    let (r, out) = run(&set, 1024.0, 1.0, opts(NormType::L2, policy), isa, 3);
                    let r = r.unwrap();
                    assert_eq!(r.found_inf, Some(first));
                    assert!(!r.written && r.factor == 1.0 && r.clip_coef == 1.0);
                    if bad.is_nan() {
                        assert!(r.total_norm.is_nan());
                    } else {
                        assert_eq!(r.total_norm, f64::INFINITY);
                    }
                    for (a, b) in out.iter().zip(&set) {
                        assert!(a.bits() == b.bits(), "{isa:?}: a buffer changed");
                    }
                }
            }
        }
    }
}

#[test]
fn unit_factor_writes_nothing() {
    // S = 1 and nothing to clip: the factor is exactly 1 and not one element is stored.
    let set = vec![
        Buf::F32(vec![0.5, -0.25]),
        Buf::F32(Vec::new()), // an empty buffer next to ordinary ones
        Buf::BF16(to_bf16(&[1e-3])),
    ];
    let (r, out) = run(&set, 1.0, 10.0, ClipOptions::default(), Isa::selected(), 1);
    let r = r.unwrap();
    assert!(!r.written && r.factor == 1.0 && !r.clipped());
    assert_eq!(out, set);
    // The same set with a scale of 2: written, halved exactly.
    let (r, out) = run(&set, 2.0, 10.0, ClipOptions::default(), Isa::selected(), 1);
    assert!(r.unwrap().written);
    assert_eq!(out[0], Buf::F32(vec![0.25, -0.125]));
}

#[test]
fn invalid_arguments_are_refused_before_anything_is_touched() {
    let mut w = vec![1.0f32, 2.0];
    let snapshot = w.clone();
    for s in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-39, 1e-300] {
        let r =
            unscale_clip_grad_norm_(&mut [GradMut::from(&mut w)], s, 1.0, ClipOptions::default());
        assert_eq!(r, Err(Error::InvalidLossScale(s)), "{s:e}");
    }
    for m in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let r =
            unscale_clip_grad_norm_(&mut [GradMut::from(&mut w)], 2.0, m, ClipOptions::default());
        assert_eq!(r, Err(Error::InvalidMaxNorm(m)));
    }
    let bad_eps = ClipOptions {
        eps: -1.0,
        ..ClipOptions::default()
    };
    assert_eq!(
        unscale_clip_grad_norm_(&mut [GradMut::from(&mut w)], 2.0, 1.0, bad_eps),
        Err(Error::InvalidEps(-1.0))
    );
    let bad_p = opts(NormType::P(-1.0), NonFinitePolicy::Error);
    assert_eq!(
        unscale_clip_grad_norm_(&mut [GradMut::from(&mut w)], 2.0, 1.0, bad_p),
        Err(Error::InvalidNormType { p: -1.0 })
    );
    assert_eq!(w, snapshot);
}

#[test]
fn norm_matches_get_total_norm_of_the_scaled_buffers() {
    let mut rng = Rng(11);
    let v = rng.vec_f32(sized(CHUNK_ELEMS * 2 + 1));
    for b in Buf::all_dtypes(&v) {
        let set = vec![b];
        let want = get_total_norm(&grads_of(&set), NormType::L2).unwrap();
        let (r, _) = run(&set, 3.0, 1e30, ClipOptions::default(), Isa::selected(), 2);
        let r = r.unwrap();
        assert_eq!(r.scaled_norm.to_bits(), want.to_bits());
        assert_eq!(r.total_norm, want / 3.0);
    }
}

fn exact(nt: NormType) -> ClipOptions {
    ClipOptions {
        norm_type: nt,
        summation: Summation::Exact,
        ..ClipOptions::default()
    }
}

/// The f32 values of `v` cut at `cuts` into buffers of the dtype `dt` (0 f32, 1 f16, 2 bf16).
fn pieces(v: &[f32], cuts: &[usize], dt: usize) -> Vec<Buf> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain([v.len()].iter()) {
        out.push(Buf::all_dtypes(&v[at..c])[dt].clone());
        at = c;
    }
    out
}

fn concat_bits(set: &[Buf]) -> Vec<u32> {
    set.iter().flat_map(Buf::bits).collect()
}

/// Zeros with three values whose exact sum of squares (`tie_l2`) or of magnitudes (`tie_l1`)
/// lies just above a rounding tie: `2.25 + 2^-52 + 2^-106` and `1 + 2^-53 + 2^-106`. A
/// compensated sum rounds the two small terms to the tie and then to even (2.25, 1), the exact
/// one rounds up; the norms differ in the last bit (1.5 vs 1.5 + 2^-52, 1 vs 1 + 2^-52).
fn tie(n: usize, l1: bool) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    let (a, b, c) = if l1 {
        (1.0, 2f32.powi(-53), 2f32.powi(-106))
    } else {
        (1.5, 2f32.powi(-26), 2f32.powi(-53))
    };
    v[5] = a;
    v[n / 2] = b;
    v[n - 3] = c;
    v
}

#[test]
fn exact_mode_gives_the_exact_norm_for_any_split_isa_and_thread_count() {
    let mut rng = Rng(0xE8AC);
    let n = sized(3 * CHUNK_ELEMS + 123);
    let data = [
        ("random", rng.vec_f32(n)),
        ("tie_l2", tie(n, false)),
        ("tie_l1", tie(n, true)),
    ];
    let splits: [Vec<usize>; 4] = [
        vec![],
        vec![n / 3],
        vec![1, 777, n / 2, n / 2, n - 5],
        (1..148).map(|i| i * n / 148 + i % 7).collect(),
    ];
    for (name, v) in &data {
        for nt in [NormType::L2, NormType::L1, NormType::Inf] {
            for dt in 0..3 {
                let whole = pieces(v, &[], dt);
                for scale in [1024.0, 3.0] {
                    for max_norm in [1e-3, 1e30] {
                        let (want, want_out) =
                            run(&whole, scale, max_norm, exact(nt), Isa::Portable, 1);
                        let want = want.expect("finite input");
                        // The scaled norm is the exactly rounded norm of the scaled buffers.
                        let ex = get_total_norm_exact(&grads_of(&whole), nt).unwrap();
                        let at = format!("{name} {nt:?} dtype {dt}");
                        assert_eq!(want.scaled_norm.to_bits(), ex.to_bits(), "{at}");
                        assert_eq!(want.total_norm, ex / scale);
                        let coef = clip_coefficient(max_norm, ex / scale, 1e-6).unwrap();
                        assert_eq!(want.clip_coef, coef);
                        if want.written {
                            assert_scaled(&whole, &want_out, want.factor);
                        }
                        for cuts in &splits {
                            let set = pieces(v, cuts, dt);
                            for isa in Isa::available() {
                                for threads in [1, 3] {
                                    let (got, got_out) =
                                        run(&set, scale, max_norm, exact(nt), isa, threads);
                                    let got = got.unwrap();
                                    assert_eq!(got, want, "{at} {isa:?} {threads} t {cuts:?}");
                                    assert!(concat_bits(&got_out) == concat_bits(&want_out));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // The ties: the exact norm rounds up where the compensated one does not (f32 and bf16 hold
    // the three values; the test above would not notice a compensated norm without this).
    for dt in [0, 2] {
        for (l1, nt) in [(false, NormType::L2), (true, NormType::L1)] {
            let set = pieces(&tie(n, l1), &[], dt);
            let want = if l1 { 1.0 } else { 1.5 };
            let (e, _) = run(&set, 1.0, 1e30, exact(nt), Isa::selected(), 1);
            let (c, _) = run(
                &set,
                1.0,
                1e30,
                opts(nt, NonFinitePolicy::Error),
                Isa::selected(),
                1,
            );
            assert_eq!(
                e.unwrap().total_norm,
                want + 2f64.powi(-52),
                "{nt:?} dtype {dt}"
            );
            assert_eq!(c.unwrap().total_norm, want, "{nt:?} dtype {dt}");
        }
    }
}

#[test]
fn exact_mode_with_a_power_of_two_scale_gives_the_exact_norm_of_the_unscaled_gradients() {
    let mut rng = Rng(31);
    let n = sized(2 * CHUNK_ELEMS + 9);
    for (v, scale) in [2.0f32, 1024.0, 65536.0]
        .into_iter()
        .flat_map(|s| [(rng.vec_f32(n), s), (tie(n, false), s), (tie(n, true), s)])
    {
        let scaled: Vec<f32> = v.iter().map(|&x| x * scale).collect();
        for nt in [NormType::L2, NormType::L1, NormType::Inf] {
            let (r, _) = run(
                &[Buf::F32(scaled.clone())],
                scale as f64,
                1e30,
                exact(nt),
                Isa::selected(),
                2,
            );
            let want = get_total_norm_exact(&[Grad::from(&v)], nt).unwrap();
            assert_eq!(
                r.unwrap().total_norm.to_bits(),
                want.to_bits(),
                "{nt:?} S={scale}"
            );
        }
    }
}

#[test]
fn exact_mode_keeps_p_norms_compensated_and_the_nonfinite_handling() {
    let mut rng = Rng(8);
    let v = rng.vec_f32(sized(CHUNK_ELEMS + 77));
    let set = vec![Buf::F32(v.clone()), Buf::BF16(to_bf16(&v[..1000]))];
    let p3 = opts(NormType::P(3.0), NonFinitePolicy::Error);
    let (a, a_out) = run(&set, 8.0, 0.1, exact(NormType::P(3.0)), Isa::selected(), 2);
    let (b, b_out) = run(&set, 8.0, 0.1, p3, Isa::selected(), 2);
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(a_out, b_out);
    let mut bad = v.clone();
    bad[CHUNK_ELEMS + 3] = f32::NAN;
    let set = vec![Buf::F32(v.clone()), Buf::F32(bad)];
    let first = NonFinite {
        buffer: 1,
        index: CHUNK_ELEMS + 3,
        value: f64::NAN,
    };
    let (r, out) = run(&set, 8.0, 0.1, exact(NormType::L2), Isa::selected(), 2);
    assert_eq!(r, Err(Error::NonFinite(first)));
    assert!(concat_bits(&out) == concat_bits(&set));
    let skip = ClipOptions {
        on_nonfinite: NonFinitePolicy::Skip,
        ..exact(NormType::L1)
    };
    let (r, out) = run(&set, 8.0, 0.1, skip, Isa::selected(), 2);
    let r = r.unwrap();
    assert_eq!(
        r.found_inf.map(|f| (f.buffer, f.index)),
        Some((1, CHUNK_ELEMS + 3))
    );
    assert!(r.total_norm.is_nan() && !r.written);
    assert!(concat_bits(&out) == concat_bits(&set));
}
