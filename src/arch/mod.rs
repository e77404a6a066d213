//! Instruction-set dispatch: a table of kernel function pointers per ISA, reachable only through
//! a token that proves the CPU runs that ISA, and the detection that picks the best table once
//! per process.
//!
//! Each backend module (`portable`, `x86_64`, `aarch64`) defines a token type with a checked
//! constructor (`detect() -> Option<Token>`) and builds its private table with [`kernel_table!`]
//! from the kernels of [`generic`], compiled inside `#[target_feature]` entry points. The table's
//! entries are safe function pointers whose soundness rests on one fact: the only way to reach a
//! table is the token's `kernels(self)`, and the only way to get a token is detection.
//!
//! The choice can be forced down with the environment variable `GRADCLIP_ISA=portable` (read once,
//! at the first call), or per call through the `*_with_isa` functions, which tests, fuzz targets
//! and benches use to run every path on the same input.

use std::sync::OnceLock;

use half::{bf16, f16};

pub use crate::isa::{Dispatch, Isa};

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub(crate) mod exact;
mod exact_portable;
pub(crate) mod generic;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86_64;

impl Isa {
    /// True when this CPU can run the ISA's kernels.
    pub fn is_available(self) -> bool {
        Kernels::for_isa(self).is_some()
    }

    /// Every ISA this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The ISA the library uses by default: the best available one, unless the environment
    /// variable `GRADCLIP_ISA` names another available one. Detected once and cached. A host may
    /// run some kernel families on a narrower ISA than this one: see [`dispatch`].
    pub fn selected() -> Isa {
        Kernels::selected().isa
    }
}

/// Which ISA each kernel family runs on by default, on this host (detected once and cached).
///
/// The rule: every family runs on [`Isa::selected`], except on a CPU that executes AVX-512 as two
/// 256-bit halves (AMD family 19h, Zen 4), where the sums (L2 and L1) run on AVX2: measured
/// there, the AVX-512 sums reached 0.67 of the AVX2 ones in cache (55 against 82 GB/s, f32; the
/// likely cause is the widening f32→f64 convert, whose 512-bit form moves data across the two
/// 256-bit halves). Max-abs and scale keep AVX-512 (no measurement says otherwise). Forcing an ISA with `GRADCLIP_ISA` (or a `*_with_isa` call) uses that ISA for every
/// family. Every choice gives the same bits.
///
/// ```
/// let d = gradclip::dispatch();
/// assert_eq!(d.scale, gradclip::Isa::selected());
/// ```
pub fn dispatch() -> Dispatch {
    Kernels::selected().dispatch
}

/// A prefetch hint for the cache line holding `p` (never dereferenced: any address is allowed,
/// past a buffer's end included). A no-op off x86_64. The read-modify-write roofline uses it so
/// that it stands for what software prefetching reaches, as the scale kernel does.
#[inline(always)]
pub(crate) fn prefetch_hint(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    x86_64::prefetch_line(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

type SumFn<T> = fn(&[T]) -> (f64, f64);
type MaxFn<T> = fn(&[T]) -> u32;
type ScaleFn<T> = fn(&mut [T], f32);
type PlainFn<T> = fn(&[T]) -> f64;

/// One ISA's kernels. Only a token that proved the ISA hands one out (the default table may
/// take a family from a narrower ISA of the same CPU: see [`dispatch`]).
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    pub isa: Isa,
    pub dispatch: Dispatch,
    pub sum_sq: (SumFn<f32>, SumFn<f16>, SumFn<bf16>),
    pub sum_abs: (SumFn<f32>, SumFn<f16>, SumFn<bf16>),
    pub max_abs: (MaxFn<f32>, MaxFn<f16>, MaxFn<bf16>),
    pub scale: (ScaleFn<f32>, ScaleFn<f16>, ScaleFn<bf16>),
    /// The compute roofline of the sums (benchmarks only).
    pub sum_sq_plain: (PlainFn<f32>, PlainFn<f16>, PlainFn<bf16>),
}

impl Kernels {
    /// The table for `isa`, or `None` when this CPU (or this build's target) cannot run it.
    pub(crate) fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        match isa {
            Isa::Portable => Some(portable::kernels()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86_64::Avx2::detect().map(x86_64::Avx2::kernels),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86_64::Avx512::detect().map(x86_64::Avx512::kernels),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64::Neon::detect().map(aarch64::Neon::kernels),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The process-wide table: detected on first use, then one atomic load per call. The best
    /// ISA's table, with the substitutions [`dispatch`] documents, unless `GRADCLIP_ISA` forces
    /// an available ISA.
    #[inline]
    pub(crate) fn selected() -> &'static Kernels {
        static SELECTED: OnceLock<Kernels> = OnceLock::new();
        SELECTED.get_or_init(|| {
            let forced = std::env::var("GRADCLIP_ISA").ok();
            if let Some(k) = forced
                .as_deref()
                .and_then(Isa::from_name)
                .and_then(Kernels::for_isa)
            {
                return *k;
            }
            let best = Isa::ALL
                .into_iter()
                .rev()
                .find_map(Kernels::for_isa)
                .unwrap_or(portable::kernels());
            // Only x86_64 has a substitution rule today.
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut k = *best;
            #[cfg(target_arch = "x86_64")]
            if k.isa == Isa::Avx512 && x86_64::CpuId::read().avx512_half_width() {
                if let Some(narrow) = Kernels::for_isa(Isa::Avx2) {
                    k.sum_sq = narrow.sum_sq;
                    k.sum_abs = narrow.sum_abs;
                    k.dispatch.sums = Isa::Avx2;
                }
            }
            k
        })
    }
}

/// Picks a dtype's kernel out of a [`Kernels`] table.
pub(crate) trait Kernel: generic::LaneElement {
    fn sum_sq(k: &Kernels) -> SumFn<Self>;
    fn sum_abs(k: &Kernels) -> SumFn<Self>;
    fn max_abs(k: &Kernels) -> MaxFn<Self>;
    fn scale(k: &Kernels) -> ScaleFn<Self>;
    fn sum_sq_plain(k: &Kernels) -> PlainFn<Self>;
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
            #[inline(always)]
            fn sum_sq_plain(k: &Kernels) -> PlainFn<Self> {
                k.sum_sq_plain.$i
            }
        }
    };
}
kernel_for!(f32, 0);
kernel_for!(f16, 1);
kernel_for!(bf16, 2);

