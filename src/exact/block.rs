//! The exact block kernel, written once and generic over an [`ExactBackend`] (16 f64 lanes and the
//! widening loads of each dtype); see the module docs of [`crate::exact`] for the math.
//!
//! A chunk is cut into blocks of `B::BLOCK` elements. Per block:
//! 1. integer max/min over the bit patterns give the largest and the smallest non-zero
//!    magnitude;
//! 2. [`Plan::new`] places K ≤ [`KMAX`] f64 bins so that the block's deposits stay exact, or
//!    says that the block's dynamic range needs more bins (it then goes through [`Buckets`],
//!    an integer path, exact for any data);
//! 3. [`bins`] deposits every element into the bins (lanes and elements in any order: the result
//!    is exact, so no order matters);
//! 4. each bin is flushed into the chunk's [`ChunkAcc`] as an exact integer: the bit pattern of
//!    a bin minus the bit pattern of its starting value counts its units in the last place.
//!
//! Step 1 for block i + 1 runs inside the loop of step 3 for block i (software pipelining), and
//! that loop also prefetches block i + 2: one stream of loads, so memory keeps streaming while a
//! block computes. (A separate bounds pass per block measured 0.73–0.82 of the read roofline
//! from memory, the pipelined loop with the prefetch 0.85–0.95, on the same contended host.)
//!
//! Blocks holding NaN or ±inf are only classified; the chunk's partial then keeps flags only.

use half::{bf16, f16};

use super::accumulator::{ChunkAcc, ExactPartial, FLAG_INF, FLAG_NAN, KIND_L1, KIND_L2, LSB_EXP};
use crate::dtype::Element;

/// The most f64 lanes a backend register set ([`ExactBackend::W`]) may hold.
pub(crate) const MAX_LANES: usize = 16;
/// Most bins the vector kernels place; blocks that need more take the integer path.
pub(crate) const KMAX: usize = 3;

/// A set of f64 lanes, the widening loads, and the block-bounds scan of one instruction set.
///
/// Every method must compute exactly what it documents, lane by lane, with IEEE
/// round-to-nearest-even arithmetic: the exactness of the bins rests on it, and the tests compare
/// every backend with an integer reference bit for bit. It is a safe trait for the reason
/// `crate::arch::generic` gives for its `Backend`: a wrong implementation gives wrong numbers,
/// never undefined behaviour (methods take references and values, and each implementation holds
/// a token that proved its CPU features).
pub(crate) trait ExactBackend: Copy {
    /// [`ExactBackend::LANES`] f64 lanes (one or several registers).
    type W: Copy;
    /// f64 lanes in a [`ExactBackend::W`], at most [`MAX_LANES`].
    const LANES: usize;
    /// Elements per block: the unit of the bounds scan and of a bins flush.
    const BLOCK: usize;
    /// The fewest lane sets [`ExactBackend::run_bins`] uses for any K (sets the guard bits).
    const MIN_U: usize;

