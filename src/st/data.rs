//! Tensor bytes as elements: read from a [`Source`] into one bounded, reused scratch buffer
//! (and, for a byte slice, [`tensor_data`]: borrowed in place when aligned).

use std::borrow::Cow;

use half::{bf16, f16};

use super::error::StError;
use super::header::{Layout, TensorInfo};
use super::source::Source;
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

/// The elements of tensor `i` of a file that [`parse`](super::parse) accepted, copied when
/// they cannot be borrowed. Returns `None` for an index or a layout that does not fit `bytes`
/// (never the case for the pair `parse` returned). [`norms`](super::norms) and
/// [`clip`](super::clip) do not use it: they hold at most [`SCRATCH_BYTES`] per thread.
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

/// Size of the reused buffers [`norms`](super::norms) and [`clip`](super::clip) read tensor
/// data into (with positioned reads, see [`Source`]), one per thread that reads: the most
/// memory they use beyond the header and the per-tensor bookkeeping is this times the number
/// of threads, whatever the file's size. Small on purpose: a piece read into a buffer that
/// stays in the core's cache is reduced from the cache (measured: 1 MiB pieces read and reduce
/// a 1 GiB file at about the speed of a plain sequential read; 64 MiB pieces took 2.5 times as
/// long). The environment variable `GRADCLIP_SCRATCH_BYTES` overrides it (at least 256 KiB),
/// so tests can reach the piecewise paths with small files.
pub const SCRATCH_BYTES: usize = 1 << 20;

/// The scratch size in force (see [`SCRATCH_BYTES`]): a multiple of 8, at least one f32 chunk
/// of the reduction tree.
pub(super) fn scratch_bytes() -> usize {
    let least = CHUNK * std::mem::size_of::<f32>();
    std::env::var("GRADCLIP_SCRATCH_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(SCRATCH_BYTES)
        .max(least)
        / 8
        * 8
}

/// Where tensor `t`'s bytes start in the file.
pub(super) fn file_offset(layout: &Layout, t: &TensorInfo) -> u64 {
    layout.data_start as u64 + t.start as u64
}

/// The room a tensor of `len` bytes takes in the scratch: its slot starts 8-byte aligned.
pub(super) fn slot(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// One reused, 8-byte aligned buffer of at most `cap` bytes that tensor data is read into.
pub(super) struct Scratch {
    buf: Vec<u64>,
    cap: usize,
}

impl Scratch {
    pub(super) fn new() -> Scratch {
        Scratch::with_cap(scratch_bytes())
    }

    /// A buffer that grows up to `cap` bytes.
    pub(super) fn with_cap(cap: usize) -> Scratch {
        Scratch {
            buf: Vec::new(),
            cap,
        }
    }

    /// The largest piece, in bytes, of elements of `size` bytes that fits.
    pub(super) fn piece(&self, size: usize) -> usize {
        self.cap - self.cap % size
    }

    /// The first `bytes` bytes of the buffer (at most `cap`), grown up to that, never beyond.
    fn bytes(&mut self, bytes: usize) -> &mut [u8] {
        debug_assert!(bytes <= self.cap);
        let words = bytes.div_ceil(8);
        if self.buf.len() < words {
            self.buf.resize(words, 0);
        }
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.buf)[..bytes]
    }

    /// Reads the `len` bytes at `offset` of `src` (whole elements of `dtype`, at most `cap`
    /// bytes) and returns them as elements, writable.
    pub(super) fn read<S: Source + ?Sized>(
        &mut self,
        src: &S,
        offset: u64,
        len: usize,
        dtype: DType,
    ) -> Result<GradMut<'_>, StError> {
        debug_assert!(len.is_multiple_of(dtype.size_of()));
        let dst = self.bytes(len);
        src.read_exact_at(dst, offset)
            .map_err(|e| StError::read(offset, &e))?;
        Ok(elements(dst, dtype))
    }

    /// Reads whole tensors of a layout, each into its own 8-byte aligned slot (the slots must fit
    /// in `cap` together), and returns their elements in order.
    pub(super) fn read_tensors<S: Source + ?Sized>(
        &mut self,
        src: &S,
        layout: &Layout,
        tensors: &[TensorInfo],
    ) -> Result<Vec<GradMut<'_>>, StError> {
        let total = tensors.iter().map(|t| slot(t.end - t.start)).sum();
        let mut rest = self.bytes(total);
        let mut out = Vec::with_capacity(tensors.len());
        for t in tensors {
            let len = t.end - t.start;
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(slot(len));
            rest = tail;
            let dst = &mut dst[..len];
            let offset = file_offset(layout, t);
            src.read_exact_at(dst, offset)
                .map_err(|e| StError::read(offset, &e))?;
            out.push(elements(dst, t.dtype));
        }
        Ok(out)
    }
}

/// Little-endian bytes (8-byte aligned, whole elements) as elements of `dtype`, converted in
/// place on big-endian hosts.
fn elements(dst: &mut [u8], dtype: DType) -> GradMut<'_> {
    // `dst` starts 8-byte aligned and holds whole elements: the casts cannot fail.
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
