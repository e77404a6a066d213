//! Exact mode: bit-exact against the integer reference (`reference::exact_sum`), and the same
//! bytes of `ExactPartial` for every split of the data into buffers or shards, every merge order,
//! thread count and instruction set.

mod common;

use common::Rng;
use common::*;
use gradclip::{
    bf16, clip_grad_norm_, clip_grad_norm_with_isa_, exact_partial, exact_partial_with_isa, f16,
    get_total_norm, get_total_norm_exact, get_total_norm_exact_with_isa, get_total_norm_with,
    reference, ClipOptions, Error, ExactPartial, Grad, GradMut, Isa, NonFinitePolicy, NormType,
    Summation, CHUNK_ELEMS,
};
use proptest::prelude::*;

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

fn bytes(p: &ExactPartial) -> Vec<u8> {
    bytemuck::bytes_of(p).to_vec()
}

/// Every ISA this CPU runs, each checked against the integer reference on `grads`.
fn check_exact(grads: &[Grad<'_>], what: &str) {
    for nt in [NormType::L2, NormType::L1, NormType::Inf] {
        let want = reference::exact_sum(grads, nt);
        let mut first: Option<ExactPartial> = None;
        for isa in Isa::available() {
            let p = exact_partial_with_isa(grads, nt, isa).unwrap();
            let got = p.sum();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{what} {nt:?} {isa:?}: got {got:e} want {want:e}"
            );
            assert_eq!(
                p.finish().to_bits(),
                reference::exact_norm(grads, nt).to_bits(),
                "{what} {nt:?} {isa:?}"
            );
            match first {
                None => first = Some(p),
                Some(f) => assert_eq!(bytes(&f), bytes(&p), "{what} {nt:?} {isa:?} bytes"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Standard normal by Box–Muller from the test xorshift.
fn normal(rng: &mut Rng) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Gradient-like: tensors of N(0, σ) with σ log-uniform over 1e-6..1.
fn gradient_like(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let sigma = 10f64.powf(-6.0 * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
        let len = (1 + rng.next_u64() % 5000) as usize;
        for _ in 0..len.min(n - v.len()) {
            v.push((normal(rng) * sigma) as f32);
        }
    }
    v
}

/// Heavy-tailed: Cauchy samples times a per-tensor scale.
fn heavy_tailed(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            ((std::f64::consts::PI * (u - 0.5)).tan() * 1e-3) as f32
        })
        .collect()
}

/// Adversarial: random bit patterns over the whole finite range, zeros and subnormals included.
fn full_range(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            let x = f32::from_bits(r as u32);
            match r >> 60 {
                0 => 0.0,
                1 => f32::from_bits((r as u32) & 0x807F_FFFF), // subnormal
                _ if x.is_finite() => x,
                _ => f32::MAX,
            }
        })
        .collect()
}

/// Huge values next to many tiny ones: f32::MAX, then subnormals, then ones.
fn huge_and_tiny(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 7 {
            0 => f32::MAX,
            1 => f32::from_bits(1),
            2 => -f32::from_bits(0x7F_FFFF),
            3 => 1.0,
            4 => f32::MIN_POSITIVE,
            5 => -3.0e-39,
            _ => 1e-30,
        })
        .collect()
}