    fn splat(self, v: f64) -> Self::W;
    fn add(self, a: Self::W, b: Self::W) -> Self::W;
    fn sub(self, a: Self::W, b: Self::W) -> Self::W;
    /// `a + x·x` with one rounding (the square of a widened element is exact in f64, so a fused
    /// multiply-add and a multiply followed by an add agree).
    fn sq_add(self, x: Self::W, a: Self::W) -> Self::W;
    /// `x·x − d` with one rounding.
    fn sq_sub(self, x: Self::W, d: Self::W) -> Self::W;
    /// The first [`ExactBackend::LANES`] values of `g` (panics if shorter), exactly widened, in
    /// any lane order: their magnitudes when `abs`, else the values or their magnitudes (only
    /// squares are taken then).
    fn widen_f32(self, g: &[f32], abs: bool) -> Self::W;
    fn widen_f16(self, g: &[f16], abs: bool) -> Self::W;
    fn widen_bf16(self, g: &[bf16], abs: bool) -> Self::W;
    /// Wrapping sum of the lanes' bit patterns.
    fn bits_sum(self, a: Self::W) -> u64;
    /// Running bounds of a block: the largest magnitude bits and the smallest `magnitude − 1`
    /// (wrapping, so zeros count as the maximum), in registers.
    type Bnd: Copy;
    /// Bounds of nothing: largest 0, smallest-minus-one all ones.
    fn bnd_zero(self) -> Self::Bnd;
    /// Folds the magnitudes `w & 0x7FFF_FFFF` of the first [`ExactBackend::LANES`] 32-bit words
    /// of `g` (panics if shorter) into `b`.
    fn bnd_u32(self, b: Self::Bnd, g: &[u32]) -> Self::Bnd;
    /// Folds the magnitudes `w & 0x7FFF` of the first [`ExactBackend::LANES`] 16-bit words of
    /// `g` (panics if shorter) into `b`.
    fn bnd_u16(self, b: Self::Bnd, g: &[u16]) -> Self::Bnd;
    /// `(largest magnitude, smallest magnitude − 1)` of 32-bit bounds; `u32::MAX` for the
    /// second when every magnitude was zero.
    fn bnd_finish_u32(self, b: Self::Bnd) -> (u32, u32);
    /// The same for 16-bit bounds (zeros still count as `u32::MAX`).
    fn bnd_finish_u16(self, b: Self::Bnd) -> (u32, u32);
    /// Asks for the cache lines of `s` to be brought towards the core (the bins loop prefetches
    /// two blocks ahead); a hint only.
    fn prefetch<T>(self, s: &[T]);
    /// Calls [`bins`] with the backend's number of lane sets for `plan.k` bins.
    fn run_bins<T: ExactElement, const SQ: bool>(
        self,
        block: &[T],
        next: &[T],
        ahead: &[T],
        plan: &Plan,
        acc: &mut ChunkAcc,
    ) -> (u32, u32);
}

/// What the exact kernels need to know about a dtype.
pub(crate) trait ExactElement: Element {
    /// Stored fraction bits (23, 10, 7).
    const FRAC_BITS: i32;
    /// Exponent bias (127, 15, 127).
    const EXP_BIAS: i32;

    /// Folds the first `B::LANES` elements of `g` into the running bounds `b`.
    fn bnd<B: ExactBackend>(be: B, b: B::Bnd, g: &[Self]) -> B::Bnd;
    /// The finished bounds of the element's word width.
    fn bnd_finish<B: ExactBackend>(be: B, b: B::Bnd) -> (u32, u32);
    /// The backend's widening load for this dtype.
    fn widen<B: ExactBackend>(be: B, g: &[Self], abs: bool) -> B::W;

    /// `(E, m)` for magnitude bits `a`: the value is `m · 2^(E − EXP_BIAS − FRAC_BITS)`, with `m`
    /// the integer significand (hidden bit included) and `E ≥ 1` (subnormals use `E = 1`).
    #[inline(always)]
    fn decompose(a: u32) -> (u32, u32) {
        let e = a >> Self::FRAC_BITS;
        let frac = a & ((1 << Self::FRAC_BITS) - 1);
        if e == 0 {
            (1, frac)
        } else {
            (e, frac | (1 << Self::FRAC_BITS))
        }
    }

    /// `floor(log2(v))` of the non-zero magnitude with bits `a`.
    #[inline(always)]
    fn exponent(a: u32) -> i32 {
        let (e, m) = Self::decompose(a);
        // m ≥ 1: its highest set bit is FRAC_BITS for normals, lower for subnormals.
        e as i32 - Self::EXP_BIAS - Self::FRAC_BITS + (31 - m.leading_zeros() as i32)
    }

    /// Exponent of the last place of the value with magnitude bits `a`.
    #[inline(always)]
    fn lsb(a: u32) -> i32 {
        let (e, _) = Self::decompose(a);
        e as i32 - Self::EXP_BIAS - Self::FRAC_BITS
    }
}

