//! Every ISA path against the portable path (bit for bit) and the scalar reference (within the
//! documented bounds): every tail length, misaligned starts, adversarial values, NaN/inf at every
//! position, all three dtypes.

mod common;

use common::*;
use gradclip::{
    bf16, f16, first_nonfinite, get_total_norm_with_isa, reference, scale_with_isa_, Error, Grad,
    GradMut, Isa, NormType,
};
use proptest::prelude::*;

const NORMS: [NormType; 5] = [
    NormType::L2,
    NormType::L1,
    NormType::Inf,
    NormType::P(3.0),
    NormType::P(0.5),
];

fn tolerance(nt: NormType) -> f64 {
    match nt {
        NormType::L2 | NormType::L1 => 1e-14,
        NormType::Inf => 0.0,
        NormType::P(_) => 1e-12,
    }
}

/// Checks one set of buffers on every ISA: equal bits across ISAs, within tolerance of the
/// reference, errors exactly where the reference is non-finite.
fn check_set(grads: &[Grad<'_>]) {
    for nt in NORMS {
        let want = reference::norm(grads, nt);
        let portable = get_total_norm_with_isa(grads, nt, Isa::Portable);
        for isa in Isa::available() {
            let got = get_total_norm_with_isa(grads, nt, isa);
            match (&got, &portable) {
                (Ok(a), Ok(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{isa:?} {nt:?}"),
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!("{isa:?} {nt:?}: {got:?} vs portable {portable:?}"),
            }
            if want.is_finite() {
                let got = got.expect("finite input gives a norm");
                assert!(
                    rel_err(got, want) <= tolerance(nt),
                    "{isa:?} {nt:?}: {got:e} vs {want:e} ({:e})",
                    rel_err(got, want)
                );
            } else {
                let first = first_nonfinite(grads).expect("reference saw a non-finite value");
                assert_eq!(got, Err(Error::NonFinite(first)), "{isa:?} {nt:?}");
            }
        }
    }
}

#[test]
fn every_tail_length_and_offset() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let base = rng.vec_f32(67 + 8);
    for len in 0..=67 {
        for off in 0..8 {
            let v = &base[off..off + len];
            for b in Buf::all_dtypes(v) {
                check_set(&[b.grad()]);
            }
        }
    }
}

#[test]
fn large_buffers_cross_block_and_chunk_boundaries() {
    let chunk = gradclip::CHUNK_ELEMS;
    let mut rng = Rng(7);
    let lens = [
        1023,
        1024,
        1025,
        chunk - 1,
        chunk,
        chunk + 1,
        3 * chunk + 37,
    ];
    for &len in &lens {
        let len = sized(len);
        let v = rng.vec_f32(len + 3);
        for off in [0, 1, 3] {
            for b in Buf::all_dtypes(&v[off..off + len]) {
                check_set(&[b.grad()]);
            }
        }
    }
}

#[test]
fn adversarial_values_everywhere() {
    let adv = adversarial_f32();
    let mut v = Vec::new();
    for i in 0..sized(5000) {
        v.push(adv[(i * 7 + i / 13) % adv.len()]);
    }
    for b in Buf::all_dtypes(&v) {
        check_set(&[b.grad()]);
    }
}

#[test]
fn nonfinite_at_every_position() {
    let mut rng = Rng(11);
    for len in 1..=67 {
        let v = rng.vec_f32(len);
        for pos in 0..len {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut w = v.clone();
                w[pos] = bad;
                for b in Buf::all_dtypes(&w) {
                    check_set(&[b.grad()]);
                }
            }
        }
    }
}

#[test]
fn first_nonfinite_is_first_in_buffer_order() {
    let n = sized(300_000);
    let mut a = vec![1.0f32; n];
    let mut b = vec![f16::from_f32(1.0); n];
    let c = vec![bf16::from_f32(1.0); 10];
    a[n - 1] = f32::INFINITY; // buffer 0, late
    b[3] = f16::NAN; // buffer 1, early
    let grads = [Grad::from(&a), Grad::from(&b), Grad::from(&c)];
    for isa in Isa::available() {
        for nt in NORMS {
            let e = get_total_norm_with_isa(&grads, nt, isa).unwrap_err();
            match e {
                Error::NonFinite(nf) => {
                    assert_eq!((nf.buffer, nf.index), (0, n - 1));
                    assert_eq!(nf.value, f64::INFINITY);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn mixed_dtype_sets_with_empty_buffers() {
    let mut rng = Rng(3);
    let a = rng.vec_f32(100);
    let b = to_f16(&rng.vec_f32(33));
    let c = to_bf16(&rng.vec_f32(1000));
    let e: Vec<f32> = vec![];
    check_set(&[]);
    check_set(&[Grad::from(&e)]);
    check_set(&[
        Grad::from(&a),
        Grad::from(&e),
        Grad::from(&b),
        Grad::from(&c),
        Grad::from(&e),
    ]);
}

fn check_scale(buf: &Buf, c: f64) {
    let c32 = c as f32;
    let mut want = buf.clone();
    match &mut want {
        Buf::F32(v) => v
            .iter_mut()
            .for_each(|x| *x = reference::scale_f32(*x, c32)),
        Buf::F16(v) => v
            .iter_mut()
            .for_each(|x| *x = reference::scale_f16(*x, c32)),
        Buf::BF16(v) => v
            .iter_mut()
            .for_each(|x| *x = reference::scale_bf16(*x, c32)),
    }
    if c32 == 1.0 {
        // A factor that is 1 in f32 writes nothing.
        want = buf.clone();
    }
    for isa in Isa::available() {
        let mut got = buf.clone();
        scale_with_isa_(&mut [got.grad_mut()], c, isa).unwrap();
        assert_eq!(got.bits(), want.bits(), "{isa:?} c={c}");
    }
}

#[test]
fn scale_matches_reference_bit_for_bit() {
    let mut rng = Rng(5);
    let mut v = adversarial_f32();
    v.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN]);
    v.extend(rng.vec_f32(200));
    for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, v.len()] {
        for b in Buf::all_dtypes(&v[..len]) {
            for c in [0.5, 0.3, 1.0, 0.0, -2.0, 1e-30, 3.0, 0.999_999_999, 1e-6] {
                check_scale(&b, c);
            }
        }
    }
}

#[test]
fn scale_every_f16_and_bf16_pattern() {
    // All 65536 patterns of each 16-bit format, through a few coefficients, on every ISA.
    let f16s: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let bf16s: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let step = if cfg!(miri) { 997 } else { 1 };
    let f16s: Vec<f16> = f16s.into_iter().step_by(step).collect();
    let bf16s: Vec<bf16> = bf16s.into_iter().step_by(step).collect();
    for c in [0.7, 0.5, 1e-3, 1.5, 0.999_9] {
        check_scale(&Buf::F16(f16s.clone()), c);
        check_scale(&Buf::BF16(bf16s.clone()), c);
    }
}

#[test]
fn bf16_scale_groups_with_one_subnormal_product() {
    // Wide kernels round whole groups at once (AVX-512 with AVX512_BF16: 32 elements through
    // VCVTNE2PS2BF16, which flushes subnormals; such a group takes the bit logic). One subnormal
    // product at every position of a group, among normal ones, NaNs, infinities and zeros, at
    // several offsets, must round as the reference says.
    let c = 2.0f64.powi(-20);
    let normal = [
        1.5f32,
        -3.25,
        0.007_8,
        1.0e30,
        -2.5e-20,
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NAN,
    ];
    for pos in 0..64 {
        for off in 0..3 {
            let mut v: Vec<f32> = (0..96 + off).map(|i| normal[i % normal.len()]).collect();
            // Times 2^-20: about 3e-39 and -5e-39, subnormal in f32 and nonzero subnormals in
            // bf16 (which has f32's exponent range), so a flush to zero would show.
            v[off + pos] = if pos % 2 == 0 { 3.1e-33 } else { -5.5e-33 };
            let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
            check_scale(&Buf::BF16(b[off..].to_vec()), c);
        }
    }
}

#[test]
fn scale_rejects_bad_factors() {
    let mut v = vec![1.0f32; 4];
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e39, -1e300] {
        let r = scale_with_isa_(&mut [GradMut::from(&mut v)], bad, Isa::Portable);
        assert!(matches!(r, Err(Error::InvalidFactor(f)) if f.to_bits() == bad.to_bits()));
    }
    assert_eq!(v, vec![1.0f32; 4]);
}

fn value_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => any::<f32>().prop_filter("finite", |x| x.is_finite()),
        2 => -1.0e3f32..1.0e3f32,
        1 => prop::sample::select(adversarial_f32()),
        1 => prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        .. ProptestConfig::default()
    })]

    #[test]
    fn prop_norms_agree_with_reference(
        v in prop::collection::vec(value_strategy(), 0..=67),
        off in 0usize..8,
    ) {
        let off = off.min(v.len());
        for b in Buf::all_dtypes(&v[off..]) {
            check_set(&[b.grad()]);
        }
    }

    #[test]
    fn prop_large_norms_agree_with_reference(
        seed in any::<u64>(),
        len in 1000usize..5000,
        spikes in prop::collection::vec((any::<usize>(), value_strategy()), 0..4),
    ) {
        let mut v = Rng(seed | 1).vec_f32(len);
        for (i, x) in spikes {
            let n = v.len();
            v[i % n] = x;
        }
        for b in Buf::all_dtypes(&v) {
            check_set(&[b.grad()]);
        }
    }

    #[test]
    fn prop_scale_agrees_with_reference(
        v in prop::collection::vec(value_strategy(), 0..=67),
        c in prop_oneof![0.0f64..1.0, -4.0f64..4.0],
    ) {
        for b in Buf::all_dtypes(&v) {
            check_scale(&b, c);
        }
    }
}

/// The compute roofline of the bench: the same plain 32-lane sum of squares on every ISA (same
/// bits), exact on small integers, and refused for an ISA this CPU cannot run.
#[test]
fn compute_roofline_kernel_is_the_plain_lane_sum() {
    use gradclip::baseline::compute_roofline;
    for n in [0usize, 1, 31, 32, 33, 1000, 4099] {
        let v: Vec<f32> = (0..n).map(|i| ((i % 7) as f32) - 3.0).collect();
        let exact: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
        for b in Buf::all_dtypes(&v) {
            let want = compute_roofline(b.grad(), Isa::Portable).unwrap();
            assert_eq!(want, exact, "len {n}");
            for isa in Isa::available() {
                assert_eq!(
                    compute_roofline(b.grad(), isa).unwrap().to_bits(),
                    want.to_bits()
                );
            }
        }
    }
    for isa in Isa::ALL {
        if !isa.is_available() {
            assert_eq!(
                compute_roofline(Grad::F32(&[1.0]), isa),
                Err(gradclip::Error::IsaUnavailable(isa))
            );
        }
    }
}
