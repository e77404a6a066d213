//! The exact kernels ([`crate::exact::block`]) on AVX2 + FMA + F16C: sets of eight f64 lanes in
//! two ymm registers. With sixteen registers in all (bins, the next block's bounds, the widened
//! elements and the cascade's temporaries share them), one bin takes four sets (32 lanes), two
//! or three bins two sets each; a 1024-element block gives at most 64 deposits per lane.
//! (Sets of sixteen lanes spilled the two-bin loop to the stack: 0.45 of the compute roofline
//! for f16 where the AVX-512 path reaches 0.7.)

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::super::exact::{exact_table, ExactKernels};
use super::{prefetch_lines, Avx2};
use crate::exact::accumulator::ChunkAcc;
use crate::exact::block::{self, ExactBackend, ExactElement, Plan};
use crate::isa::Isa;

static EXACT_KERNELS: ExactKernels = exact_table!(
    Avx2,
    Isa::Avx2,
    [#[target_feature(enable = "avx2,fma,f16c")]],
    // SAFETY: evaluated only inside the table's entry points, reachable only through
    // `Avx2::exact_kernels`, which needs a token from `Avx2::detect`.
    token = unsafe { Avx2::new_unchecked() }
);

impl Avx2 {
    /// The AVX2 exact kernels.
    pub(in crate::arch) fn exact_kernels(self) -> &'static ExactKernels {
        &EXACT_KERNELS
    }
}

type W = [__m256d; 2];

/// Four f32 widened to f64 (exact), magnitudes when `abs`.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
unsafe fn widen4(x: __m128, abs: bool) -> __m256d {
    // SAFETY: forwarded to the caller.
    unsafe {
        let v = _mm256_cvtps_pd(x);
        if abs {
            _mm256_andnot_pd(_mm256_set1_pd(-0.0), v)
        } else {
            v
        }
    }
}

impl ExactBackend for Avx2 {
    type W = W;
    const LANES: usize = 8;
    const BLOCK: usize = 1024;
    const MIN_U: usize = 2;

