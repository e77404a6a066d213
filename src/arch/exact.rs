//! Dispatch for the exact kernels ([`crate::exact`]): a table per ISA of chunk kernels returning
//! [`ExactPartial`]s, reachable, like [`super::Kernels`], only through a token that detection
//! produced (`Token::exact_kernels`).

use half::{bf16, f16};

use super::Kernels;
use crate::exact::ExactPartial;
use crate::isa::Isa;

type ExactFn<T> = fn(&[T]) -> ExactPartial;

/// One ISA's exact chunk kernels: the exact partial of `Σ x²`, `Σ |x|` and `max |x|` over one
/// chunk, for f32, f16 and bf16.
pub(crate) struct ExactKernels {
    pub isa: Isa,
    pub sum_sq: (ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>),
    pub sum_abs: (ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>),
    pub max_abs: (ExactFn<f32>, ExactFn<f16>, ExactFn<bf16>),
}

impl ExactKernels {
    /// The table for `isa`, or `None` when this CPU (or this build's target) cannot run it.
    pub(crate) fn for_isa(isa: Isa) -> Option<&'static ExactKernels> {
        match isa {
            Isa::Portable => Some(super::exact_portable::exact_kernels()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => super::x86_64::Avx2::detect().map(super::x86_64::Avx2::exact_kernels),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                super::x86_64::Avx512::detect().map(super::x86_64::Avx512::exact_kernels)
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => super::aarch64::Neon::detect().map(super::aarch64::Neon::exact_kernels),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The table of the ISA the sums family runs on by default ([`super::dispatch`]): the exact
    /// kernels are widening-bound like the compensated sums, so they follow the same rule (on a
    /// CPU that splits AVX-512 into two halves, AVX2).
    #[inline]
    pub(crate) fn selected() -> &'static ExactKernels {
        let isa = Kernels::selected().dispatch.sums;
        Self::for_isa(isa).unwrap_or(super::exact_portable::exact_kernels())
    }
}

/// Picks a dtype's kernel out of an [`ExactKernels`] table.
pub(crate) trait ExactKernel: crate::exact::block::ExactElement {
    fn sum_sq(k: &ExactKernels) -> ExactFn<Self>;
    fn sum_abs(k: &ExactKernels) -> ExactFn<Self>;
    fn max_abs(k: &ExactKernels) -> ExactFn<Self>;
}

macro_rules! exact_kernel_for {
    ($t:ty, $i:tt) => {
        impl ExactKernel for $t {
            #[inline(always)]
            fn sum_sq(k: &ExactKernels) -> ExactFn<Self> {
                k.sum_sq.$i
            }
            #[inline(always)]
            fn sum_abs(k: &ExactKernels) -> ExactFn<Self> {
                k.sum_abs.$i
            }
            #[inline(always)]
            fn max_abs(k: &ExactKernels) -> ExactFn<Self> {
                k.max_abs.$i
            }
        }
    };
}
exact_kernel_for!(f32, 0);
exact_kernel_for!(f16, 1);
exact_kernel_for!(bf16, 2);

/// The exact table of one backend, as a `static` expression: nine entry points (exact sum of
/// squares, of magnitudes, max of magnitudes; × f32, f16, bf16), each the
/// [`crate::exact::block`] kernel instantiated for the token type and compiled with the target
/// features given. Same contract as [`super::kernel_table!`]: keep the table private and hand it
/// out only through a method of a token that detection produced; `EXPR` builds the token inside
/// the entry points only.
macro_rules! exact_table {
    ($token:ty, $isa:expr, [$(#[$attr:meta])*], token = $make:expr) => {{
        use half::{bf16, f16};
        use $crate::exact::block;
        use $crate::exact::ExactPartial;

        macro_rules! entry {
            ($name:ident, $t:ty, sum, $sq:literal) => {
                fn $name(d: &[$t]) -> ExactPartial {
                    $(#[$attr])*
                    fn inner(d: &[$t]) -> ExactPartial {
                        block::sum_chunk::<$token, $t, $sq>($make, d)
                    }
                    // SAFETY: reachable only through this table, which only a token produced by
                    // detection hands out (see `exact_table!`), so the CPU has the features.
                    #[allow(unused_unsafe)] // entries without target features need none
                    unsafe {
                        inner(d)
                    }
                }
            };
            ($name:ident, $t:ty, max) => {
                fn $name(d: &[$t]) -> ExactPartial {
                    $(#[$attr])*
                    fn inner(d: &[$t]) -> ExactPartial {
                        block::max_chunk::<$token, $t>($make, d)
                    }
                    // SAFETY: as for the sums above.
                    #[allow(unused_unsafe)]
                    unsafe {
                        inner(d)
                    }
                }
            };
        }
        entry!(sum_sq_f32, f32, sum, true);
        entry!(sum_sq_f16, f16, sum, true);
        entry!(sum_sq_bf16, bf16, sum, true);
        entry!(sum_abs_f32, f32, sum, false);
        entry!(sum_abs_f16, f16, sum, false);
        entry!(sum_abs_bf16, bf16, sum, false);
        entry!(max_abs_f32, f32, max);
        entry!(max_abs_f16, f16, max);
        entry!(max_abs_bf16, bf16, max);
        $crate::arch::exact::ExactKernels {
            isa: $isa,
            sum_sq: (sum_sq_f32, sum_sq_f16, sum_sq_bf16),
            sum_abs: (sum_abs_f32, sum_abs_f16, sum_abs_bf16),
            max_abs: (max_abs_f32, max_abs_f16, max_abs_bf16),
        }
    }};
}
pub(crate) use exact_table;
