//! Tensor bytes as elements: borrowed in place when aligned, else copied through one bounded
//! scratch buffer.

use std::borrow::Cow;

use half::{bf16, f16};

use super::error::StError;
use super::header::{Layout, TensorInfo};
use crate::dtype::DType;
use crate::grads::{Grad, GradMut};
use crate::parallel::CHUNK;

/// A tensor's elements: borrowed from the file when aligned (little-endian hosts), else copied.
#[derive(Debug, Clone)]
pub enum TensorData<'a> {
    /// F32 elements.
    F32(Cow<'a, [f32]>),
    /// F16 elements.
    F16(Cow<'a, [f16]>),
    /// BF16 elements.
    BF16(Cow<'a, [bf16]>),
}

impl TensorData<'_> {
    /// A read-only view for the norm functions.
    pub fn grad(&self) -> Grad<'_> {
        match self {
            TensorData::F32(c) => Grad::F32(c),
            TensorData::F16(c) => Grad::F16(c),
            TensorData::BF16(c) => Grad::BF16(c),
        }
    }
}

fn cast_or_copy<T: bytemuck::Pod, const N: usize>(
    raw: &[u8],
    from_le: fn([u8; N]) -> T,
) -> Cow<'_, [T]> {
    #[cfg(target_endian = "little")]
    if let Ok(s) = bytemuck::try_cast_slice::<u8, T>(raw) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        raw.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                from_le(a)
            })
            .collect(),
    )
}

/// The elements of tensor `i` of a file that [`parse`] accepted, copied when they cannot be
/// borrowed. Returns `None` for an index or a layout that does not fit `bytes` (never the case
/// for the pair `parse` returned). [`norms`] and [`clip`] do not use it: they never hold more
/// than [`SCRATCH_BYTES`] of copies.
pub fn tensor_data<'a>(bytes: &'a [u8], layout: &Layout, i: usize) -> Option<TensorData<'a>> {
    let t = layout.tensors.get(i)?;
    let raw = bytes
        .get(layout.data_start.checked_add(t.start)?..layout.data_start.checked_add(t.end)?)?;
    Some(match t.dtype {
        DType::F32 => TensorData::F32(cast_or_copy(raw, f32::from_le_bytes)),
        DType::F16 => TensorData::F16(cast_or_copy(raw, f16::from_le_bytes)),
        DType::BF16 => TensorData::BF16(cast_or_copy(raw, bf16::from_le_bytes)),
    })
}

/// Size of the one reused buffer [`norms`] and [`clip`] copy tensor data into when it cannot be
/// borrowed from the file (misaligned data, big-endian hosts) and when it is scaled: the most
/// memory they use beyond the mapped file and the per-tensor bookkeeping. The environment
/// variable `GRADCLIP_SCRATCH_BYTES` overrides it (at least 256 KiB), so tests can reach the
/// piecewise paths with small files.
pub const SCRATCH_BYTES: usize = 64 << 20;

/// The scratch size in force (see [`SCRATCH_BYTES`]): a multiple of 8, at least one f32 chunk
/// of the reduction tree.
fn scratch_bytes() -> usize {
    let least = CHUNK * std::mem::size_of::<f32>();
    std::env::var("GRADCLIP_SCRATCH_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(SCRATCH_BYTES)
        .max(least)
        / 8
        * 8
}

fn layout_mismatch() -> StError {
    StError::Format("layout does not match the file".into())
}

/// The raw bytes of tensor `t`.
pub(super) fn raw_bytes<'a>(
    bytes: &'a [u8],
    layout: &Layout,
    t: &TensorInfo,
) -> Result<&'a [u8], StError> {
    let start = layout.data_start.checked_add(t.start);
    let end = layout.data_start.checked_add(t.end);
    start
        .zip(end)
        .and_then(|(s, e)| bytes.get(s..e))
        .ok_or_else(layout_mismatch)
}

