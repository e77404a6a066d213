//! The adapter against candle's own ops and against the Rust API on the same data; views, shared
//! storages, non-contiguous gradients and every refusal.

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use common::*;
use gradclip::GradMut;
use gradclip_candle::{
    clip_grad_norm, clip_grad_value, clip_grads_with_norm, total_norm, ClipOptions,
    NonFinitePolicy, NormType,
};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Vars of mixed shapes and dtypes with wide-range gradients (the third var has none), the store,
/// and copies of the stored gradients in order.
fn mixed_model(seed: u64) -> Result<(Vec<Var>, GradStore, Vec<Tensor>)> {
    let mut rng = Rng::new(seed);
    let specs: &[(&[usize], DType)] = &[
        (&[64, 33], DType::F32),
        (&[1000], DType::F16),
        (&[7], DType::F32),
        (&[3, 5, 11], DType::BF16),
        (&[70_000], DType::F32), // more than one 65,536-element chunk
        (&[0], DType::F32),
        (&[129], DType::BF16),
    ];
    let vars = vars(specs)?;
    let mut gs = Vec::new();
    let mut opt = Vec::new();
    for (i, (shape, dtype)) in specs.iter().enumerate() {
        let g = wide_tensor(&mut rng, shape, *dtype)?;
        // `gs` holds independent copies: the stored tensors are clipped in place.
        if i != 2 {
            gs.push(g.copy()?);
        }
        opt.push(if i == 2 { None } else { Some(g) });
    }
    let store = store(&vars, &opt);
    Ok((vars, store, gs))
}

fn rust_api_clip(
    grads: &[Tensor],
    max_norm: f64,
    opts: ClipOptions,
) -> Result<(gradclip::ClipReport, Vec<Vec<u32>>)> {
    let mut owned: Vec<Owned> = grads.iter().map(Owned::of).collect::<Result<_>>()?;
    let mut views: Vec<GradMut<'_>> = owned.iter_mut().map(Owned::grad_mut).collect();
    let report = gradclip::clip_grad_norm_(&mut views, max_norm, opts).unwrap();
    drop(views);
    Ok((report, owned.iter().map(Owned::bits).collect()))
}

fn with_grad<'a>(vars: &'a [Var], grads: &GradStore) -> Vec<&'a Var> {
    vars.iter().filter(|v| grads.get(v).is_some()).collect()
}

#[test]
fn norm_matches_candle_f64_ops() -> Result<()> {
    let (vars, grads, gs) = mixed_model(1)?;
    let ours = total_norm(&vars, &grads, NormType::L2)?;
    let refs: Vec<&Tensor> = gs.iter().collect();
    let theirs = candle_l2_f64(&refs)?;
    assert!(
        ((ours - theirs) / theirs).abs() < 1e-12,
        "{ours} vs {theirs}"
    );
    // Per dtype alone as well.
    for dt in DTYPES {
        let mut rng = Rng::new(7);
        let v = vars_of(&[(&[513], dt)])?;
        let g = wide_tensor(&mut rng, &[513], dt)?;
        let s = store(&v, &[Some(g.clone())]);
        let ours = total_norm(&v, &s, NormType::L2)?;
        let theirs = candle_l2_f64(&[&g])?;
        assert!(((ours - theirs) / theirs).abs() < 1e-12, "{dt:?}");
    }
    Ok(())
}

fn vars_of(specs: &[(&[usize], DType)]) -> Result<Vec<Var>> {
    vars(specs)
}

#[test]
fn other_norms_match_candle_ops() -> Result<()> {
    let (vars, grads, gs) = mixed_model(2)?;
    let mut l1 = 0.0;
    let mut inf = 0.0f64;
    let mut p3 = 0.0;
    for g in &gs {
        let a = g.to_dtype(DType::F64)?.abs()?;
        l1 += a.sum_all()?.to_scalar::<f64>()?;
        if a.elem_count() > 0 {
            inf = inf.max(a.flatten_all()?.max(0)?.to_scalar::<f64>()?);
        }
        p3 += a.powf(3.0)?.sum_all()?.to_scalar::<f64>()?;
    }
    let rel = |a: f64, b: f64| ((a - b) / b).abs();
    assert!(rel(total_norm(&vars, &grads, NormType::L1)?, l1) < 1e-12);
    assert_eq!(total_norm(&vars, &grads, NormType::Inf)?, inf);
    assert!(rel(total_norm(&vars, &grads, NormType::P(3.0))?, p3.cbrt()) < 1e-12);
    Ok(())
}

