//! [`Isa`]: the instruction-set levels gradclip has kernels for (vocabulary only).
//!
//! Which levels this CPU can run, and which one the library uses, is decided in [`crate::arch`]
//! (`Isa::is_available`, `Isa::selected`), the only module that probes the CPU.

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

    /// Lower-case name (`portable`, `avx2`, `avx512`, `neon`), as `GRADCLIP_ISA` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// The ISA named `name` (as [`Isa::name`] spells it), if any.
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which instruction set each kernel family runs on. Usually one ISA for all; a host where the
/// widest ISA is not the fastest for a family gets another one there (see [`crate::dispatch`]).
/// Results are the same bits whatever the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dispatch {
    /// Sums of squares and of magnitudes (L2, L1 norms).
    pub sums: Isa,
    /// Max of magnitudes (Inf norm, P-norm scale, the non-finite search).
    pub max_abs: Isa,
    /// The in-place scale.
    pub scale: Isa,
}
