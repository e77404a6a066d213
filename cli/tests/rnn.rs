//! The demo's RNN: BPTT gradients against finite differences, the tanh approximation, and absurd
//! sizes refused before anything is allocated.

use gradclip::rng::Rng;
use gradclip_cli::rnn::{AddingBatch, MarkerLayout, RecurrentInit, Rnn};

#[test]
fn rnn_gradients_match_finite_differences() {
    use gradclip_cli::rnn::*;
    let h = 5;
    let mut rnn = Rnn::new(h, RecurrentInit::ScaledOrthogonal(1.2), &mut Rng::new(1)).unwrap();
    rnn.b_h
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = 0.1 * i as f32);
    let data = AddingBatch::sample(3, 8, MarkerLayout::Halves, &mut Rng::new(2)).unwrap();
    for horizon in [None, Some(3)] {
        let mut g = RnnGrads::zeros(h);
        loss_and_grad(&rnn, &data, horizon, &mut g).unwrap();
        if horizon.is_some() {
            // Truncation changes the W_hh gradient but not the readout's.
            let mut full = RnnGrads::zeros(h);
            loss_and_grad(&rnn, &data, None, &mut full).unwrap();
            assert_eq!(g.w_hy, full.w_hy);
            assert_ne!(g.w_hh, full.w_hh);
            continue;
        }
        let eps = 1e-3f32;
        type Get = fn(&mut Rnn) -> &mut Vec<f32>;
        let params: [(Get, &Vec<f32>); 5] = [
            (|r| &mut r.w_hh, &g.w_hh),
            (|r| &mut r.w_xh, &g.w_xh),
            (|r| &mut r.b_h, &g.b_h),
            (|r| &mut r.w_hy, &g.w_hy),
            (|r| &mut r.b_y, &g.b_y),
        ];
        for (get, an) in params {
            for (i, &a) in an.iter().enumerate() {
                let mut p = rnn.clone();
                get(&mut p)[i] += eps;
                let mut m = rnn.clone();
                get(&mut m)[i] -= eps;
                let num = (evaluate(&p, &data).unwrap().loss - evaluate(&m, &data).unwrap().loss)
                    / (2.0 * eps as f64);
                assert!(
                    (num - a as f64).abs() < 2e-3 + 2e-2 * num.abs(),
                    "{num} vs {a}"
                );
            }
        }
    }
    let flow = gradient_flow(&rnn, &data).unwrap();
    assert_eq!(flow.len(), 9);
    assert!(flow.iter().all(|x| x.is_finite() && *x > 0.0));
    let bad = AddingBatch {
        batch: 2,
        ..data.clone()
    };
    assert!(evaluate(&rnn, &bad).is_err());
    let mut g = RnnGrads::zeros(h);
    assert!(loss_and_grad(&rnn, &data, Some(0), &mut g).is_err());
}

#[test]
fn tanh_f32_is_accurate() {
    use gradclip_cli::rnn::tanh_f32;
    let mut worst_rel = 0.0f64;
    let mut x = -12.0f64;
    while x <= 12.0 {
        for xi in [x, x * 1e-3, x * 1e-6] {
            let xf = xi as f32;
            let exact = (xf as f64).tanh();
            let got = tanh_f32(xf) as f64;
            let rel = (got - exact).abs() / exact.abs().max(1e-30);
            worst_rel = worst_rel.max(rel);
        }
        x += 0.001;
    }
    assert!(worst_rel < 5e-7, "{worst_rel}");
    assert_eq!(tanh_f32(0.0), 0.0);
    assert_eq!(tanh_f32(f32::INFINITY), 1.0);
    assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
    assert!(tanh_f32(f32::NAN).is_nan());
    assert_eq!(tanh_f32(20.0), 1.0);
}

#[test]
fn absurd_rnn_sizes_are_errors_not_panics() {
    let mut rng = Rng::new(0);
    assert!(Rnn::new(usize::MAX, RecurrentInit::ScaledOrthogonal(1.0), &mut rng).is_err());
    assert!(AddingBatch::sample(usize::MAX, 50, MarkerLayout::Early, &mut rng).is_err());
    assert!(AddingBatch::sample(1 << 30, 1 << 30, MarkerLayout::Early, &mut rng).is_err());
}