/// The elements of `raw` in place: a little-endian host and data aligned for the dtype.
pub(super) fn borrowed(raw: &[u8], dtype: DType) -> Option<Grad<'_>> {
    #[cfg(target_endian = "little")]
    {
        match dtype {
            DType::F32 => bytemuck::try_cast_slice(raw).ok().map(Grad::F32),
            DType::F16 => bytemuck::try_cast_slice(raw).ok().map(Grad::F16),
            DType::BF16 => bytemuck::try_cast_slice(raw).ok().map(Grad::BF16),
        }
    }
    #[cfg(not(target_endian = "little"))]
    {
        let _ = (raw, dtype);
        None
    }
}

/// One reused, 8-byte aligned buffer of at most `cap` bytes for tensor data that is copied.
pub(super) struct Scratch {
    buf: Vec<u64>,
    cap: usize,
}

impl Scratch {
    pub(super) fn new() -> Scratch {
        Scratch {
            buf: Vec::new(),
            cap: scratch_bytes(),
        }
    }

    /// True when `bytes` bytes fit in the buffer at once.
    pub(super) fn fits(&self, bytes: usize) -> bool {
        bytes <= self.cap
    }

    /// The largest piece, in bytes, of elements of `size` bytes that fits.
    pub(super) fn piece(&self, size: usize) -> usize {
        self.cap - self.cap % size
    }

    /// Copies `raw` (whole elements of `dtype`, at most `cap` bytes) in and returns the
    /// elements, writable. Grows the buffer up to the size asked, never beyond.
    pub(super) fn load(&mut self, raw: &[u8], dtype: DType) -> GradMut<'_> {
        debug_assert!(raw.len() <= self.cap && raw.len().is_multiple_of(dtype.size_of()));
        let words = raw.len().div_ceil(8);
        if self.buf.len() < words {
            self.buf.resize(words, 0);
        }
        let dst = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.buf)[..raw.len()];
        dst.copy_from_slice(raw);
        // The buffer is 8-byte aligned and `raw` holds whole elements: the casts cannot fail.
        match dtype {
            DType::F32 => {
                let s: &mut [f32] = bytemuck::cast_slice_mut(dst);
                #[cfg(not(target_endian = "little"))]
                s.iter_mut()
                    .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
                GradMut::F32(s)
            }
            DType::F16 => {
                let s: &mut [f16] = bytemuck::cast_slice_mut(dst);
                #[cfg(not(target_endian = "little"))]
                s.iter_mut()
                    .for_each(|x| *x = f16::from_bits(u16::from_le(x.to_bits())));
                GradMut::F16(s)
            }
            DType::BF16 => {
                let s: &mut [bf16] = bytemuck::cast_slice_mut(dst);
                #[cfg(not(target_endian = "little"))]
                s.iter_mut()
                    .for_each(|x| *x = bf16::from_bits(u16::from_le(x.to_bits())));
                GradMut::BF16(s)
            }
        }
    }
}

/// The elements as little-endian bytes (converted in place on big-endian hosts).
pub(super) fn into_le_bytes(g: GradMut<'_>) -> &[u8] {
    match g {
        GradMut::F32(s) => {
            #[cfg(not(target_endian = "little"))]
            s.iter_mut()
                .for_each(|x| *x = f32::from_bits(x.to_bits().to_le()));
            bytemuck::cast_slice(s)
        }
        GradMut::F16(s) => {
            #[cfg(not(target_endian = "little"))]
            s.iter_mut()
                .for_each(|x| *x = f16::from_bits(x.to_bits().to_le()));
            bytemuck::cast_slice(s)
        }
        GradMut::BF16(s) => {
            #[cfg(not(target_endian = "little"))]
            s.iter_mut()
                .for_each(|x| *x = bf16::from_bits(x.to_bits().to_le()));
            bytemuck::cast_slice(s)
        }
    }
}
