//! Every kernel written once, generic over a [`Backend`]: the sums of squares and magnitudes over
//! 32 virtual f64 lanes, the max of magnitudes, and the in-place scale. A backend supplies
//! registers and lane-wise operations only; no backend holds a loop of its own.
//!
//! # The summation scheme (L2 and L1)
//!
//! A chunk is cut into blocks of [`BLOCK`] = 1024 elements, a block into groups of [`LANES`] = 32.
//! Element `j` of a group goes to lane `j` (bf16: see [`bf16_lane_source`]). Inside a block each
//! lane adds its 32 terms in plain f64 (`x*x` is exact for every supported dtype, so
//! `fma(x, x, acc)` and `acc + x*x` give the same bits); at the end of the block each lane adds its
//! block sum to a compensated pair `(s, c)` with [`crate::compensated::add_term`] (Fast2Sum, exact
//! for non-negative operands). At the end of the chunk the 32 lane pairs are merged by a fixed
//! pairwise tree of [`crate::compensated::merge`].
//!
//! Error: a block sum of 32 non-negative terms has relative error ≤ 31u (u = 2^-53 ≈ 1.1e-16);
//! the compensated fold across blocks and lanes adds ≈ 2u, so the sum of squares is within
//! ≈ 3.7e-15 relative and its square root within ≈ 1.9e-15. A huge value next to millions of
//! ones loses at most 31 of the ones *in its own block* (a relative 31/huge² contribution); the
//! other blocks' ones survive in the compensation.
//!
//! Bits: every backend uses the same lanes, the same block boundaries, the same fold and the
//! same merge tree, and every step is a correctly rounded IEEE operation, so every backend returns
//! the same bits. A partial group at the end of a chunk is zero-padded (adding +0.0 is exact).
//!
//! Non-finite inputs make some lane sum non-finite (all finite squares are ≤ 1.2e77, so finite
//! inputs never overflow); the caller checks the result, not every element.
//!
//! # Max of magnitudes
//!
//! A plain fold of `bits & ABS_MASK` with unsigned max (magnitudes of IEEE values order like their
//! bits, NaN above inf); exact and order-free. It is written as scalar code that each backend's
//! entry point compiles under its own target features, where it vectorises to packed unsigned
//! max of the element's width.
//!
//! # Scale
//!
//! `x = round_to_dtype(f32(x) * c)`: f32 multiplies in registers of [`Backend::W`] lanes; f16
//! through the backend's widening and narrowing (F16C, or [`crate::lanes`]' bit logic); bf16
//! without shuffles: two bf16 share a 32-bit word, `word << 16` and `word & 0xFFFF0000` are the
//! even and odd element as f32, and [`crate::lanes::f32_to_bf16_high`] rounds them back. A tail
//! shorter than a register goes through the same code, zero-padded in a copy.
//!
//! # Why `Backend` is not an `unsafe trait`
//!
//! Nothing here relies on a backend's behaviour for memory safety: every method takes references
//! or values, and each implementation checks its own slice bounds (the register loads assert the
//! length) and holds a token whose construction proved the CPU features its intrinsics need. A
//! backend that computed something else would give wrong numbers — which the cross-ISA tests
//! compare bit for bit with the portable backend — but never undefined behaviour, so there is no
//! safety contract for an implementor to uphold.

use half::{bf16, f16};

use crate::compensated::{self, F64Ops};
use crate::dtype::Element;
use crate::lanes::{self, Lanes32};

/// Virtual f64 lanes shared by every backend.
pub(crate) const LANES: usize = 32;
/// Elements per block: 32 plain additions per lane between compensated folds.
pub(crate) const BLOCK: usize = 1024;
/// The widest register any backend has, in 32-bit lanes (tail buffers are this long).
const MAX_W: usize = 16;

