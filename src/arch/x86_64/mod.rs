//! x86_64 backends: AVX2 + FMA + F16C, and AVX-512 (F/BW/DQ/VL) on top, detected at run time, so
//! a default `cargo build --release` (baseline x86-64, SSE2 only) still runs 256- and 512-bit code.
//!
//! Only tokens, registers and lane-wise operations live here; every loop is a [`generic`] one,
//! compiled inside each table's `#[target_feature]` entry points.
//!
//! [`generic`]: super::generic

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::generic::{Backend, LANES};
use super::{kernel_table, Kernels};
use crate::compensated::F64Ops;
use crate::isa::Isa;
use crate::lanes::Lanes32;

mod avx512;
mod exact_avx2;
mod exact_avx512;
pub(super) use avx512::Avx512;

/// Proof that the CPU supports AVX2, FMA and F16C. Holding one discharges those obligations.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

static AVX2_KERNELS: Kernels = kernel_table!(
    Avx2,
    Isa::Avx2,
    [#[target_feature(enable = "avx2,fma,f16c")]],
    // SAFETY: evaluated only inside the table's entry points, reachable only through
    // `Avx2::kernels`, which needs a token from `Avx2::detect`.
    token = unsafe { Avx2::new_unchecked() }
);

impl Avx2 {
    /// A token if this CPU supports AVX2, FMA and F16C (std caches the CPUID probe).
    pub(super) fn detect() -> Option<Self> {
        let ok = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        // SAFETY: the features were just detected.
        ok.then(|| unsafe { Avx2::new_unchecked() })
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[inline(always)]
    unsafe fn new_unchecked() -> Self {
        Avx2(())
    }

    /// The AVX2 kernels.
    pub(super) fn kernels(self) -> &'static Kernels {
        &AVX2_KERNELS
    }
}

/// Vendor, family and model as CPUID leaf 0 and 1 report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::arch) struct CpuId {
    /// `AuthenticAMD`.
    pub(in crate::arch) amd: bool,
    /// Display family (base family, plus the extended family when the base is 0xF).
    pub(in crate::arch) family: u32,
    /// Display model (with the extended model for families 0x6 and 0xF).
    pub(in crate::arch) model: u32,
}

impl CpuId {
    /// Decodes leaf 1's EAX (and the vendor) into display family and model.
    pub(in crate::arch) fn decode(amd: bool, eax: u32) -> CpuId {
        let base_family = (eax >> 8) & 0xF;
        let family = if base_family == 0xF {
            base_family + ((eax >> 20) & 0xFF)
        } else {
            base_family
        };
        let mut model = (eax >> 4) & 0xF;
        if base_family == 0x6 || base_family == 0xF {
            model |= ((eax >> 16) & 0xF) << 4;
        }
        CpuId { amd, family, model }
    }

    /// This CPU's identification.
    pub(in crate::arch) fn read() -> CpuId {
        let leaf0 = __cpuid(0);
        // "AuthenticAMD" in EBX, EDX, ECX.
        let amd = (leaf0.ebx, leaf0.edx, leaf0.ecx) == (0x6874_7541, 0x6974_6E65, 0x444D_4163);
        CpuId::decode(amd, __cpuid(1).eax)
    }

    /// AMD family 19h (Zen 4; Zen 3 of the same family has no AVX-512): AVX-512 instructions
    /// execute as two 256-bit halves. Measured there, the AVX-512 sums ran at 0.67 of the AVX2
    /// sums in cache (55 against 82 GB/s, f32, one thread).
    pub(in crate::arch) fn avx512_half_width(self) -> bool {
        self.amd && self.family == 0x19
    }
}

/// Prefetches every cache line of `s` into L2 and closer (`prefetcht1`): a hint, no effect on
/// any result. Shared by the sums and the exact kernels of both x86 backends.
#[inline(always)]
pub(in crate::arch) fn prefetch_lines<T>(s: &[T]) {
    let p = s.as_ptr() as *const i8;
    for off in (0..std::mem::size_of_val(s)).step_by(64) {
        // SAFETY: a prefetch never faults, and the address is inside `s` anyway; SSE is
        // baseline on x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(off)) }
    }
}