#[test]
fn norm_equals_the_rust_api_bit_for_bit() -> Result<()> {
    let (vars, grads, gs) = mixed_model(3)?;
    let owned: Vec<Owned> = gs.iter().map(Owned::of).collect::<Result<_>>()?;
    let views: Vec<gradclip::Grad<'_>> = owned
        .iter()
        .map(|o| match o {
            Owned::F32(v) => gradclip::Grad::from(v),
            Owned::F16(v) => gradclip::Grad::from(v),
            Owned::BF16(v) => gradclip::Grad::from(v),
        })
        .collect();
    for nt in [
        NormType::L2,
        NormType::L1,
        NormType::Inf,
        NormType::P(0.5),
        NormType::P(3.0),
    ] {
        let ours = total_norm(&vars, &grads, nt)?;
        let rust = gradclip::get_total_norm(&views, nt).unwrap();
        assert_eq!(ours.to_bits(), rust.to_bits(), "{nt:?}");
    }
    Ok(())
}

#[test]
fn clip_equals_candle_broadcast_mul_and_the_rust_api() -> Result<()> {
    let (vars, mut grads, gs) = mixed_model(4)?;
    let max_norm = 0.75;
    let (rust_report, rust_bits) = rust_api_clip(&gs, max_norm, ClipOptions::default())?;
    let norm = candle_l2_f64(&gs.iter().collect::<Vec<_>>())?;
    let report = clip_grad_norm(&vars, &mut grads, max_norm, ClipOptions::default())?;
    assert_eq!(report, rust_report);
    assert!(report.clipped);
    assert!(((report.total_norm - norm) / norm).abs() < 1e-12);
    assert_eq!(report.clip_coef, max_norm / (report.total_norm + 1e-6));
    for ((v, g), rb) in with_grad(&vars, &grads)
        .into_iter()
        .zip(&gs)
        .zip(&rust_bits)
    {
        let got = grad_bits(&grads, v)?;
        assert_same_bits(&got, rb, "Rust API");
        let candle = bits(&candle_scaled(g, report.clip_coef)?)?;
        assert_same_bits(&got, &candle, &format!("candle {:?}", g.dtype()));
    }
    // f32 alone: exactly `g.broadcast_mul(f32 coef)`.
    let mut rng = Rng::new(5);
    let v = vars_of(&[(&[300, 7], DType::F32)])?;
    let g = wide_tensor(&mut rng, &[300, 7], DType::F32)?;
    let mut s = store(&v, &[Some(g.copy()?)]);
    let r = clip_grad_norm(&v, &mut s, 1.0, ClipOptions::default())?;
    assert!(r.clipped);
    let expected = g.broadcast_mul(&Tensor::new(r.clip_coef as f32, &Device::Cpu)?)?;
    assert_same_bits(&grad_bits(&s, &v[0])?, &bits(&expected)?, "broadcast_mul");
    Ok(())
}

#[test]
fn clip_is_in_place_on_the_stored_tensor() -> Result<()> {
    let (vars, mut grads, _) = mixed_model(6)?;
    let before: Vec<Tensor> = with_grad(&vars, &grads)
        .into_iter()
        .map(|v| grads.get(v).unwrap().clone())
        .collect();
    let ids: Vec<_> = before.iter().map(Tensor::id).collect();
    let report = clip_grad_norm(&vars, &mut grads, 0.5, ClipOptions::default())?;
    assert!(report.clipped);
    for ((v, old), id) in with_grad(&vars, &grads).into_iter().zip(&before).zip(ids) {
        let now = grads.get(v).unwrap();
        assert_eq!(now.id(), id, "the store holds the same tensor");
        // `old` shares the storage: it sees the new values.
        assert_eq!(bits(old)?, bits(now)?);
    }
    Ok(())
}