/// One instruction set's registers: 32 f64 lanes for the sums (through [`F64Ops`] on one
/// register [`F64Ops::V`]), and a register of [`Backend::W`] 32-bit lanes ([`Lanes32`]) for the
/// scale. See the module docs for why this is a safe trait.
pub(crate) trait Backend: F64Ops + Lanes32 {
    /// 32 f64 lanes as registers, virtual lane order = register order.
    type Acc: Copy + AsRef<[Self::V]> + AsMut<[Self::V]>;
    /// 32-bit lanes per [`Lanes32`] register (at most 16).
    const W: usize;

    /// All lanes zero.
    fn zero(self) -> Self::Acc;
    /// `acc[j] += x[j]^2` (SQ) or `acc[j] += |x[j]|` for the 32 f32 values of `g`.
    fn accum_f32<const SQ: bool>(self, acc: Self::Acc, g: &[f32; LANES]) -> Self::Acc;
    /// As [`Backend::accum_f32`], element `j` of `g` widened to lane `j`.
    fn accum_f16<const SQ: bool>(self, acc: Self::Acc, g: &[f16; LANES]) -> Self::Acc;
    /// As [`Backend::accum_f32`], element [`bf16_lane_source`]`(j)` of `g` to lane `j`.
    fn accum_bf16<const SQ: bool>(self, acc: Self::Acc, g: &[bf16; LANES]) -> Self::Acc;
    /// The lanes, in virtual lane order.
    fn to_array(self, a: Self::Acc) -> [f64; LANES];

    /// The first `W` values of `s` (panics if shorter).
    fn load_f32(self, s: &[f32]) -> Self::F;
    /// Stores `v` into the first `W` values of `s` (panics if shorter).
    fn store_f32(self, v: Self::F, s: &mut [f32]);
    /// The first `2W` bf16 of `s` as `W` little-endian 32-bit words (element `2i` in the low
    /// half of word `i`), whatever the alignment of `s` (panics if shorter).
    fn load_bf16_words(self, s: &[bf16]) -> Self::U;
    /// Stores `W` words into the first `2W` bf16 of `s`, as [`Backend::load_bf16_words`] reads
    /// them (panics if shorter).
    fn store_bf16_words(self, v: Self::U, s: &mut [bf16]);
    /// The first `W` halves of `s`, widened exactly (panics if shorter).
    fn load_f16(self, s: &[f16]) -> Self::F;
    /// `v` rounded to nearest-even f16 into the first `W` halves of `s` (panics if shorter).
    fn store_f16(self, v: Self::F, s: &mut [f16]);

    /// Asks for the cache lines of `s` to be brought towards the core (a hint: no effect on any
    /// result). The sums call it on the block after next, so memory keeps streaming while a
    /// block is being widened. Backends without a stable prefetch hint do nothing.
    #[inline(always)]
    fn prefetch<T>(self, s: &[T]) {
        let _ = s;
    }

    /// Asks for the cache line holding address `p` (a hint: `p` is never dereferenced, may
    /// point anywhere, even past the end of a buffer, and has no effect on any result). The
    /// scale calls it [`SCALE_AHEAD_BYTES`] ahead of the line it rewrites.
    #[inline(always)]
    fn prefetch_at(self, p: *const u8) {
        let _ = p;
    }
}

/// Which element of a 32-element bf16 group feeds virtual lane `lane`.
///
/// f32 and f16 groups map element j to lane j. bf16 groups are split without shuffles: two bf16
/// share a 32-bit word, and `word << 16` / `word & 0xFFFF0000` turn the even / odd one into an
/// f32. So in each half-group of 16, lanes 0..8 hold the even elements and lanes 8..16 the odd
/// ones: lane l of half h holds element `16h + 2(l mod 8) + (l / 8)`.
#[inline(always)]
pub(crate) const fn bf16_lane_source(lane: usize) -> usize {
    let h = lane / 16;
    let l = lane % 16;
    16 * h + 2 * (l % 8) + l / 8
}

