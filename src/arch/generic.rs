//! Every kernel written once, generic over a [`Backend`] that supplies 32 virtual f64 lanes.
//!
//! # The summation scheme (L2 and L1)
//!
//! A chunk is cut into blocks of [`BLOCK`] = 1024 elements, a block into groups of [`LANES`] = 32.
//! Element `j` of a group goes to lane `j`. Inside a block each lane adds its 32 terms in plain
//! f64 (`x*x` is exact for every supported dtype, so `fma(x, x, acc)` and `acc + x*x` give the same
//! bits); at the end of the block each lane folds its block sum into a compensated pair
//! `(s, c)` with Fast2Sum (both operands are non-negative, so `max` goes first and the error term
//! is exact). At the end of the chunk the 32 lane pairs are merged by a fixed pairwise tree.
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

use half::{bf16, f16};

use crate::dtype::Element;
use crate::partial::merge_sums;

/// Virtual f64 lanes shared by every backend.
pub(crate) const LANES: usize = 32;
/// Elements per block: 32 plain additions per lane between compensated folds.
pub(crate) const BLOCK: usize = 1024;

/// 32 f64 lanes and the widening loads of each dtype.
///
/// # Safety
/// Implementors must produce, for every method, exactly the IEEE results the portable backend
/// produces lane by lane (the tests check it with `==`).
pub(crate) unsafe trait Backend: Copy {
    /// One register of f64 lanes.
    type V: Copy;
    /// 32 f64 lanes as registers, virtual lane order = register order.
    type Acc: Copy + AsRef<[Self::V]> + AsMut<[Self::V]>;
    fn zero(self) -> Self::Acc;
    /// `acc[j] += x[j]^2` (SQ) or `acc[j] += |x[j]|` for the 32 f32 values of `g`.
    fn accum_f32<const SQ: bool>(self, acc: Self::Acc, g: &[f32; LANES]) -> Self::Acc;
    fn accum_f16<const SQ: bool>(self, acc: Self::Acc, g: &[f16; LANES]) -> Self::Acc;
    fn accum_bf16<const SQ: bool>(self, acc: Self::Acc, g: &[bf16; LANES]) -> Self::Acc;
    /// Lane-wise `a + b`, correctly rounded.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a - b`, correctly rounded.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise larger / smaller of two non-negative non-NaN values (which operand is returned
    /// for equal values does not matter: they have the same bits).
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    fn to_array(self, a: Self::Acc) -> [f64; LANES];
}

/// Per lane: `(s, c) += b` by Fast2Sum. All operands are non-negative, so putting the larger
/// first makes the error term `(hi - t) + lo` exact.
#[inline(always)]
fn fold<B: Backend>(be: B, s: &mut B::Acc, c: &mut B::Acc, b: B::Acc) {
    for ((s, c), b) in s
        .as_mut()
        .iter_mut()
        .zip(c.as_mut().iter_mut())
        .zip(b.as_ref())
    {
        let t = be.add(*s, *b);
        let hi = be.max(*s, *b);
        let lo = be.min(*s, *b);
        *c = be.add(*c, be.add(be.sub(hi, t), lo));
        *s = t;
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

/// Per-dtype hook that picks the backend's widening load.
pub(crate) trait LaneElement: Element {
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc;
}

impl LaneElement for f32 {
    #[inline(always)]
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc {
        b.accum_f32::<SQ>(acc, g)
    }
}
impl LaneElement for f16 {
    #[inline(always)]
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc {
        b.accum_f16::<SQ>(acc, g)
    }
}
impl LaneElement for bf16 {
    #[inline(always)]
    fn accum<B: Backend, const SQ: bool>(b: B, acc: B::Acc, g: &[Self; LANES]) -> B::Acc {
        b.accum_bf16::<SQ>(acc, g)
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
    for block in data.chunks(BLOCK) {
        let mut acc = b.zero();
        let mut groups = block.chunks_exact(LANES);
        for g in &mut groups {
            let g: &[T; LANES] = g.try_into().expect("chunks_exact yields LANES elements");
            acc = T::accum::<B, SQ>(b, acc, g);
        }
        let rest = groups.remainder();
        if !rest.is_empty() {
            let mut pad = [T::ZERO; LANES];
            pad[..rest.len()].copy_from_slice(rest);
            acc = T::accum::<B, SQ>(b, acc, &pad);
        }
        fold(b, &mut s, &mut c, acc);
    }
    merge_lanes(b.to_array(s), b.to_array(c))
}

/// Fixed pairwise tree over the 32 lane pairs: lane j absorbs lane j + w for w = 16, 8, 4, 2, 1.
#[inline(always)]
pub(crate) fn merge_lanes(mut s: [f64; LANES], mut c: [f64; LANES]) -> (f64, f64) {
    let mut w = LANES / 2;
    while w > 0 {
        for j in 0..w {
            let (ns, nc) = merge_sums(s[j], c[j], s[j + w], c[j + w]);
            s[j] = ns;
            c[j] = nc;
        }
        w /= 2;
    }
    (s[0], c[0])
}

/// Largest `abs_bits` in `data` (0 for an empty slice). Exact and order-free, so every backend
/// agrees trivially; written as a plain fold over the raw bits (u32 for f32, u16 for the 16-bit
/// formats, so the compiler uses packed unsigned max of the right width).
#[inline(always)]
pub(crate) fn max_abs_bits<T: Element>(data: &[T]) -> u32 {
    if std::mem::size_of::<T>() == 2 {
        max_masked_u16(bytemuck::cast_slice(data))
    } else {
        max_masked_u32(bytemuck::cast_slice(data))
    }
}

#[inline(always)]
fn max_masked_u32(data: &[u32]) -> u32 {
    let mut m = [0u32; 16];
    let mut it = data.chunks_exact(16);
    for g in &mut it {
        for j in 0..16 {
            m[j] = m[j].max(g[j] & 0x7FFF_FFFF);
        }
    }
    let r = it
        .remainder()
        .iter()
        .map(|x| x & 0x7FFF_FFFF)
        .max()
        .unwrap_or(0);
    m.iter().fold(r, |a, &b| a.max(b))
}

#[inline(always)]
fn max_masked_u16(data: &[u16]) -> u32 {
    let mut m = [0u16; 32];
    let mut it = data.chunks_exact(32);
    for g in &mut it {
        for j in 0..32 {
            m[j] = m[j].max(g[j] & 0x7FFF);
        }
    }
    let r = it.remainder().iter().map(|x| x & 0x7FFF).max().unwrap_or(0);
    m.iter().fold(r, |a, &b| a.max(b)) as u32
}

/// `x = round_to_dtype(f32(x) * c)` element-wise, plain scalar code.
#[inline(always)]
pub(crate) fn scale_scalar<T: Element>(data: &mut [T], c: f32) {
    for x in data {
        *x = T::from_f32_rne(x.to_f32() * c);
    }
}
