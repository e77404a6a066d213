//! # gradclip C ABI
//!
//! `libgradclip.so` / `libgradclip.a` and the header `include/gradclip.h` (generated from this
//! crate by cbindgen and checked in; `tests/header.rs` fails when they differ). The binding holds
//! no numerics: every function validates its raw arguments ([`raw`]), builds the library's views
//! and calls the Rust API on the process-wide thread pool ([`pool`]), inside one panic boundary
//! ([`boundary`]). Results are the Rust API's bits.
//!
//! The doc comments below are the C contract; cbindgen copies them into the header.
#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
// The exported types and constants carry their C names.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::null;

use gradclip_core::{
    ClipOptions, Error, ExactPartial, Grad, Isa, NonFinite, NonFinitePolicy, NormPartial, NormType,
    Summation,
};

mod boundary;
mod pool;
mod raw;
#[cfg(test)]
mod tests;

use boundary::{call, call_str, status_of};

/// Success.
pub const GRADCLIP_OK: c_int = 0;
/// A NaN or +-inf was found: `out_bad` is filled when not NULL, nothing else is written.
pub const GRADCLIP_NONFINITE: c_int = 1;
/// A NULL pointer where one is required (including `data == NULL` with `len > 0`).
pub const GRADCLIP_ERR_NULL: c_int = -1;
/// A bad argument: norm type, max_norm, total_norm, factor, clip value, dtype, policy or
/// summation value, a length whose byte size exceeds `PTRDIFF_MAX` or the address space, a
/// thread count the system refused, or a P norm (p other than 1, 2 and `INFINITY`) asked of an
/// exact partial.
pub const GRADCLIP_ERR_ARG: c_int = -2;
/// Two mutable buffers of one call share memory.
pub const GRADCLIP_ERR_OVERLAP: c_int = -3;
/// A pointer not aligned for its type (`data` for its dtype: 4 bytes for f32, 2 for f16/bf16).
pub const GRADCLIP_ERR_ALIGN: c_int = -4;
/// A P norm of finite gradients whose value exceeds the range of `double`.
pub const GRADCLIP_ERR_OVERFLOW: c_int = -5;
/// A bug in gradclip: a Rust panic was caught at the boundary (nothing unwinds into C). The one
/// status that cannot promise "nothing modified": buffers being scaled may be partly written.
pub const GRADCLIP_ERR_INTERNAL: c_int = -99;

/// Element type of a gradient buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum gradclip_dtype {
    /// IEEE 754 binary32 (`float`).
    GRADCLIP_F32 = 0,
    /// IEEE 754 binary16.
    GRADCLIP_F16 = 1,
    /// bfloat16 (the upper half of a binary32).
    GRADCLIP_BF16 = 2,
}

/// What `gradclip_clip_grad_norm` does when a gradient holds NaN or +-inf.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum gradclip_on_nonfinite {
    /// Return `GRADCLIP_NONFINITE` (filling `out_bad`); write nothing else.
    GRADCLIP_ON_NONFINITE_ERROR = 0,
    /// Return `GRADCLIP_NONFINITE` (a NaN or +-inf was found, nothing written), fill `out_bad`,
    /// and also fill the report: `total_norm` NaN (a NaN was seen) or +inf, `clip_coef` 1,
    /// `clipped` 0. Mixed-precision trainers skip the optimizer step on this status.
    GRADCLIP_ON_NONFINITE_SKIP = 1,
    /// PyTorch's behaviour: `total_norm` is NaN or +inf, the coefficient NaN or 0, and every
    /// element is multiplied by it; returns `GRADCLIP_OK`, fills `out_bad`.
    GRADCLIP_ON_NONFINITE_PROPAGATE = 2,
}

/// How `gradclip_total_norm_with` and `gradclip_clip_grad_norm_with` sum L2 and L1 norms.
/// Inf (max |x|) is exact either way; P norms (p other than 1, 2 and `INFINITY`) are always
/// computed as in COMPENSATED.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum gradclip_summation {
    /// What `gradclip_total_norm` and `gradclip_clip_grad_norm` do: compensated f64 sums, within
    /// 1e-14 relative of the exact value, the same bits for any thread count and instruction
    /// set, but not for a different split of the same numbers into buffers or shards.
    GRADCLIP_SUMMATION_COMPENSATED = 0,
    /// The exact sum rounded once to the nearest double (L2: the correctly rounded square root
    /// of the correctly rounded sum of squares): the same bits for any split of the data into
    /// buffers or shards, any merge order, thread count and instruction set. The Rust
    /// `gradclip::Summation::Exact`.
    GRADCLIP_SUMMATION_EXACT = 1,
}

/// A `gradclip_dtype` as it arrives from C: read as an integer, so that a value outside the enum
/// is `GRADCLIP_ERR_ARG` rather than undefined behaviour. The header spells it `gradclip_dtype`.
pub type DTypeValue = u32;
/// A `gradclip_on_nonfinite` as it arrives from C (see [`DTypeValue`]).
pub type PolicyValue = u32;
/// A `gradclip_summation` as it arrives from C (see [`DTypeValue`]).
pub type SummationValue = u32;

