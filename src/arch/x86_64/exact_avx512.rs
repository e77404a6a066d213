//! The exact kernels ([`crate::exact::block`]) on AVX-512: sixteen f64 lanes in two zmm
//! registers, four such sets per bin (64 lanes, 32 deposits per lane in a 2048-element block).
//!
//! f32 widens with `vcvtps2pd`, f16 with `vcvtph2ps` then `vcvtps2pd`, bf16 by moving each half
//! of a 32-bit word into the high half (`w << 16`, `w & 0xFFFF0000`) then `vcvtps2pd`; the bounds
//! scan is packed unsigned max/min of the element's width.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::super::exact::{exact_table, ExactKernels};
use super::{prefetch_lines, Avx512};
use crate::exact::accumulator::ChunkAcc;
use crate::exact::block::{self, ExactBackend, ExactElement, Plan};
use crate::isa::Isa;

static EXACT_KERNELS: ExactKernels = exact_table!(
    Avx512,
    Isa::Avx512,
    [#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]],
    // SAFETY: evaluated only inside the table's entry points, reachable only through
    // `Avx512::exact_kernels`, which needs a token from `Avx512::detect`.
    token = unsafe { Avx512::new_unchecked() }
);

impl Avx512 {
    /// The AVX-512 exact kernels.
    pub(in crate::arch) fn exact_kernels(self) -> &'static ExactKernels {
        &EXACT_KERNELS
    }
}

type W = [__m512d; 2];

/// `|x|` of eight f64 when `abs`, else `x`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline(always)]
unsafe fn maybe_abs(x: __m512d, abs: bool) -> __m512d {
    // SAFETY: forwarded to the caller.
    unsafe {
        if abs {
            _mm512_abs_pd(x)
        } else {
            x
        }
    }
}

/// Eight f32 widened to f64 (exact), magnitudes when `abs`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline(always)]
unsafe fn widen8(x: __m256, abs: bool) -> __m512d {
    // SAFETY: forwarded to the caller.
    unsafe { maybe_abs(_mm512_cvtps_pd(x), abs) }
}

impl ExactBackend for Avx512 {
    type W = W;
    const LANES: usize = 16;
    const BLOCK: usize = 2048;
    const MIN_U: usize = 4;

