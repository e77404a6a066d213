//! The exact kernels ([`crate::exact::block`]) on AVX2 + FMA + F16C: sixteen f64 lanes in four
//! ymm registers. With sixteen registers in all, one bin takes two such sets (32 lanes) and two
//! or three bins one set each; a 1024-element block gives at most 64 deposits per lane.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::super::exact::{exact_table, ExactKernels};
use super::Avx2;
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

type W = [__m256d; 4];

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

/// Eight f32 widened into two registers.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
unsafe fn widen8(x: __m256, abs: bool) -> [__m256d; 2] {
    // SAFETY: forwarded to the caller.
    unsafe {
        [
            widen4(_mm256_castps256_ps128(x), abs),
            widen4(_mm256_extractf128_ps::<1>(x), abs),
        ]
    }
}

impl ExactBackend for Avx2 {
    type W = W;
    const LANES: usize = 16;
    const BLOCK: usize = 1024;
    const MIN_U: usize = 1;

    #[inline(always)]
    fn splat(self, v: f64) -> W {
        // SAFETY: the token proves AVX.
        unsafe { [_mm256_set1_pd(v); 4] }
    }
    #[inline(always)]
    fn add(self, a: W, b: W) -> W {
        // SAFETY: the token proves AVX.
        unsafe {
            [
                _mm256_add_pd(a[0], b[0]),
                _mm256_add_pd(a[1], b[1]),
                _mm256_add_pd(a[2], b[2]),
                _mm256_add_pd(a[3], b[3]),
            ]
        }
    }
    #[inline(always)]
    fn sub(self, a: W, b: W) -> W {
        // SAFETY: the token proves AVX.
        unsafe {
            [
                _mm256_sub_pd(a[0], b[0]),
                _mm256_sub_pd(a[1], b[1]),
                _mm256_sub_pd(a[2], b[2]),
                _mm256_sub_pd(a[3], b[3]),
            ]
        }
    }
    #[inline(always)]
    fn sq_add(self, x: W, a: W) -> W {
        // SAFETY: the token proves FMA.
        unsafe {
            [
                _mm256_fmadd_pd(x[0], x[0], a[0]),
                _mm256_fmadd_pd(x[1], x[1], a[1]),
                _mm256_fmadd_pd(x[2], x[2], a[2]),
                _mm256_fmadd_pd(x[3], x[3], a[3]),
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
                _mm256_fmsub_pd(x[2], x[2], d[2]),
                _mm256_fmsub_pd(x[3], x[3], d[3]),
            ]
        }
    }
    #[inline(always)]
    fn widen_f32(self, g: &[f32], abs: bool) -> W {
        let g: &[f32; 16] = g[..16].try_into().expect("16 elements");
        let p = g.as_ptr();
        // SAFETY: the token proves AVX; four loads of 4 floats cover exactly `g`.
        unsafe {
            [
                widen4(_mm_loadu_ps(p), abs),
                widen4(_mm_loadu_ps(p.add(4)), abs),
                widen4(_mm_loadu_ps(p.add(8)), abs),
                widen4(_mm_loadu_ps(p.add(12)), abs),
            ]
        }
    }
    #[inline(always)]
    fn widen_f16(self, g: &[f16], abs: bool) -> W {
        let g: &[f16; 16] = g[..16].try_into().expect("16 elements");
        let p = g.as_ptr() as *const __m128i;
        // SAFETY: the token proves AVX/F16C; two loads of 8 halves cover exactly `g`.
        unsafe {
            let [a, b] = widen8(_mm256_cvtph_ps(_mm_loadu_si128(p)), abs);
            let [c, d] = widen8(_mm256_cvtph_ps(_mm_loadu_si128(p.add(1))), abs);
            [a, b, c, d]
        }
    }
    #[inline(always)]
    fn widen_bf16(self, g: &[bf16], abs: bool) -> W {
        let g: &[bf16; 16] = g[..16].try_into().expect("16 elements");
        // SAFETY: the token proves AVX2; one 32-byte load is exactly `g`. Even elements, then
        // odd ones: any lane order will do for an exact sum.
        unsafe {
            let v = _mm256_loadu_si256(g.as_ptr() as *const __m256i);
            let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
            let odd = _mm256_castsi256_ps(_mm256_and_si256(
                v,
                _mm256_set1_epi32(0xFFFF_0000u32 as i32),
            ));
            let [a, b] = widen8(even, abs);
            let [c, d] = widen8(odd, abs);
            [a, b, c, d]
        }
    }
    #[inline(always)]
    fn bits_sum(self, a: W) -> u64 {
        // SAFETY: the token proves AVX2.
        unsafe {
            let s = _mm256_add_epi64(
                _mm256_add_epi64(_mm256_castpd_si256(a[0]), _mm256_castpd_si256(a[1])),
                _mm256_add_epi64(_mm256_castpd_si256(a[2]), _mm256_castpd_si256(a[3])),
            );
            let mut out = [0u64; 4];
            _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s);
            out.iter().fold(0u64, |t, &x| t.wrapping_add(x))
        }
    }
    type Bnd = [__m256i; 2];
    #[inline(always)]
    fn bnd_zero(self) -> Self::Bnd {
        // SAFETY: the token proves AVX.
        unsafe { [_mm256_setzero_si256(), _mm256_set1_epi32(-1)] }
    }
    #[inline(always)]
    fn bnd_u32(self, b: Self::Bnd, g: &[u32]) -> Self::Bnd {
        let g: &[u32; 16] = g[..16].try_into().expect("16 words");
        let p = g.as_ptr() as *const __m256i;
        // SAFETY: the token proves AVX2; two 32-byte loads cover exactly `g`.
        unsafe {
            let mask = _mm256_set1_epi32(0x7FFF_FFFF);
            let one = _mm256_set1_epi32(1);
            let a = _mm256_and_si256(_mm256_loadu_si256(p), mask);
            let c = _mm256_and_si256(_mm256_loadu_si256(p.add(1)), mask);
            [
                _mm256_max_epu32(_mm256_max_epu32(b[0], a), c),
                _mm256_min_epu32(
                    _mm256_min_epu32(b[1], _mm256_sub_epi32(a, one)),
                    _mm256_sub_epi32(c, one),
                ),
            ]
        }
    }
    #[inline(always)]
    fn bnd_u16(self, b: Self::Bnd, g: &[u16]) -> Self::Bnd {
        let g: &[u16; 16] = g[..16].try_into().expect("16 halves");
        // SAFETY: the token proves AVX2; one 32-byte load is exactly `g`.
        unsafe {
            let a = _mm256_and_si256(
                _mm256_loadu_si256(g.as_ptr() as *const __m256i),
                _mm256_set1_epi16(0x7FFF),
            );
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
    fn prefetch<T>(self, s: &[T], i: usize) {
        if i < s.len() {
            // SAFETY: a prefetch never faults, and the address is inside `s` anyway; SSE is
            // baseline on x86_64.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(s.as_ptr().add(i) as *const i8) }
        }
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
            1 => block::bins::<Self, T, SQ, 1, 2>(self, block, next, ahead, plan, acc),
            2 => block::bins::<Self, T, SQ, 2, 1>(self, block, next, ahead, plan, acc),
            _ => block::bins::<Self, T, SQ, 3, 1>(self, block, next, ahead, plan, acc),
        }
    }
}
