//! # gradclip-candle
//!
//! Global-norm gradient clipping for [candle](https://docs.rs/candle-core) trainers, in one line,
//! over gradclip's kernels: the gradients in a `GradStore` are read where they lie and scaled in
//! place, with gradclip's numerics (squares exact in f64, compensated sums, the same bits for any
//! thread count and instruction set) and its scaling rule
//! `x = round_to_dtype(f32(x) * f32(coef))`.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use gradclip_candle::{clip_grad_norm, ClipOptions};
//!
//! let w = Var::new(&[3.0f32, 4.0], &Device::Cpu)?;
//! let loss = (w.as_tensor() * 10.0)?.sum_all()?;
//! let mut grads = loss.backward()?; // the gradient of w is [10, 10]
//! let report = clip_grad_norm(&[w.clone()], &mut grads, 1.0, ClipOptions::default())?;
//! assert!(report.clipped);
//! assert!((report.total_norm - 200f64.sqrt()).abs() < 1e-12);
//! let g = grads.get(&w).unwrap().to_vec1::<f32>()?;
//! assert!((g[0] - 0.5f32.sqrt()).abs() < 1e-6);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! ## What is accepted
//!
//! - **Vars without a gradient** in the `GradStore` are skipped (as PyTorch skips parameters
//!   whose `.grad` is `None`).
//! - **CPU tensors of dtype f32, f16 and bf16**, mixed freely. Reading is zero-copy and writing is
//!   in place (the gradient tensors in the store keep their storage); a view into a larger
//!   storage (a start offset, as `narrow` gives) is read and written at its offset only.
//! - **Several gradients in one storage** at disjoint offsets are handled: the storage is locked
//!   once and split. Gradients that *overlap* (the same tensor twice, or views sharing elements)
//!   are refused by the three functions that write; [`total_norm`] reads them as given.
//! - **Non-contiguous gradients** (transposed, broadcast) are copied to a contiguous tensor; a
//!   function that writes puts the copy, clipped, back into the `GradStore` in place of the
//!   original (which is left untouched) when it wrote anything (for [`clip_grad_value`]: always).
//!
//! ## What is refused
//!
//! Every refusal is a `candle_core::Error` returned before any write lock is taken and before
//! anything is written (each storage is read-locked alone, briefly, to learn where it lies),
//! its message naming the variable (index in `vars`, shape, dtype):
//!
//! - gradients on a CUDA or Metal device (gradclip's kernels run on the CPU; move the gradients,
//!   or clip them with candle ops);
//! - dtypes other than f32, f16 and bf16 (f64 included: its squares are not exact in f64, so the
//!   library's accuracy and determinism guarantees would not hold);
//! - overlapping gradients, for the functions that write (two mutable views of one memory are
//!   undefined behaviour, and locking one storage twice would deadlock);
//! - a NaN or ±inf under `NonFinitePolicy::Error` (the default): the message names the variable,
//!   the flat index and the value, as the library's `NonFinite` does;
//! - invalid arguments (`max_norm`, `eps`, `clip_value`, `NormType::P(p)`), as the library
//!   refuses them.
//!
//! In a [`ClipReport`], `nonfinite.buffer` is the index of the variable in `vars`.
//!
//! ## Locks and threads
//!
//! candle gives a storage out mutably only inside an in-place op, one storage per op; the writing
//! functions nest one op per storage so that the library sees every buffer in one call (one
//! global norm, one parallel scaling pass). The write locks are taken in storage-address order,
//! as candle's own in-place ops take theirs, so concurrent callers cannot deadlock; a storage
//! shared by several gradients is locked once. The nest costs about half a KiB of stack per
//! storage (release build): up to 64 storages nest on the calling thread, more on a helper
//! thread with a stack sized for them — except on a rayon worker thread (a call inside
//! `ThreadPool::install`), where the nest stays so that the library's parallel work runs in
//! that pool; for models of thousands of gradient tensors give such a pool a `stack_size` of
//! about 1 MiB plus 1 KiB per tensor. [`total_norm`] holds one read lock per storage instead.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod access;
mod error;
mod plan;

use candle_core::backprop::GradStore;
use candle_core::Var;

pub use gradclip::{ClipOptions, ClipReport, NonFinite, NonFinitePolicy, NormType};

use error::{ClipError, Who};
use plan::{Access, Plan};

