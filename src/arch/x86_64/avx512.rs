//! x86_64 kernels with AVX-512 (F, BW, DQ, VL) on top of AVX2/FMA/F16C, detected at run time.
//!
//! Same 32 virtual lanes as every other backend, held in four zmm registers (the widening
//! f32→f64 converts are the sums' bottleneck, and a 512-bit convert moves twice the elements).
//! The scale kernels are 512-bit too (mask blends instead of `vpblendvb` for bf16); the max
//! kernels reuse AVX2, which already runs at memory speed.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::super::generic::{self, Backend, LANES};
use super::super::{Isa, Kernels};
use super::for_each_group;

/// Proof that the CPU supports AVX-512 F/BW/DQ/VL, AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// Run-time check (cached by std).
    pub(crate) fn is_available() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && super::Avx2::is_available()
    }

    /// # Safety
    /// The CPU must support every feature [`Avx512::is_available`] checks.
    #[inline(always)]
    unsafe fn new_unchecked() -> Self {
        Avx512(())
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

// SAFETY: per lane the same IEEE operations as the portable backend (exact widening, a fused
// exact square plus one rounded add, or a rounded add of |x|; the same fold), and zmm k lane i
// holds virtual lane 8k + i with the element the portable backend assigns to it.
unsafe impl Backend for Avx512 {
    type V = __m512d;
    type Acc = [__m512d; 4];

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
}

macro_rules! avx512_sums {
    ($( $name:ident / $inner:ident : $t:ty, $sq:literal ;)*) => {$(
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
        fn $inner(d: &[$t]) -> (f64, f64) {
            // SAFETY: compiled with the token's features; reachable only through
            // AVX512_KERNELS, which `Kernels::for_isa` hands out after `Avx512::is_available()`.
            let token = unsafe { Avx512::new_unchecked() };
            generic::sum_chunk::<Avx512, $t, $sq>(token, d)
        }
        fn $name(d: &[$t]) -> (f64, f64) {
            // SAFETY: only reachable through AVX512_KERNELS (see above).
            unsafe { $inner(d) }
        }
    )*};
}

avx512_sums! {
    sum_sq_f32 / sum_sq_f32_avx512: f32, true;
    sum_sq_f16 / sum_sq_f16_avx512: f16, true;
    sum_sq_bf16 / sum_sq_bf16_avx512: bf16, true;
    sum_abs_f32 / sum_abs_f32_avx512: f32, false;
    sum_abs_f16 / sum_abs_f16_avx512: f16, false;
    sum_abs_bf16 / sum_abs_bf16_avx512: bf16, false;
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
fn scale_f32_avx512(data: &mut [f32], c: f32) {
    let cv = _mm512_set1_ps(c);
    for_each_group::<_, 16>(data, |g| {
        let p = g.as_mut_ptr();
        // SAFETY: 16 floats inside `g`; AVX-512F enabled on this function.
        unsafe { _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), cv)) }
    });
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
fn scale_f16_avx512(data: &mut [f16], c: f32) {
    let cv = _mm512_set1_ps(c);
    for_each_group::<_, 16>(data, |g| {
        let p = g.as_mut_ptr() as *mut __m256i;
        // SAFETY: 16 halves (32 bytes) inside `g`; AVX-512F enabled on this function.
        unsafe {
            let y = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(p)), cv);
            _mm256_storeu_si256(p, _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(y));
        }
    });
}

/// Rounds sixteen f32 to bf16 (RNE, NaN quieted with its top payload kept, as
/// [`crate::dtype::f32_to_bf16_bits_rne`]), each result in the upper half of its word.
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline(always)]
unsafe fn f32x16_round_to_bf16_high(y: __m512) -> __m512i {
    // SAFETY: forwarded to the caller.
    unsafe {
        let u = _mm512_castps_si512(y);
        let abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFF_FFFF));
        let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
        let quiet = _mm512_or_si512(u, _mm512_set1_epi32(0x0040_0000));
        _mm512_mask_blend_epi32(is_nan, rounded, quiet)
    }
}

/// bf16 scale without shuffles (see the AVX2 version): 32 elements are 16 words.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
fn scale_bf16_avx512(data: &mut [bf16], c: f32) {
    let cv = _mm512_set1_ps(c);
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    for_each_group::<_, 32>(data, |g| {
        let p = g.as_mut_ptr() as *mut __m512i;
        // SAFETY: 32 bf16 (64 bytes) inside `g`; AVX-512F enabled on this function.
        unsafe {
            let v = _mm512_loadu_si512(p as *const _);
            let even = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)), cv);
            let odd = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), cv);
            let even = _mm512_srli_epi32::<16>(f32x16_round_to_bf16_high(even));
            let odd = _mm512_and_si512(f32x16_round_to_bf16_high(odd), high);
            _mm512_storeu_si512(p as *mut _, _mm512_or_si512(even, odd));
        }
    });
}

macro_rules! avx512_wrappers {
    ($( $name:ident => $inner:ident ( $($arg:ident : $ty:ty),* ) ;)*) => {$(
        fn $name($($arg: $ty),*) {
            // SAFETY: only reachable through AVX512_KERNELS, which `Kernels::for_isa` hands out
            // after `Avx512::is_available()`.
            unsafe { $inner($($arg),*) }
        }
    )*};
}

avx512_wrappers! {
    scale_f32 => scale_f32_avx512(d: &mut [f32], c: f32);
    scale_f16 => scale_f16_avx512(d: &mut [f16], c: f32);
    scale_bf16 => scale_bf16_avx512(d: &mut [bf16], c: f32);
}

pub(crate) static AVX512_KERNELS: Kernels = Kernels {
    isa: Isa::Avx512,
    sum_sq: (sum_sq_f32, sum_sq_f16, sum_sq_bf16),
    sum_abs: (sum_abs_f32, sum_abs_f16, sum_abs_bf16),
    max_abs: (super::max_abs_f32, super::max_abs_f16, super::max_abs_bf16),
    scale: (scale_f32, scale_f16, scale_bf16),
};