/// A read-only gradient buffer: `len` elements (not bytes) of `dtype` at `data`. `data` may be
/// NULL when `len` is 0, and must otherwise be aligned for its dtype.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gradclip_grad {
    /// First element; borrowed for the duration of the call only.
    pub data: *const c_void,
    /// Number of elements.
    pub len: usize,
    /// Element type.
    pub dtype: DTypeValue,
}

/// A gradient buffer modified in place: as `gradclip_grad`, writable. The buffers of one call
/// must not share memory (`GRADCLIP_ERR_OVERLAP`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gradclip_grad_mut {
    /// First element; borrowed for the duration of the call only.
    pub data: *mut c_void,
    /// Number of elements.
    pub len: usize,
    /// Element type.
    pub dtype: DTypeValue,
}

/// The first NaN or +-inf in buffer order (lowest buffer index, then lowest element index).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gradclip_nonfinite {
    /// Index of the buffer in the array passed to the call.
    pub buffer: usize,
    /// Element index inside that buffer.
    pub index: usize,
    /// The value, widened to double (NaN, +inf or -inf).
    pub value: f64,
}

/// What `gradclip_clip_grad_norm` did.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gradclip_clip_report {
    /// The total norm before clipping (NaN or +inf when the input was not finite).
    pub total_norm: f64,
    /// `min(1, max_norm / (total_norm + 1e-6))` (NaN propagates); 1 when nothing was written.
    pub clip_coef: f64,
    /// 1 when the gradients were rewritten (`clip_coef != 1`), else 0.
    pub clipped: c_int,
}

/// The mergeable state of a norm over part of the gradients: 40 bytes, the same bytes as the
/// Rust `gradclip::NormPartial`, to send as they are through any collective (e.g.
/// `MPI_Allgather` of 40 `MPI_BYTE`). All-zero bytes (what `gradclip_partial_compute` gives for
/// `n == 0`) are the identity of `gradclip_partial_merge` for every norm type.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gradclip_partial {
    /// The bytes of a Rust `NormPartial` (native endianness).
    pub bytes: [u8; 40],
}

const _: () =
    assert!(std::mem::size_of::<NormPartial>() == std::mem::size_of::<gradclip_partial>());

impl From<NormPartial> for gradclip_partial {
    fn from(p: NormPartial) -> Self {
        // Same size (asserted above); a byte array takes any bytes at any alignment.
        gradclip_partial {
            bytes: bytemuck::cast(p),
        }
    }
}

impl From<gradclip_partial> for NormPartial {
    fn from(p: gradclip_partial) -> Self {
        // `NormPartial` is Pod: any 40 bytes are a value (a meaningless one merges into NaN).
        bytemuck::cast(p.bytes)
    }
}

/// The exact mergeable state of an L1, L2 or Inf norm over part of the gradients: 96 bytes, the
/// same bytes as the Rust `gradclip::ExactPartial` (the exact sum as a fixed-point integer, the
/// largest magnitude, the norm kind and NaN/inf flags), to send as they are through any
/// collective (e.g. `MPI_Allgather` of 96 `MPI_BYTE`). Merging is integer addition: the bytes of
/// a merged partial depend only on the elements that went in, so the partials of any split of
/// the data (buffers, shards, ranks), merged in any order, finish to the same bits as the whole
/// data in one process (`gradclip_total_norm_with` with `GRADCLIP_SUMMATION_EXACT`). All-zero
/// bytes (what `gradclip_exact_partial_compute` gives for `n == 0`) are the identity of
/// `gradclip_exact_partial_merge` for every norm type.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gradclip_exact_partial {
    /// The bytes of a Rust `ExactPartial` (native endianness).
    pub bytes: [u8; 96],
}

const _: () =
    assert!(std::mem::size_of::<ExactPartial>() == std::mem::size_of::<gradclip_exact_partial>());

impl From<ExactPartial> for gradclip_exact_partial {
    fn from(p: ExactPartial) -> Self {
        // Same size (asserted above); a byte array takes any bytes at any alignment.
        gradclip_exact_partial {
            bytes: bytemuck::cast(p),
        }
    }
}

impl From<gradclip_exact_partial> for ExactPartial {
    fn from(p: gradclip_exact_partial) -> Self {
        // `ExactPartial` is Pod: any 96 bytes are a value (bytes that no partial has merge into
        // NaN or give a meaningless number, never undefined behaviour).
        bytemuck::cast(p.bytes)
    }
}

impl From<NonFinite> for gradclip_nonfinite {
    fn from(nf: NonFinite) -> Self {
        gradclip_nonfinite {
            buffer: nf.buffer,
            index: nf.index,
            value: nf.value,
        }
    }
}