#[test]
fn nothing_written_when_the_norm_is_below_max() -> Result<()> {
    let (vars, mut grads, gs) = mixed_model(8)?;
    let stored = |grads: &GradStore| -> Result<Vec<Vec<u32>>> {
        with_grad(&vars, grads)
            .into_iter()
            .map(|v| grad_bits(grads, v))
            .collect()
    };
    let before = stored(&grads)?;
    assert_eq!(before, gs.iter().map(bits).collect::<Result<Vec<_>>>()?);
    let norm = total_norm(&vars, &grads, NormType::L2)?;
    let report = clip_grad_norm(&vars, &mut grads, norm * 2.0, ClipOptions::default())?;
    assert!(!report.clipped);
    assert_eq!(report.clip_coef, 1.0);
    assert_eq!(before, stored(&grads)?);
    // Just above max_norm: written.
    let report = clip_grad_norm(&vars, &mut grads, norm * 0.999, ClipOptions::default())?;
    assert!(report.clipped);
    assert_ne!(before, stored(&grads)?);
    Ok(())
}

#[test]
fn split_api_equals_the_one_call() -> Result<()> {
    let (vars, mut a, gs) = mixed_model(9)?;
    let mut b = GradStore::default();
    for (v, g) in with_grad(&vars, &a).into_iter().zip(&gs) {
        b.insert(v, g.clone());
    }
    let one = clip_grad_norm(&vars, &mut a, 0.25, ClipOptions::default())?;
    let n = total_norm(&vars, &b, NormType::L2)?;
    let two = clip_grads_with_norm(&vars, &mut b, 0.25, n)?;
    assert_eq!(one, two);
    for v in with_grad(&vars, &a) {
        assert_eq!(grad_bits(&a, v)?, grad_bits(&b, v)?);
    }
    Ok(())
}

#[test]
fn views_with_a_start_offset_are_read_and_written_at_their_offset() -> Result<()> {
    for dt in DTYPES {
        let mut rng = Rng::new(10);
        let base = wide_tensor(&mut rng, &[40, 9], dt)?;
        let view = base.narrow(0, 13, 20)?; // elements 117..297 of the storage
        assert_eq!(view.layout().contiguous_offsets(), Some((117, 297)));
        let v = vars_of(&[(&[20, 9], dt)])?;
        let mut s = store(&v, &[Some(view.clone())]);
        let before = bits(&base)?;
        let n = total_norm(&v, &s, NormType::L2)?;
        let expected_n = candle_l2_f64(&[&view.copy()?])?;
        assert!(((n - expected_n) / expected_n).abs() < 1e-12, "{dt:?}");
        let copy = view.copy()?;
        let r = clip_grad_norm(&v, &mut s, 0.1, ClipOptions::default())?;
        assert!(r.clipped);
        let after = bits(&base)?;
        assert_eq!(after[..117], before[..117], "{dt:?}: before the view");
        assert_eq!(after[297..], before[297..], "{dt:?}: after the view");
        assert_eq!(
            after[117..297],
            bits(&candle_scaled(&copy, r.clip_coef)?)?[..]
        );
        assert_eq!(grad_bits(&s, &v[0])?, after[117..297]);
    }
    Ok(())
}

