//! From raw C arguments to the library's views. Every pointer, length, dtype value, alignment
//! and (for buffers that will be written) overlap is checked here, *before* any slice exists:
//! a slice over bad memory, or two `&mut` over one memory, is undefined behaviour in Rust even if
//! it is never read or written.
//!
//! Checks run in this order, and the first failure is returned: NULL (required pointers, then
//! the data pointers), lengths and dtype values, alignment, overlap.

use std::ffi::{c_int, c_void};
use std::mem::size_of;
use std::ptr::NonNull;

use gradclip_core::overlap::{first_overlap, Span};
use gradclip_core::{bf16, f16, DType, Grad, GradMut};

use crate::{
    gradclip_dtype, gradclip_grad, gradclip_grad_mut, DTypeValue, GRADCLIP_ERR_ALIGN,
    GRADCLIP_ERR_ARG, GRADCLIP_ERR_NULL, GRADCLIP_ERR_OVERLAP,
};

/// `GRADCLIP_ERR_NULL` if `p` is NULL.
pub(crate) fn required<T>(p: *const T) -> Result<(), c_int> {
    if p.is_null() {
        Err(GRADCLIP_ERR_NULL)
    } else {
        Ok(())
    }
}

/// `GRADCLIP_ERR_ALIGN` if `p` is neither NULL nor aligned for `T`.
pub(crate) fn aligned<T>(p: *const T) -> Result<(), c_int> {
    if p.is_aligned() {
        Ok(())
    } else {
        Err(GRADCLIP_ERR_ALIGN)
    }
}

/// The checks every call with outputs starts with: NULL first (`out`, then `grads` when
/// `n > 0`), then the alignment of `out` and of `out_bad` (which may be NULL).
pub(crate) fn outputs<G, O>(
    grads: *const G,
    n: usize,
    out: *const O,
    out_bad: *const crate::gradclip_nonfinite,
) -> Result<(), c_int> {
    required(out)?;
    if n > 0 {
        required(grads)?;
    }
    aligned(out)?;
    aligned(out_bad)
}

/// The byte length of `len` elements of `size` bytes at `addr`, if it is a valid slice extent:
/// no overflow, at most `isize::MAX` bytes, and not wrapping past the end of the address space.
fn extent(addr: usize, len: usize, size: usize) -> Option<usize> {
    let bytes = len.checked_mul(size)?;
    (bytes <= isize::MAX as usize && addr.checked_add(bytes).is_some()).then_some(bytes)
}

/// The `n` elements at `p` as a slice (empty when `n == 0`, whatever `p` is). Checks, in order:
/// NULL with `n > 0` (`GRADCLIP_ERR_NULL`), an extent beyond `isize::MAX` bytes or the address
/// space (`GRADCLIP_ERR_ARG`), alignment of a non-NULL `p` (`GRADCLIP_ERR_ALIGN`).
///
/// # Safety
/// When `n > 0` and the checks pass, `p` must point to `n` initialised values of `T` that nobody
/// writes while the returned slice lives.
pub(crate) unsafe fn array<'a, T>(p: *const T, n: usize) -> Result<&'a [T], c_int> {
    if n > 0 {
        required(p)?;
    }
    extent(p as usize, n, size_of::<T>()).ok_or(GRADCLIP_ERR_ARG)?;
    aligned(p)?;
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: `p` is non-NULL and aligned, `n * size_of::<T>()` bytes fit in `isize` and in the
    // address space (checked above); validity and the absence of writers are the caller's
    // contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Writes `v` through `p` unless `p` is NULL.
///
/// # Safety
/// A non-NULL `p` must be aligned (see [`aligned`]) and valid for a write of `T`, and no live
/// reference may cover it.
pub(crate) unsafe fn write_if_some<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: the caller's contract.
        unsafe { p.write(v) }
    }
}

/// A gradient buffer whose descriptor passed every check: a non-NULL, aligned start and an
/// extent that is a valid slice.
pub(crate) struct Buffer {
    data: NonNull<u8>,
    len: usize,
    dtype: DType,
}

/// The parts of a `gradclip_grad` or `gradclip_grad_mut`.
pub(crate) trait Descriptor {
    /// `(data, len, dtype)` as they came from C.
    fn parts(&self) -> (*const c_void, usize, DTypeValue);
}

impl Descriptor for gradclip_grad {
    fn parts(&self) -> (*const c_void, usize, DTypeValue) {
        (self.data, self.len, self.dtype)
    }
}