impl ExactElement for f32 {
    const FRAC_BITS: i32 = 23;
    const EXP_BIAS: i32 = 127;
    #[inline(always)]
    fn bnd<B: ExactBackend>(be: B, b: B::Bnd, g: &[Self]) -> B::Bnd {
        be.bnd_u32(b, bytemuck::cast_slice(g))
    }
    #[inline(always)]
    fn bnd_finish<B: ExactBackend>(be: B, b: B::Bnd) -> (u32, u32) {
        be.bnd_finish_u32(b)
    }
    #[inline(always)]
    fn widen<B: ExactBackend>(be: B, g: &[Self], abs: bool) -> B::W {
        be.widen_f32(g, abs)
    }
}

impl ExactElement for f16 {
    const FRAC_BITS: i32 = 10;
    const EXP_BIAS: i32 = 15;
    #[inline(always)]
    fn bnd<B: ExactBackend>(be: B, b: B::Bnd, g: &[Self]) -> B::Bnd {
        be.bnd_u16(b, bytemuck::cast_slice(g))
    }
    #[inline(always)]
    fn bnd_finish<B: ExactBackend>(be: B, b: B::Bnd) -> (u32, u32) {
        be.bnd_finish_u16(b)
    }
    #[inline(always)]
    fn widen<B: ExactBackend>(be: B, g: &[Self], abs: bool) -> B::W {
        be.widen_f16(g, abs)
    }
}

impl ExactElement for bf16 {
    const FRAC_BITS: i32 = 7;
    const EXP_BIAS: i32 = 127;
    #[inline(always)]
    fn bnd<B: ExactBackend>(be: B, b: B::Bnd, g: &[Self]) -> B::Bnd {
        be.bnd_u16(b, bytemuck::cast_slice(g))
    }
    #[inline(always)]
    fn bnd_finish<B: ExactBackend>(be: B, b: B::Bnd) -> (u32, u32) {
        be.bnd_finish_u16(b)
    }
    #[inline(always)]
    fn widen<B: ExactBackend>(be: B, g: &[Self], abs: bool) -> B::W {
        be.widen_bf16(g, abs)
    }
}

/// `ceil(log2(n)) + 1` for `n ≥ 1`: guard bits for `n` deposits per lane.
pub(crate) const fn guard_bits(n: usize) -> i32 {
    (usize::BITS - (n - 1).leading_zeros()) as i32 + 1
}

/// Where a block's bins go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Number of bins, 1..=KMAX.
    pub k: usize,
    /// Starting value of each bin: 2^b0 for bin 0 (its deposits are non-negative), 1.5·2^bj for
    /// the others (their deposits have either sign).
    pub start: [f64; KMAX],
    /// Position of each bin's unit in the last place, relative to 2^LSB_EXP.
    pub pos: [u32; KMAX],
}