/// The norm type of a C `norm_type`: +inf is the max norm, anything else goes to the library as
/// `P(p)`, which maps 1 and 2 to L1 and L2 and refuses what is not finite and > 0.
fn norm_type(p: f64) -> NormType {
    if p == f64::INFINITY {
        NormType::Inf
    } else {
        NormType::P(p)
    }
}

/// The summation of a C `summation` value (`None`: not a `gradclip_summation`).
fn summation(v: SummationValue) -> Option<Summation> {
    [
        (
            gradclip_summation::GRADCLIP_SUMMATION_COMPENSATED,
            Summation::Compensated,
        ),
        (
            gradclip_summation::GRADCLIP_SUMMATION_EXACT,
            Summation::Exact,
        ),
    ]
    .into_iter()
    .find(|&(c, _)| c as SummationValue == v)
    .map(|(_, s)| s)
}

/// The policy of a C `policy` value (`None`: not a `gradclip_on_nonfinite`).
fn policy(v: PolicyValue) -> Option<NonFinitePolicy> {
    [
        NonFinitePolicy::Error,
        NonFinitePolicy::Skip,
        NonFinitePolicy::Propagate,
    ]
    .into_iter()
    .nth(v as usize)
}

/// Runs `f`, a call over `buffers`, on the gradclip thread pool, or on the calling thread when
/// it is too small to fork (`GRADCLIP_ERR_INTERNAL` if the system refused to start the pool).
fn on_pool<R: Send>(buffers: &[raw::Buffer], f: impl FnOnce() -> R + Send) -> Result<R, c_int> {
    pool::run(raw::total_bytes(buffers), f).ok_or(GRADCLIP_ERR_INTERNAL)
}

/// The status of a library error; a non-finite element is also written to `out_bad`.
///
/// # Safety
/// A non-NULL `out_bad` must be aligned and valid for a write, and no live reference may cover it.
unsafe fn fail(e: Error, out_bad: *mut gradclip_nonfinite) -> c_int {
    if let Error::NonFinite(nf) = e {
        // SAFETY: the caller's contract.
        unsafe { raw::write_if_some(out_bad, nf.into()) };
    }
    status_of(&e)
}

