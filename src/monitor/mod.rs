//! Detection of exploding gradients and adaptive clipping policies. Pure logic: nothing here
//! prints, and nothing allocates per step except [`AutoClip`]'s history (which the method
//! defines; [`AutoClip::with_capacity`] reserves it up front) and [`agc_`]'s per-row factor
//! list. `tests/toolkit_no_alloc.rs` checks this under a counting allocator.
//!
//! - [`GradientMonitor`]: symptoms of the reference table (non-finite, explosion, rapid growth,
//!   loss spike, parameter divergence, oscillating loss) and an EMA z-score spike score.
//! - [`AutoClip`]: clip to the p-th percentile of the norm history, exact, O(log n) per step.
//! - [`ZClip`]: clip spikes detected by an EMA z-score of the norm.
//! - [`agc_`]: unit-wise adaptive gradient clipping against the weight norms.
//!
//! The adaptive policies produce a `max_norm` for the crate's clipping kernels
//! ([`crate::clip_grads_with_norm_`]); their `clip_` methods do the whole step.

mod agc;
mod autoclip;
mod detector;
mod ring;
mod zclip;

pub use agc::{agc_, AgcOptions, AgcReport};
pub use autoclip::AutoClip;
pub use detector::{GradientMonitor, MonitorConfig, Observation, Symptom, Symptoms, Verdict};
pub use ring::{EmaStats, Ring, MAX_WINDOW};
pub use zclip::{
    ZClip, ZClipConfig, ZClipDecision, ZClipMode, ZCLIP_MAX_WARMUP, ZCLIP_MIN_REL_STD,
};
