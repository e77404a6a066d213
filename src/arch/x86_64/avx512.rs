//! The AVX-512 (F, BW, DQ, VL, on top of AVX2/FMA/F16C) backend.
//!
//! Same 32 virtual lanes as every other backend, held in four zmm registers (the widening
//! f32→f64 converts are the sums' bottleneck, and a 512-bit convert moves twice the elements);
//! 16-lane registers for the scale, with mask registers for the selects.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::super::generic::{self, Backend, LANES};
use super::super::{kernel_table, Kernels};
use super::{prefetch_line, prefetch_lines, Avx2};
use crate::compensated::F64Ops;
use crate::isa::Isa;
use crate::lanes::Lanes32;

/// Proof that the CPU supports AVX-512 F/BW/DQ/VL, AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(in crate::arch) struct Avx512(());

static AVX512_KERNELS: Kernels = kernel_table!(
    Avx512,
    Isa::Avx512,
    [#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]],
    // SAFETY: evaluated only inside the table's entry points, reachable only through
    // `Avx512::kernels`, which needs a token from `Avx512::detect`.
    token = unsafe { Avx512::new_unchecked() }
);

/// The AVX-512 table with the bf16 scale on `VCVTNE2PS2BF16` (AVX512_BF16), for CPUs that have it.
static AVX512_BF16_KERNELS: Kernels = Kernels {
    scale: (
        AVX512_KERNELS.scale.0,
        AVX512_KERNELS.scale.1,
        scale_bf16_cvtne,
    ),
    ..AVX512_KERNELS
};

/// The bf16 scale of the AVX512_BF16 table: the same bits as every other backend's.
///
/// `VCVTNE2PS2BF16` rounds a normal f32 to nearest-even exactly as `lanes::f32_to_bf16_high`
/// does, keeps zeros and infinities, and turns a NaN into its upper half with the quiet bit set
/// (the crate's rule too), in one instruction for 32 elements where the bit logic takes about
/// twenty. It flushes subnormal f32 to zero, so a group of 32 with a subnormal product takes the
/// bit logic instead. The products are the same `vmulps` either way.
fn scale_bf16_cvtne(d: &mut [bf16], c: f32) {
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")]
    fn inner(d: &mut [bf16], c: f32) {
        // SAFETY: this function runs only on a CPU with these features (see the call below).
        let b = unsafe { Avx512::new_unchecked() };
        let cv = _mm512_set1_ps(c);
        let mut groups = d.chunks_exact_mut(32);
        for g in &mut groups {
            prefetch_line(
                g.as_ptr()
                    .cast::<u8>()
                    .wrapping_add(generic::SCALE_AHEAD_BYTES),
            );
            let p = g.as_mut_ptr();
            // SAFETY: the features are enabled on this function; `g` holds 32 bf16 (64 bytes):
            // two unaligned 32-byte loads and one unaligned 64-byte store inside it.
            let done = unsafe {
                let lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                let hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(16) as *const __m256i));
                let lo = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(lo)), cv);
                let hi = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(hi)), cv);
                // fpclass 0x20: subnormal.
                let sub = _mm512_fpclass_ps_mask::<0x20>(lo) | _mm512_fpclass_ps_mask::<0x20>(hi);
                if sub == 0 {
                    let r: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_storeu_si512(p as *mut _, r);
                }
                sub == 0
            };
            if !done {
                generic::scale(b, g, c);
            }
        }
        generic::scale(b, groups.into_remainder(), c);
    }
    // SAFETY: reachable only through AVX512_BF16_KERNELS, which `Avx512::kernels` hands out
    // only when AVX512_BF16 was detected on top of the token's features.
    unsafe { inner(d, c) }
}

impl Avx512 {
    /// A token if this CPU supports every feature the AVX-512 kernels use.
    pub(in crate::arch) fn detect() -> Option<Self> {
        let ok = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && Avx2::detect().is_some();
        // SAFETY: the features were just detected.
        ok.then(|| unsafe { Avx512::new_unchecked() })
    }

    /// # Safety
    /// The CPU must support every feature [`Avx512::detect`] checks.
    #[inline(always)]
    pub(super) unsafe fn new_unchecked() -> Self {
        Avx512(())
    }

    /// The AVX-512 kernels.
    pub(in crate::arch) fn kernels(self) -> &'static Kernels {
        if std::is_x86_feature_detected!("avx512bf16") {
            &AVX512_BF16_KERNELS
        } else {
            &AVX512_KERNELS
        }
    }
}

/// `acc + x*x` (fused; the square is exact) or `acc + |x|`.
///
/// # Safety
/// The CPU must support AVX-512F/DQ.
#[inline(always)]
unsafe fn term<const SQ: bool>(acc: __m512d, x: __m512d) -> __m512d {
    // SAFETY: forwarded to the caller.
    unsafe {
        if SQ {
            _mm512_fmadd_pd(x, x, acc)
        } else {
            _mm512_add_pd(acc, _mm512_andnot_pd(_mm512_set1_pd(-0.0), x))
        }
    }
}

/// Upper eight f32 of a zmm.
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline(always)]
unsafe fn upper_half(v: __m512) -> __m256 {
    // SAFETY: forwarded to the caller.
    unsafe { _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))) }
}

