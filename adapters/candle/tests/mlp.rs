//! The example's training loop in a short mode: without clipping the MLP diverges to NaN/inf
//! within a few steps; with `clip_grad_norm` it trains.

#[allow(dead_code)]
#[path = "../examples/candle_mlp.rs"]
mod candle_mlp;

#[test]
fn mlp_diverges_without_clipping_and_trains_with_it() -> candle_core::Result<()> {
    let plain = candle_mlp::train(100, None)?;
    let step = plain.first_nan.expect("the unclipped run ends in NaN");
    assert!(step <= 5, "NaN only at step {step}");

    let clipped = candle_mlp::train(100, Some(1.0))?;
    assert_eq!(clipped.first_nonfinite, None);
    assert_eq!(clipped.losses.len(), 100);
    assert!(
        clipped.losses.windows(2).all(|w| w[1] < w[0]),
        "the loss goes down"
    );
    let (first, last) = (clipped.losses[0], clipped.final_loss());
    assert!(last < first * 0.5, "loss {first} -> {last}");
    // Clipping was active: the raw gradient norm exceeded max_norm.
    assert!(clipped.norms[0] > 1.0);
    Ok(())
}