/// Runs `op` on the read-only views of `n` buffers at `grads`, on the pool.
///
/// # Safety
/// As documented for the exported functions taking `const gradclip_grad *`.
unsafe fn with_grads<R: Send>(
    grads: *const gradclip_grad,
    n: usize,
    op: impl FnOnce(&[gradclip_core::Grad<'_>]) -> R + Send,
) -> Result<R, c_int> {
    // SAFETY: the caller passes `n` descriptors at `grads`, unmodified during the call.
    let descs = unsafe { raw::array(grads, n) }?;
    let buffers = raw::buffers(descs, false)?;
    // SAFETY: each buffer passed the checks; the caller guarantees `len` readable elements,
    // unmodified during the call.
    let views: Vec<_> = buffers.iter().map(|b| unsafe { b.grad() }).collect();
    on_pool(&buffers, || op(&views))
}

/// Runs `op` on the mutable views of `n` buffers at `grads`, on the pool.
///
/// # Safety
/// As documented for the exported functions taking `const gradclip_grad_mut *`.
unsafe fn with_grads_mut<R: Send>(
    grads: *const gradclip_grad_mut,
    n: usize,
    op: impl FnOnce(&mut [gradclip_core::GradMut<'_>]) -> R + Send,
) -> Result<R, c_int> {
    // SAFETY: the caller passes `n` descriptors at `grads`; the slice is dropped (copied into
    // `buffers`) before any gradient view exists, so a gradient buffer may even contain it.
    let buffers = raw::buffers(unsafe { raw::array(grads, n) }?, true)?;
    // SAFETY: each buffer passed the checks and they are pairwise disjoint (`buffers(.., true)`);
    // the caller guarantees `len` writable elements that nobody else touches during the call.
    let mut views: Vec<_> = buffers.iter().map(|b| unsafe { b.grad_mut() }).collect();
    on_pool(&buffers, || op(&mut views))
}

/// The body of `gradclip_total_norm` and `gradclip_total_norm_with`.
///
/// # Safety
/// As documented for `gradclip_total_norm`.
unsafe fn total_norm_body(
    grads: *const gradclip_grad,
    n: usize,
    norm_type: f64,
    summation: SummationValue,
    out_norm: *mut f64,
    out_bad: *mut gradclip_nonfinite,
) -> boundary::Status {
    raw::outputs(grads, n, out_norm, out_bad)?;
    let nt = self::norm_type(norm_type);
    let summation = self::summation(summation);
    // SAFETY: the caller's contract.
    let result = unsafe {
        with_grads(grads, n, |g| {
            // The summation is checked with the numeric arguments, after the buffers.
            summation.map(|s| gradclip_core::get_total_norm_with(g, nt, s))
        })
    }?
    .ok_or(GRADCLIP_ERR_ARG)?;
    match result {
        // SAFETY: `out_norm` is non-NULL, aligned, writable (caller), and no view is alive.
        Ok(v) => unsafe { out_norm.write(v) },
        // SAFETY: `out_bad` is NULL or aligned and writable (caller).
        Err(e) => return Err(unsafe { fail(e, out_bad) }),
    }
    Ok(GRADCLIP_OK)
}

/// The global norm of `n` buffers: L2 for `norm_type` 2, L1 for 1, max |x| for `INFINITY`, or
/// `(sum |x|^p)^(1/p)` for any other finite p > 0. The same bits as the Rust
/// `gradclip::get_total_norm`, for any thread count and instruction set.
///
/// Returns `GRADCLIP_OK` with `*out_norm` set; `GRADCLIP_NONFINITE` when an element is NaN or
/// +-inf (the first one in `*out_bad` when `out_bad` is not NULL); `GRADCLIP_ERR_OVERFLOW` for a
/// P norm beyond `double`; or an error. `*out_norm` is written only on `GRADCLIP_OK`.
///
/// # Safety
/// `grads` points to `n` descriptors (it may be NULL when `n` is 0), each describing `len`
/// readable elements; `out_norm` (required) and `out_bad` (may be NULL) are writable. Nothing is
/// kept after the call returns. Buffers must not be written by other threads during the call.
#[no_mangle]
pub unsafe extern "C" fn gradclip_total_norm(
    grads: *const gradclip_grad,
    n: usize,
    norm_type: f64,
    out_norm: *mut f64,
    out_bad: *mut gradclip_nonfinite,
) -> c_int {
    let compensated = gradclip_summation::GRADCLIP_SUMMATION_COMPENSATED as SummationValue;
    // SAFETY: the caller's contract above.
    call(|| unsafe { total_norm_body(grads, n, norm_type, compensated, out_norm, out_bad) })
}

/// `gradclip_total_norm` with a choice of summation: `GRADCLIP_SUMMATION_COMPENSATED` gives
/// the bits of `gradclip_total_norm`, `GRADCLIP_SUMMATION_EXACT` the exactly rounded L2 or L1
/// norm (the same bits however the same numbers are split into buffers, which is also what
/// merged `gradclip_exact_partial`s give). The same bits as the Rust
/// `gradclip::get_total_norm_with`. A `summation` value outside `gradclip_summation` is
/// `GRADCLIP_ERR_ARG` (checked after the buffers, with `norm_type`). Statuses and outputs
/// otherwise as for `gradclip_total_norm`.
///
/// # Safety
/// As for `gradclip_total_norm`.
#[no_mangle]
pub unsafe extern "C" fn gradclip_total_norm_with(
    grads: *const gradclip_grad,
    n: usize,
    norm_type: f64,
    summation: SummationValue,
    out_norm: *mut f64,
    out_bad: *mut gradclip_nonfinite,
) -> c_int {
    // SAFETY: the caller's contract above.
    call(|| unsafe { total_norm_body(grads, n, norm_type, summation, out_norm, out_bad) })
}

/// The body of `gradclip_clip_grad_norm` and `gradclip_clip_grad_norm_with`.
///
/// # Safety
/// As documented for `gradclip_clip_grad_norm`.
#[allow(clippy::too_many_arguments)]
unsafe fn clip_grad_norm_body(
    grads: *const gradclip_grad_mut,
    n: usize,
    max_norm: f64,
    norm_type: f64,
    policy: PolicyValue,
    summation: SummationValue,
    out: *mut gradclip_clip_report,
    out_bad: *mut gradclip_nonfinite,
) -> boundary::Status {
    raw::outputs(grads, n, out, out_bad)?;
    let on_nonfinite = self::policy(policy);
    let summation = self::summation(summation);
    let norm_type = self::norm_type(norm_type);
    // SAFETY: the caller's contract.
    let result = unsafe {
        with_grads_mut(grads, n, |g| {
            // The policy and the summation are checked with the numeric arguments, after the
            // buffers.
            let (on_nonfinite, summation) = on_nonfinite.zip(summation)?;
            let options = ClipOptions {
                norm_type,
                on_nonfinite,
                summation,
                ..ClipOptions::default()
            };
            Some(gradclip_core::clip_grad_norm_(g, max_norm, options))
        })
    }?
    .ok_or(GRADCLIP_ERR_ARG)?;
    match result {
        Ok(r) => {
            // SAFETY: `out` and `out_bad` are aligned and writable or (`out_bad`) NULL
            // (caller), and no gradient view is alive any more.
            unsafe {
                if let Some(nf) = r.nonfinite {
                    raw::write_if_some(out_bad, nf.into());
                }
                out.write(gradclip_clip_report {
                    total_norm: r.total_norm,
                    clip_coef: r.clip_coef,
                    clipped: c_int::from(r.clipped),
                });
            }
            // Under SKIP a non-finite element means "found, nothing written": the status
            // says so. PROPAGATE wrote (NaN or 0 products), so it is a plain success.
            let skipped = r.nonfinite.is_some() && on_nonfinite == Some(NonFinitePolicy::Skip);
            Ok(if skipped {
                GRADCLIP_NONFINITE
            } else {
                GRADCLIP_OK
            })
        }
        // SAFETY: `out_bad` is NULL or aligned and writable (caller).
        Err(e) => Err(unsafe { fail(e, out_bad) }),
    }
}

/// Clips the global norm of `n` buffers to `max_norm` in place (PyTorch's `clip_grad_norm_`,
/// eps = 1e-6): `clip_coef = min(1, max_norm / (total_norm + 1e-6))`; when it is 1 nothing is
/// written, otherwise every element becomes `round_to_dtype((float)x * (float)clip_coef)`
/// (round to nearest even). `max_norm` must be finite and > 0; `norm_type` as in
/// `gradclip_total_norm`; `policy` says what a NaN or +-inf does (see `gradclip_on_nonfinite`).
/// The same bits as the Rust `gradclip::clip_grad_norm_`.
///
/// Returns `GRADCLIP_OK` with `*out` set (and, when a NaN or +-inf was found under the
/// PROPAGATE policy, which writes NaN or 0 products as PyTorch does, `*out_bad` set when
/// `out_bad` is not NULL); `GRADCLIP_NONFINITE` when a NaN or +-inf was found under the ERROR
/// policy (`*out_bad` set, nothing else written) or the SKIP policy (`*out_bad` and `*out` set,
/// no gradient written); or an error, with nothing written.
///
/// # Safety
/// `grads` points to `n` descriptors (it may be NULL when `n` is 0), each describing `len`
/// readable and writable elements, pairwise disjoint; `out` (required) and `out_bad` (may be
/// NULL) are writable. Nothing is kept after the call. No other thread may touch the buffers
/// during the call.
#[no_mangle]
pub unsafe extern "C" fn gradclip_clip_grad_norm(
    grads: *const gradclip_grad_mut,
    n: usize,
    max_norm: f64,
    norm_type: f64,
    policy: PolicyValue,
    out: *mut gradclip_clip_report,
    out_bad: *mut gradclip_nonfinite,
) -> c_int {
    let compensated = gradclip_summation::GRADCLIP_SUMMATION_COMPENSATED as SummationValue;
    call(|| {
        // SAFETY: the caller's contract above.
        unsafe {
            clip_grad_norm_body(
                grads,
                n,
                max_norm,
                norm_type,
                policy,
                compensated,
                out,
                out_bad,
            )
        }
    })
}

/// `gradclip_clip_grad_norm` with a choice of summation for the norm (see
/// `gradclip_summation`): `GRADCLIP_SUMMATION_COMPENSATED` does what `gradclip_clip_grad_norm`
/// does; `GRADCLIP_SUMMATION_EXACT` clips with the exactly rounded L2 or L1 norm, so the same
/// numbers split differently into buffers get the same norm and the same clipped bits. The same
/// bits as the Rust `gradclip::clip_grad_norm_` with `ClipOptions::summation`. A `summation`
/// value outside `gradclip_summation` is `GRADCLIP_ERR_ARG` (checked after the buffers, with
/// the numeric arguments and the policy). Statuses and outputs otherwise as for
/// `gradclip_clip_grad_norm`.
///
/// # Safety
/// As for `gradclip_clip_grad_norm`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gradclip_clip_grad_norm_with(
    grads: *const gradclip_grad_mut,
    n: usize,
    max_norm: f64,
    norm_type: f64,
    policy: PolicyValue,
    summation: SummationValue,
    out: *mut gradclip_clip_report,
    out_bad: *mut gradclip_nonfinite,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract above.
        unsafe {
            clip_grad_norm_body(
                grads, n, max_norm, norm_type, policy, summation, out, out_bad,
            )
        }
    })
}

/// The second half of `gradclip_clip_grad_norm`, for a norm computed elsewhere (for example
/// merged from the partials of several ranks): scales by
/// `min(1, max_norm / (total_norm + 1e-6))`, writing nothing when that is 1. `max_norm` must be
/// finite and > 0, `total_norm` not negative; a NaN or +inf `total_norm` propagates as in
/// PyTorch (the coefficient is NaN or 0). The same bits as the Rust
/// `gradclip::clip_grads_with_norm_`.
///
/// # Safety
/// As for `gradclip_clip_grad_norm`'s `grads` and `n`.
#[no_mangle]
pub unsafe extern "C" fn gradclip_clip_grads_with_norm(
    grads: *const gradclip_grad_mut,
    n: usize,
    max_norm: f64,
    total_norm: f64,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract above.
        let result = unsafe {
            with_grads_mut(grads, n, |g| {
                gradclip_core::clip_grads_with_norm_(g, max_norm, total_norm)
            })
        }?;
        result.map(|_| GRADCLIP_OK).map_err(|e| status_of(&e))
    })
}

