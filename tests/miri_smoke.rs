//! Small, miri-sized checks of the portable kernels and the reduction tree (rayon included):
//! `cargo +nightly miri test --test miri_smoke`. Also part of the normal test run.

mod common;

use common::*;
use gradclip::{
    bf16, clip_grad_norm_, f16, get_total_norm_with_isa, reference, scale_with_isa_, ClipOptions,
    Grad, GradMut, Isa, NormType, CHUNK_ELEMS,
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