impl Plan {
    /// Bins for a block whose largest magnitude has bits `max_bits` and smallest non-zero one
    /// `min_bits`, deposited `2^(guard − 1)` times at most per lane; `None` when more than
    /// [`KMAX`] bins would be needed.
    ///
    /// Terms are `x²` (SQ) or `|x|`. With every term below 2^T and a multiple of 2^L:
    /// - bin 0 starts at 2^b0 with b0 = max(T + guard, L + 52): the block adds less than
    ///   2^(b0−1) to it, so it never leaves [2^b0, 2^(b0+1)) and `t − A0` is exact;
    /// - each deposit leaves a remainder of at most half a unit of the bin's last place, which
    ///   cascades into bin j+1, placed 52 − guard bits lower (its deposits total less than a
    ///   quarter of its binade, so it stays in it too);
    /// - the last bin's unit is 2^L, so its additions are exact.
    #[inline]
    pub(crate) fn new<T: ExactElement, const SQ: bool>(
        max_bits: u32,
        min_bits: u32,
        guard: i32,
    ) -> Option<Plan> {
        let scale = if SQ { 2 } else { 1 };
        let t = scale * (T::exponent(max_bits) + 1);
        let l = scale * T::lsb(min_bits);
        let b0 = (t + guard).max(l + 52);
        let step = 52 - guard;
        let need = b0 - 52 - l;
        let k = 1 + (need + step - 1) / step;
        if k as usize > KMAX {
            return None;
        }
        let k = k as usize;
        let mut start = [0.0; KMAX];
        let mut pos = [0; KMAX];
        for j in 0..k {
            let b = if j + 1 == k && j > 0 {
                l + 52
            } else {
                b0 - j as i32 * step
            };
            start[j] = if j == 0 { pow2(b) } else { 1.5 * pow2(b) };
            pos[j] = (b - 52 - LSB_EXP) as u32;
        }
        Some(Plan { k, start, pos })
    }
}

#[inline(always)]
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// One register set of elements into the bins of one lane set: an error-free cascade, bin 0
/// first. Takes and returns the bins by value (so they stay in registers).
#[inline(always)]
fn deposit<B: ExactBackend, const SQ: bool, const K: usize>(
    be: B,
    mut a: [B::W; K],
    x: B::W,
) -> [B::W; K] {
    let a0 = a[0];
    let t = if SQ { be.sq_add(x, a0) } else { be.add(a0, x) };
    a[0] = t;
    if K == 1 {
        return a;
    }
    // t and a0 share a binade: the difference is exact, and so is the remainder.
    let d = be.sub(t, a0);
    let mut r = if SQ { be.sq_sub(x, d) } else { be.sub(x, d) };
    for aj in a.iter_mut().take(K - 1).skip(1) {
        let t = be.add(*aj, r);
        let d = be.sub(t, *aj);
        r = be.sub(r, d);
        *aj = t;
    }
    a[K - 1] = be.add(a[K - 1], r);
    a
}

/// Folds the pieces `from..` (of `B::LANES` elements, the last one zero-padded) of `d` into `b`.
#[inline(always)]
fn bnd_pieces<B: ExactBackend, T: ExactElement>(
    be: B,
    mut b: B::Bnd,
    d: &[T],
    from: usize,
) -> B::Bnd {
    let rest = d.get(from * B::LANES..).unwrap_or(&[]);
    let mut pieces = rest.chunks_exact(B::LANES);
    for g in &mut pieces {
        b = T::bnd(be, b, g);
    }
    let tail = pieces.remainder();
    if !tail.is_empty() {
        let mut pad = [T::ZERO; MAX_LANES];
        pad[..tail.len()].copy_from_slice(tail);
        b = T::bnd(be, b, &pad);
    }
    b
}

/// `(largest magnitude bits, smallest magnitude bits − 1)` of a block (zeros ignored by the
/// second; `(0, u32::MAX)` when all are zero), as the dtype's bits.
#[inline(always)]
pub(crate) fn bounds<B: ExactBackend, T: ExactElement>(be: B, d: &[T]) -> (u32, u32) {
    T::bnd_finish(be, bnd_pieces(be, be.bnd_zero(), d, 0))
}

/// Deposits every element of `block` into `K` bins of `U` sets of lanes, then flushes the bins
/// into `acc` as exact integers. Along the way it computes the bounds of `next` (the following
/// block, returned) and prefetches `ahead` (the one after).
#[inline(always)]
pub(crate) fn bins<
    B: ExactBackend,
    T: ExactElement,
    const SQ: bool,
    const K: usize,
    const U: usize,