#[test]
fn disjoint_views_of_one_storage_are_clipped_together() -> Result<()> {
    let mut rng = Rng::new(11);
    let base = wide_tensor(&mut rng, &[100], DType::F32)?;
    let a = base.narrow(0, 60, 40)?;
    let b = base.narrow(0, 0, 30)?;
    let c = base.narrow(0, 30, 30)?; // adjacent to b and a
    let vars = vars_of(&[
        (&[40], DType::F32),
        (&[30], DType::F32),
        (&[30], DType::F32),
    ])?;
    let mut s = store(&vars, &[Some(a.clone()), Some(b.clone()), Some(c.clone())]);
    let copies = [a.copy()?, b.copy()?, c.copy()?];
    let (rust_report, rust_bits) = rust_api_clip(&copies, 0.5, ClipOptions::default())?;
    assert_eq!(total_norm(&vars, &s, NormType::L2)?, rust_report.total_norm);
    let r = clip_grad_norm(&vars, &mut s, 0.5, ClipOptions::default())?;
    assert_eq!(r, rust_report);
    for (v, rb) in vars.iter().zip(&rust_bits) {
        assert_eq!(&grad_bits(&s, v)?, rb);
    }
    // The whole storage was scaled exactly once: b (0..30), c (30..60), a (60..100).
    let whole: Vec<u32> = [&rust_bits[1], &rust_bits[2], &rust_bits[0]]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(bits(&base)?, whole);
    Ok(())
}

fn assert_refused(err: candle_core::Error, needles: &[&str]) {
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
}

/// Runs the three writing functions on `vars`/`grads`, each expected to fail with a message
/// containing `needles`, and checks that no gradient changed.
fn all_writers_refuse(vars: &[Var], grads: &mut GradStore, watch: &[Tensor], needles: &[&str]) {
    let before: Vec<Vec<u32>> = watch.iter().map(|t| bits(t).unwrap()).collect();
    let e = clip_grad_norm(vars, grads, 1e-3, ClipOptions::default()).unwrap_err();
    assert_refused(e, needles);
    let e = clip_grads_with_norm(vars, grads, 1e-3, 1e3).unwrap_err();
    assert_refused(e, needles);
    let e = clip_grad_value(vars, grads, 1e-3).unwrap_err();
    assert_refused(e, needles);
    let after: Vec<Vec<u32>> = watch.iter().map(|t| bits(t).unwrap()).collect();
    assert_eq!(before, after, "nothing modified");
}

#[test]
fn overlapping_gradients_are_refused_by_writers_before_any_lock() -> Result<()> {
    let mut rng = Rng::new(12);
    let base = wide_tensor(&mut rng, &[100], DType::F32)?;
    let other = wide_tensor(&mut rng, &[10], DType::F32)?;
    let vars = vars_of(&[
        (&[10], DType::F32),
        (&[40], DType::F32),
        (&[40], DType::F32),
    ])?;
    // var 1: elements 0..40, var 2: elements 30..70 of the same storage.
    let mut s = store(
        &vars,
        &[
            Some(other.clone()),
            Some(base.narrow(0, 0, 40)?),
            Some(base.narrow(0, 30, 40)?),
        ],
    );
    all_writers_refuse(
        &vars,
        &mut s,
        &[base.clone(), other.clone()],
        &["var 1", "var 2", "0..40", "30..70", "share memory"],
    );
    // Reading overlapping views is well defined: each counts as given.
    let n = total_norm(&vars, &s, NormType::L2)?;
    let expected = candle_l2_f64(&[&other, &base.narrow(0, 0, 40)?, &base.narrow(0, 30, 40)?])?;
    assert!(((n - expected) / expected).abs() < 1e-12);
    Ok(())
}

#[test]
fn the_same_gradient_twice_is_refused_by_writers() -> Result<()> {
    let mut rng = Rng::new(13);
    let g = wide_tensor(&mut rng, &[5, 5], DType::BF16)?;
    let v = vars_of(&[(&[5, 5], DType::BF16)])?;
    let mut s = store(&v, &[Some(g.clone())]);
    let twice = vec![v[0].clone(), v[0].clone()];
    all_writers_refuse(
        &twice,
        &mut s,
        std::slice::from_ref(&g),
        &["var 0", "var 1", "bf16"],
    );
    // Two vars whose stored gradient is one tensor: the same.
    let two = vars_of(&[(&[5, 5], DType::BF16), (&[5, 5], DType::BF16)])?;
    let mut s = store(&two, &[Some(g.clone()), Some(g.clone())]);
    all_writers_refuse(&two, &mut s, std::slice::from_ref(&g), &["var 0", "var 1"]);
    Ok(())
}

