//! Exact norms: the same bits however the gradients are split.
//!
//! The compensated norms ([`Summation::Compensated`]) are bit-identical for any thread count and
//! instruction set, but not for any *partition* of the data: the same numbers as one buffer or as
//! 148 tensors, or sharded over two ranks or three, round differently in the last bits.
//! [`Summation::Exact`] removes rounding from the reduction altogether: the L2 and L1 sums are
//! computed exactly, as integers, and rounded once at the end, so every lane layout, partition,
//! merge order, thread count and instruction set gives the same bits *by construction*.
//!
//! # What is computed
//!
//! - L2: `S = Σ x²` exactly (a square of an f32, f16 or bf16 value is exact in f64: at most 48
//!   significant bits), then `sum = RN(S)` (the f64 nearest to `S`, ties to even) and
//!   `norm = sqrt(sum)`, the IEEE square root of that f64.
//! - L1: `S = Σ |x|` exactly, `norm = RN(S)`.
//! - Inf: `max |x|`, exact in both modes.
//!
//! P(p) norms cannot be summed exactly (`|x|^p` is not a dyadic rational in general); in exact
//! mode they are computed as in compensated mode.
//!
//! # How: bins per block, a long accumulator per chunk
//!
//! Every term `y` (`x²` or `|x|`) is a multiple of 2^-298 below 2^256, so `S` is an integer
//! multiple of 2^-320 below 2^384 for any realistic count: [`ExactPartial`] holds it as 704 bits
//! of fixed point (11 limbs) and merges by integer addition, which is associative and commutative.
//! Adding each term to the limbs would be slow; the kernels add whole blocks at once:
//!
//! 1. A block (1024–2048 elements) is scanned with integer max/min over the bit patterns: all its
//!    terms are below 2^T and multiples of 2^L.
//! 2. K f64 bins per lane are placed from (T, L) (`block::Plan`): bin 0 starts at 2^b0 with
//!    b0 = T + g (g guard bits = ⌈log2(deposits per lane)⌉ + 1), bin j + 1 sits 52 − g bits
//!    below bin j, the last bin's unit in the last place is 2^L. K is the least that reaches L:
//!    K = 1 + ⌈(T + g − 52 − L) / (52 − g)⌉.
//! 3. Each element is deposited with an error-free cascade (lane-wise, 16 lanes per group):
//!    ```text
//!    t = fma(x, x, A0); d = t − A0; r = fma(x, x, −d); A0 = t   // bin 0, r = x² − d exactly
//!    t = A1 + r;        d = t − A1; r = r − d;         A1 = t   // middle bins
//!    A_{K−1} = A_{K−1} + r                                      // last bin: exact
//!    ```
//!    Each bin stays inside its binade for the whole block (its deposits add up to less than
//!    half of it), so `t − A` is exact, each remainder is exactly representable, and the last
//!    bin's additions are exact because every remainder is a multiple of its unit.
//! 4. At the end of the block, `bits(A) − bits(A_start)` is the exact number of units in the
//!    last place a bin gained (both share a binade); the lanes' counts are summed as integers
//!    and added to the chunk's accumulator at the bin's bit position.
//!
//! Gradient-like blocks need K = 2 for f32 squares (K = 2 covers about 22 binades of |x|), and
//! K = 1 for f16/bf16 squares and for f32 magnitudes (one fused multiply-add per element). A
//! block whose range needs more than three bins (adversarial full-range data) takes an integer
//! path: per exponent, significands (or their squares) are summed in u64. Blocks holding NaN or
//! ±inf are only classified.
//!
//! The kernel is written once (`block::bins`) over a small vector trait; the portable,
//! AVX-512, AVX2 and NEON backends (in `crate::arch`) only supply widening loads, lane arithmetic
//! and the bounds scan. Since the result is exact, backends may use different lane counts and
//! block sizes and still agree bit for bit.
//!
//! # Finishing
//!
//! Chunks (the same fixed 65,536-element chunks as the compensated mode, forked with rayon above
//! the same size threshold) yield partials that merge by 704-bit addition. `finish` rounds the
//! integer to the nearest f64 (ties to even, from the top 64 bits and a sticky bit) and takes the
//! square root for L2.

pub(crate) mod accumulator;
pub(crate) mod block;

pub use accumulator::ExactPartial;

/// How L2 and L1 sums are accumulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Summation {
    /// 32 f64 lanes with compensated (Fast2Sum) folds and a reduction tree fixed by the buffer
    /// lengths: within 1e-14 relative of the exact value, the same bits for any thread count and
    /// instruction set, not for a different split of the same numbers.
    #[default]
    Compensated,
    /// The exact sum, rounded once to the nearest f64 (see [`crate::exact`]): the same bits for
    /// any split of the data into buffers or shards, any merge order, thread count and
    /// instruction set. Inf is exact in both modes; P(p) norms are computed as in
    /// [`Summation::Compensated`].
    Exact,
}