/// Per-dtype hooks: the backend's widening load for the sums, and the scale of one register's
/// worth of elements.
pub(crate) trait LaneElement: Element {
    /// Elements one scale step handles: `W`, or `2W` for bf16 (two per 32-bit word).
    fn scale_step<B: Backend>() -> usize;
    /// `acc += x^2` or `|x|` for a group of 32.
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc;
    /// `g = round(f32(g) * c)` for the first [`LaneElement::scale_step`] elements of `g`.
    fn scale_step_in<B: Backend>(b: B, g: &mut [Self], c: B::F);
}

impl LaneElement for f32 {
    #[inline(always)]
    fn scale_step<B: Backend>() -> usize {
        B::W
    }
    #[inline(always)]
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc {
        b.accum_f32::<SQ>(acc, g)
    }
    #[inline(always)]
    fn scale_step_in<B: Backend>(b: B, g: &mut [f32], c: B::F) {
        let v = b.mul_f(b.load_f32(g), c);
        b.store_f32(v, g);
    }
}

impl LaneElement for f16 {
    #[inline(always)]
    fn scale_step<B: Backend>() -> usize {
        B::W
    }
    #[inline(always)]
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc {
        b.accum_f16::<SQ>(acc, g)
    }
    #[inline(always)]
    fn scale_step_in<B: Backend>(b: B, g: &mut [f16], c: B::F) {
        let v = b.mul_f(b.load_f16(g), c);
        b.store_f16(v, g);
    }
}

impl LaneElement for bf16 {
    #[inline(always)]
    fn scale_step<B: Backend>() -> usize {
        2 * B::W
    }
    #[inline(always)]
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc {
        b.accum_bf16::<SQ>(acc, g)
    }
    #[inline(always)]
    fn scale_step_in<B: Backend>(b: B, g: &mut [bf16], c: B::F) {
        let w = b.load_bf16_words(g);
        let high = b.splat(0xFFFF_0000);
        let even = b.mul_f(b.bits_to_f(b.shl::<16>(w)), c);
        let odd = b.mul_f(b.bits_to_f(b.and(w, high)), c);
        let even = b.shr::<16>(lanes::f32_to_bf16_high(b, b.to_bits(even)));
        let odd = b.and(lanes::f32_to_bf16_high(b, b.to_bits(odd)), high);
        b.store_bf16_words(b.or(even, odd), g);
    }
}

/// Compensated sum of `x^2` (SQ) or `|x|` over `data`, as `(sum, compensation)`.
#[inline(always)]
pub(crate) fn sum_chunk<B: Backend, T: LaneElement, const SQ: bool>(
    b: B,
    data: &[T],
) -> (f64, f64) {
    let mut s = b.zero();
    let mut c = b.zero();
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let mut acc = b.zero();
        // The block after next, one group's lines per group processed.
        let ahead = data.get((i + 2) * BLOCK..).unwrap_or(&[]);
        let mut ahead = ahead[..ahead.len().min(BLOCK)].chunks(LANES);
        let mut groups = block.chunks_exact(LANES);
        for g in &mut groups {
            if let Some(a) = ahead.next() {
                b.prefetch(a);
            }
            let g: &[T; LANES] = g.try_into().expect("chunks_exact yields LANES elements");
            acc = T::accum::<B, SQ>(b, acc, g);
        }
        let rest = groups.remainder();
        if !rest.is_empty() {
            let mut pad = [T::ZERO; LANES];
            pad[..rest.len()].copy_from_slice(rest);
            acc = T::accum::<B, SQ>(b, acc, &pad);
        }
        for ((s, c), x) in s
            .as_mut()
            .iter_mut()
            .zip(c.as_mut().iter_mut())
            .zip(acc.as_ref())
        {
            (*s, *c) = compensated::add_term(b, *s, *c, *x);
        }
    }
    merge_lanes(b.to_array(s), b.to_array(c))
}