/// The total norm of the gradients of `vars` (those that have one), as f64, computed by
/// [`gradclip::get_total_norm`] on the gradients in place.
///
/// A NaN or ±inf is an error naming the variable, the flat index and the value.
pub fn total_norm(
    vars: &[Var],
    grads: &GradStore,
    norm_type: NormType,
) -> candle_core::Result<f64> {
    let plan = Plan::new(vars, grads, Access::Read)?;
    let norm = access::with_grads(&plan, |g| gradclip::get_total_norm(g, norm_type))?;
    norm.map_err(|e| core_error(&plan, e))
}

/// Clips the global norm of the gradients of `vars` to `max_norm`, in place, with PyTorch's
/// semantics: [`gradclip::clip_grad_norm_`] on the gradients where they lie.
///
/// `clip_coef = min(1, max_norm / (total_norm + eps))`; nothing is written when it is 1,
/// otherwise every element becomes `round_to_dtype(f32(x) * f32(clip_coef))`. `opts` chooses the
/// norm, `eps` and what a NaN/inf does (error by default; see [`NonFinitePolicy`]).
pub fn clip_grad_norm(
    vars: &[Var],
    grads: &mut GradStore,
    max_norm: f64,
    opts: ClipOptions,
) -> candle_core::Result<ClipReport> {
    let plan = Plan::new(vars, grads, Access::Write)?;
    let report =
        access::with_grads_mut(&plan, &mut |g| gradclip::clip_grad_norm_(g, max_norm, opts))?;
    finish_clip(vars, &plan, grads, report)
}

/// Scales the gradients of `vars` by `min(1, max_norm / (total_norm + 1e-6))` for a norm
/// computed elsewhere (for example by [`total_norm`], or merged across ranks):
/// [`gradclip::clip_grads_with_norm_`] in place. A NaN or infinite `total_norm` propagates as in
/// PyTorch.
pub fn clip_grads_with_norm(
    vars: &[Var],
    grads: &mut GradStore,
    max_norm: f64,
    total_norm: f64,
) -> candle_core::Result<ClipReport> {
    let plan = Plan::new(vars, grads, Access::Write)?;
    let report = access::with_grads_mut(&plan, &mut |g| {
        gradclip::clip_grads_with_norm_(g, max_norm, total_norm)
    })?;
    finish_clip(vars, &plan, grads, report)
}

/// Clamps every gradient element of `vars` to `[-clip_value, clip_value]` in place:
/// [`gradclip::clip_grad_value_`] (NaN left as is, ±inf clamped, only changed elements written).
pub fn clip_grad_value(
    vars: &[Var],
    grads: &mut GradStore,
    clip_value: f64,
) -> candle_core::Result<()> {
    let plan = Plan::new(vars, grads, Access::Write)?;
    access::with_grads_mut(&plan, &mut |g| gradclip::clip_grad_value_(g, clip_value))?
        .map_err(|e| core_error(&plan, e))?;
    reinsert_copies(vars, &plan, grads);
    Ok(())
}

fn finish_clip(
    vars: &[Var],
    plan: &Plan,
    grads: &mut GradStore,
    report: Result<ClipReport, gradclip::Error>,
) -> candle_core::Result<ClipReport> {
    let mut report = report.map_err(|e| core_error(plan, e))?;
    if let Some(nf) = report.nonfinite.as_mut() {
        nf.buffer = plan.entries[nf.buffer].var;
    }
    if report.clipped {
        reinsert_copies(vars, plan, grads);
    }
    Ok(report)
}

/// Puts the (written) contiguous copies of non-contiguous gradients into the store.
fn reinsert_copies(vars: &[Var], plan: &Plan, grads: &mut GradStore) {
    for e in plan.entries.iter().filter(|e| e.copied) {
        grads.insert(&vars[e.var], e.tensor.clone());
    }
}

/// A library error as a candle error, the buffer index of a `NonFinite` mapped to its variable.
fn core_error(plan: &Plan, e: gradclip::Error) -> candle_core::Error {
    match e {
        gradclip::Error::NonFinite(nf) => {
            let entry = &plan.entries[nf.buffer];
            ClipError::NonFinite {
                who: Who::of(entry.var, &entry.tensor),
                index: nf.index,
                value: nf.value,
            }
            .into()
        }
        other => ClipError::Core(other).into(),
    }
}
