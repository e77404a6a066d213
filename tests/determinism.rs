//! Same input ⇒ same bits, whatever the thread count: chunk boundaries come from the buffers,
//! partials merge in a fixed order.

mod common;

use common::*;
use gradclip::{
    clip_grad_norm_, get_total_norm, per_buffer_partials, total_norm_partial, ClipOptions, Grad,
    NormPartial, NormType, CHUNK_ELEMS,
};

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

fn sets() -> Vec<Vec<Buf>> {
    let mut rng = Rng(2024);
    let c = CHUNK_ELEMS;
    let mut out = Vec::new();
    for len in [c - 1, c, c + 1, 5 * c + 3] {
        let len = sized(len);
        out.push(Buf::all_dtypes(&rng.vec_f32(len)).to_vec());
    }
    // A big buffer (parallel inside) next to many small ones (parallel across).
    let mut many = vec![Buf::F32(rng.vec_f32(sized(3_000_000)))];
    for i in 0..sized(2000) {
        let v = rng.vec_f32(50 + (i * 37) % 900);
        many.push(Buf::all_dtypes(&v)[i % 3].clone());
    }
    out.push(many);
    out
}

#[test]
fn norms_have_the_same_bits_for_1_2_3_and_8_threads() {
    for set in sets() {
        let grads: Vec<Grad<'_>> = set.iter().map(Buf::grad).collect();
        for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(1.5)] {
            let want = in_pool(1, || get_total_norm(&grads, nt).unwrap());
            for t in [2, 3, 8] {
                let got = in_pool(t, || get_total_norm(&grads, nt).unwrap());
                assert_eq!(got.to_bits(), want.to_bits(), "{nt:?} threads={t}");
            }
            let part = in_pool(3, || total_norm_partial(&grads, nt).unwrap());
            assert_eq!(part.finish().to_bits(), want.to_bits());
            let mut out = vec![NormPartial::EMPTY; grads.len()];
            let total = in_pool(8, || per_buffer_partials(&grads, nt, &mut out).unwrap());
            assert_eq!(total.finish().to_bits(), want.to_bits());
            for (g, p) in grads.iter().zip(&out) {
                let single = in_pool(2, || get_total_norm(&[*g], nt).unwrap());
                assert_eq!(p.finish().to_bits(), single.to_bits());
            }
        }
    }
}

#[test]
fn clipped_buffers_have_the_same_bits_for_any_thread_count() {
    for set in sets() {
        let mut results = Vec::new();
        for t in [1, 2, 3, 8] {
            let mut s = set.clone();
            let report = in_pool(t, || {
                let mut views: Vec<_> = s.iter_mut().map(Buf::grad_mut).collect();
                clip_grad_norm_(&mut views, 0.5, ClipOptions::default()).unwrap()
            });
            results.push((report.total_norm.to_bits(), report.clip_coef.to_bits(), s));
        }
        for r in &results[1..] {
            assert_eq!(r.0, results[0].0);
            assert_eq!(r.1, results[0].1);
            assert!(r.2 == results[0].2);
        }
    }
}