#[test]
fn unsupported_dtypes_are_refused_naming_the_var() -> Result<()> {
    let mut rng = Rng::new(14);
    let ok = wide_tensor(&mut rng, &[10], DType::F32)?;
    for dt in [DType::F64, DType::U32, DType::I64, DType::U8] {
        let bad = Tensor::ones(&[3, 2], dt, &Device::Cpu)?;
        let vars = vars_of(&[(&[10], DType::F32), (&[3, 2], dt)])?;
        let mut s = store(&vars, &[Some(ok.clone()), Some(bad.clone())]);
        let needles = ["var 1", "[3, 2]", dt.as_str(), "unsupported dtype"];
        all_writers_refuse(&vars, &mut s, &[ok.clone(), bad.clone()], &needles);
        assert_refused(total_norm(&vars, &s, NormType::L2).unwrap_err(), &needles);
    }
    Ok(())
}

#[test]
fn nonfinite_is_an_error_naming_var_index_and_value() -> Result<()> {
    let mut rng = Rng::new(15);
    let a = wide_tensor(&mut rng, &[10], DType::F32)?;
    let mut vals: Vec<f32> = (0..24).map(|_| rng.wide()).collect();
    vals[17] = f32::NAN;
    let b = Tensor::from_vec(vals, (4, 6), &Device::Cpu)?.to_dtype(DType::F16)?;
    // var 1 has no gradient: the NaN is in var 2, the store's second buffer.
    let vars = vars_of(&[
        (&[10], DType::F32),
        (&[1], DType::F32),
        (&[4, 6], DType::F16),
    ])?;
    let mut s = store(&vars, &[Some(a.clone()), None, Some(b.clone())]);
    let needles = ["var 2", "flat index 17", "NaN", "[4, 6]", "f16"];
    assert_refused(total_norm(&vars, &s, NormType::L2).unwrap_err(), &needles);
    let before = (bits(&a)?, bits(&b)?);
    let e = clip_grad_norm(&vars, &mut s, 1e-3, ClipOptions::default()).unwrap_err();
    assert_refused(e, &needles);
    assert_eq!(before, (bits(&a)?, bits(&b)?));

    // Skip: nothing written, the report names var 2.
    let skip = ClipOptions {
        on_nonfinite: NonFinitePolicy::Skip,
        ..ClipOptions::default()
    };
    let r = clip_grad_norm(&vars, &mut s, 1e-3, skip)?;
    assert!(!r.clipped && r.total_norm.is_nan());
    let nf = r.nonfinite.unwrap();
    assert_eq!((nf.buffer, nf.index), (2, 17));
    assert!(nf.value.is_nan());
    assert_eq!(before, (bits(&a)?, bits(&b)?));

    // Propagate: PyTorch's behaviour, every element becomes NaN.
    let prop = ClipOptions {
        on_nonfinite: NonFinitePolicy::Propagate,
        ..ClipOptions::default()
    };
    let r = clip_grad_norm(&vars, &mut s, 1e-3, prop)?;
    assert!(r.clipped && r.clip_coef.is_nan());
    assert_eq!(r.nonfinite.unwrap().buffer, 2);
    for t in [&a, &b] {
        let all: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        assert!(all.iter().all(|x| x.is_nan()));
    }
    // An infinity, reported with its sign.
    let c = Tensor::new(&[1.0f32, f32::NEG_INFINITY], &Device::Cpu)?;
    let v = vars_of(&[(&[2], DType::F32)])?;
    let s = store(&v, &[Some(c)]);
    assert_refused(
        total_norm(&v, &s, NormType::L2).unwrap_err(),
        &["var 0", "flat index 1", "-inf"],
    );
    Ok(())
}