>(
    be: B,
    block: &[T],
    next: &[T],
    ahead: &[T],
    plan: &Plan,
    acc: &mut ChunkAcc,
) -> (u32, u32) {
    debug_assert_eq!(plan.k, K);
    debug_assert!(block.len() <= B::BLOCK && U >= B::MIN_U && B::LANES <= MAX_LANES);
    let lanes = B::LANES;
    // Set-major: a[u][j] is bin j of lane set u.
    let mut start = [be.splat(0.0); K];
    for (b, &s) in start.iter_mut().zip(&plan.start) {
        *b = be.splat(s);
    }
    let mut a = [start; U];
    let span = lanes * U;
    let mut nb = be.bnd_zero();
    let mut groups = block.chunks_exact(span);
    let mut next_groups = next.chunks_exact(span);
    let mut ahead_groups = ahead.chunks_exact(span);
    // While `next` has whole groups: one step of its bounds per set, branch-free inside.
    let both = groups.len().min(next_groups.len());
    for (g, ng) in (&mut groups).take(both).zip(&mut next_groups) {
        if let Some(ag) = ahead_groups.next() {
            be.prefetch(ag);
        }
        for u in 0..U {
            nb = T::bnd(be, nb, &ng[lanes * u..lanes * (u + 1)]);
            let x = T::widen(be, &g[lanes * u..lanes * (u + 1)], !SQ);
            a[u] = deposit::<B, SQ, K>(be, a[u], x);
        }
    }
    for g in &mut groups {
        if let Some(ag) = ahead_groups.next() {
            be.prefetch(ag);
        }
        for u in 0..U {
            let x = T::widen(be, &g[lanes * u..lanes * (u + 1)], !SQ);
            a[u] = deposit::<B, SQ, K>(be, a[u], x);
        }
    }
    // Fewer than U sets' worth left: piece i goes to set i, so no lane takes more deposits than
    // ceil(len / (LANES U)). The last piece is zero-padded (a zero deposit changes nothing).
    for (u, g) in groups.remainder().chunks(lanes).enumerate() {
        let mut pad = [T::ZERO; MAX_LANES];
        pad[..g.len()].copy_from_slice(g);
        a[u] = deposit::<B, SQ, K>(be, a[u], T::widen(be, &pad, !SQ));
    }
    for j in 0..K {
        // A bin and its start share a binade, so the difference of their bit patterns counts
        // units in the last place; the wrapping sum over lanes is exact (|result| < 2^59).
        let bits = a
            .iter()
            .fold(0u64, |s, set| s.wrapping_add(be.bits_sum(set[j])));
        let start = ((lanes * U) as u64).wrapping_mul(plan.start[j].to_bits());
        acc.add_i64(bits.wrapping_sub(start) as i64, plan.pos[j]);
    }
    T::bnd_finish(be, bnd_pieces(be, nb, next, both * U))
}

/// The exact integer path for blocks whose range needs more than [`KMAX`] bins: per exponent,
/// the integer significands (or their squares) are summed in u64 — a 24-bit significand squared
/// is below 2^48, so each table entry takes 2^16 of them — in four tables (element i into table
/// i mod 4, so consecutive equal exponents do not wait on each other). The tables live for the
/// whole chunk and are flushed into the chunk's accumulator at its end, or when they are full.
pub(crate) struct Buckets {
    sums: [[u64; 256]; 4],
    /// Elements added since the last flush (at most 2^18: 2^16 per table).
    count: usize,
}

impl Buckets {
    const CAPACITY: usize = 4 << 16;

    #[inline(never)]
    pub(crate) fn add_block<T: ExactElement, const SQ: bool>(
        slot: &mut Option<Buckets>,
        block: &[T],
        acc: &mut ChunkAcc,
    ) {
        let b = slot.get_or_insert_with(|| Buckets {
            sums: [[0; 256]; 4],
            count: 0,
        });
        if b.count + block.len() > Self::CAPACITY {
            b.flush::<T, SQ>(acc);
        }
        debug_assert!(block.len() <= Self::CAPACITY);
        b.count += block.len();
        let mut quads = block.chunks_exact(4);
        for q in &mut quads {
            for (table, x) in b.sums.iter_mut().zip(q) {
                let (e, m) = T::decompose(x.abs_bits());
                let m = m as u64;
                table[e as usize & 0xFF] += if SQ { m * m } else { m };
            }
        }
        for (table, x) in b.sums.iter_mut().zip(quads.remainder()) {
            let (e, m) = T::decompose(x.abs_bits());
            let m = m as u64;
            table[e as usize & 0xFF] += if SQ { m * m } else { m };
        }
    }