/// Multiplies every element by `factor`: `x = round_to_dtype((float)x * (float)factor)`;
/// nothing is written when `factor` is 1. `factor` must be finite, also once rounded to float.
/// The same bits as the Rust `gradclip::scale_`.
///
/// # Safety
/// As for `gradclip_clip_grad_norm`'s `grads` and `n`.
#[no_mangle]
pub unsafe extern "C" fn gradclip_scale(
    grads: *const gradclip_grad_mut,
    n: usize,
    factor: f64,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract above.
        let result = unsafe { with_grads_mut(grads, n, |g| gradclip_core::scale_(g, factor)) }?;
        result.map(|()| GRADCLIP_OK).map_err(|e| status_of(&e))
    })
}

/// Clamps every element to `[-t, t]` with `t = round_to_dtype((float)clip_value)`, writing only
/// the elements that change; NaN elements stay NaN, +-inf become +-t. `clip_value` must be >= 0
/// and not NaN (`INFINITY` leaves every finite element as it is). The same bits as the Rust
/// `gradclip::clip_grad_value_`.
///
/// # Safety
/// As for `gradclip_clip_grad_norm`'s `grads` and `n`.
#[no_mangle]
pub unsafe extern "C" fn gradclip_clip_grad_value(
    grads: *const gradclip_grad_mut,
    n: usize,
    clip_value: f64,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract above.
        let result = unsafe {
            with_grads_mut(grads, n, |g| gradclip_core::clip_grad_value_(g, clip_value))
        }?;
        result.map(|()| GRADCLIP_OK).map_err(|e| status_of(&e))
    })
}

