//! The panic boundary and the mapping from the library's errors to status codes.
//!
//! Every exported function runs its body through [`call`] (or [`call_str`] for the functions
//! returning a string): a Rust panic is caught there and turned into
//! [`GRADCLIP_ERR_INTERNAL`](crate::GRADCLIP_ERR_INTERNAL) instead of unwinding into C. Bodies
//! return `Result<c_int, c_int>` so `?` carries a failed check's status straight out.

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use gradclip_core::Error;

use crate::{GRADCLIP_ERR_ARG, GRADCLIP_ERR_INTERNAL, GRADCLIP_ERR_OVERFLOW, GRADCLIP_NONFINITE};

/// A status code: `Ok` and `Err` both carry the code to return (`Err` ends the body early).
pub(crate) type Status = Result<c_int, c_int>;

/// Runs `body` with panics caught: its status, or `GRADCLIP_ERR_INTERNAL` if it panicked.
pub(crate) fn call(body: impl FnOnce() -> Status) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status) | Err(status)) => status,
        Err(_) => GRADCLIP_ERR_INTERNAL,
    }
}

/// Runs `body` with panics caught: its string, or `fallback` if it panicked.
pub(crate) fn call_str(
    fallback: &'static CStr,
    body: impl FnOnce() -> &'static CStr,
) -> *const c_char {
    catch_unwind(AssertUnwindSafe(body))
        .unwrap_or(fallback)
        .as_ptr()
}

/// The status code of a library error (a non-finite element is reported by the caller, which
/// also fills `out_bad`).
pub(crate) fn status_of(e: &Error) -> c_int {
    match e {
        Error::NonFinite(_) => GRADCLIP_NONFINITE,
        Error::NormOverflow { .. } => GRADCLIP_ERR_OVERFLOW,
        Error::InvalidNormType { .. }
        | Error::InvalidMaxNorm(_)
        | Error::InvalidEps(_)
        | Error::InvalidTotalNorm(_)
        | Error::InvalidFactor(_)
        | Error::InvalidClipValue(_)
        | Error::LengthMismatch { .. }
        | Error::IsaUnavailable(_)
        // A P norm asked of an exact partial: a norm type the exact functions do not take.
        | Error::ExactUnsupported { .. } => GRADCLIP_ERR_ARG,
        // A variant added to the library later: not a caller's mistake we can name.
        _ => GRADCLIP_ERR_INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GRADCLIP_OK;

    #[test]
    fn a_panic_becomes_err_internal() {
        assert_eq!(call(|| panic!("boom")), GRADCLIP_ERR_INTERNAL);
        assert_eq!(call(|| Ok(GRADCLIP_OK)), GRADCLIP_OK);
        assert_eq!(call(|| Err(GRADCLIP_ERR_ARG)), GRADCLIP_ERR_ARG);
        let s = call_str(c"fallback", || panic!("boom"));
        // SAFETY: `call_str` returns the pointer of a `&'static CStr`.
        assert_eq!(unsafe { CStr::from_ptr(s) }, c"fallback");
    }

    #[test]
    fn every_error_has_its_status() {
        assert_eq!(
            status_of(&Error::InvalidNormType { p: -1.0 }),
            GRADCLIP_ERR_ARG
        );
        assert_eq!(
            status_of(&Error::NormOverflow { p: 0.01 }),
            GRADCLIP_ERR_OVERFLOW
        );
        for e in [
            Error::InvalidMaxNorm(0.0),
            Error::InvalidEps(-1.0),
            Error::InvalidTotalNorm(-1.0),
            Error::InvalidFactor(f64::NAN),
            Error::InvalidClipValue(-1.0),
            Error::ExactUnsupported { p: 3.0 },
        ] {
            assert_eq!(status_of(&e), GRADCLIP_ERR_ARG, "{e}");
        }
    }
}