impl Descriptor for gradclip_grad_mut {
    fn parts(&self) -> (*const c_void, usize, DTypeValue) {
        (self.data.cast_const(), self.len, self.dtype)
    }
}

fn dtype_of(v: DTypeValue) -> Option<DType> {
    [
        (gradclip_dtype::GRADCLIP_F32, DType::F32),
        (gradclip_dtype::GRADCLIP_F16, DType::F16),
        (gradclip_dtype::GRADCLIP_BF16, DType::BF16),
    ]
    .into_iter()
    .find(|&(c, _)| c as DTypeValue == v)
    .map(|(_, d)| d)
}

/// Checks every descriptor, pass by pass: NULL data with `len > 0` (`GRADCLIP_ERR_NULL`), then
/// dtype values and extents (`GRADCLIP_ERR_ARG`), then alignment of non-NULL data
/// (`GRADCLIP_ERR_ALIGN`); with `writable`, then overlap between buffers (`GRADCLIP_ERR_OVERLAP`).
pub(crate) fn buffers<D: Descriptor>(descs: &[D], writable: bool) -> Result<Vec<Buffer>, c_int> {
    if descs.iter().any(|d| {
        let (data, len, _) = d.parts();
        data.is_null() && len > 0
    }) {
        return Err(GRADCLIP_ERR_NULL);
    }
    let mut out = Vec::with_capacity(descs.len());
    for d in descs {
        let (data, len, value) = d.parts();
        let dtype = dtype_of(value).ok_or(GRADCLIP_ERR_ARG)?;
        extent(data as usize, len, dtype.size_of()).ok_or(GRADCLIP_ERR_ARG)?;
        out.push((data, len, dtype));
    }
    // f32 needs 4-byte alignment, f16 and bf16 2-byte: their size.
    if out
        .iter()
        .any(|&(data, _, dtype)| !(data as usize).is_multiple_of(dtype.size_of()))
    {
        return Err(GRADCLIP_ERR_ALIGN);
    }
    if writable {
        let spans: Vec<Span> = out
            .iter()
            .map(|&(data, len, dtype)| Span {
                addr: data as usize,
                len: len * dtype.size_of(),
            })
            .collect();
        if first_overlap(&spans).is_some() {
            return Err(GRADCLIP_ERR_OVERLAP);
        }
    }
    Ok(out
        .into_iter()
        .map(|(data, len, dtype)| Buffer {
            // NULL only with `len == 0` (checked above): then any aligned non-NULL start will do.
            data: NonNull::new(data.cast_mut().cast()).unwrap_or(match dtype {
                DType::F32 => NonNull::<f32>::dangling().cast(),
                DType::F16 | DType::BF16 => NonNull::<u16>::dangling().cast(),
            }),
            len,
            dtype,
        })
        .collect())
}

/// Bytes in all of `buffers` (saturating: only compared with a threshold).
pub(crate) fn total_bytes(buffers: &[Buffer]) -> usize {
    buffers
        .iter()
        .fold(0, |acc, b| acc.saturating_add(b.len * b.dtype.size_of()))
}

impl Buffer {
    /// A read-only view.
    ///
    /// # Safety
    /// The buffer's memory must hold `len` initialised elements that nobody writes while the
    /// view lives.
    pub(crate) unsafe fn grad<'a>(&self) -> Grad<'a> {
        let (p, n) = (self.data.as_ptr(), self.len);
        // SAFETY: `buffers` checked non-NULL, alignment for the dtype and an extent within
        // `isize::MAX` bytes and the address space; f16 and bf16 are `repr(transparent)` over
        // u16, so every bit pattern is a value. Validity is the caller's contract.
        unsafe {
            match self.dtype {
                DType::F32 => Grad::F32(std::slice::from_raw_parts(p.cast::<f32>(), n)),
                DType::F16 => Grad::F16(std::slice::from_raw_parts(p.cast::<f16>(), n)),
                DType::BF16 => Grad::BF16(std::slice::from_raw_parts(p.cast::<bf16>(), n)),
            }
        }
    }