/// The first NaN or +-inf in buffer order. Returns 1 with `*out` set when there is one, 0 (and
/// `*out` untouched) when every element is finite, or an error.
///
/// # Safety
/// As for `gradclip_total_norm`'s `grads` and `n`; `out` (required) is writable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_first_nonfinite(
    grads: *const gradclip_grad,
    n: usize,
    out: *mut gradclip_nonfinite,
) -> c_int {
    call(|| {
        raw::outputs(grads, n, out, null())?;
        // SAFETY: the caller's contract above.
        let found = unsafe { with_grads(grads, n, |g| gradclip_core::first_nonfinite(g)) }?;
        Ok(match found {
            Some(nf) => {
                // SAFETY: `out` is non-NULL, aligned and writable (caller); no view is alive.
                unsafe { out.write(nf.into()) };
                1
            }
            None => 0,
        })
    })
}

/// The body of `gradclip_partial_compute` and `gradclip_exact_partial_compute`: `compute` on
/// the buffers, written to `*out`; for `n == 0`, `empty` once `compute` accepted the norm type.
///
/// # Safety
/// As documented for `gradclip_partial_compute`.
unsafe fn partial_compute_body<C, R>(
    grads: *const gradclip_grad,
    n: usize,
    out: *mut C,
    empty: R,
    compute: impl FnOnce(&[Grad<'_>]) -> Result<R, Error> + Send,
) -> boundary::Status
where
    C: From<R>,
    R: Send,
{
    raw::outputs(grads, n, out, null())?;
    let part = if n == 0 {
        // Check the norm type as for n > 0 (`grads` is not read), then give the all-zero
        // identity of every type.
        compute(&[]).map(|_| empty)
    } else {
        // SAFETY: the caller's contract.
        unsafe { with_grads(grads, n, compute) }?
    };
    let part = part.map_err(|e| status_of(&e))?;
    // SAFETY: `out` is non-NULL and writable (caller); its alignment is 1.
    unsafe { out.write(part.into()) };
    Ok(GRADCLIP_OK)
}

/// The body of `gradclip_partial_merge` and `gradclip_exact_partial_merge`.
///
/// # Safety
/// As documented for `gradclip_partial_merge`.
unsafe fn partial_merge_body<C, R>(
    acc: *mut C,
    other: *const C,
    merge: impl FnOnce(R, R) -> R,
) -> boundary::Status
where
    C: From<R>,
    R: From<C>,
{
    raw::required(acc)?;
    raw::required(other)?;
    // SAFETY: both are non-NULL and readable (caller); alignment is 1; copies are taken before
    // the write, so `acc == other` is fine.
    let (a, b) = unsafe { (acc.read(), other.read()) };
    let merged = merge(R::from(a), R::from(b));
    // SAFETY: `acc` is non-NULL and writable (caller).
    unsafe { acc.write(merged.into()) };
    Ok(GRADCLIP_OK)
}

/// The body of the functions that read a number from a partial (`gradclip_partial_finish`,
/// `gradclip_exact_partial_finish`, `gradclip_exact_partial_sum`): `value` gives the number
/// or the status to return.
///
/// # Safety
/// `p` (required) is readable, `out` (required) writable.
unsafe fn partial_value_body<C, R>(
    p: *const C,
    out: *mut f64,
    value: impl FnOnce(R) -> Result<f64, c_int>,
) -> boundary::Status
where
    R: From<C>,
{
    raw::required(p)?;
    raw::required(out)?;
    raw::aligned(out)?;
    // SAFETY: `p` is non-NULL and readable (caller); alignment is 1.
    let v = value(R::from(unsafe { p.read() }))?;
    // SAFETY: `out` is non-NULL, aligned and writable (caller).
    unsafe { out.write(v) };
    Ok(GRADCLIP_OK)
}

/// The partial of `n` buffers for `norm_type` (as in `gradclip_total_norm`): the unit of
/// exchange for sharded training. Merge the partials of all shards in a fixed order (rank
/// order) with `gradclip_partial_merge` and finish with `gradclip_partial_finish`: every rank
/// gets the same bits. A NaN or +-inf does not stop the call: it is recorded in the partial
/// (`gradclip_partial_finish` then gives NaN or +inf). For `n == 0` the result is all zero
/// bytes, the identity of merge for every norm type; otherwise the bytes of the Rust
/// `gradclip::total_norm_partial`.
///
/// # Safety
/// As for `gradclip_total_norm`'s `grads` and `n`; `out` (required) is writable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_partial_compute(
    grads: *const gradclip_grad,
    n: usize,
    norm_type: f64,
    out: *mut gradclip_partial,
) -> c_int {
    let nt = self::norm_type(norm_type);
    call(|| {
        // SAFETY: the caller's contract above.
        unsafe {
            partial_compute_body(grads, n, out, NormPartial::EMPTY, |g| {
                gradclip_core::total_norm_partial(g, nt)
            })
        }
    })
}

/// `*acc = merge(*acc, *other)`, as the Rust `NormPartial::merge`. Partials of different norm
/// types merge into a NaN result. `acc` and `other` may be the same pointer.
///
/// # Safety
/// `acc` (required) is readable and writable, `other` (required) readable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_partial_merge(
    acc: *mut gradclip_partial,
    other: *const gradclip_partial,
) -> c_int {
    // SAFETY: the caller's contract above.
    call(|| unsafe { partial_merge_body(acc, other, NormPartial::merge) })
}