fn datasets() -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = Rng(0x5EED);
    let n = sized(40_000);
    vec![
        ("gradient_like", gradient_like(&mut rng, n)),
        ("heavy_tailed", heavy_tailed(&mut rng, n)),
        ("full_range", full_range(&mut rng, n)),
        ("huge_and_tiny", huge_and_tiny(n)),
        ("uniform", rng.vec_f32(n)),
        ("zeros", vec![0.0; n]),
        (
            "subnormals",
            (0..n as u32)
                .map(|i| f32::from_bits(i % 0x80_0000))
                .collect(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Bit-exact against the integer reference
// ---------------------------------------------------------------------------------------------

#[test]
fn every_dataset_and_dtype_matches_the_integer_reference() {
    for (name, v) in datasets() {
        for b in Buf::all_dtypes(&v) {
            check_exact(&[b.grad()], name);
        }
    }
}

#[test]
fn every_length_and_offset_matches_the_reference() {
    // Every tail of a 16-group and of a block, at several start offsets, with specials inside.
    let mut v = Rng(77).vec_f32(2200);
    v[5] = f32::from_bits(1);
    v[40] = f32::MAX;
    v[41] = f32::MIN_POSITIVE;
    v[1500] = -1e-42;
    let lens: Vec<usize> = if cfg!(miri) {
        vec![0, 1, 15, 16, 17, 33]
    } else {
        (0..=70)
            .chain([1023, 1024, 1025, 2047, 2048, 2049, 2100])
            .collect()
    };
    for len in lens {
        for off in [0, 1, 3, 7] {
            for b in Buf::all_dtypes(&v[off..off + len]) {
                check_exact(&[b.grad()], &format!("len {len} off {off}"));
            }
        }
    }
}

#[test]
fn every_finite_f16_and_bf16_value() {
    let step = if cfg!(miri) { 251 } else { 1 };
    let f16s: Vec<f16> = (0..=u16::MAX)
        .step_by(step)
        .map(f16::from_bits)
        .filter(|x| x.is_finite())
        .collect();
    let bf16s: Vec<bf16> = (0..=u16::MAX)
        .step_by(step)
        .map(bf16::from_bits)
        .filter(|x| x.is_finite())
        .collect();
    // All of them at once, in order and in a shuffled order.
    check_exact(&[Grad::from(&f16s)], "all f16");
    check_exact(&[Grad::from(&bf16s)], "all bf16");
    // Each one alone: the sum is x² (or |x|) exactly.
    for isa in Isa::available() {
        for x in &f16s {
            let s =
                exact_partial_with_isa(&[Grad::from(std::slice::from_ref(x))], NormType::L2, isa)
                    .unwrap()
                    .sum();
            let w = x.to_f64() * x.to_f64();
            assert_eq!(s.to_bits(), w.to_bits(), "{isa:?} f16 {:#06x}", x.to_bits());
        }
        for x in &bf16s {
            let g = [Grad::from(std::slice::from_ref(x))];
            let s = exact_partial_with_isa(&g, NormType::L2, isa).unwrap().sum();
            let w = x.to_f64() * x.to_f64();
            assert_eq!(
                s.to_bits(),
                w.to_bits(),
                "{isa:?} bf16 {:#06x}",
                x.to_bits()
            );
            let a = exact_partial_with_isa(&g, NormType::L1, isa).unwrap().sum();
            assert_eq!(a.to_bits(), x.to_f64().abs().to_bits());
        }
    }
}

#[test]
fn rounding_ties_of_the_final_sum() {
    // L2: 1 + 2·(2^-27)² = 1 + 2^-53, exactly halfway between 1 and 1 + 2^-52: ties to even, 1.
    let t = 2f32.powi(-27);
    let mut v = vec![1.0f32, t, -t];
    let one = [Grad::from(&v)];
    for isa in Isa::available() {
        assert_eq!(
            exact_partial_with_isa(&one, NormType::L2, isa)
                .unwrap()
                .sum(),
            1.0
        );
    }
    assert_eq!(reference::exact_sum(&one, NormType::L2), 1.0);
    // One subnormal square far below breaks the tie upwards.
    v.push(f32::from_bits(1));
    let up = [Grad::from(&v)];
    for isa in Isa::available() {
        let s = exact_partial_with_isa(&up, NormType::L2, isa)
            .unwrap()
            .sum();
        assert_eq!(s, 1.0 + f64::EPSILON, "{isa:?}");
    }
    // Odd mantissa: 1 + 2^-52 + 2^-53 ties up to 1 + 2^-51 (L1, values exact in f32).
    let w = vec![1.0f32, 2f32.powi(-52), -(2f32.powi(-53))];
    let g = [Grad::from(&w)];
    for isa in Isa::available() {
        let s = exact_partial_with_isa(&g, NormType::L1, isa).unwrap().sum();
        assert_eq!(s, 1.0 + 2.0 * f64::EPSILON, "{isa:?}");
    }
    // A tie made of thousands of small terms spread over many blocks and chunks: 2^-53 as
    // 2^16 copies of 2^-69 (L1) on top of 1.
    let mut w = vec![2f32.powi(-69); sized(1 << 16)];
    let scale = (1u64 << 16) / w.len() as u64;
    w.iter_mut().for_each(|x| *x *= scale as f32);
    w.insert(w.len() / 2, 1.0);
    check_exact(&[Grad::from(&w)], "many-term tie");
    assert_eq!(
        exact_partial(&[Grad::from(&w)], NormType::L1)
            .unwrap()
            .sum(),
        1.0
    );
}

#[test]
fn extremes() {
    let cases: Vec<Vec<f32>> = vec![
        vec![f32::MAX; 3],
        vec![f32::MAX, f32::MIN, f32::from_bits(1)],
        vec![f32::from_bits(1); 5],
        vec![-0.0, 0.0, -0.0],
        adversarial_f32(),
        vec![],
    ];
    for v in &cases {
        for b in Buf::all_dtypes(v) {
            check_exact(&[b.grad()], &format!("{v:?}"));
        }
    }
    // 1e6 copies of f32::MAX: the sum of squares (≈ 1.2e83) is far beyond f32 and exact here.
    let big = vec![f32::MAX; sized(1_000_000)];
    check_exact(&[Grad::from(&big)], "many MAX");
}

#[test]
fn agrees_with_the_compensated_norm() {
    for (name, v) in datasets() {
        for b in Buf::all_dtypes(&v) {
            if gradclip::first_nonfinite(&[b.grad()]).is_some() {
                continue; // f32::MAX and friends overflow the 16-bit formats
            }
            for nt in [NormType::L2, NormType::L1, NormType::Inf] {
                let c = get_total_norm(&[b.grad()], nt).unwrap();
                let e = get_total_norm_exact(&[b.grad()], nt).unwrap();
                assert!(rel_err(c, e) <= 1e-14, "{name} {nt:?}: {c:e} vs {e:e}");
                assert_eq!(
                    get_total_norm_with(&[b.grad()], nt, Summation::Compensated).unwrap(),
                    c
                );
                assert_eq!(
                    get_total_norm_with(&[b.grad()], nt, Summation::Exact).unwrap(),
                    e
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Partition invariance
// ---------------------------------------------------------------------------------------------

/// Splits `v` at the sorted cut points.
fn pieces<'a>(v: &'a [f32], cuts: &[usize]) -> Vec<&'a [f32]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts {
        out.push(&v[start..c]);
        start = c;
    }
    out.push(&v[start..]);
    out
}

/// Merges `parts` along a random binary tree drawn from `seed`.
fn merge_tree(parts: &[ExactPartial], seed: &mut Rng) -> ExactPartial {
    match parts {
        [] => ExactPartial::EMPTY,
        [p] => *p,
        _ => {
            let mid = 1 + (seed.next_u64() as usize) % (parts.len() - 1);
            let (l, r) = parts.split_at(mid);
            let (a, b) = (merge_tree(l, seed), merge_tree(r, seed));
            if seed.next_u64() & 1 == 0 {
                a.merge(b)
            } else {
                b.merge(a)
            }
        }
    }
}

fn shuffled<T: Copy>(v: &[T], rng: &mut Rng) -> Vec<T> {
    let mut v = v.to_vec();
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next_u64() as usize) % (i + 1));
    }
    v
}

/// The whole-buffer partial, and the same data cut at `cuts` in every way the API allows: as
/// one call over many buffers, as one call per shard merged along random trees and in shuffled
/// orders, per ISA. Every result must have the same bytes.
fn check_partition(v: &[f32], cuts: &[usize], seed: u64, nt: NormType) {
    let whole = exact_partial(&[Grad::from(v)], nt).unwrap();
    let want = bytes(&whole);
    let ps = pieces(v, cuts);
    let grads: Vec<Grad<'_>> = ps.iter().map(|p| Grad::from(*p)).collect();
    for isa in Isa::available() {
        let multi = exact_partial_with_isa(&grads, nt, isa).unwrap();
        assert_eq!(bytes(&multi), want, "{isa:?} many buffers");
        let shard: Vec<ExactPartial> = ps
            .iter()
            .map(|p| exact_partial_with_isa(&[Grad::from(*p)], nt, isa).unwrap())
            .collect();
        let mut rng = Rng(seed | 1);
        for _ in 0..4 {
            assert_eq!(bytes(&merge_tree(&shard, &mut rng)), want, "{isa:?} tree");
            let order = shuffled(&shard, &mut rng);
            let folded = order.iter().fold(ExactPartial::EMPTY, |a, p| a.merge(*p));
            assert_eq!(bytes(&folded), want, "{isa:?} shuffled fold");
        }
    }
}

fn cuts_for(len: usize, pieces: usize, rng: &mut Rng) -> Vec<usize> {
    let mut c: Vec<usize> = (1..pieces)
        .map(|_| (rng.next_u64() as usize) % (len + 1))
        .collect();
    c.sort_unstable();
    c
}

#[test]
fn every_dataset_is_partition_invariant() {
    let mut rng = Rng(99);
    for (name, v) in datasets() {
        for k in [1, 2, 3, 148] {
            let cuts = cuts_for(v.len(), k, &mut rng);
            for nt in [NormType::L2, NormType::L1, NormType::Inf] {
                check_partition(&v, &cuts, rng.next_u64(), nt);
            }
            let _ = name;
        }
    }
}

#[test]
fn the_bytes_across_dtypes_and_buffers() {
    // Mixed dtypes: f32 shards of the f16-representable values give the same partial as f16.
    let v: Vec<f32> = to_f16(&Rng(3).vec_f32(sized(20_000)))
        .iter()
        .map(|x| x.to_f32())
        .collect();
    let h = to_f16(&v);
    let (a, b) = h.split_at(7777);
    let (_, fb) = v.split_at(7777);
    for nt in [NormType::L2, NormType::L1] {
        let p1 = exact_partial(&[Grad::from(&v)], nt).unwrap();
        let p2 = exact_partial(&[Grad::from(a), Grad::from(fb)], nt).unwrap();
        let p3 = exact_partial(&[Grad::from(b)], nt)
            .unwrap()
            .merge(exact_partial(&[Grad::from(a)], nt).unwrap());
        assert_eq!(bytes(&p1), bytes(&p2));
        assert_eq!(bytes(&p1), bytes(&p3));
    }
}

#[test]
fn thread_counts_give_the_same_bytes() {
    let mut rng = Rng(7);
    let c = CHUNK_ELEMS;
    let big = gradient_like(&mut rng, sized(5 * c + 3));
    let bufs: Vec<Vec<f32>> = (0..sized(300))
        .map(|i| heavy_tailed(&mut rng, 50 + (i * 37) % 900))
        .collect();
    let mut grads: Vec<Grad<'_>> = vec![Grad::from(&big)];
    grads.extend(bufs.iter().map(Grad::from));
    for nt in [NormType::L2, NormType::L1, NormType::Inf] {
        let want = bytes(&in_pool(1, || exact_partial(&grads, nt).unwrap()));
        for t in [2, 3, 8] {
            let got = in_pool(t, || exact_partial(&grads, nt).unwrap());
            assert_eq!(bytes(&got), want, "{nt:?} {t} threads");
            let n = in_pool(t, || get_total_norm_exact(&grads, nt).unwrap());
            assert_eq!(n.to_bits(), got.finish().to_bits());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 48 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_splits_and_merge_trees(
        kind in 0usize..4,
        len in 0usize..6000,
        pieces in prop::sample::select(vec![1usize, 2, 3, 148]),
        seed in any::<u64>(),
        l1 in any::<bool>(),
    ) {
        let mut rng = Rng(seed | 1);
        let len = sized(len);
        let v = match kind {
            0 => gradient_like(&mut rng, len),
            1 => heavy_tailed(&mut rng, len),
            2 => full_range(&mut rng, len),
            _ => huge_and_tiny(len),
        };
        let cuts = cuts_for(v.len(), pieces, &mut rng);
        let nt = if l1 { NormType::L1 } else { NormType::L2 };
        check_partition(&v, &cuts, seed, nt);
        // And the value is the exactly rounded one.
        let got = exact_partial(&[Grad::from(&v)], nt).unwrap().sum();
        prop_assert_eq!(got.to_bits(), reference::exact_sum(&[Grad::from(&v)], nt).to_bits());
    }
}

// ---------------------------------------------------------------------------------------------
// Non-finite input and the clip API
// ---------------------------------------------------------------------------------------------

#[test]
fn nonfinite_reporting_matches_the_compensated_mode() {
    let n = sized(3 * CHUNK_ELEMS);
    for (pos, bad) in [
        (0, f32::NAN),
        (n / 2, f32::INFINITY),
        (n - 1, f32::NEG_INFINITY),
    ] {
        let mut v = Rng(5).vec_f32(n);
        v[pos] = bad;
        v[n / 3] = if pos == 0 { f32::INFINITY } else { v[n / 3] };
        for b in Buf::all_dtypes(&v) {
            let g = [b.grad()];
            for nt in [NormType::L2, NormType::L1, NormType::Inf] {
                let c = get_total_norm(&g, nt);
                let e = get_total_norm_exact(&g, nt);
                assert!(matches!(e, Err(Error::NonFinite(_))));
                assert_eq!(c, e, "{nt:?}");
                let p = exact_partial(&g, nt).unwrap();
                assert!(!p.is_finite());
                assert_eq!(p.has_nan(), v.iter().any(|x| x.is_nan()));
                assert_eq!(p.finish().is_nan(), p.has_nan());
            }
        }
    }
}

#[test]
fn nonfinite_flags_are_partition_invariant() {
    // A NaN in one shard and an inf in another: the flags are the union whatever the split.
    let mut v = Rng(8).vec_f32(sized(10_000));
    let nan_at = v.len() / 5;
    let inf_at = v.len() - 3;
    v[nan_at] = f32::NAN;
    v[inf_at] = f32::INFINITY;
    let mut rng = Rng(11);
    for k in [1, 2, 3, 148] {
        let cuts = cuts_for(v.len(), k, &mut rng);
        check_partition(&v, &cuts, 5, NormType::L2);
    }
    let p = exact_partial(&[Grad::from(&v)], NormType::L2).unwrap();
    assert!(p.has_nan() && p.finish().is_nan());
}

#[test]
fn p_norms_fall_back_and_have_no_exact_partial() {
    let v = Rng(1).vec_f32(1000);
    let g = [Grad::from(&v)];
    let nt = NormType::P(3.0);
    assert_eq!(
        get_total_norm_exact(&g, nt).unwrap(),
        get_total_norm(&g, nt).unwrap()
    );
    assert_eq!(
        exact_partial(&g, nt),
        Err(Error::ExactUnsupported { p: 3.0 })
    );
    assert_eq!(
        exact_partial(&g, NormType::P(-1.0)),
        Err(Error::InvalidNormType { p: -1.0 })
    );
    // P(2) and P(1) are L2 and L1.
    assert_eq!(
        get_total_norm_exact(&g, NormType::P(2.0)).unwrap(),
        get_total_norm_exact(&g, NormType::L2).unwrap()
    );
}

#[test]
fn forced_isas() {
    let v = Rng(2).vec_f32(3000);
    let g = [Grad::from(&v)];
    let want = get_total_norm_exact(&g, NormType::L2).unwrap();
    for isa in Isa::ALL {
        let got = get_total_norm_exact_with_isa(&g, NormType::L2, isa);
        if isa.is_available() {
            assert_eq!(got.unwrap(), want);
        } else {
            assert_eq!(got, Err(Error::IsaUnavailable(isa)));
        }
    }
}

#[test]
fn empty_partials() {
    let e: [Grad<'_>; 0] = [];
    let p = exact_partial(&e, NormType::L2).unwrap();
    assert_eq!(p.finish(), 0.0);
    assert_eq!(p.norm_type(), Some(NormType::L2));
    assert_eq!(ExactPartial::EMPTY.norm_type(), None);
    assert_eq!(bytes(&ExactPartial::EMPTY), vec![0u8; 96]);
    assert_eq!(std::mem::size_of::<ExactPartial>(), 96);
    let x = vec![3.0f32, 4.0];
    let q = exact_partial(&[Grad::from(&x)], NormType::L2).unwrap();
    assert_eq!(p.merge(q), q);
    assert_eq!(ExactPartial::EMPTY.merge(q), q);
    assert_eq!(q.finish(), 5.0);
    assert_eq!(q.max_abs(), 4.0);
}

fn exact_opts(nt: NormType) -> ClipOptions {
    ClipOptions {
        norm_type: nt,
        summation: Summation::Exact,
        ..ClipOptions::default()
    }
}

#[test]
fn clipping_in_exact_mode_gives_the_same_bits_for_any_split() {
    let mut rng = Rng(21);
    let v = gradient_like(&mut rng, sized(3 * CHUNK_ELEMS + 77));
    let norm = get_total_norm_exact(&[Grad::from(&v)], NormType::L2).unwrap();
    let mut whole = v.clone();
    let r = clip_grad_norm_(
        &mut [GradMut::from(&mut whole)],
        norm / 3.0,
        exact_opts(NormType::L2),
    )
    .unwrap();
    assert_eq!(r.total_norm, norm);
    assert!(r.clipped);
    for k in [2, 3, 148] {
        let cuts = cuts_for(v.len(), k, &mut rng);
        for isa in Isa::available() {
            let mut split = v.clone();
            let mut views: Vec<GradMut<'_>> = Vec::new();
            let mut rest: &mut [f32] = &mut split;
            let mut at = 0;
            for &c in &cuts {
                let (a, b) = rest.split_at_mut(c - at);
                views.push(GradMut::from(a));
                rest = b;
                at = c;
            }
            views.push(GradMut::from(rest));
            let rs =
                clip_grad_norm_with_isa_(&mut views, norm / 3.0, exact_opts(NormType::L2), isa)
                    .unwrap();
            assert_eq!(rs, r, "{k} pieces on {isa:?}");
            drop(views);
            assert!(
                split
                    .iter()
                    .zip(&whole)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{k} pieces on {isa:?}"
            );
        }
    }
}

#[test]
fn exact_clip_options_follow_every_policy() {
    let base = Rng(4).vec_f32(sized(200_000));
    for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(3.0)] {
        // Finite: the total is the exact norm (P: the compensated one), the clip the same.
        let mut a = base.clone();
        let r = clip_grad_norm_(&mut [GradMut::from(&mut a)], 0.5, exact_opts(nt)).unwrap();
        assert_eq!(
            r.total_norm,
            get_total_norm_exact(&[Grad::from(&base)], nt).unwrap()
        );
        // Non-finite: the same report as the compensated mode for each policy.
        for policy in [
            NonFinitePolicy::Error,
            NonFinitePolicy::Skip,
            NonFinitePolicy::Propagate,
        ] {
            let mut e = base.clone();
            let mut c = base.clone();
            e[77] = f32::INFINITY;
            c[77] = f32::INFINITY;
            e[5000] = f32::NAN;
            c[5000] = f32::NAN;
            let oe = ClipOptions {
                on_nonfinite: policy,
                ..exact_opts(nt)
            };
            let oc = ClipOptions {
                summation: Summation::Compensated,
                ..oe
            };
            let re = clip_grad_norm_(&mut [GradMut::from(&mut e)], 0.5, oe);
            let rc = clip_grad_norm_(&mut [GradMut::from(&mut c)], 0.5, oc);
            match (&re, &rc) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.nonfinite, b.nonfinite);
                    assert_eq!(a.clipped, b.clipped);
                    assert_eq!(
                        a.total_norm.is_nan(),
                        b.total_norm.is_nan(),
                        "{nt:?} {policy:?}"
                    );
                }
                _ => assert_eq!(re, rc, "{nt:?} {policy:?}"),
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&e), bits(&c), "{nt:?} {policy:?}");
        }
    }
}