    /// A mutable view.
    ///
    /// # Safety
    /// The buffer's memory must hold `len` initialised, writable elements that nobody else reads
    /// or writes while the view lives; the views of one call must come from one `buffers(..,
    /// true)` (which checked that they are disjoint).
    pub(crate) unsafe fn grad_mut<'a>(&self) -> GradMut<'a> {
        let (p, n) = (self.data.as_ptr(), self.len);
        // SAFETY: as in `grad`, and the buffers of one call are pairwise disjoint (checked by
        // `buffers` with `writable`); exclusive access is the caller's contract.
        unsafe {
            match self.dtype {
                DType::F32 => GradMut::F32(std::slice::from_raw_parts_mut(p.cast::<f32>(), n)),
                DType::F16 => GradMut::F16(std::slice::from_raw_parts_mut(p.cast::<f16>(), n)),
                DType::BF16 => GradMut::BF16(std::slice::from_raw_parts_mut(p.cast::<bf16>(), n)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(addr: usize, len: usize, dtype: u32) -> gradclip_grad {
        gradclip_grad {
            data: addr as *const c_void,
            len,
            dtype,
        }
    }

    fn check(descs: &[gradclip_grad], writable: bool) -> Result<usize, c_int> {
        buffers(descs, writable).map(|b| b.len())
    }

    #[test]
    fn null_first_then_arg_then_align_then_overlap() {
        let a = 0x1000;
        // NULL data with len > 0 wins over every other failure in another descriptor.
        let bad_all = [desc(a + 1, 4, 0), desc(0, 1, 7), desc(a, usize::MAX, 0)];
        assert_eq!(check(&bad_all, true), Err(GRADCLIP_ERR_NULL));
        assert_eq!(check(&bad_all[..1], true), Err(GRADCLIP_ERR_ALIGN));
        assert_eq!(
            check(&[desc(a + 1, 4, 0), desc(a, 1, 3)], true),
            Err(GRADCLIP_ERR_ARG)
        );
        assert_eq!(
            check(&[desc(a, 4, 0), desc(a + 8, 4, 1)], true),
            Err(GRADCLIP_ERR_OVERLAP)
        );
        // read-only buffers may share memory
        assert_eq!(check(&[desc(a, 4, 0), desc(a + 8, 4, 1)], false), Ok(2));
    }

    #[test]
    fn empty_buffers_pass_with_null_or_aligned_data() {
        assert_eq!(check(&[desc(0, 0, 0), desc(0, 0, 2)], true), Ok(2));
        assert_eq!(
            check(&[desc(0x1000, 0, 0), desc(0x1000, 0, 1)], true),
            Ok(2)
        );
        // a misaligned start is refused even when nothing would be read
        assert_eq!(check(&[desc(0x1002, 0, 0)], true), Err(GRADCLIP_ERR_ALIGN));
        let b = buffers(&[desc(0, 0, 0)], false).unwrap();
        // SAFETY: an empty view reads nothing.
        assert_eq!(unsafe { b[0].grad() }.len(), 0);
    }

    #[test]
    fn absurd_lengths_and_dtypes_are_arg_errors() {
        for (len, dtype) in [
            (usize::MAX, 0),
            (usize::MAX / 2, 1),
            (isize::MAX as usize / 4 + 1, 0),
            (isize::MAX as usize / 2 + 1, 2),
            (4, 3),
            (4, u32::MAX),
        ] {
            assert_eq!(
                check(&[desc(0x1000, len, dtype)], false),
                Err(GRADCLIP_ERR_ARG),
                "{len} {dtype}"
            );
        }
        // within isize::MAX bytes but wrapping past the address space
        assert_eq!(
            check(&[desc(usize::MAX - 7, 4, 0)], false),
            Err(GRADCLIP_ERR_ARG)
        );
    }

    #[test]
    fn arrays_check_null_extent_and_alignment() {
        let v = [1u64, 2, 3];
        // SAFETY: `v` holds 3 values and is not written.
        assert_eq!(unsafe { array(v.as_ptr(), 3) }.unwrap(), &v);
        // SAFETY: an empty array is never read.
        assert!(unsafe { array(std::ptr::null::<u64>(), 0) }
            .unwrap()
            .is_empty());
        // SAFETY: every call below fails a check before any read.
        unsafe {
            assert_eq!(array(std::ptr::null::<u64>(), 1), Err(GRADCLIP_ERR_NULL));
            assert_eq!(array(v.as_ptr(), usize::MAX / 4), Err(GRADCLIP_ERR_ARG));
            let odd = v.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
            assert_eq!(array(odd, 1), Err(GRADCLIP_ERR_ALIGN));
        }
    }
}
