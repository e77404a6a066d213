//! Instruction-set dispatch: an [`Isa`] enum, a table of kernel function pointers per ISA, and the
//! detection that picks the best table once per process.
//!
//! The choice can be forced down with the environment variable `GRADCLIP_ISA=portable` (read once,
//! at the first call), or per call through the `*_with_isa` functions, which tests, fuzz targets
//! and benches use to run every path on the same input.

use std::sync::OnceLock;

use half::{bf16, f16};

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
pub(crate) mod generic;
pub(crate) mod portable;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

/// An instruction-set level gradclip has kernels for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Plain Rust, every target. The reference the others match bit for bit.
    Portable,
    /// x86_64 with AVX2, FMA and F16C, detected at run time.
    Avx2,
    /// x86_64 with AVX-512 F/BW/DQ/VL on top of AVX2, FMA and F16C, detected at run time.
    Avx512,
    /// aarch64 NEON.
    Neon,
}

impl Isa {
    /// Every ISA gradclip knows (best last within each architecture).
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// Lower-case name (`portable`, `avx2`).
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// True when this CPU can run the ISA's kernels.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86_64::Avx2::is_available(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86_64::Avx512::is_available(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64::Neon::is_available(),
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon => false,
        }
    }

    /// Every ISA this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The ISA the library uses by default: the best available one, unless the environment
    /// variable `GRADCLIP_ISA` names another available one. Detected once and cached.
    pub fn selected() -> Isa {
        Kernels::selected().isa
    }
}

type SumFn<T> = fn(&[T]) -> (f64, f64);
type MaxFn<T> = fn(&[T]) -> u32;
type ScaleFn<T> = fn(&mut [T], f32);

/// One ISA's kernels. Built only for an ISA that [`Isa::is_available`] confirmed.
pub(crate) struct Kernels {
    pub isa: Isa,
    pub sum_sq: (SumFn<f32>, SumFn<f16>, SumFn<bf16>),
    pub sum_abs: (SumFn<f32>, SumFn<f16>, SumFn<bf16>),
    pub max_abs: (MaxFn<f32>, MaxFn<f16>, MaxFn<bf16>),
    pub scale: (ScaleFn<f32>, ScaleFn<f16>, ScaleFn<bf16>),
}

static PORTABLE: Kernels = Kernels {
    isa: Isa::Portable,
    sum_sq: (
        portable::sum_sq_f32,
        portable::sum_sq_f16,
        portable::sum_sq_bf16,
    ),
    sum_abs: (
        portable::sum_abs_f32,
        portable::sum_abs_f16,
        portable::sum_abs_bf16,
    ),
    max_abs: (
        portable::max_abs_f32,
        portable::max_abs_f16,
        portable::max_abs_bf16,
    ),
    scale: (
        portable::scale_f32,
        portable::scale_f16,
        portable::scale_bf16,
    ),
};

impl Kernels {
    /// The table for `isa`, or `None` when this CPU cannot run it.
    pub(crate) fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        if !isa.is_available() {
            return None;
        }
        match isa {
            Isa::Portable => Some(&PORTABLE),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(&x86_64::AVX2_KERNELS),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(&x86_64::AVX512_KERNELS),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Some(&aarch64::NEON_KERNELS),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The process-wide table: detected on first use, then one atomic load per call.
    #[inline]
    pub(crate) fn selected() -> &'static Kernels {
        static SELECTED: OnceLock<&'static Kernels> = OnceLock::new();
        SELECTED.get_or_init(|| {
            let forced = std::env::var("GRADCLIP_ISA").ok();
            let forced = forced
                .as_deref()
                .and_then(|name| Isa::ALL.into_iter().find(|i| i.name() == name));
            forced
                .and_then(Kernels::for_isa)
                .or_else(|| Isa::ALL.into_iter().rev().find_map(Kernels::for_isa))
                .unwrap_or(&PORTABLE)
        })
    }
}

/// Picks a dtype's kernel out of a [`Kernels`] table.
pub(crate) trait Kernel: generic::LaneElement {
    fn sum_sq(k: &Kernels) -> SumFn<Self>;
    fn sum_abs(k: &Kernels) -> SumFn<Self>;
    fn max_abs(k: &Kernels) -> MaxFn<Self>;
    fn scale(k: &Kernels) -> ScaleFn<Self>;
}

macro_rules! kernel_for {
    ($t:ty, $i:tt) => {
        impl Kernel for $t {
            #[inline(always)]
            fn sum_sq(k: &Kernels) -> SumFn<Self> {
                k.sum_sq.$i
            }
            #[inline(always)]
            fn sum_abs(k: &Kernels) -> SumFn<Self> {
                k.sum_abs.$i
            }
            #[inline(always)]
            fn max_abs(k: &Kernels) -> MaxFn<Self> {
                k.max_abs.$i
            }
            #[inline(always)]
            fn scale(k: &Kernels) -> ScaleFn<Self> {
                k.scale.$i
            }
        }
    };
}
kernel_for!(f32, 0);
kernel_for!(f16, 1);
kernel_for!(bf16, 2);