impl F64Ops for Avx512 {
    type V = __m512d;
    #[inline(always)]
    fn add(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_add_pd(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_sub_pd(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_max_pd(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_min_pd(a, b) }
    }
}

impl Lanes32 for Avx512 {
    type U = __m512i;
    type F = __m512;
    type M = __mmask16;
    #[inline(always)]
    fn splat(self, x: u32) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_set1_epi32(x as i32) }
    }
    #[inline(always)]
    fn splat_f(self, x: f32) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn and(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_and_si512(a, b) }
    }
    #[inline(always)]
    fn or(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_or_si512(a, b) }
    }
    #[inline(always)]
    fn add(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_sub_epi32(a, b) }
    }
    #[inline(always)]
    fn shl<const N: u32>(self, a: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_slli_epi32::<N>(a) }
    }
    #[inline(always)]
    fn shr<const N: u32>(self, a: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_srli_epi32::<N>(a) }
    }
    #[inline(always)]
    fn gt(self, a: __m512i, b: __m512i) -> __mmask16 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_cmpgt_epu32_mask(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __mmask16, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_mask_blend_epi32(m, b, a) }
    }
    #[inline(always)]
    fn to_bits(self, x: __m512) -> __m512i {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_castps_si512(x) }
    }
    #[inline(always)]
    fn bits_to_f(self, u: __m512i) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_castsi512_ps(u) }
    }
    #[inline(always)]
    fn mul_f(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn add_f(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_add_ps(a, b) }
    }
}

impl Backend for Avx512 {
    type Acc = [__m512d; 4];
    const W: usize = 16;

    #[inline(always)]
    fn zero(self) -> Self::Acc {
        // SAFETY: the token proves AVX-512F.
        unsafe { [_mm512_setzero_pd(); 4] }
    }

    #[inline(always)]
    fn accum_f32<const SQ: bool>(self, mut acc: Self::Acc, g: &[f32; LANES]) -> Self::Acc {
        let p = g.as_ptr();
        // SAFETY: the token proves AVX-512F; 4 loads of 8 floats stay inside `g`.
        unsafe {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = term::<SQ>(*a, _mm512_cvtps_pd(_mm256_loadu_ps(p.add(8 * k))));
            }
        }
        acc
    }

    #[inline(always)]
    fn accum_f16<const SQ: bool>(self, mut acc: Self::Acc, g: &[f16; LANES]) -> Self::Acc {
        let p = g.as_ptr() as *const __m256i;
        // SAFETY: the token proves AVX-512F; 2 loads of 16 halves stay inside `g`.
        unsafe {
            for q in 0..2 {
                let h = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(q)));
                acc[2 * q] = term::<SQ>(acc[2 * q], _mm512_cvtps_pd(_mm512_castps512_ps256(h)));
                acc[2 * q + 1] = term::<SQ>(acc[2 * q + 1], _mm512_cvtps_pd(upper_half(h)));
            }
        }
        acc
    }

    #[inline(always)]
    fn accum_bf16<const SQ: bool>(self, mut acc: Self::Acc, g: &[bf16; LANES]) -> Self::Acc {
        // SAFETY: the token proves AVX-512F/BW; one 64-byte load is exactly `g`.
        unsafe {
            let v = _mm512_loadu_si512(g.as_ptr() as *const _);
            // See `generic::bf16_lane_source`: even elements of each half-group go to the first
            // eight lanes of that half, odd ones to the next eight.
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(
                v,
                _mm512_set1_epi32(0xFFFF_0000u32 as i32),
            ));
            acc[0] = term::<SQ>(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(even)));
            acc[1] = term::<SQ>(acc[1], _mm512_cvtps_pd(_mm512_castps512_ps256(odd)));
            acc[2] = term::<SQ>(acc[2], _mm512_cvtps_pd(upper_half(even)));
            acc[3] = term::<SQ>(acc[3], _mm512_cvtps_pd(upper_half(odd)));
        }
        acc
    }

    #[inline(always)]
    fn to_array(self, a: Self::Acc) -> [f64; LANES] {
        let mut out = [0.0f64; LANES];
        // SAFETY: the token proves AVX-512F; 4 stores of 8 doubles fill exactly `out`.
        unsafe {
            for (k, v) in a.iter().enumerate() {
                _mm512_storeu_pd(out.as_mut_ptr().add(8 * k), *v);
            }
        }
        out
    }

    #[inline(always)]
    fn load_f32(self, s: &[f32]) -> __m512 {
        assert!(s.len() >= 16);
        // SAFETY: the token proves AVX-512F; 16 floats are in bounds (checked).
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store_f32(self, v: __m512, s: &mut [f32]) {
        assert!(s.len() >= 16);
        // SAFETY: the token proves AVX-512F; 16 floats are in bounds (checked).
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_bf16_words(self, s: &[bf16]) -> __m512i {
        assert!(s.len() >= 32);
        // SAFETY: the token proves AVX-512F; 64 bytes are in bounds (checked), unaligned load.
        unsafe { _mm512_loadu_si512(s.as_ptr() as *const _) }
    }
    #[inline(always)]
    fn store_bf16_words(self, v: __m512i, s: &mut [bf16]) {
        assert!(s.len() >= 32);
        // SAFETY: the token proves AVX-512F; 64 bytes are in bounds (checked), unaligned store.
        unsafe { _mm512_storeu_si512(s.as_mut_ptr() as *mut _, v) }
    }
    #[inline(always)]
    fn load_f16(self, s: &[f16]) -> __m512 {
        assert!(s.len() >= 16);
        // SAFETY: the token proves AVX-512F; 32 bytes are in bounds (checked), unaligned load.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr() as *const __m256i)) }
    }
    #[inline(always)]
    fn store_f16(self, v: __m512, s: &mut [f16]) {
        assert!(s.len() >= 16);
        // SAFETY: the token proves AVX-512F; 32 bytes are in bounds (checked), unaligned store.
        unsafe {
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, h)
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