#[test]
fn invalid_arguments_are_refused_and_nothing_is_written() -> Result<()> {
    let (vars, mut grads, gs) = mixed_model(16)?;
    let before: Vec<Vec<u32>> = gs.iter().map(bits).collect::<Result<_>>()?;
    for m in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_refused(
            clip_grad_norm(&vars, &mut grads, m, ClipOptions::default()).unwrap_err(),
            &["max_norm"],
        );
        assert_refused(
            clip_grads_with_norm(&vars, &mut grads, m, 10.0).unwrap_err(),
            &["max_norm"],
        );
    }
    let bad_eps = ClipOptions {
        eps: -1.0,
        ..ClipOptions::default()
    };
    assert_refused(
        clip_grad_norm(&vars, &mut grads, 1.0, bad_eps).unwrap_err(),
        &["eps"],
    );
    let bad_p = ClipOptions {
        norm_type: NormType::P(-2.0),
        ..ClipOptions::default()
    };
    assert_refused(
        clip_grad_norm(&vars, &mut grads, 1.0, bad_p).unwrap_err(),
        &["norm type"],
    );
    assert_refused(
        total_norm(&vars, &grads, NormType::P(0.0)).unwrap_err(),
        &["norm type"],
    );
    assert_refused(
        clip_grads_with_norm(&vars, &mut grads, 1.0, -3.0).unwrap_err(),
        &["total_norm"],
    );
    assert_refused(
        clip_grad_value(&vars, &mut grads, -1.0).unwrap_err(),
        &["clip_value"],
    );
    let after: Vec<Vec<u32>> = gs.iter().map(bits).collect::<Result<_>>()?;
    assert_eq!(before, after);
    Ok(())
}

#[test]
fn vars_without_gradient_are_skipped() -> Result<()> {
    let mut rng = Rng::new(17);
    let g = wide_tensor(&mut rng, &[50], DType::F32)?;
    let vars = vars_of(&[(&[3], DType::F64), (&[50], DType::F32), (&[9], DType::U32)])?;
    // The f64 and u32 vars have no gradient: they are not looked at.
    let mut s = store(&vars, &[None, Some(g.clone()), None]);
    let n = total_norm(&vars, &s, NormType::L2)?;
    assert_eq!(n, total_norm(&vars[1..2], &s, NormType::L2)?);
    let r = clip_grad_norm(&vars, &mut s, 0.1, ClipOptions::default())?;
    assert!(r.clipped);
    assert!(s.get(&vars[0]).is_none() && s.get(&vars[2]).is_none());
    // No gradient at all: a zero norm and nothing to do.
    let empty = GradStore::default();
    assert_eq!(total_norm(&vars, &empty, NormType::L2)?, 0.0);
    let mut empty = GradStore::default();
    let r = clip_grad_norm(&vars, &mut empty, 1.0, ClipOptions::default())?;
    assert!(!r.clipped && r.total_norm == 0.0);
    assert_eq!(total_norm(&[], &s, NormType::L2)?, 0.0);
    Ok(())
}

#[test]
fn non_contiguous_gradients_are_copied_and_reinserted() -> Result<()> {
    let mut rng = Rng::new(18);
    let m = wide_tensor(&mut rng, &[6, 9], DType::F32)?;
    let t = m.t()?; // 9 x 6, transposed strides
    let row = wide_tensor(&mut rng, &[1, 5], DType::BF16)?;
    let b = row.broadcast_as((4, 5))?; // stride 0
    assert!(!t.is_contiguous() && !b.is_contiguous());
    let vars = vars_of(&[(&[9, 6], DType::F32), (&[4, 5], DType::BF16)])?;
    let mut s = store(&vars, &[Some(t.clone()), Some(b.clone())]);
    let (tc, bc) = (t.contiguous()?, b.contiguous()?);
    let n = total_norm(&vars, &s, NormType::L2)?;
    let expected = candle_l2_f64(&[&tc, &bc])?;
    assert!(((n - expected) / expected).abs() < 1e-12);
    let (rust_report, rust_bits) = rust_api_clip(&[tc, bc], 0.5, ClipOptions::default())?;
    let before = (bits(&m)?, bits(&row)?);
    let r = clip_grad_norm(&vars, &mut s, 0.5, ClipOptions::default())?;
    assert_eq!(r, rust_report);
    // The originals are untouched; the store holds contiguous clipped copies.
    assert_eq!(before, (bits(&m)?, bits(&row)?));
    for (v, rb) in vars.iter().zip(&rust_bits) {
        let g = s.get(v).unwrap();
        assert!(g.is_contiguous());
        assert_eq!(&bits(g)?, rb);
    }
    assert_eq!(s.get(&vars[0]).unwrap().dims(), &[9, 6]);
    // Not clipped: the store keeps the original tensor.
    let mut s = store(&vars, &[Some(t.clone()), None]);
    let r = clip_grad_norm(&vars, &mut s, 1e30, ClipOptions::default())?;
    assert!(!r.clipped);
    assert_eq!(s.get(&vars[0]).unwrap().id(), t.id());
    Ok(())
}