/// The norm of a (merged) partial, as the Rust `NormPartial::finish`: NaN if a NaN went in,
/// +inf if a +-inf (and no NaN) went in, 0 for the all-zero partial. Returns `GRADCLIP_OK` with
/// `*out_norm` set, or `GRADCLIP_ERR_OVERFLOW` (nothing written) when the partial saw only finite
/// values but its P norm exceeds `double`.
///
/// # Safety
/// `p` (required) is readable, `out_norm` (required) writable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_partial_finish(
    p: *const gradclip_partial,
    out_norm: *mut f64,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract above.
        unsafe {
            partial_value_body(p, out_norm, |part: NormPartial| {
                let v = part.finish();
                if part.is_finite() && !v.is_finite() {
                    Err(GRADCLIP_ERR_OVERFLOW)
                } else {
                    Ok(v)
                }
            })
        }
    })
}

/// The exact partial of `n` buffers for `norm_type` 2 (L2), 1 (L1) or `INFINITY` (max |x|):
/// the unit of exchange for sharded training when every rank must get the bits of one process.
/// Merge the partials of all shards with `gradclip_exact_partial_merge`, in any order, and
/// finish with `gradclip_exact_partial_finish`: the result has the bits of
/// `gradclip_total_norm_with(..., GRADCLIP_SUMMATION_EXACT, ...)` on the whole, unsharded data,
/// however it was split. A NaN or +-inf does not stop the call: it is recorded in the partial
/// (finish then gives NaN if a NaN went in, else +inf), so every rank still sends its partial.
/// For `n == 0` the result is all zero bytes, the identity of merge for every norm type;
/// otherwise the bytes of the Rust `gradclip::exact_partial`.
///
/// Returns `GRADCLIP_OK`, or an error with nothing written: a P norm (any other finite p > 0)
/// has no exact partial and gives `GRADCLIP_ERR_ARG`, as an invalid `norm_type` does.
///
/// # Safety
/// As for `gradclip_total_norm`'s `grads` and `n`; `out` (required) is writable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_exact_partial_compute(
    grads: *const gradclip_grad,
    n: usize,
    norm_type: f64,
    out: *mut gradclip_exact_partial,
) -> c_int {
    let nt = self::norm_type(norm_type);
    call(|| {
        // SAFETY: the caller's contract above.
        unsafe {
            partial_compute_body(grads, n, out, ExactPartial::EMPTY, |g| {
                gradclip_core::exact_partial(g, nt)
            })
        }
    })
}

