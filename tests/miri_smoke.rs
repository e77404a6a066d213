//! Small, miri-sized checks of the portable kernels and the reduction tree (rayon included):
//! `cargo +nightly miri test --test miri_smoke`. Also part of the normal test run.

mod common;

use common::*;
use gradclip::{
    bf16, clip_grad_norm_, exact_partial_with_isa, f16, get_total_norm_with_isa, reference,
    scale_with_isa_, ClipOptions, Grad, GradMut, Isa, NormType, CHUNK_ELEMS,
};

#[test]
fn portable_norms_match_reference_on_every_tail() {
    let mut rng = Rng(1);
    let v = rng.vec_f32(70);
    for len in [0, 1, 31, 32, 33, 67] {
        for off in [0, 1, 3] {
            for b in Buf::all_dtypes(&v[off..off + len]) {
                for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(3.0)] {
                    let got = get_total_norm_with_isa(&[b.grad()], nt, Isa::Portable).unwrap();
                    let want = reference::norm(&[b.grad()], nt);
                    assert!(rel_err(got, want) <= 1e-12, "{nt:?} {got} {want}");
                }
            }
        }
    }
}

#[test]
fn tree_across_chunks_with_threads() {
    // Just over one chunk: the tree splits and merges, inside a rayon pool.
    let n = CHUNK_ELEMS + 5;
    let v: Vec<bf16> = (0..n).map(|i| bf16::from_f32((i % 7) as f32)).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let got =
        pool.install(|| get_total_norm_with_isa(&[Grad::from(&v)], NormType::L2, Isa::Portable));
    let sum: f64 = (0..n).map(|i| ((i % 7) * (i % 7)) as f64).sum();
    assert_eq!(got.unwrap(), sum.sqrt());
}

#[test]
fn portable_scale_and_clip() {
    let mut a: Vec<f16> = (0..40).map(|i| f16::from_f32(i as f32 - 20.0)).collect();
    let want: Vec<f16> = a.iter().map(|&x| reference::scale_f16(x, 0.25)).collect();
    scale_with_isa_(&mut [GradMut::from(&mut a)], 0.25, Isa::Portable).unwrap();
    assert_eq!(a, want);
    let mut b = vec![3.0f32, 4.0];
    let r = clip_grad_norm_(&mut [GradMut::from(&mut b)], 1.0, ClipOptions::default()).unwrap();
    assert_eq!(r.total_norm, 5.0);
}

/// Every available ISA (under miri on aarch64: NEON) against the portable path, bit for bit, on
/// every tail length of a group, for every dtype and norm, with specials mixed in.
#[test]
fn every_isa_equals_portable_bit_for_bit() {
    let mut v = Rng(77).vec_f32(100);
    v[5] = f32::from_bits(1); // subnormal
    v[9] = 0.0;
    v[40] = -65504.0;
    let lens: &[usize] = if cfg!(miri) {
        &[0, 1, 5, 31, 32, 33, 64, 67]
    } else {
        &[
            0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 67, 95,
        ]
    };
    for &len in lens {
        let off = len % 3;
        for b in Buf::all_dtypes(&v[off..off + len]) {
            for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(3.0)] {
                let want = get_total_norm_with_isa(&[b.grad()], nt, Isa::Portable).unwrap();
                for isa in Isa::available() {
                    let got = get_total_norm_with_isa(&[b.grad()], nt, isa).unwrap();
                    assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} {nt:?} len {len}");
                }
            }
            for isa in Isa::available() {
                let mut x = b.clone();
                let mut y = b.clone();
                scale_with_isa_(&mut [x.grad_mut()], 0.3, isa).unwrap();
                scale_with_isa_(&mut [y.grad_mut()], 0.3, Isa::Portable).unwrap();
                assert_eq!(x.bits(), y.bits(), "{isa:?} scale len {len}");
            }
        }
    }
    // A non-finite value is found by every ISA at the same place.
    let mut w = v.clone();
    w[50] = f32::NAN;
    for b in Buf::all_dtypes(&w) {
        let want = get_total_norm_with_isa(&[b.grad()], NormType::L2, Isa::Portable);
        for isa in Isa::available() {
            assert_eq!(
                get_total_norm_with_isa(&[b.grad()], NormType::L2, isa),
                want
            );
        }
    }
}

/// Exact mode on every available ISA (under miri on aarch64: NEON): the integer reference's
/// value and the same partial bytes, on every tail of a group with specials mixed in, with one,
/// two and three bins and the integer path for a full-range block; a cut anywhere gives the same
/// bytes.
#[test]
fn exact_every_isa_matches_the_integer_reference() {
    let mut v = Rng(78).vec_f32(140);
    v[3] = f32::from_bits(1);
    v[8] = 0.0;
    v[20] = -65504.0;
    v[33] = 3.0e-39;
    let mut wide = v.clone();
    wide[70] = f32::MAX;
    wide[71] = 1e-30;
    let lens: &[usize] = if cfg!(miri) {
        &[0, 1, 15, 16, 17, 40, 100]
    } else {
        &[0, 1, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 130]
    };
    for src in [&v, &wide] {
        for &len in lens {
            let off = len % 4;
            for b in Buf::all_dtypes(&src[off..off + len]) {
                let g = [b.grad()];
                for nt in [NormType::L2, NormType::L1, NormType::Inf] {
                    let want = reference::exact_sum(&g, nt);
                    let p0 = exact_partial_with_isa(&g, nt, Isa::Portable).unwrap();
                    for isa in Isa::available() {
                        let p = exact_partial_with_isa(&g, nt, isa).unwrap();
                        let s = p.sum();
                        assert!(
                            s.to_bits() == want.to_bits() || (s.is_nan() && want.is_nan()),
                            "{isa:?} {nt:?} len {len}: {s:e} vs {want:e}"
                        );
                        assert_eq!(p, p0, "{isa:?} {nt:?} len {len}");
                        // Any cut, merged either way round.
                        let cut = len / 3;
                        let (l, r) = match b.grad() {
                            Grad::F32(s) => (Grad::F32(&s[..cut]), Grad::F32(&s[cut..])),
                            Grad::F16(s) => (Grad::F16(&s[..cut]), Grad::F16(&s[cut..])),
                            Grad::BF16(s) => (Grad::BF16(&s[..cut]), Grad::BF16(&s[cut..])),
                        };
                        let pl = exact_partial_with_isa(&[l], nt, isa).unwrap();
                        let pr = exact_partial_with_isa(&[r], nt, isa).unwrap();
                        assert_eq!(pr.merge(pl), p0, "{isa:?} {nt:?} len {len} cut");
                    }
                }
            }
        }
    }
}
