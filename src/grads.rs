//! Views over gradient buffers of mixed dtypes.
//!
//! A call takes a slice of [`Grad`] (read-only) or [`GradMut`] (in place). Both are thin enums over
//! borrowed slices: building them copies nothing, and a model's few hundred tensors of different
//! dtypes go into one call.

use half::{bf16, f16};

use crate::dtype::DType;

/// A read-only gradient buffer.
#[derive(Debug, Clone, Copy)]
pub enum Grad<'a> {
    /// An f32 buffer.
    F32(&'a [f32]),
    /// An f16 buffer.
    F16(&'a [f16]),
    /// A bf16 buffer.
    BF16(&'a [bf16]),
}

/// A gradient buffer that may be modified in place.
#[derive(Debug)]
pub enum GradMut<'a> {
    /// An f32 buffer.
    F32(&'a mut [f32]),
    /// An f16 buffer.
    F16(&'a mut [f16]),
    /// A bf16 buffer.
    BF16(&'a mut [bf16]),
}

impl Grad<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Grad::F32(s) => s.len(),
            Grad::F16(s) => s.len(),
            Grad::BF16(s) => s.len(),
        }
    }

    /// True when the buffer has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Grad::F32(_) => DType::F32,
            Grad::F16(_) => DType::F16,
            Grad::BF16(_) => DType::BF16,
        }
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.len() * self.dtype().size_of()
    }
}

impl GradMut<'_> {
    /// A read-only view of the same buffer.
    pub fn as_grad(&self) -> Grad<'_> {
        match self {
            GradMut::F32(s) => Grad::F32(s),
            GradMut::F16(s) => Grad::F16(s),
            GradMut::BF16(s) => Grad::BF16(s),
        }
    }

    /// A shorter-lived mutable view of the same buffer.
    pub fn reborrow(&mut self) -> GradMut<'_> {
        match self {
            GradMut::F32(s) => GradMut::F32(s),
            GradMut::F16(s) => GradMut::F16(s),
            GradMut::BF16(s) => GradMut::BF16(s),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_grad().len()
    }

    /// True when the buffer has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.as_grad().dtype()
    }
}

macro_rules! grad_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a [$t]> for Grad<'a> {
            fn from(s: &'a [$t]) -> Self {
                Grad::$v(s)
            }
        }
        impl<'a> From<&'a Vec<$t>> for Grad<'a> {
            fn from(s: &'a Vec<$t>) -> Self {
                Grad::$v(s)
            }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for Grad<'a> {
            fn from(s: &'a [$t; N]) -> Self {
                Grad::$v(s)
            }
        }
        impl<'a> From<&'a mut [$t]> for GradMut<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                GradMut::$v(s)
            }
        }
        impl<'a> From<&'a mut Vec<$t>> for GradMut<'a> {
            fn from(s: &'a mut Vec<$t>) -> Self {
                GradMut::$v(s)
            }
        }
        impl<'a, const N: usize> From<&'a mut [$t; N]> for GradMut<'a> {
            fn from(s: &'a mut [$t; N]) -> Self {
                GradMut::$v(s)
            }
        }
    };
}
grad_from!(f32, F32);
grad_from!(f16, F16);
grad_from!(bf16, BF16);

/// Anything the norm functions can read: [`Grad`] and [`GradMut`] both qualify, so
/// [`crate::clip_grad_norm_`] takes the norm of its `&mut` buffers without building a second list.
pub trait AsGrad: Sync {
    /// A read-only view.
    fn grad(&self) -> Grad<'_>;
}

impl AsGrad for Grad<'_> {
    fn grad(&self) -> Grad<'_> {
        *self
    }
}

impl AsGrad for GradMut<'_> {
    fn grad(&self) -> Grad<'_> {
        self.as_grad()
    }
}