/// The compute roofline of the sums: `Σ x²` over `data`, each element widened to f64 and its
/// square accumulated into the same 32 lanes with no compensation, no blocks and no chunking —
/// the arithmetic no exact-grade sum can avoid. Benchmarks only.
#[inline(always)]
pub(crate) fn sum_sq_plain<B: Backend, T: LaneElement>(b: B, data: &[T]) -> f64 {
    let mut acc = b.zero();
    let mut groups = data.chunks_exact(LANES);
    for g in &mut groups {
        let g: &[T; LANES] = g.try_into().expect("chunks_exact yields LANES elements");
        acc = T::accum::<B, true>(b, acc, g);
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut pad = [T::ZERO; LANES];
        pad[..rest.len()].copy_from_slice(rest);
        acc = T::accum::<B, true>(b, acc, &pad);
    }
    b.to_array(acc).iter().sum()
}

/// Fixed pairwise tree over the 32 lane pairs: lane j absorbs lane j + w for w = 16, 8, 4, 2, 1.
#[inline(always)]
fn merge_lanes(mut s: [f64; LANES], mut c: [f64; LANES]) -> (f64, f64) {
    let mut w = LANES / 2;
    while w > 0 {
        for j in 0..w {
            (s[j], c[j]) = compensated::merge(compensated::Scalar, s[j], c[j], s[j + w], c[j + w]);
        }
        w /= 2;
    }
    (s[0], c[0])
}

/// Largest `abs_bits` in `data` (0 for an empty slice), as a plain fold over the raw bits (u32
/// for f32, u16 for the 16-bit formats, so the compiler emits packed unsigned max of that width
/// under the caller's target features).
#[inline(always)]
pub(crate) fn max_abs_bits<T: Element>(data: &[T]) -> u32 {
    if std::mem::size_of::<T>() == 2 {
        max_masked_u16(bytemuck::cast_slice(data))
    } else {
        max_masked_u32(bytemuck::cast_slice(data))
    }
}

// A plain unsigned-max reduction: the loop vectoriser recognises it and interleaves several
// packed-max accumulators (a hand-unrolled lane array defeats it under AVX-512).
#[inline(always)]
fn max_masked_u32(data: &[u32]) -> u32 {
    data.iter().fold(0, |m, &x| m.max(x & 0x7FFF_FFFF))
}

#[inline(always)]
fn max_masked_u16(data: &[u16]) -> u32 {
    data.iter().fold(0, |m, &x| m.max(x & 0x7FFF)) as u32
}

/// How far ahead of the line it rewrites the scale prefetches.
pub(crate) const SCALE_AHEAD_BYTES: usize = 4096;

/// `x = round_to_dtype(f32(x) * c)` for every element of `data`.
#[inline(always)]
pub(crate) fn scale<B: Backend, T: LaneElement>(b: B, data: &mut [T], c: f32) {
    let cv = b.splat_f(c);
    let step = T::scale_step::<B>();
    // One prefetch per cache line rewritten, SCALE_AHEAD_BYTES ahead: the hardware prefetcher
    // alone leaves the read of a read-modify-write pass exposed (measured: bf16 from memory
    // at 0.5 of the read-modify-write roofline without it on an Intel Xeon).
    let line = (64 / std::mem::size_of::<T>()).max(step);
    let whole = data.len() - data.len() % line;
    let (lines, rest) = data.split_at_mut(whole);
    for l in lines.chunks_exact_mut(line) {
        b.prefetch_at(l.as_ptr().cast::<u8>().wrapping_add(SCALE_AHEAD_BYTES));
        for g in l.chunks_exact_mut(step) {
            T::scale_step_in(b, g, cv);
        }
    }
    let mut it = rest.chunks_exact_mut(step);
    for g in &mut it {
        T::scale_step_in(b, g, cv);
    }
    let rest = it.into_remainder();
    if !rest.is_empty() {
        let mut pad = [T::ZERO; 2 * MAX_W];
        pad[..rest.len()].copy_from_slice(rest);
        T::scale_step_in(b, &mut pad[..step], cv);
        let n = rest.len();
        rest.copy_from_slice(&pad[..n]);
    }
}