    /// Adds every non-zero entry to `acc` at its exponent's position and empties the tables.
    pub(crate) fn flush<T: ExactElement, const SQ: bool>(&mut self, acc: &mut ChunkAcc) {
        let scale = if SQ { 2 } else { 1 };
        for table in self.sums.iter_mut() {
            for (e, s) in table.iter_mut().enumerate().skip(1) {
                if *s != 0 {
                    let lsb = e as i32 - T::EXP_BIAS - T::FRAC_BITS;
                    acc.add_u64(*s, (scale * lsb - LSB_EXP) as u32);
                    *s = 0;
                }
            }
        }
        self.count = 0;
    }
}

/// Which non-finite values a block holds: [`FLAG_INF`] and/or [`FLAG_NAN`].
fn classify<T: Element>(block: &[T]) -> u8 {
    block.iter().fold(0, |f, x| {
        let a = x.abs_bits();
        f | if a > T::INF_BITS {
            FLAG_NAN
        } else if a == T::INF_BITS {
            FLAG_INF
        } else {
            0
        }
    })
}

/// f32 bits of the magnitude with dtype bits `a` (every dtype widens exactly to f32).
#[inline(always)]
fn max_bits_f32<T: Element>(a: u32) -> u32 {
    T::from_abs_bits(a).to_f32().to_bits()
}

/// The exact partial of `Σ x²` (SQ) or `Σ |x|` over a chunk.
#[inline(always)]
pub(crate) fn sum_chunk<B: ExactBackend, T: ExactElement, const SQ: bool>(
    be: B,
    data: &[T],
) -> ExactPartial {
    let kind = if SQ { KIND_L2 } else { KIND_L1 };
    let guard = guard_bits(B::BLOCK / (B::LANES * B::MIN_U));
    let mut acc = ChunkAcc::ZERO;
    let mut max = 0u32;
    let mut flags = 0u8;
    let block_at = |i: usize| {
        let start = (i * B::BLOCK).min(data.len());
        &data[start..(start + B::BLOCK).min(data.len())]
    };
    let mut buckets: Option<Buckets> = None;
    let mut cur = bounds(be, block_at(0));
    for i in 0..data.len().div_ceil(B::BLOCK) {
        let (block, next) = (block_at(i), block_at(i + 1));
        let (hi, lo) = cur;
        let mut next_bounds = None;
        if hi >= T::INF_BITS {
            flags |= classify(block);
        } else if flags == 0 && hi != 0 {
            max = max.max(hi);
            // lo + 1 is the smallest non-zero magnitude (there is one: hi > 0).
            match Plan::new::<T, SQ>(hi, lo.wrapping_add(1), guard) {
                Some(plan) => {
                    let ahead = block_at(i + 2);
                    next_bounds = Some(be.run_bins::<T, SQ>(block, next, ahead, &plan, &mut acc));
                }
                None => Buckets::add_block::<T, SQ>(&mut buckets, block, &mut acc),
            }
        }
        cur = next_bounds.unwrap_or_else(|| bounds(be, next));
    }
    if flags != 0 {
        return ExactPartial::nonfinite(kind, flags);
    }
    if let Some(b) = buckets.as_mut() {
        b.flush::<T, SQ>(&mut acc);
    }
    ExactPartial::from_parts(kind, acc.normalized(), max_bits_f32::<T>(max))
}