    #[inline(always)]
    fn splat(self, v: f64) -> W {
        // SAFETY: the token proves AVX.
        unsafe { [_mm256_set1_pd(v); 2] }
    }
    #[inline(always)]
    fn add(self, a: W, b: W) -> W {
        // SAFETY: the token proves AVX.
        unsafe { [_mm256_add_pd(a[0], b[0]), _mm256_add_pd(a[1], b[1])] }
    }
    #[inline(always)]
    fn sub(self, a: W, b: W) -> W {
        // SAFETY: the token proves AVX.
        unsafe { [_mm256_sub_pd(a[0], b[0]), _mm256_sub_pd(a[1], b[1])] }
    }
    #[inline(always)]
    fn sq_add(self, x: W, a: W) -> W {
        // SAFETY: the token proves FMA.
        unsafe {
            [
                _mm256_fmadd_pd(x[0], x[0], a[0]),
                _mm256_fmadd_pd(x[1], x[1], a[1]),
            ]
        }
    }
    #[inline(always)]
    fn sq_sub(self, x: W, d: W) -> W {
        // SAFETY: the token proves FMA.
        unsafe {
            [
                _mm256_fmsub_pd(x[0], x[0], d[0]),
                _mm256_fmsub_pd(x[1], x[1], d[1]),
            ]
        }
    }
    #[inline(always)]
    fn widen_f32(self, g: &[f32], abs: bool) -> W {
        let g: &[f32; 8] = g[..8].try_into().expect("8 elements");
        let p = g.as_ptr();
        // SAFETY: the token proves AVX; two loads of 4 floats cover exactly `g`.
        unsafe {
            [
                widen4(_mm_loadu_ps(p), abs),
                widen4(_mm_loadu_ps(p.add(4)), abs),
            ]
        }
    }
    #[inline(always)]
    fn widen_f16(self, g: &[f16], abs: bool) -> W {
        let g: &[f16; 8] = g[..8].try_into().expect("8 elements");
        // SAFETY: the token proves AVX/F16C; one 16-byte load is exactly `g`.
        unsafe {
            let h = _mm256_cvtph_ps(_mm_loadu_si128(g.as_ptr() as *const __m128i));
            [
                widen4(_mm256_castps256_ps128(h), abs),
                widen4(_mm256_extractf128_ps::<1>(h), abs),
            ]
        }
    }
    #[inline(always)]
    fn widen_bf16(self, g: &[bf16], abs: bool) -> W {
        let g: &[bf16; 8] = g[..8].try_into().expect("8 elements");
        // SAFETY: the token proves AVX2; one 16-byte load is exactly `g`. Even elements, then
        // odd ones: any lane order will do for an exact sum.
        unsafe {
            let v = _mm_loadu_si128(g.as_ptr() as *const __m128i);
            let even = _mm_castsi128_ps(_mm_slli_epi32::<16>(v));
            let odd = _mm_castsi128_ps(_mm_and_si128(v, _mm_set1_epi32(0xFFFF_0000u32 as i32)));
            [widen4(even, abs), widen4(odd, abs)]
        }
    }
    #[inline(always)]
    fn bits_sum(self, a: W) -> u64 {
        let mut out = [0u64; 4];
        // SAFETY: the token proves AVX2; the store of 32 bytes fills `out` exactly.
        unsafe {
            let s = _mm256_add_epi64(_mm256_castpd_si256(a[0]), _mm256_castpd_si256(a[1]));
            _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s);
        }
        out.iter().fold(0u64, |t, &x| t.wrapping_add(x))
    }
    type Bnd = [__m256i; 2];
    #[inline(always)]
    fn bnd_zero(self) -> Self::Bnd {
        // SAFETY: the token proves AVX.
        unsafe { [_mm256_setzero_si256(), _mm256_set1_epi32(-1)] }
    }
    #[inline(always)]
    fn bnd_u32(self, b: Self::Bnd, g: &[u32]) -> Self::Bnd {
        let g: &[u32; 8] = g[..8].try_into().expect("8 words");
        // SAFETY: the token proves AVX2; one 32-byte load is exactly `g`.
        unsafe {
            let a = _mm256_and_si256(
                _mm256_loadu_si256(g.as_ptr() as *const __m256i),
                _mm256_set1_epi32(0x7FFF_FFFF),
            );
            [
                _mm256_max_epu32(b[0], a),
                _mm256_min_epu32(b[1], _mm256_sub_epi32(a, _mm256_set1_epi32(1))),
            ]
        }
    }
    #[inline(always)]
    fn bnd_u16(self, b: Self::Bnd, g: &[u16]) -> Self::Bnd {
        let g: &[u16; 8] = g[..8].try_into().expect("8 halves");
        // SAFETY: the token proves AVX2; one 16-byte load is exactly `g`. The upper half of the
        // register is zero: 0 for the max, 0xFFFF (zero minus one) for the min.
        unsafe {
            let v = _mm256_zextsi128_si256(_mm_loadu_si128(g.as_ptr() as *const __m128i));
            let a = _mm256_and_si256(v, _mm256_set1_epi16(0x7FFF));
            [
                _mm256_max_epu16(b[0], a),
                _mm256_min_epu16(b[1], _mm256_sub_epi16(a, _mm256_set1_epi16(1))),
            ]
        }
    }
    #[inline(always)]
    fn bnd_finish_u32(self, b: Self::Bnd) -> (u32, u32) {
        let (mut h, mut l) = ([0u32; 8], [0u32; 8]);
        // SAFETY: the token proves AVX; each store of 32 bytes fills its array exactly.
        unsafe {
            _mm256_storeu_si256(h.as_mut_ptr() as *mut __m256i, b[0]);
            _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, b[1]);
        }
        (
            h.iter().copied().fold(0, u32::max),
            l.iter().copied().fold(u32::MAX, u32::min),
        )
    }
    #[inline(always)]
    fn bnd_finish_u16(self, b: Self::Bnd) -> (u32, u32) {
        let (mut h, mut l) = ([0u16; 16], [0u16; 16]);
        // SAFETY: the token proves AVX; each store of 32 bytes fills its array exactly.
        unsafe {
            _mm256_storeu_si256(h.as_mut_ptr() as *mut __m256i, b[0]);
            _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, b[1]);
        }
        let l = l.iter().copied().fold(u16::MAX, u16::min);
        (
            h.iter().copied().fold(0, u16::max) as u32,
            if l == u16::MAX { u32::MAX } else { l as u32 },
        )
    }
    #[inline(always)]
    fn prefetch<T>(self, s: &[T]) {
        prefetch_lines(s);
    }
    #[inline(always)]
    fn run_bins<T: ExactElement, const SQ: bool>(
        self,
        block: &[T],
        next: &[T],
        ahead: &[T],
        plan: &Plan,
        acc: &mut ChunkAcc,
    ) -> (u32, u32) {
        match plan.k {
            1 => block::bins::<Self, T, SQ, 1, 4>(self, block, next, ahead, plan, acc),
            2 => block::bins::<Self, T, SQ, 2, 2>(self, block, next, ahead, plan, acc),
            _ => block::bins::<Self, T, SQ, 3, 2>(self, block, next, ahead, plan, acc),
        }
    }
}