/// The table of one backend, as a `static` expression: fifteen entry points (sum of squares, sum
/// of magnitudes, max of magnitudes, scale, the sums' compute roofline; × f32, f16, bf16), each the [`generic`] kernel
/// instantiated for the token type and compiled with the target features given.
///
/// `kernel_table!(Token, Isa::X, [#[target_feature(enable = "...")]], token = EXPR)`: each entry
/// is a safe wrapper around a function carrying the attributes given. With target features, the
/// wrapper is sound only if it is called on a CPU that has them, so the caller must keep the
/// table private and hand it out only through a method of a token that detection produced;
/// `EXPR` (which builds the token inside the entry point) is evaluated only there.
macro_rules! kernel_table {
    ($token:ty, $isa:expr, [$(#[$attr:meta])*], token = $make:expr) => {{
        use half::{bf16, f16};
        use $crate::arch::generic;

        macro_rules! entry {
            ($name:ident, $t:ty, sum, $sq:literal) => {
                fn $name(d: &[$t]) -> (f64, f64) {
                    $(#[$attr])*
                    fn inner(d: &[$t]) -> (f64, f64) {
                        generic::sum_chunk::<$token, $t, $sq>($make, d)
                    }
                    // SAFETY: reachable only through this table, which only a token produced by
                    // detection hands out (see `kernel_table!`), so the CPU has the features.
                    #[allow(unused_unsafe)] // entries without target features need none
                    unsafe {
                        inner(d)
                    }
                }
            };
            ($name:ident, $t:ty, plain) => {
                fn $name(d: &[$t]) -> f64 {
                    $(#[$attr])*
                    fn inner(d: &[$t]) -> f64 {
                        generic::sum_sq_plain::<$token, $t>($make, d)
                    }
                    // SAFETY: as for the sums above.
                    #[allow(unused_unsafe)]
                    unsafe {
                        inner(d)
                    }
                }
            };
            ($name:ident, $t:ty, max) => {
                fn $name(d: &[$t]) -> u32 {
                    $(#[$attr])*
                    fn inner(d: &[$t]) -> u32 {
                        generic::max_abs_bits(d)
                    }
                    // SAFETY: as for the sums above.
                    #[allow(unused_unsafe)]
                    unsafe {
                        inner(d)
                    }
                }
            };
            ($name:ident, $t:ty, scale) => {
                fn $name(d: &mut [$t], c: f32) {
                    $(#[$attr])*
                    fn inner(d: &mut [$t], c: f32) {
                        generic::scale::<$token, $t>($make, d, c)
                    }
                    // SAFETY: as for the sums above.
                    #[allow(unused_unsafe)]
                    unsafe {
                        inner(d, c)
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
        entry!(scale_f32, f32, scale);
        entry!(scale_f16, f16, scale);
        entry!(scale_bf16, bf16, scale);
        entry!(plain_f32, f32, plain);
        entry!(plain_f16, f16, plain);
        entry!(plain_bf16, bf16, plain);
        $crate::arch::Kernels {
            isa: $isa,
            dispatch: $crate::arch::Dispatch {
                sums: $isa,
                max_abs: $isa,
                scale: $isa,
            },
            sum_sq: (sum_sq_f32, sum_sq_f16, sum_sq_bf16),
            sum_abs: (sum_abs_f32, sum_abs_f16, sum_abs_bf16),
            max_abs: (max_abs_f32, max_abs_f16, max_abs_bf16),
            scale: (scale_f32, scale_f16, scale_bf16),
            sum_sq_plain: (plain_f32, plain_f16, plain_bf16),
        }
    }};
}
pub(crate) use kernel_table;
