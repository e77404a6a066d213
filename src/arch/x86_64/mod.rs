//! x86_64 kernels: AVX2 + FMA + F16C, detected at run time, so a default
//! `cargo build --release` (baseline x86-64, SSE2 only) still runs 256-bit code.
//!
//! Only thin `#[target_feature]` entry functions live here; the loops are the generic ones,
//! inlined into each entry through `#[inline(always)]`.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::generic::{self, Backend, LANES};
use super::{Isa, Kernels};

mod avx512;
pub(crate) use avx512::{Avx512, AVX512_KERNELS};

/// Proof that the CPU supports AVX2, FMA and F16C. Holding one discharges those obligations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// Run-time check (cached by std).
    pub(crate) fn is_available() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[inline(always)]
    unsafe fn new_unchecked() -> Self {
        Avx2(())
    }
}

// SAFETY: each method performs, per lane, the same IEEE operation as the portable backend
// (exact widening, exact square fused with one rounded add, or a rounded add of |x|; the fold is
// the same add/max/min/sub sequence), with lane j of the result holding element j.
unsafe impl Backend for Avx2 {
    type V = __m256d;
    type Acc = [__m256d; 8];

    #[inline(always)]
    fn zero(self) -> Self::Acc {
        // SAFETY: the token proves AVX is available.
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
}

/// `acc + x*x` (fused: the square is exact, so this equals the portable mul-then-add) or `acc + |x|`.
///
/// # Safety
/// The CPU must support AVX and FMA.
#[inline(always)]
pub(super) unsafe fn term<const SQ: bool>(acc: __m256d, x: __m256d) -> __m256d {
    // SAFETY: forwarded to the caller.
    unsafe {
        if SQ {
            _mm256_fmadd_pd(x, x, acc)
        } else {
            _mm256_add_pd(acc, _mm256_andnot_pd(_mm256_set1_pd(-0.0), x))
        }
    }
}

/// Rounds eight f32 to bf16 with round-to-nearest-even, leaving each result in the upper 16 bits
/// of its 32-bit word (the lower 16 bits are garbage). A NaN keeps its top payload bits and is
/// quieted, exactly as [`crate::dtype::f32_to_bf16_bits_rne`]; overflow rounds to ±inf.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn f32x8_round_to_bf16_high_avx2(y: __m256) -> __m256i {
    // SAFETY: forwarded to the caller.
    unsafe {
        let u = _mm256_castps_si256(y);
        let abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFF_FFFF));
        let is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
        let rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
        let quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x0040_0000));
        _mm256_blendv_epi8(rounded, quiet, is_nan)
    }
}

/// Runs `body` on every full group of `N` and on a zero-padded copy of the tail, so the tail goes
/// through the same vector code as the rest.
#[inline(always)]
pub(super) fn for_each_group<T: Copy + Default, const N: usize>(
    data: &mut [T],
    mut body: impl FnMut(&mut [T; N]),
) {
    let mut it = data.chunks_exact_mut(N);
    for g in &mut it {
        body(g.try_into().expect("chunks of N"));
    }
    let rest = it.into_remainder();
    if !rest.is_empty() {
        let mut pad = [T::default(); N];
        pad[..rest.len()].copy_from_slice(rest);
        body(&mut pad);
        let n = rest.len();
        rest.copy_from_slice(&pad[..n]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn scale_f32_avx2(data: &mut [f32], c: f32) {
    let cv = _mm256_set1_ps(c);
    for_each_group::<_, 8>(data, |g| {
        let p = g.as_mut_ptr();
        // SAFETY: 8 floats inside `g`; AVX enabled on this function.
        unsafe { _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), cv)) }
    });
}

#[target_feature(enable = "avx2,fma,f16c")]
fn scale_f16_avx2(data: &mut [f16], c: f32) {
    let cv = _mm256_set1_ps(c);
    for_each_group::<_, 8>(data, |g| {
        let p = g.as_mut_ptr() as *mut __m128i;
        // SAFETY: 8 halves (16 bytes) inside `g`; F16C and AVX enabled on this function.
        unsafe {
            let y = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(p)), cv);
            _mm_storeu_si128(p, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(y));
        }
    });
}

/// bf16 scale without shuffles: 16 elements are 8 words; `word << 16` and `word & 0xFFFF0000`
/// are the even and odd elements as f32, and the rounded results go back to the low and high
/// halves of the words.
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_bf16_avx2(data: &mut [bf16], c: f32) {
    let cv = _mm256_set1_ps(c);
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    for_each_group::<_, 16>(data, |g| {
        let p = g.as_mut_ptr() as *mut __m256i;
        // SAFETY: 16 bf16 (32 bytes) inside `g`; AVX2 enabled on this function.
        unsafe {
            let v = _mm256_loadu_si256(p);
            let even = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)), cv);
            let odd = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), cv);
            let even = _mm256_srli_epi32::<16>(f32x8_round_to_bf16_high_avx2(even));
            let odd = _mm256_and_si256(f32x8_round_to_bf16_high_avx2(odd), high);
            _mm256_storeu_si256(p, _mm256_or_si256(even, odd));
        }
    });
}