#[test]
fn clip_grad_value_equals_candle_clamp() -> Result<()> {
    for dt in DTYPES {
        let mut rng = Rng::new(19);
        let mut vals: Vec<f32> = (0..300).map(|_| rng.wide()).collect();
        vals[3] = f32::INFINITY;
        vals[4] = f32::NEG_INFINITY;
        let g = Tensor::from_vec(vals, (20, 15), &Device::Cpu)?.to_dtype(dt)?;
        let view_base = wide_tensor(&mut rng, &[50], dt)?;
        let view = view_base.narrow(0, 10, 25)?;
        let vars = vars_of(&[(&[20, 15], dt), (&[25], dt)])?;
        let mut s = store(&vars, &[Some(g.clone()), Some(view.clone())]);
        let expected_g = g.clamp(-0.5f64, 0.5f64)?;
        let expected_v = view.clamp(-0.5f64, 0.5f64)?;
        clip_grad_value(&vars, &mut s, 0.5)?;
        assert_eq!(bits(&g)?, bits(&expected_g)?, "{dt:?}");
        assert_eq!(bits(&view)?, bits(&expected_v)?, "{dt:?}");
    }
    // NaN is left as it is.
    let g = Tensor::new(&[f32::NAN, 3.0, -3.0], &Device::Cpu)?;
    let v = vars_of(&[(&[3], DType::F32)])?;
    let mut s = store(&v, &[Some(g.clone())]);
    clip_grad_value(&v, &mut s, 1.0)?;
    let out: Vec<f32> = g.to_vec1()?;
    assert!(out[0].is_nan() && out[1] == 1.0 && out[2] == -1.0);
    Ok(())
}

#[test]
fn many_storages_nest_on_a_helper_thread_with_the_same_bits() -> Result<()> {
    // More storages than the inline nesting depth: the write locks nest on a helper thread.
    for count in [3usize, 64, 65, 2500] {
        let mut rng = Rng::new(20 + count as u64);
        let specs: Vec<(Vec<usize>, DType)> = (0..count)
            .map(|i| (vec![1 + i % 17], DTYPES[i % 3]))
            .collect();
        let spec_refs: Vec<(&[usize], DType)> =
            specs.iter().map(|(s, d)| (s.as_slice(), *d)).collect();
        let vars = vars_of(&spec_refs)?;
        let gs: Vec<Tensor> = specs
            .iter()
            .map(|(s, d)| wide_tensor(&mut rng, s, *d))
            .collect::<Result<_>>()?;
        let opt: Vec<Option<Tensor>> = gs.iter().cloned().map(Some).collect();
        let mut s = store(&vars, &opt);
        let (rust_report, rust_bits) = rust_api_clip(&gs, 0.3, ClipOptions::default())?;
        let r = clip_grad_norm(&vars, &mut s, 0.3, ClipOptions::default())?;
        assert_eq!(r, rust_report, "{count}");
        for (v, rb) in vars.iter().zip(&rust_bits) {
            assert_eq!(&grad_bits(&s, v)?, rb);
        }
        clip_grad_value(&vars, &mut s, 1e-3)?;
    }
    Ok(())
}