/// Prefetches the cache line holding `p` into L2 and closer (`prefetcht1`): a hint, no effect on
/// any result.
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    // SAFETY: a prefetch never faults and never dereferences: any address is allowed (one past
    // a buffer's end included); SSE is baseline on x86_64.
    unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast::<i8>()) }
}

/// `acc + x*x` (fused: the square is exact, so this equals the portable mul-then-add) or `acc + |x|`.
///
/// # Safety
/// The CPU must support AVX and FMA.
#[inline(always)]
unsafe fn term<const SQ: bool>(acc: __m256d, x: __m256d) -> __m256d {
    // SAFETY: forwarded to the caller.
    unsafe {
        if SQ {
            _mm256_fmadd_pd(x, x, acc)
        } else {
            _mm256_add_pd(acc, _mm256_andnot_pd(_mm256_set1_pd(-0.0), x))
        }
    }
}

impl F64Ops for Avx2 {
    type V = __m256d;
    #[inline(always)]
    fn add(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_add_pd(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_sub_pd(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_max_pd(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_min_pd(a, b) }
    }
}

impl Lanes32 for Avx2 {
    type U = __m256i;
    type F = __m256;
    type M = __m256i;
    #[inline(always)]
    fn splat(self, x: u32) -> __m256i {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_set1_epi32(x as i32) }
    }
    #[inline(always)]
    fn splat_f(self, x: f32) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn and(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2.
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    fn or(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2.
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    fn add(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2.
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2.
        unsafe { _mm256_sub_epi32(a, b) }
    }
    #[inline(always)]
    fn shl<const N: u32>(self, a: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2 (SSE2 for the count register).
        unsafe { _mm256_sll_epi32(a, _mm_cvtsi32_si128(N as i32)) }
    }
    #[inline(always)]
    fn shr<const N: u32>(self, a: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2 (SSE2 for the count register).
        unsafe { _mm256_srl_epi32(a, _mm_cvtsi32_si128(N as i32)) }
    }
    #[inline(always)]
    fn gt(self, a: __m256i, b: __m256i) -> __m256i {
        // Signed compare: the trait promises lanes below 2^31.
        // SAFETY: the token proves AVX2.
        unsafe { _mm256_cmpgt_epi32(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2.
        unsafe { _mm256_blendv_epi8(b, a, m) }
    }
    #[inline(always)]
    fn to_bits(self, x: __m256) -> __m256i {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_castps_si256(x) }
    }
    #[inline(always)]
    fn bits_to_f(self, u: __m256i) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_castsi256_ps(u) }
    }
    #[inline(always)]
    fn mul_f(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn add_f(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_add_ps(a, b) }
    }
}

impl Backend for Avx2 {
    type Acc = [__m256d; 8];
    const W: usize = 8;

    #[inline(always)]
    fn zero(self) -> Self::Acc {
        // SAFETY: the token proves AVX.
        unsafe { [_mm256_setzero_pd(); 8] }
    }

    #[inline(always)]
    fn accum_f32<const SQ: bool>(self, mut acc: Self::Acc, g: &[f32; LANES]) -> Self::Acc {
        let p = g.as_ptr();
        // SAFETY: the token proves AVX2/FMA; the 8 loads of 4 floats stay inside `g` (32 floats).
        unsafe {
            for (k, a) in acc.iter_mut().enumerate() {
                let x = _mm256_cvtps_pd(_mm_loadu_ps(p.add(4 * k)));
                *a = term::<SQ>(*a, x);
            }
        }
        acc
    }

    #[inline(always)]
    fn accum_f16<const SQ: bool>(self, mut acc: Self::Acc, g: &[f16; LANES]) -> Self::Acc {
        let p = g.as_ptr() as *const __m128i;
        // SAFETY: the token proves AVX2/FMA/F16C; 4 loads of 8 halves stay inside `g`.
        unsafe {
            for q in 0..4 {
                let h = _mm256_cvtph_ps(_mm_loadu_si128(p.add(q)));
                acc[2 * q] = term::<SQ>(acc[2 * q], _mm256_cvtps_pd(_mm256_castps256_ps128(h)));
                acc[2 * q + 1] = term::<SQ>(
                    acc[2 * q + 1],
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(h)),
                );
            }
        }
        acc
    }

    #[inline(always)]
    fn accum_bf16<const SQ: bool>(self, mut acc: Self::Acc, g: &[bf16; LANES]) -> Self::Acc {
        let p = g.as_ptr() as *const __m256i;
        // SAFETY: the token proves AVX2/FMA; 2 loads of 16 bf16 stay inside `g`.
        unsafe {
            let odd_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
            for h in 0..2 {
                let v = _mm256_loadu_si256(p.add(h));
                // Even elements: low halves of the 32-bit words; odd: high halves (see
                // `generic::bf16_lane_source`). No shuffle needed to widen.
                let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(v, odd_mask));
                let a = 4 * h;
                acc[a] = term::<SQ>(acc[a], _mm256_cvtps_pd(_mm256_castps256_ps128(even)));
                acc[a + 1] = term::<SQ>(
                    acc[a + 1],
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(even)),
                );
                acc[a + 2] = term::<SQ>(acc[a + 2], _mm256_cvtps_pd(_mm256_castps256_ps128(odd)));
                acc[a + 3] =
                    term::<SQ>(acc[a + 3], _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(odd)));
            }
        }
        acc
    }

    #[inline(always)]
    fn to_array(self, a: Self::Acc) -> [f64; LANES] {
        let mut out = [0.0f64; LANES];
        // SAFETY: the token proves AVX; 8 stores of 4 doubles fill exactly `out`.
        unsafe {
            for (k, v) in a.iter().enumerate() {
                _mm256_storeu_pd(out.as_mut_ptr().add(4 * k), *v);
            }
        }
        out
    }

    #[inline(always)]
    fn load_f32(self, s: &[f32]) -> __m256 {
        assert!(s.len() >= 8);
        // SAFETY: the token proves AVX; 8 floats are in bounds (checked).
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store_f32(self, v: __m256, s: &mut [f32]) {
        assert!(s.len() >= 8);
        // SAFETY: the token proves AVX; 8 floats are in bounds (checked).
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_bf16_words(self, s: &[bf16]) -> __m256i {
        assert!(s.len() >= 16);
        // SAFETY: the token proves AVX; 32 bytes are in bounds (checked), unaligned load.
        unsafe { _mm256_loadu_si256(s.as_ptr() as *const __m256i) }
    }
    #[inline(always)]
    fn store_bf16_words(self, v: __m256i, s: &mut [bf16]) {
        assert!(s.len() >= 16);
        // SAFETY: the token proves AVX; 32 bytes are in bounds (checked), unaligned store.
        unsafe { _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, v) }
    }
    #[inline(always)]
    fn load_f16(self, s: &[f16]) -> __m256 {
        assert!(s.len() >= 8);
        // SAFETY: the token proves F16C; 16 bytes are in bounds (checked), unaligned load.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr() as *const __m128i)) }
    }
    #[inline(always)]
    fn store_f16(self, v: __m256, s: &mut [f16]) {
        assert!(s.len() >= 8);
        // SAFETY: the token proves F16C; 16 bytes are in bounds (checked), unaligned store.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(s.as_mut_ptr() as *mut __m128i, h)
        }
    }
    #[inline(always)]
    fn prefetch<T>(self, s: &[T]) {
        prefetch_lines(s);
    }
    #[inline(always)]
    fn prefetch_at(self, p: *const u8) {
        prefetch_line(p);
    }
}

#[cfg(test)]
mod tests {
    use super::CpuId;

    #[test]
    fn cpuid_signatures_decode_to_display_family_and_model() {
        // AMD EPYC 9004 (Zen 4, Genoa): family 25 (19h), model 17 (11h).
        let zen4 = CpuId::decode(true, 0x00A1_0F11);
        assert_eq!((zen4.family, zen4.model), (0x19, 0x11));
        assert!(zen4.avx512_half_width());
        // AMD Zen 5 (family 1Ah): full-width AVX-512 on this rule.
        assert!(!CpuId::decode(true, 0x00B4_0F40).avx512_half_width());
        // Intel Sapphire Rapids: family 6, model 8Fh.
        let spr = CpuId::decode(false, 0x0008_06F8);
        assert_eq!((spr.family, spr.model), (6, 0x8F));
        assert!(!spr.avx512_half_width());
        // An Intel CPU reporting family 19h would not match the AMD rule.
        assert!(!CpuId::decode(false, 0x00A1_0F11).avx512_half_width());
    }
}