/// The exact partial of `max |x|` over a chunk.
#[inline(always)]
pub(crate) fn max_chunk<B: ExactBackend, T: ExactElement>(be: B, data: &[T]) -> ExactPartial {
    use super::accumulator::KIND_INF;
    let mut max = 0u32;
    let mut flags = 0u8;
    for block in data.chunks(B::BLOCK) {
        let (hi, _) = bounds(be, block);
        if hi >= T::INF_BITS {
            flags |= classify(block);
        }
        max = max.max(hi);
    }
    if flags != 0 {
        return ExactPartial::nonfinite(KIND_INF, flags);
    }
    ExactPartial::from_parts(
        KIND_INF,
        [0; super::accumulator::LIMBS],
        max_bits_f32::<T>(max),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_bits_round_up() {
        assert_eq!(guard_bits(1), 1);
        assert_eq!(guard_bits(2), 2);
        assert_eq!(guard_bits(32), 6);
        assert_eq!(guard_bits(33), 7);
        assert_eq!(guard_bits(64), 7);
    }

    #[test]
    fn exponent_and_lsb_of_each_dtype() {
        assert_eq!(f32::exponent(1.0f32.to_bits()), 0);
        assert_eq!(f32::exponent(f32::MAX.to_bits()), 127);
        assert_eq!(f32::exponent(1), -149);
        assert_eq!(f32::lsb(1), -149);
        assert_eq!(f32::lsb(1.0f32.to_bits()), -23);
        assert_eq!(f16::exponent(1), -24);
        assert_eq!(f16::exponent(0x7BFF), 15);
        assert_eq!(f16::lsb(0x3C00), -10);
        assert_eq!(bf16::exponent(1), -133);
        assert_eq!(bf16::lsb(0x3F80), -7);
    }

    #[test]
    #[cfg_attr(miri, ignore = "700 Ki elements")]
    fn buckets_flush_when_full() {
        // More elements than the tables hold between flushes (enough MAX squares to overflow an
        // entry without them): 700 blocks of f32::MAX and of a
        // subnormal, through the integer path only.
        let block: Vec<f32> = (0..1024)
            .map(|i| {
                if i % 2 == 0 {
                    f32::MAX
                } else {
                    -f32::from_bits(3)
                }
            })
            .collect();
        let mut slot = None;
        let mut acc = ChunkAcc::ZERO;
        for _ in 0..700 {
            Buckets::add_block::<f32, true>(&mut slot, &block, &mut acc);
        }
        if let Some(b) = slot.as_mut() {
            b.flush::<f32, true>(&mut acc);
        }
        let got = ExactPartial::from_parts(KIND_L2, acc.normalized(), 0).sum();
        let all: Vec<f32> = (0..700).flat_map(|_| block.iter().copied()).collect();
        let want = crate::reference::exact_sum(
            &[crate::grads::Grad::F32(&all)],
            crate::norm_type::NormType::L2,
        );
        assert_eq!(got.to_bits(), want.to_bits());
    }

    #[test]
    fn plans_cover_the_block() {
        // f32 squares spanning 20 binades of |x| with 32 deposits per lane: two bins.
        let hi = 1.5f32.to_bits();
        let lo = (1.5f32 * 2f32.powi(-20)).to_bits();
        let p = Plan::new::<f32, true>(hi, lo, guard_bits(32)).unwrap();
        assert_eq!(p.k, 2);
        // The last bin's unit is the lsb of the smallest square.
        assert_eq!(p.pos[1] as i32 + LSB_EXP, 2 * f32::lsb(lo));
        // bf16 squares over 14 binades: one bin.
        let p = Plan::new::<bf16, true>(0x3F80, 0x3F80 - (14 << 7), guard_bits(32)).unwrap();
        assert_eq!(p.k, 1);
        // f32 over its whole range: too many bins.
        assert!(Plan::new::<f32, true>(f32::MAX.to_bits(), 1, guard_bits(32)).is_none());
    }
}