#[test]
fn backward_gradients_clip_like_candle_ops() -> Result<()> {
    // Gradients as candle's backward pass produces them.
    let mut rng = Rng::new(21);
    let x = wide_tensor(&mut rng, &[8, 16], DType::F32)?;
    let w = Var::from_tensor(&wide_tensor(&mut rng, &[16, 4], DType::F32)?)?;
    let b = Var::from_tensor(&wide_tensor(&mut rng, &[4], DType::F32)?)?;
    let unused = Var::zeros(3, DType::F32, &Device::Cpu)?;
    let y = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
    let loss = y.sqr()?.sum_all()?;
    let mut grads = loss.backward()?;
    let vars = vec![w.clone(), unused, b.clone()];
    let gw = grads.get(&w).unwrap().copy()?;
    let gb = grads.get(&b).unwrap().copy()?;
    let norm = candle_l2_f64(&[&gw, &gb])?;
    let r = clip_grad_norm(&vars, &mut grads, 1.0, ClipOptions::default())?;
    assert!(((r.total_norm - norm) / norm).abs() < 1e-12);
    assert_eq!(
        bits(grads.get(&w).unwrap())?,
        bits(&candle_scaled(&gw, r.clip_coef)?)?
    );
    assert_eq!(
        bits(grads.get(&b).unwrap())?,
        bits(&candle_scaled(&gb, r.clip_coef)?)?
    );
    // After clipping the norm is max_norm (up to the f32 rounding of the scaled elements).
    let after = total_norm(&vars, &grads, NormType::L2)?;
    assert!((after - 1.0).abs() < 1e-5, "{after}");
    Ok(())
}

#[test]
fn concurrent_clips_of_shared_gradients_in_opposite_orders_do_not_deadlock() -> Result<()> {
    // Two stores holding the same gradient tensors, clipped from two threads with the vars in
    // opposite orders: the write locks are taken in storage-address order, so neither thread can
    // hold one lock while waiting for the other's.
    let mut rng = Rng::new(22);
    let gs: Vec<Tensor> = (0..48)
        .map(|i| wide_tensor(&mut rng, &[8 + i], DType::F32))
        .collect::<Result<_>>()?;
    let shapes: Vec<Vec<usize>> = (0..48).map(|i| vec![8 + i]).collect();
    let specs: Vec<(&[usize], DType)> = shapes.iter().map(|s| (s.as_slice(), DType::F32)).collect();
    let vars = vars_of(&specs)?;
    let opt: Vec<Option<Tensor>> = gs.iter().cloned().map(Some).collect();
    let forward = vars.clone();
    let backward: Vec<Var> = vars.iter().rev().cloned().collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for order in [forward, backward] {
        let mut s = store(&vars, &opt);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                clip_grad_norm(&order, &mut s, 1e3, ClipOptions::default()).unwrap();
                clip_grad_value(&order, &mut s, 1e3).unwrap();
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..2 {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("both threads finish (no deadlock)");
    }
    Ok(())
}

#[test]
fn inside_a_rayon_pool_the_nest_stays_on_the_worker() -> Result<()> {
    // 1,000 storages, clipped from inside a one-thread pool (its worker has rayon's default
    // stack): the nest runs on that worker and gives the Rust API's bits.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool");
    let mut rng = Rng::new(23);
    let shapes: Vec<Vec<usize>> = (0..1000).map(|i| vec![1 + i % 5]).collect();
    let specs: Vec<(&[usize], DType)> =
        shapes.iter().map(|s| (s.as_slice(), DType::BF16)).collect();
    let vars = vars_of(&specs)?;
    let gs: Vec<Tensor> = shapes
        .iter()
        .map(|s| wide_tensor(&mut rng, s, DType::BF16))
        .collect::<Result<_>>()?;
    let opt: Vec<Option<Tensor>> = gs
        .iter()
        .map(|g| g.copy().map(Some))
        .collect::<Result<_>>()?;
    let mut s = store(&vars, &opt);
    let (rust_report, rust_bits) = rust_api_clip(&gs, 0.3, ClipOptions::default())?;
    let r = pool.install(|| clip_grad_norm(&vars, &mut s, 0.3, ClipOptions::default()))?;
    assert_eq!(r, rust_report);
    for (v, rb) in vars.iter().zip(&rust_bits) {
        assert_eq!(&grad_bits(&s, v)?, rb);
    }
    Ok(())
}