    #[inline(always)]
    fn splat(self, v: f64) -> W {
        // SAFETY: the token proves AVX-512F.
        unsafe { [_mm512_set1_pd(v); 2] }
    }
    #[inline(always)]
    fn add(self, a: W, b: W) -> W {
        // SAFETY: the token proves AVX-512F.
        unsafe { [_mm512_add_pd(a[0], b[0]), _mm512_add_pd(a[1], b[1])] }
    }
    #[inline(always)]
    fn sub(self, a: W, b: W) -> W {
        // SAFETY: the token proves AVX-512F.
        unsafe { [_mm512_sub_pd(a[0], b[0]), _mm512_sub_pd(a[1], b[1])] }
    }
    #[inline(always)]
    fn sq_add(self, x: W, a: W) -> W {
        // SAFETY: the token proves AVX-512F.
        unsafe {
            [
                _mm512_fmadd_pd(x[0], x[0], a[0]),
                _mm512_fmadd_pd(x[1], x[1], a[1]),
            ]
        }
    }
    #[inline(always)]
    fn sq_sub(self, x: W, d: W) -> W {
        // SAFETY: the token proves AVX-512F.
        unsafe {
            [
                _mm512_fmsub_pd(x[0], x[0], d[0]),
                _mm512_fmsub_pd(x[1], x[1], d[1]),
            ]
        }
    }
    #[inline(always)]
    fn widen_f32(self, g: &[f32], abs: bool) -> W {
        let g: &[f32; 16] = g[..16].try_into().expect("16 elements");
        let p = g.as_ptr();
        // SAFETY: the token proves AVX-512F; two loads of 8 floats cover exactly `g`.
        unsafe {
            [
                widen8(_mm256_loadu_ps(p), abs),
                widen8(_mm256_loadu_ps(p.add(8)), abs),
            ]
        }
    }
    #[inline(always)]
    fn widen_f16(self, g: &[f16], abs: bool) -> W {
        let g: &[f16; 16] = g[..16].try_into().expect("16 elements");
        // SAFETY: the token proves AVX-512F; one 32-byte load is exactly `g`.
        unsafe {
            let h = _mm512_cvtph_ps(_mm256_loadu_si256(g.as_ptr() as *const __m256i));
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(h)));
            [widen8(_mm512_castps512_ps256(h), abs), widen8(hi, abs)]
        }
    }
    #[inline(always)]
    fn widen_bf16(self, g: &[bf16], abs: bool) -> W {
        let g: &[bf16; 16] = g[..16].try_into().expect("16 elements");
        // SAFETY: the token proves AVX-512F/AVX2; one 32-byte load is exactly `g`. Lanes hold
        // the even elements, then the odd ones: any order will do for an exact sum.
        unsafe {
            let v = _mm256_loadu_si256(g.as_ptr() as *const __m256i);
            let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
            let odd = _mm256_castsi256_ps(_mm256_and_si256(
                v,
                _mm256_set1_epi32(0xFFFF_0000u32 as i32),
            ));
            [widen8(even, abs), widen8(odd, abs)]
        }
    }
    #[inline(always)]
    fn bits_sum(self, a: W) -> u64 {
        // SAFETY: the token proves AVX-512F.
        unsafe {
            let s = _mm512_add_epi64(_mm512_castpd_si512(a[0]), _mm512_castpd_si512(a[1]));
            _mm512_reduce_add_epi64(s) as u64
        }
    }
    type Bnd = [__m512i; 2];
    #[inline(always)]
    fn bnd_zero(self) -> Self::Bnd {
        // SAFETY: the token proves AVX-512F.
        unsafe { [_mm512_setzero_si512(), _mm512_set1_epi32(-1)] }
    }
    #[inline(always)]
    fn bnd_u32(self, b: Self::Bnd, g: &[u32]) -> Self::Bnd {
        let g: &[u32; 16] = g[..16].try_into().expect("16 words");
        // SAFETY: the token proves AVX-512F; one 64-byte load is exactly `g`.
        unsafe {
            let a = _mm512_and_si512(
                _mm512_loadu_si512(g.as_ptr() as *const _),
                _mm512_set1_epi32(0x7FFF_FFFF),
            );
            [
                _mm512_max_epu32(b[0], a),
                _mm512_min_epu32(b[1], _mm512_sub_epi32(a, _mm512_set1_epi32(1))),
            ]
        }
    }
    #[inline(always)]
    fn bnd_u16(self, b: Self::Bnd, g: &[u16]) -> Self::Bnd {
        let g: &[u16; 16] = g[..16].try_into().expect("16 halves");
        // SAFETY: the token proves AVX-512F/BW; one 32-byte load is exactly `g`. The upper
        // half of the register is zero: 0 for the max, 0xFFFF (zero minus one) for the min.
        unsafe {
            let v = _mm512_zextsi256_si512(_mm256_loadu_si256(g.as_ptr() as *const __m256i));
            let a = _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF));
            [
                _mm512_max_epu16(b[0], a),
                _mm512_min_epu16(b[1], _mm512_sub_epi16(a, _mm512_set1_epi16(1))),
            ]
        }
    }
    #[inline(always)]
    fn bnd_finish_u32(self, b: Self::Bnd) -> (u32, u32) {
        // SAFETY: the token proves AVX-512F.
        unsafe { (_mm512_reduce_max_epu32(b[0]), _mm512_reduce_min_epu32(b[1])) }
    }
    #[inline(always)]
    fn bnd_finish_u16(self, b: Self::Bnd) -> (u32, u32) {
        // SAFETY: the token proves AVX-512F/BW. The 16-bit lanes are zero-extended to 32 bits
        // and reduced there.
        unsafe {
            let h = _mm512_max_epu32(
                _mm512_cvtepu16_epi32(_mm512_castsi512_si256(b[0])),
                _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(b[0])),
            );
            let l = _mm512_min_epu32(
                _mm512_cvtepu16_epi32(_mm512_castsi512_si256(b[1])),
                _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(b[1])),
            );
            let (h, l) = (_mm512_reduce_max_epu32(h), _mm512_reduce_min_epu32(l));
            (h, if l == 0xFFFF { u32::MAX } else { l })
        }
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
            2 => block::bins::<Self, T, SQ, 2, 4>(self, block, next, ahead, plan, acc),
            _ => block::bins::<Self, T, SQ, 3, 4>(self, block, next, ahead, plan, acc),
        }
    }
}