/// `*acc = merge(*acc, *other)`, as the Rust `ExactPartial::merge`: exact (integer addition),
/// associative and commutative, so any merge order or tree gives the same bytes. Partials of
/// different norm types merge into a partial that finishes to NaN (still `GRADCLIP_OK`), as
/// bytes that are not a partial do. `acc` and `other` may be the same pointer.
///
/// # Safety
/// `acc` (required) is readable and writable, `other` (required) readable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_exact_partial_merge(
    acc: *mut gradclip_exact_partial,
    other: *const gradclip_exact_partial,
) -> c_int {
    // SAFETY: the caller's contract above.
    call(|| unsafe { partial_merge_body(acc, other, ExactPartial::merge) })
}

/// The norm of a (merged) exact partial, as the Rust `ExactPartial::finish`: L2 the correctly
/// rounded square root of the correctly rounded sum of squares, L1 the correctly rounded sum of
/// magnitudes, Inf the largest magnitude; NaN if a NaN went in (or partials of different norm
/// types were merged), else +inf if a +-inf went in; 0 for the all-zero partial. Returns
/// `GRADCLIP_OK` with `*out_norm` set unless a pointer is NULL or `out_norm` misaligned: there
/// is no overflow case (an L1, L2 or Inf norm of f32, f16 or bf16 values fits a double, and any
/// 96 bytes give some number).
///
/// # Safety
/// `p` (required) is readable, `out_norm` (required) writable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_exact_partial_finish(
    p: *const gradclip_exact_partial,
    out_norm: *mut f64,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract above.
        unsafe { partial_value_body(p, out_norm, |part: ExactPartial| Ok(part.finish())) }
    })
}

/// The exact sum of a (merged) exact partial correctly rounded to double, as the Rust
/// `ExactPartial::sum`: the sum of squares for L2 (the square of the norm, before the square
/// root), of magnitudes for L1, the largest magnitude for Inf; NaN and +inf as in
/// `gradclip_exact_partial_finish`. Returns `GRADCLIP_OK` with `*out_sum` set unless a pointer
/// is NULL or `out_sum` misaligned.
///
/// # Safety
/// `p` (required) is readable, `out_sum` (required) writable.
#[no_mangle]
pub unsafe extern "C" fn gradclip_exact_partial_sum(
    p: *const gradclip_exact_partial,
    out_sum: *mut f64,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract above.
        unsafe { partial_value_body(p, out_sum, |part: ExactPartial| Ok(part.sum())) }
    })
}

/// Runs the kernels of every later call on a process-wide pool of `n` threads (0: the default,
/// `RAYON_NUM_THREADS` or one per CPU). No result bit depends on it. May be called at any time
/// from any thread: calls already running finish on the pool they started on, later calls use
/// the new one. Returns `GRADCLIP_ERR_ARG` (and keeps the current pool) when the system refuses
/// the threads or `n` exceeds what the thread pool supports. A child process made by `fork()`
/// starts a pool of its own, with the same thread count, on its first call that needs one.
#[no_mangle]
pub extern "C" fn gradclip_set_num_threads(n: usize) -> c_int {
    call(|| {
        if pool::set_num_threads(n) {
            Ok(GRADCLIP_OK)
        } else {
            Err(GRADCLIP_ERR_ARG)
        }
    })
}

/// A static, NUL-terminated description of a status code (never NULL; unknown codes get
/// "unknown status"). Do not free it.
#[no_mangle]
pub extern "C" fn gradclip_status_str(status: c_int) -> *const c_char {
    call_str(c"unknown status", || match status {
        GRADCLIP_OK => c"ok",
        GRADCLIP_NONFINITE => c"a gradient holds NaN or inf",
        GRADCLIP_ERR_NULL => c"a required pointer is NULL",
        GRADCLIP_ERR_ARG => c"invalid argument",
        GRADCLIP_ERR_OVERLAP => c"two mutable gradient buffers share memory",
        GRADCLIP_ERR_ALIGN => c"a pointer is not aligned for its type",
        GRADCLIP_ERR_OVERFLOW => c"the norm exceeds the range of double",
        GRADCLIP_ERR_INTERNAL => c"internal error (a bug in gradclip)",
        _ => c"unknown status",
    })
}

const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };

/// The library version ("MAJOR.MINOR.PATCH"), a static string. Do not free it.
#[no_mangle]
pub extern "C" fn gradclip_version() -> *const c_char {
    call_str(c"unknown", || VERSION)
}

/// The instruction set the kernels run on: "avx512", "avx2", "neon" or "portable" (the
/// environment variable `GRADCLIP_ISA`, read once, can force a lower one). A static string;
/// do not free it.
#[no_mangle]
pub extern "C" fn gradclip_isa() -> *const c_char {
    call_str(c"portable", || match Isa::selected() {
        Isa::Avx512 => c"avx512",
        Isa::Avx2 => c"avx2",
        Isa::Neon => c"neon",
        _ => c"portable",
    })
}