/// Largest `bits & mask` over 32-bit words: 4 independent `vpmaxud` chains of 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn max_masked_u32_avx2(data: &[u32]) -> u32 {
    let mask = _mm256_set1_epi32(0x7FFF_FFFF);
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut it = data.chunks_exact(32);
    for g in &mut it {
        let p = g.as_ptr() as *const __m256i;
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: 4 loads of 8 words stay inside the 32-word group `g`.
            let v = unsafe { _mm256_loadu_si256(p.add(k)) };
            *a = _mm256_max_epu32(*a, _mm256_and_si256(v, mask));
        }
    }
    let m = _mm256_max_epu32(
        _mm256_max_epu32(acc[0], acc[1]),
        _mm256_max_epu32(acc[2], acc[3]),
    );
    let mut lanes = [0u32; 8];
    // SAFETY: 8 words fill `lanes` exactly.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, m) };
    it.remainder()
        .iter()
        .map(|x| x & 0x7FFF_FFFF)
        .chain(lanes)
        .max()
        .unwrap_or(0)
}

/// Largest `bits & 0x7FFF` over 16-bit words: 4 independent `vpmaxuw` chains of 16 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn max_masked_u16_avx2(data: &[u16]) -> u32 {
    let mask = _mm256_set1_epi16(0x7FFF);
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut it = data.chunks_exact(64);
    for g in &mut it {
        let p = g.as_ptr() as *const __m256i;
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: 4 loads of 16 halves stay inside the 64-element group `g`.
            let v = unsafe { _mm256_loadu_si256(p.add(k)) };
            *a = _mm256_max_epu16(*a, _mm256_and_si256(v, mask));
        }
    }
    let m = _mm256_max_epu16(
        _mm256_max_epu16(acc[0], acc[1]),
        _mm256_max_epu16(acc[2], acc[3]),
    );
    let mut lanes = [0u16; 16];
    // SAFETY: 16 halves fill `lanes` exactly.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, m) };
    it.remainder()
        .iter()
        .map(|x| x & 0x7FFF)
        .chain(lanes)
        .max()
        .unwrap_or(0) as u32
}

macro_rules! avx2_sums {
    ($( $name:ident / $inner:ident : $t:ty, $sq:literal ;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $inner(d: &[$t]) -> (f64, f64) {
            // SAFETY: compiled with the token's features; reachable only through AVX2_KERNELS
            // (and AVX512_KERNELS), handed out by `Kernels::for_isa` after detection.
            let token = unsafe { Avx2::new_unchecked() };
            generic::sum_chunk::<Avx2, $t, $sq>(token, d)
        }
        fn $name(d: &[$t]) -> (f64, f64) {
            // SAFETY: only reachable through the detected tables (see above).
            unsafe { $inner(d) }
        }
    )*};
}

avx2_sums! {
    sum_sq_f32 / sum_sq_f32_avx2: f32, true;
    sum_sq_f16 / sum_sq_f16_avx2: f16, true;
    sum_sq_bf16 / sum_sq_bf16_avx2: bf16, true;
    sum_abs_f32 / sum_abs_f32_avx2: f32, false;
    sum_abs_f16 / sum_abs_f16_avx2: f16, false;
    sum_abs_bf16 / sum_abs_bf16_avx2: bf16, false;
}

/// Safe wrappers over the `#[target_feature]` max and scale kernels.
macro_rules! avx2_wrappers {
    ($( $name:ident => $inner:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ;)*) => {$(
        pub(super) fn $name($($arg: $ty),*) -> $ret {
            // SAFETY: only reachable through AVX2_KERNELS / AVX512_KERNELS, which
            // `Kernels::for_isa` hands out after `Avx2::is_available()`.
            unsafe { $inner($($arg),*) }
        }
    )*};
}

avx2_wrappers! {
    max_abs_f32 => max_abs_f32_avx2(d: &[f32]) -> u32;
    max_abs_f16 => max_abs_f16_avx2(d: &[f16]) -> u32;
    max_abs_bf16 => max_abs_bf16_avx2(d: &[bf16]) -> u32;
    scale_f32 => scale_f32_avx2(d: &mut [f32], c: f32) -> ();
    scale_f16 => scale_f16_avx2(d: &mut [f16], c: f32) -> ();
    scale_bf16 => scale_bf16_avx2(d: &mut [bf16], c: f32) -> ();
}

#[target_feature(enable = "avx2,fma,f16c")]
fn max_abs_f32_avx2(d: &[f32]) -> u32 {
    max_masked_u32_avx2(bytemuck::cast_slice(d))
}
#[target_feature(enable = "avx2,fma,f16c")]
fn max_abs_f16_avx2(d: &[f16]) -> u32 {
    max_masked_u16_avx2(bytemuck::cast_slice(d))
}
#[target_feature(enable = "avx2,fma,f16c")]
fn max_abs_bf16_avx2(d: &[bf16]) -> u32 {
    max_masked_u16_avx2(bytemuck::cast_slice(d))
}

pub(crate) static AVX2_KERNELS: Kernels = Kernels {
    isa: Isa::Avx2,
    sum_sq: (sum_sq_f32, sum_sq_f16, sum_sq_bf16),
    sum_abs: (sum_abs_f32, sum_abs_f16, sum_abs_bf16),
    max_abs: (max_abs_f32, max_abs_f16, max_abs_bf16),
    scale: (scale_f32, scale_f16, scale_bf16),
};
