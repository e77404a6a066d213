//! # gradclip
//!
//! Gradient-norm clipping kernels that trainers embed in their hot path, and the toolkit around
//! them against exploding gradients.
//!
//! When the product of Jacobians in backpropagation has spectral norm above 1, gradients grow
//! exponentially with depth or sequence length (1.5^50 ≈ 6.4e8) and training dies in NaN. The
//! standard defence is to compute the global norm of all gradients and, when it exceeds
//! `max_norm`, scale every gradient by `max_norm / (norm + 1e-6)`. gradclip does that over any
//! number of f32 / f16 / bf16 buffers:
//!
//! - **accurate**: squares are exact in f64 and summed with compensation; L2 and L1 are within
//!   1e-14 relative of the exact value for any length and any dynamic range (3.4e38 down to
//!   subnormals), Inf is exact, P within 1e-12;
//! - **reproducible**: the same bits for any thread count and any instruction set (portable,
//!   AVX2): the reduction tree depends on the buffer lengths only; with
//!   [`Summation::Exact`] (see [`exact`]) the L2 and L1 norms are the exactly rounded values, the
//!   same bits for any split of the data into buffers, shards or ranks;
//! - **fast**: runtime-dispatched SIMD, rayon above a size threshold, no allocation;
//! - **safe on bad data**: a NaN or ±inf stops the reduction early and is reported by position;
//!   nothing is written when nothing needs clipping.
//!
//! ```
//! use gradclip::{clip_grad_norm_, ClipOptions, GradMut};
//! use half::bf16;
//! let mut w = vec![30.0f32; 100];
//! let mut b = vec![bf16::from_f32(40.0); 100];
//! let report = clip_grad_norm_(
//!     &mut [GradMut::from(&mut w), GradMut::from(&mut b)],
//!     1.0,
//!     ClipOptions::default(),
//! )
//! .unwrap();
//! assert!((report.total_norm - 500.0).abs() < 1e-9);
//! assert!(report.clipped);
//! ```
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]

// Modules by layer, lowest first (rustfmt sorts each group alphabetically); a module uses only
// its own layer and those above it in this list, and tests/layering.rs fails on any circle.
// Vocabulary.
mod compensated;
pub mod dtype;
mod error;
mod grads;
mod isa;
mod lanes;
mod norm_type;
// The exact accumulator and the exact block kernel's math.
pub mod exact;
// Kernels, per-chunk partials, the tree.
mod arch;
mod chunk;
mod parallel;
mod partial;
// The public operations.
mod clip;
mod exact_norm;
mod norm;
// The fused mixed-precision step (uses the two above).
mod amp;
// Checks for bindings that build views from raw memory.
pub mod overlap;
// Oracles and rooflines for tests, fuzzing and benches.
pub mod baseline;
pub mod reference;
#[cfg(feature = "safetensors")]
pub mod st;

pub use amp::{unscale_clip_grad_norm_, unscale_clip_grad_norm_with_isa_, AmpReport};
pub use arch::dispatch;
pub use clip::{
    clip_coefficient, clip_grad_norm_, clip_grad_norm_with_isa_, clip_grad_value_,
    clip_grads_with_norm_, scale_, scale_with_isa_, ClipOptions, ClipReport, NonFinitePolicy,
};
pub use dtype::{DType, Element};
pub use error::{Error, NonFinite};
pub use exact::{ExactPartial, Summation};
pub use exact_norm::{
    exact_partial, exact_partial_with_isa, get_total_norm_exact, get_total_norm_exact_with_isa,
    get_total_norm_with,
};
pub use grads::{AsGrad, Grad, GradMut};
pub use half::{bf16, f16};
pub use isa::{Dispatch, Isa};
pub use norm::{
    buffer_norm, first_nonfinite, get_total_norm, get_total_norm_with_isa, per_buffer_partials,
    total_norm_partial,
};
pub use norm_type::NormType;
pub use partial::NormPartial;

/// Elements per chunk of the reduction tree (the unit of parallel work and of determinism).
pub const CHUNK_ELEMS: usize = parallel::CHUNK;

/// The size in bytes from which the reduction tree and the scale pass hand halves of the work to
/// rayon (256 KiB, or `GRADCLIP_PAR_MIN_BYTES` read once). A call whose buffers hold fewer bytes
/// in total never calls into rayon and runs on the calling thread: bindings that run calls on a
/// thread pool of their own skip the hand-off below it.
pub fn fork_threshold_bytes() -> usize {
    parallel::par_min_bytes()
}

pub mod advisor;
pub mod monitor;
pub mod rng;
pub mod stabilize;
mod toolkit_error;
pub use toolkit_error::ToolkitError;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
