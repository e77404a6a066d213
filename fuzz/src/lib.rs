//! The oracles behind gradclip's fuzz targets. Each target in `fuzz_targets/` is a one-line
//! wrapper around a function here, so a crash reproduces from a plain `#[test]` too.
//!
//! - [`kernels_differential`]: arbitrary bytes become buffers of each dtype at arbitrary element
//!   offsets (dense, or mostly zero with patches at block and chunk boundaries); every available
//!   ISA's norm (L2, L1 and Inf on every input; the mode byte picks the type that also gets the
//!   per-buffer, thread-count and reference checks, P norms included), exact partial and exact norm,
//!   per-buffer partials, non-finite location and scale are compared with the scalar reference
//!   (`gradclip::reference`) and with each other, and sets past the fork threshold again on a
//!   pool of 1, 2 or 3 threads. See `notes/fuzz.md` for what an input costs.
//! - [`safetensors_cli`]: arbitrary bytes as a safetensors file go through the library side of
//!   `gradclip norm` / `gradclip clip` (`gradclip::st`), which must either reject them with a
//!   one-line error or produce a result that is consistent in every way checked below; a file
//!   `st::parse` accepts must also pass the `safetensors` crate's own validation.
//!
//! Both take P norms besides L2, L1 and Inf: p = 3 and 0.5, p = 0.001, whose value exceeds
//! f64 for finite data from about three elements on, and p = 0.01, where a thousand or more
//! elements below 1 (subnormals: seeds `p_tiny_power_overflows`) make `total^(1/p)` exceed f64
//! while the norm itself does not. Beyond f64 the expected outcome is `Error::NormOverflow`
//! (`StError::Invalid` of it in the CLI path), accepted only when the scalar reference (which
//! computes the power through its logarithm, a formula of its own) is at or beyond the edge of
//! f64, for the file or for one tensor.

use gradclip::reference;
use gradclip::st::{self, StError};
use std::sync::OnceLock;

use gradclip::{
    bf16, exact_partial_with_isa, f16, first_nonfinite, fork_threshold_bytes,
    get_total_norm_exact_with_isa, get_total_norm_with_isa, per_buffer_partials, scale_with_isa_,
    Error, ExactPartial, Grad, GradMut, Isa, NonFinite, NormPartial, NormType, CHUNK_ELEMS,
};

/// Reads control bytes and payload from the fuzz input; past the end it yields zeros.
struct Input<'a> {
    d: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.d.split_first() {
            Some((&b, rest)) => {
                self.d = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        a.iter_mut().for_each(|b| *b = self.byte());
        u64::from_le_bytes(a)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.d.split_at(n.min(self.d.len()));
        self.d = b;
        a
    }
}

/// An owned buffer of one dtype plus the element offset its view starts at.
#[derive(Clone)]
enum Buf {
    F32(Vec<f32>, usize),
    F16(Vec<f16>, usize),
    BF16(Vec<bf16>, usize),
}

impl Buf {
    fn grad(&self) -> Grad<'_> {
        match self {
            Buf::F32(v, o) => Grad::F32(&v[*o..]),
            Buf::F16(v, o) => Grad::F16(&v[*o..]),
            Buf::BF16(v, o) => Grad::BF16(&v[*o..]),
        }
    }

    fn grad_mut(&mut self) -> GradMut<'_> {
        match self {
            Buf::F32(v, o) => GradMut::F32(&mut v[*o..]),
            Buf::F16(v, o) => GradMut::F16(&mut v[*o..]),
            Buf::BF16(v, o) => GradMut::BF16(&mut v[*o..]),
        }
    }
}

/// The view's elements other than ±0, in order, given the `patches` (element ranges of the view)
/// outside which every element is zero: every norm and exact sum of a buffer equals that of its
/// non-zero elements (a zero adds nothing to a sum, a power or a maximum, and the references add
/// it as an exact no-op), so the references run on this instead of the mostly-zero sparse
/// buffers. Only the patches are read (a scan of the whole buffer cost more than the kernels).
fn nonzero(g: Grad<'_>, patches: &[(usize, usize)]) -> Buf {
    let mut sorted = patches.to_vec();
    sorted.sort_unstable();
    // Overlapping patches merged, so each element is read once and in order.
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(sorted.len());
    for (a, b) in sorted {
        match ranges.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => ranges.push((a, b)),
        }
    }
    fn keep<T: gradclip::Element>(s: &[T], ranges: &[(usize, usize)]) -> Vec<T> {
        ranges
            .iter()
            .flat_map(|&(a, b)| &s[a..b])
            .copied()
            .filter(|x| x.abs_bits() != 0)
            .collect()
    }
    match g {
        Grad::F32(s) => Buf::F32(keep(s, &ranges), 0),
        Grad::F16(s) => Buf::F16(keep(s, &ranges), 0),
        Grad::BF16(s) => Buf::BF16(keep(s, &ranges), 0),
    }
}

/// `n` elements of `N` bytes from `raw`, tiled when `raw` is shorter (zeros when empty).
fn elements<const N: usize, T>(raw: &[u8], n: usize, from: fn([u8; N]) -> T) -> Vec<T> {
    (0..n)
        .map(|i| {
            let mut a = [0u8; N];
            if !raw.is_empty() {
                for (k, b) in a.iter_mut().enumerate() {
                    *b = raw[(i * N + k) % raw.len()];
                }
            }
            from(a)
        })
        .collect()
}

/// Dense buffers hold at most this many elements, every one from the input.
const DENSE_MAX: usize = 700;
/// A patch of a sparse buffer covers at most this many elements.
const RUN_MAX: usize = 2048;
/// One input in this many (by a hash of its bytes) may hold a buffer past [`CHUNK_ELEMS`]; see
/// [`long_allowed`].
const LONG_EVERY: u64 = 16;

/// Whether an input may hold a buffer just past [`CHUNK_ELEMS`]: its mode byte asks for it
/// (bit 7) and a hash of its bytes is 0 modulo [`LONG_EVERY`]. Such an input costs about a
/// hundred short ones under the sanitizers, and the fuzzer, which keeps every input that reaches
/// new code, would otherwise spend most of its time mutating long ones; with the hash only one
/// mutant in [`LONG_EVERY`] of a long input stays long (the others get a buffer of at most 6,400
/// elements at the same place), and a crash still reproduces from its bytes alone.
fn long_allowed(data: &[u8]) -> bool {
    // FNV-1a.
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    data.first().is_some_and(|m| m & 0x80 != 0) && h % LONG_EVERY == 0
}

/// Sparse buffer of `len` elements after `offset` poison elements (a NaN: a kernel that reads
/// before the view changes the result): zeros, then up to four patches, each a pattern of 1 to
/// 16 elements from the input repeated up to [`RUN_MAX`] elements, placed at a multiple of 512
/// elements (the block sizes of the kernels), at [`CHUNK_ELEMS`] or at the end, moved by -128 to
/// 127 elements (taken modulo `len`). Also returns the patches' element ranges in the view.
fn sparse<const N: usize, T: gradclip::Element>(
    inp: &mut Input<'_>,
    len: usize,
    offset: usize,
    from: fn([u8; N]) -> T,
    patches_out: &mut Vec<(usize, usize)>,
) -> Vec<T> {
    let mut v = vec![T::ZERO; offset + len];
    v[..offset].fill(T::from_abs_bits(T::INF_BITS + 1));
    let patches = inp.byte() % 5;
    for _ in 0..patches {
        let anchor = inp.byte();
        let delta = inp.byte() as i8 as isize;
        let n = 1 + inp.byte() as usize % 16;
        let r = inp.byte();
        let reps = if r < 224 {
            1 + (r % 8) as usize
        } else {
            64 * (r - 223) as usize
        };
        let pattern = elements(inp.take(n * N), n, from);
        if len == 0 {
            continue;
        }
        let base = match anchor % 18 {
            k @ 0..=15 => k as usize * 512,
            16 => CHUNK_ELEMS,
            _ => len,
        };
        let start = (base as isize + delta).rem_euclid(len as isize) as usize;
        let run = (n * reps).min(RUN_MAX).min(len - start);
        patches_out.push((start, start + run));
        for (i, x) in v[offset + start..][..run].iter_mut().enumerate() {
            *x = pattern[i % n];
        }
    }
    v
}

/// The buffers of an input and, for each, whether it is sparse. A control byte per buffer picks
/// the dtype (`c % 3`), the element offset of the view (`c / 3 % 8`) and the form: dense (`c <
/// 224`, at most [`DENSE_MAX`] elements, each from the input, so cost follows input length) or
/// sparse (see [`sparse`]; 0 to 6,399 elements, mostly around the 1,024 and 2,048 blocks, or
/// just past [`CHUNK_ELEMS`] when `long` allows).
/// The patches of a sparse buffer (`None` for a dense one); see [`sparse`].
type Patches = Option<Vec<(usize, usize)>>;

fn buffers(inp: &mut Input<'_>, long: bool) -> Vec<(Buf, Patches)> {
    let count = 1 + inp.byte() as usize % 4;
    let mut long_left = long;
    (0..count)
        .map(|_| {
            let c = inp.byte();
            let offset = (c as usize / 3) % 8;
            let w = inp.u16() as usize;
            if c >= 224 {
                let len = match w >> 13 {
                    0..=3 => w % 1100,
                    4 | 5 => w % 2200,
                    7 if long_left => {
                        long_left = false;
                        CHUNK_ELEMS - 4 + w % 9
                    }
                    6 => w % 4400,
                    _ => w % 6400,
                };
                let mut p = Vec::new();
                let buf = match c % 3 {
                    0 => Buf::F32(sparse(inp, len, offset, f32::from_le_bytes, &mut p), offset),
                    1 => Buf::F16(sparse(inp, len, offset, f16::from_le_bytes, &mut p), offset),
                    _ => Buf::BF16(
                        sparse(inp, len, offset, bf16::from_le_bytes, &mut p),
                        offset,
                    ),
                };
                return (buf, Some(p));
            }
            let size = if c.is_multiple_of(3) { 4 } else { 2 };
            let raw = inp.take(w % DENSE_MAX * size);
            let n = offset + raw.len() / size;
            let buf = match c % 3 {
                0 => Buf::F32(elements(raw, n, f32::from_le_bytes), offset),
                1 => Buf::F16(elements(raw, n, f16::from_le_bytes), offset),
                _ => Buf::BF16(elements(raw, n, bf16::from_le_bytes), offset),
            };
            (buf, None)
        })
        .collect()
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn same_nonfinite(a: &NonFinite, b: &NonFinite) -> bool {
    a.buffer == b.buffer && a.index == b.index && same(a.value, b.value)
}

/// The first NaN or infinity, by a plain scan.
fn scan_nonfinite(grads: &[Grad<'_>]) -> Option<NonFinite> {
    fn scan<T: gradclip::Element>(s: &[T]) -> Option<(usize, f64)> {
        let i = s.iter().position(|x| !x.to_f32().is_finite())?;
        Some((i, s[i].to_f32() as f64))
    }
    grads.iter().enumerate().find_map(|(buffer, g)| {
        let (index, value) = match *g {
            Grad::F32(s) => scan(s),
            Grad::F16(s) => scan(s),
            Grad::BF16(s) => scan(s),
        }?;
        Some(NonFinite {
            buffer,
            index,
            value,
        })
    })
}

/// Values this close to `f64::MAX` may round to either side of it: a P norm there may be
/// refused as an overflow or returned as a finite number.
fn near_f64_max(x: f64) -> bool {
    x.is_infinite() || x > f64::MAX * (1.0 - 1e-9)
}

fn check_value(got: f64, want: f64, norm_type: NormType, what: &str) {
    let tol = match norm_type {
        NormType::Inf => 0.0,
        // `s^(1/p)` multiplies the relative error of the sum `s` by 1/p.
        NormType::P(p) => 1e-12 * (1.0 / p).max(1.0),
        _ => 1e-13,
    };
    if want.is_infinite() && (got == want || near_f64_max(got)) {
        return;
    }
    if norm_type == NormType::Inf || want == 0.0 {
        assert!(
            got.to_bits() == want.to_bits(),
            "{what}: got {got:e}, reference {want:e}"
        );
    } else {
        let err = ((got - want) / want).abs();
        assert!(
            err <= tol,
            "{what}: got {got:e}, reference {want:e}, rel err {err:e}"
        );
    }
}

/// Thread pools of 1, 2 and 3 threads, built once per process.
fn pools() -> &'static [rayon::ThreadPool] {
    static POOLS: OnceLock<Vec<rayon::ThreadPool>> = OnceLock::new();
    POOLS.get_or_init(|| {
        (1..=3)
            .map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .expect("a thread pool")
            })
            .collect()
    })
}

/// The norm types of the compensated checks; bits 2 to 4 of the mode byte pick one per input
/// (and the kind of the exact checks: see [`EXACT_KINDS`]).
const NORM_TYPES: [NormType; 8] = [
    NormType::L2,
    NormType::L1,
    NormType::Inf,
    NormType::P(3.0),
    NormType::P(0.5),
    // (Σ|x|^p)^(1/p) exceeds f64 from about three elements on.
    NormType::P(0.001),
    // Beyond f64 in the power only, with a thousand or more elements below 1.
    NormType::P(0.01),
    // L2 twice: the type of clip_grad_norm_'s default.
    NormType::L2,
];

/// The kind of the exact checks for each entry of [`NORM_TYPES`]: the same type for L2, L1 and
/// Inf (so the compensated per-buffer norms can be checked against the exact ones), the three in
/// turn for the P norms.
const EXACT_KINDS: [NormType; 8] = [
    NormType::L2,
    NormType::L1,
    NormType::Inf,
    NormType::L2,
    NormType::L1,
    NormType::Inf,
    NormType::L2,
    NormType::L2,
];

/// Sets of more elements take the exact kind instead of a P norm (a P norm's power is a scalar
/// `powf` per element on every ISA; its overflow in the power alone needs about 1,200 elements).
const P_MAX_ELEMS: usize = 2048;
/// Sets of more elements check the two norm types of L2/L1/Inf not picked across ISAs only,
/// without the double-double reference.
const OTHER_REF_MAX_ELEMS: usize = 256;
/// Sets of more elements skip the scaling check.
const SCALE_MAX_ELEMS: usize = 4096;

/// Every ISA this CPU runs (probed once).
///
/// The first call also lowers the library's fork threshold to [`FUZZ_FORK_BYTES`] unless
/// `GRADCLIP_PAR_MIN_BYTES` is set: the default 256 KiB is only reached by one buffer in a few
/// thousand inputs (a long f32 one), so the thread-count check below would hardly run. The
/// threshold decides only which nodes of the reduction tree fork, never a result bit, and the
/// library reads it once, so this works only when nothing called the library before (in
/// `cargo test` the safetensors test may have; the checks then use the default).
fn isas() -> &'static [Isa] {
    static ISAS: OnceLock<Vec<Isa>> = OnceLock::new();
    ISAS.get_or_init(|| {
        if std::env::var_os("GRADCLIP_PAR_MIN_BYTES").is_none() {
            std::env::set_var("GRADCLIP_PAR_MIN_BYTES", FUZZ_FORK_BYTES.to_string());
        }
        Isa::available()
    })
}

/// The fork threshold the differential target runs with (see [`isas`]).
const FUZZ_FORK_BYTES: usize = 32 << 10;

/// Same bits, or the same error (the same location for a non-finite element).
fn same_result(a: &Result<f64, Error>, b: &Result<f64, Error>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a.to_bits() == b.to_bits(),
        (Err(Error::NonFinite(a)), Err(Error::NonFinite(b))) => same_nonfinite(a, b),
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

/// Differential oracle of the kernels against the scalar reference; see the crate docs.
///
/// Input layout: a mode byte (bits 0-1 the scale factor's kind, bits 2-4 the norm type, bit 7
/// asks for a buffer past one chunk), 8 bytes of factor bits (bits 32 and up also pick the ISA of
/// the cut and thread-count checks and the pool size), then the buffers (see [`buffers`]).
pub fn kernels_differential(data: &[u8]) {
    let isas = isas();
    let mut inp = Input { d: data };
    let mode = inp.byte();
    let factor_bits = inp.u64();
    let bufs = buffers(&mut inp, long_allowed(data));
    let grads: Vec<Grad<'_>> = bufs.iter().map(|(b, _)| b.grad()).collect();
    // What the references read: the non-zero elements of sparse buffers, dense ones as they are.
    let packed: Vec<Option<Buf>> = bufs
        .iter()
        .map(|(b, patches)| patches.as_ref().map(|p| nonzero(b.grad(), p)))
        .collect();
    let ref_grads: Vec<Grad<'_>> = bufs
        .iter()
        .zip(&packed)
        .map(|((b, _), p)| p.as_ref().unwrap_or(b).grad())
        .collect();
    let first = first_nonfinite(&grads);
    // (When there is none, the references below say so.)
    if let Some(f) = &first {
        let scanned = scan_nonfinite(&grads);
        assert!(
            scanned.as_ref().is_some_and(|s| same_nonfinite(f, s)),
            "first_nonfinite {f:?}, scan {scanned:?}"
        );
    }
    let elems: usize = grads.iter().map(|g| g.len()).sum();
    let pick = (mode as usize >> 2) % NORM_TYPES.len();
    let exact_kind = EXACT_KINDS[pick];
    let norm_type = match NORM_TYPES[pick] {
        NormType::P(_) if elems > P_MAX_ELEMS => exact_kind,
        t => t,
    };
    // The ISA of the thread-count and cut checks.
    let isa_pick = isas[(factor_bits >> 32) as usize % isas.len()];

    let exact = reference::exact_sum(&ref_grads, exact_kind);
    // L2, L1 and Inf against the integer reference (exact, then rounded once: the value the
    // double-double one approximates; the exact kind is the norm type then), P norms against the
    // double-double one.
    let want = match norm_type {
        NormType::P(_) => reference::norm(&ref_grads, norm_type),
        NormType::L2 => exact.sqrt(),
        _ => exact,
    };
    debug_assert!(matches!(norm_type, NormType::P(_)) || norm_type == exact_kind);
    // Finite data has a finite norm, except a P norm beyond f64 (small p).
    let p_overflow = matches!(norm_type, NormType::P(_)) && want.is_infinite();
    assert_eq!(
        want.is_finite() || (p_overflow && first.is_none()),
        first.is_none(),
        "reference vs first_nonfinite"
    );
    let mut results = Vec::with_capacity(isas.len());
    for &isa in isas {
        let got = get_total_norm_with_isa(&grads, norm_type, isa);
        match (&got, &first) {
            (Ok(x), None) => check_value(*x, want, norm_type, isa.name()),
            (Err(Error::NonFinite(nf)), Some(f)) => assert!(
                same_nonfinite(nf, f),
                "{}: reported {nf:?}, first is {f:?}",
                isa.name()
            ),
            (Err(Error::NormOverflow { p }), None) => {
                assert_eq!(p.to_bits(), norm_type.exponent().to_bits());
                assert!(
                    near_f64_max(want),
                    "{}: overflow, reference {want:e}",
                    isa.name()
                );
            }
            _ => panic!("{} {norm_type:?}: {got:?}, first {first:?}", isa.name()),
        }
        results.push(got);
    }
    for w in results.windows(2) {
        assert!(
            same_result(&w[0], &w[1]),
            "{norm_type:?}: ISAs differ: {:?} vs {:?}",
            w[0],
            w[1]
        );
    }
    let picked = &results[isas.iter().position(|&i| i == isa_pick).expect("picked")];
    // The other two of L2, L1 and Inf (their kernels are the cheap part of an input): every ISA
    // gives the same bits or the same error, an error exactly when there is a non-finite value,
    // and the portable result (the reference implementation the others match) is within the
    // accuracy bound of the double-double reference on small sets.
    for t in [NormType::L2, NormType::L1, NormType::Inf] {
        if t == norm_type {
            continue;
        }
        let mut prev: Option<Result<f64, Error>> = None;
        for &isa in isas {
            let got = get_total_norm_with_isa(&grads, t, isa);
            match (&got, &first) {
                (Ok(_), None) => {}
                (Err(Error::NonFinite(nf)), Some(f)) => assert!(
                    same_nonfinite(nf, f),
                    "{} {t:?}: reported {nf:?}, first is {f:?}",
                    isa.name()
                ),
                _ => panic!("{} {t:?}: {got:?}, first {first:?}", isa.name()),
            }
            if let Some(p) = &prev {
                assert!(same_result(p, &got), "{t:?}: ISAs differ: {p:?} vs {got:?}");
            }
            prev = Some(got);
        }
        if let (Some(Ok(x)), true) = (&prev, elems <= OTHER_REF_MAX_ELEMS) {
            check_value(*x, reference::norm(&ref_grads, t), t, "other type");
        }
    }

    // Exact mode (its per-buffer partials are the per-buffer references below).
    let (whole, exact_parts) = check_exact(
        &grads,
        exact_kind,
        exact,
        &first,
        isas,
        isa_pick,
        factor_bits,
    );

    // One pass of per-buffer partials: each buffer's norm and the same total bits.
    let mut out = vec![NormPartial::EMPTY; grads.len()];
    let total = per_buffer_partials(&grads, norm_type, &mut out).expect("valid norm type");
    match results.first() {
        Some(Ok(x)) => assert_eq!(total.finish().to_bits(), x.to_bits(), "per_buffer total"),
        Some(Err(Error::NormOverflow { .. })) => {
            assert!(
                total.is_finite() && total.finish().is_infinite(),
                "overflow total"
            )
        }
        _ => assert!(!total.is_finite()),
    }
    // Each buffer against the reference: the total's when there is one buffer, else for L2, L1
    // and Inf the buffer's exact partial (exactly rounded, and checked above: the partials merge
    // to the total's, which equals the integer reference's), for P norms the double-double one.
    for (i, (g, p)) in ref_grads.iter().zip(&out).enumerate() {
        let want_i = if ref_grads.len() == 1 {
            want
        } else if norm_type == exact_kind {
            exact_parts[i].finish()
        } else {
            reference::norm(std::slice::from_ref(g), norm_type)
        };
        let got_i = p.finish();
        if want_i.is_finite() || (p.is_finite() && want_i.is_infinite()) {
            // A finite buffer whose norm overflows: +inf, or finite right at the edge.
            check_value(got_i, want_i, norm_type, "one buffer");
        } else {
            assert_eq!(got_i.is_nan(), want_i.is_nan(), "buffer {i} NaN vs inf");
            assert_eq!(got_i.is_infinite(), want_i.is_infinite());
        }
    }

    // Thread counts, for a set large enough to fork: on a pool of 1, 2 or 3 threads (picked by
    // the input; the calls above ran on rayon's global pool) the same bits or the same error for
    // the norm type and the same exact partial. Below the fork threshold every call runs on the
    // calling thread whatever the pool, so there is nothing to compare.
    if grads.iter().map(|g| g.byte_len()).sum::<usize>() >= fork_threshold_bytes() {
        let pool = &pools()[(factor_bits >> 40) as usize % 3];
        let (norm, partial) = pool.install(|| {
            (
                get_total_norm_with_isa(&grads, norm_type, isa_pick),
                exact_partial_with_isa(&grads, exact_kind, isa_pick),
            )
        });
        let threads = pool.current_num_threads();
        assert!(
            same_result(&norm, picked),
            "{threads} threads, {norm_type:?} on {}: {norm:?} vs {picked:?}",
            isa_pick.name()
        );
        assert_eq!(
            partial.expect("exact kind"),
            whole,
            "{threads} threads, exact {exact_kind:?} on {}",
            isa_pick.name()
        );
    }

    if elems > SCALE_MAX_ELEMS {
        return;
    }
    let factor = match mode % 4 {
        0 => f64::from_bits(factor_bits),
        1 => 0.5,
        2 => 1.0,
        // A realistic clip coefficient.
        _ => (factor_bits % 1000) as f64 / 997.0 / (1.0 + 1e-6),
    };
    check_scale(&bufs, factor, isas);
}

/// Exact mode of `kind`: on every ISA, the sum is the integer reference's exactly rounded value
/// `want` and the partial has the same bytes; on `isa`, the exact norm is the partial's, and the
/// first buffer cut at a fuzz-chosen element and the per-buffer partials merged in reverse order
/// give those bytes again. Returns the partial and the partial of each buffer (on `isa`).
fn check_exact(
    grads: &[Grad<'_>],
    kind: NormType,
    want: f64,
    first: &Option<NonFinite>,
    isas: &[Isa],
    isa: Isa,
    cut: u64,
) -> (ExactPartial, Vec<ExactPartial>) {
    // Equality of partials is equality of their bytes (every field is an integer).
    let mut bytes: Option<ExactPartial> = None;
    for &isa in isas {
        let p = exact_partial_with_isa(grads, kind, isa).expect("exact kind");
        assert!(
            same(p.sum(), want),
            "{} {kind:?}: exact sum {:e}, reference {want:e}",
            isa.name(),
            p.sum()
        );
        assert_eq!(p.is_finite(), first.is_none(), "{} flags", isa.name());
        match &bytes {
            None => bytes = Some(p),
            Some(w) => assert_eq!(&p, w, "{} {kind:?}: bytes differ", isa.name()),
        }
    }
    let whole = bytes.expect("the portable ISA is always available");
    match (get_total_norm_exact_with_isa(grads, kind, isa), first) {
        (Ok(x), None) => assert!(same(x, whole.finish()), "{} norm", isa.name()),
        (Err(Error::NonFinite(nf)), Some(f)) => assert!(same_nonfinite(&nf, f)),
        (got, _) => panic!("{} {kind:?}: {got:?}, first {first:?}", isa.name()),
    }
    let Some((g0, rest)) = grads.split_first() else {
        return (whole, Vec::new());
    };
    let at = (cut as usize) % (g0.len() + 1);
    let (a, b) = match *g0 {
        Grad::F32(s) => (Grad::F32(&s[..at]), Grad::F32(&s[at..])),
        Grad::F16(s) => (Grad::F16(&s[..at]), Grad::F16(&s[at..])),
        Grad::BF16(s) => (Grad::BF16(&s[..at]), Grad::BF16(&s[at..])),
    };
    let mut cut_set = vec![b, a];
    cut_set.extend_from_slice(rest);
    let p = exact_partial_with_isa(&cut_set, kind, isa).expect("exact kind");
    assert_eq!(p, whole, "cut at {at} on {}", isa.name());
    let parts: Vec<ExactPartial> = cut_set
        .iter()
        .map(|g| exact_partial_with_isa(std::slice::from_ref(g), kind, isa).expect("exact kind"))
        .collect();
    let merged = parts
        .iter()
        .rev()
        .fold(ExactPartial::EMPTY, |m, p| m.merge(*p));
    assert_eq!(merged, whole, "merged on {}", isa.name());
    // The first buffer's partial from its two pieces (merging is exact and commutative).
    let mut per_buffer = Vec::with_capacity(grads.len());
    per_buffer.push(parts[1].merge(parts[0]));
    per_buffer.extend_from_slice(&parts[2..]);
    (whole, per_buffer)
}

/// Scaling on every ISA: each element is the reference `scale(x, f32(factor))` bit for bit (NaN
/// payloads included: the reference spells the NaN rule out), or untouched when the factor was
/// refused or is 1 in f32. The expected buffers are computed once; each ISA scales a copy made
/// in the same scratch buffers.
fn check_scale(bufs: &[(Buf, Patches)], factor: f64, isas: &[Isa]) {
    let c = factor as f32;
    let valid = factor.is_finite() && c.is_finite();
    let mut want: Vec<Buf> = bufs.iter().map(|(b, _)| b.clone()).collect();
    if valid && c != 1.0 {
        for b in &mut want {
            match b.grad_mut() {
                GradMut::F32(s) => s.iter_mut().for_each(|x| *x = reference::scale_f32(*x, c)),
                GradMut::F16(s) => s.iter_mut().for_each(|x| *x = reference::scale_f16(*x, c)),
                GradMut::BF16(s) => s.iter_mut().for_each(|x| *x = reference::scale_bf16(*x, c)),
            }
        }
    }
    let mut scaled: Vec<Buf> = Vec::with_capacity(bufs.len());
    for &isa in isas {
        scaled.clear();
        scaled.extend(bufs.iter().map(|(b, _)| b.clone()));
        let mut views: Vec<GradMut<'_>> = scaled.iter_mut().map(Buf::grad_mut).collect();
        let r = scale_with_isa_(&mut views, factor, isa);
        drop(views);
        assert_eq!(
            r.is_ok(),
            valid,
            "{} scale by {factor:e}: {r:?}",
            isa.name()
        );
        for ((before, _), (after, want)) in bufs.iter().zip(scaled.iter().zip(&want)) {
            match (before.grad(), after.grad(), want.grad()) {
                (Grad::F32(b), Grad::F32(a), Grad::F32(w)) => check_scaled(b, a, w, c, isa),
                (Grad::F16(b), Grad::F16(a), Grad::F16(w)) => check_scaled(b, a, w, c, isa),
                (Grad::BF16(b), Grad::BF16(a), Grad::BF16(w)) => check_scaled(b, a, w, c, isa),
                _ => unreachable!("dtype changed"),
            }
        }
    }
}

/// `after` has the bits of `want` (compared as bytes; the first differing element is named).
fn check_scaled<T: gradclip::Element + std::fmt::Debug>(
    before: &[T],
    after: &[T],
    want: &[T],
    c: f32,
    isa: Isa,
) {
    if bytemuck::cast_slice::<T, u8>(after) == bytemuck::cast_slice::<T, u8>(want) {
        return;
    }
    let i = (0..after.len())
        .find(|&i| bytemuck::bytes_of(&after[i]) != bytemuck::bytes_of(&want[i]))
        .expect("a differing element");
    panic!(
        "{} {:?} {:?} * {c:e}: got {:?}, want {:?}",
        isa.name(),
        T::DTYPE,
        before[i],
        after[i],
        want[i]
    );
}

/// Whether the scalar reference puts a file's norm of one type, or one of its finite tensors'
/// norms, at or beyond the edge of f64: only then may `norms` refuse the type as an overflow.
fn overflow_possible(grads: &[Grad<'_>], norm_type: NormType) -> bool {
    let near = |gs: &[Grad<'_>]| {
        first_nonfinite(gs).is_none() && near_f64_max(reference::norm(gs, norm_type))
    };
    matches!(norm_type, NormType::P(_))
        && (near(grads) || grads.iter().any(|g| near(std::slice::from_ref(g))))
}

/// The library side of `gradclip norm` / `gradclip clip` on arbitrary bytes; see the crate docs.
pub fn safetensors_cli(data: &[u8]) {
    let layout = match st::parse(data) {
        Ok(l) => l,
        Err(e) => {
            // `Format` means the layout did not match the file it came from.
            assert!(!matches!(e, StError::Format(_)), "validation gap: {e}");
            let msg = e.to_string();
            assert!(
                !msg.is_empty() && !msg.contains(['\n', '\r']),
                "error not on one line: {msg:?}"
            );
            return;
        }
    };
    // The reference implementation of the format accepts whatever `parse` accepted.
    if let Err(e) = check_with_safetensors_crate(data) {
        panic!("validation gap: the safetensors crate rejects a file parse accepted: {e}");
    }

    // A layout that parsed is contiguous, in file order, and covers the data exactly.
    let mut pos = 0usize;
    for t in &layout.tensors {
        assert_eq!(t.start, pos, "gap or overlap accepted");
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(
            numel.and_then(|n| n.checked_mul(t.dtype.size_of())),
            Some(t.end - t.start)
        );
        pos = t.end;
    }
    assert_eq!(layout.data_start.checked_add(pos), Some(data.len()));

    let tensors: Vec<st::TensorData<'_>> = (0..layout.tensors.len())
        .map(|i| st::tensor_data(data, &layout, i).expect("tensor of a parsed layout"))
        .collect();
    let grads: Vec<Grad<'_>> = tensors.iter().map(st::TensorData::grad).collect();

    let norm_types = [
        NormType::L2,
        NormType::L1,
        NormType::Inf,
        NormType::P(3.0),
        NormType::P(0.5),
        NormType::P(0.001),
        NormType::P(0.01),
    ];
    let mut summaries = Vec::new();
    for norm_type in norm_types {
        let s = match st::norms(data, &layout, norm_type) {
            Ok(s) => s,
            Err(StError::Invalid(Error::NormOverflow { p })) => {
                assert_eq!(p.to_bits(), norm_type.exponent().to_bits());
                assert!(
                    overflow_possible(&grads, norm_type),
                    "{norm_type:?}: overflow refused, the reference is finite"
                );
                summaries.push((norm_type, None));
                continue;
            }
            Err(e) => panic!("{norm_type:?}: unexpected error on a valid file: {e}"),
        };
        assert_eq!(s.norms.len(), layout.tensors.len());
        // Every finite tensor's own norm against the reference (an overflow would have been
        // refused, so a reference beyond f64 must meet a value at the edge).
        for (i, g) in grads.iter().enumerate() {
            let one = std::slice::from_ref(g);
            if first_nonfinite(one).is_none() {
                let want = reference::norm(one, norm_type);
                check_value(s.norms[i], want, norm_type, &format!("tensor {i}"));
                assert!(s.norms[i].is_finite(), "tensor {i}: overflow not refused");
            }
        }
        match &s.nonfinite {
            None => {
                assert!(s.total_norm.is_finite() && s.total_norm >= 0.0);
                let want = reference::norm(&grads, norm_type);
                check_value(s.total_norm, want, norm_type, "file total");
                // The per-tensor partials merge to the library's one-call total, bit for bit.
                let lib = gradclip::get_total_norm(&grads, norm_type).expect("finite total");
                assert_eq!(
                    s.total_norm.to_bits(),
                    lib.to_bits(),
                    "{norm_type:?} total bits"
                );
                assert!(s.norms.iter().all(|n| n.is_finite() && *n >= 0.0));
            }
            Some(l) => {
                assert!(!s.total_norm.is_finite());
                let f = first_nonfinite(&grads).expect("a non-finite element");
                assert_eq!((f.buffer, f.index), (l.tensor, l.index));
                assert_eq!(layout.tensors[l.tensor].name, l.name);
                assert!(!s.norms[l.tensor].is_finite());
                assert!(!l.value.is_finite());
            }
        }
        summaries.push((norm_type, Some(s)));
    }

    let max_norm = [1e-3, 1.0, 1e30][data.len() % 3];
    let (norm_type, norm) = &summaries[[0, 0, 5, 6][data.len() / 3 % 4]];
    match st::clip(data, &layout, max_norm, *norm_type) {
        Ok(c) => {
            let norm = norm
                .as_ref()
                .expect("clip accepted a norm type norms refused");
            assert!(norm.nonfinite.is_none());
            assert_eq!(c.total_norm.to_bits(), norm.total_norm.to_bits());
            assert!(c.clip_coef > 0.0 && c.clip_coef <= 1.0);
            assert_eq!(c.clipped, c.clip_coef < 1.0);
            let mut out = Vec::new();
            c.write_to(data, &layout, &mut out).expect("write to a Vec");
            assert_eq!(out.len(), data.len());
            assert_eq!(out[..layout.data_start], data[..layout.data_start]);
            if !c.rewrites_data() {
                assert!(out == data, "f32(clip_coef) == 1 must copy bit for bit");
            }
            let again = st::parse(&out).expect("clipped output parses");
            assert_eq!(again, layout);
            let after = st::norms(&out, &again, NormType::L2).expect("norms of the output");
            assert!(
                after.nonfinite.is_none(),
                "clipping made a non-finite value"
            );
            check_changed_source(data, &layout, &c);
        }
        Err(StError::NonFinite(l)) => {
            let norm = norm
                .as_ref()
                .expect("clip found a NaN where norms refused the type");
            let first = norm
                .nonfinite
                .as_ref()
                .expect("clip saw a non-finite element, norm did not");
            assert_eq!((l.tensor, l.index), (first.tensor, first.index));
        }
        Err(StError::Invalid(Error::NormOverflow { .. })) => {
            assert!(norm.is_none(), "clip refused a norm type norms accepted");
        }
        Err(e) => panic!("unexpected clip error on a valid file: {e}"),
    }
}

/// A source that differs from what [`st::clip`] measured: the write pass must refuse it. A file
/// that lost its last byte gives `StError::Read`; a NaN written over the first element of the
/// first non-empty tensor gives `StError::Changed` naming that tensor (a NaN always changes the
/// tensor's partial).
fn check_changed_source(data: &[u8], layout: &st::Layout, c: &st::Clipped) {
    let Some(t) = layout.tensors.iter().find(|t| t.end > t.start) else {
        return;
    };
    let mut out = Vec::new();
    match c.write_to(&data[..data.len() - 1], layout, &mut out) {
        Err(StError::Read { .. }) => {}
        r => panic!("a truncated source: {r:?}"),
    }
    let mut changed = data.to_vec();
    let at = layout.data_start + t.start;
    let nan: &[u8] = match t.dtype {
        gradclip::DType::F32 => &[0x01, 0x00, 0xC0, 0x7F],
        gradclip::DType::F16 => &[0x01, 0x7E],
        gradclip::DType::BF16 => &[0xC1, 0x7F],
    };
    changed[at..at + nan.len()].copy_from_slice(nan);
    out.clear();
    match c.write_to(&changed, layout, &mut out) {
        Err(StError::Changed { name }) => assert_eq!(name, t.name),
        r => panic!("a NaN written over the data: {r:?}"),
    }
}

/// The `safetensors` crate's own validation of a file: every file `gradclip::st::parse` accepts
/// must pass it too.
fn check_with_safetensors_crate(bytes: &[u8]) -> Result<(), String> {
    safetensors::SafeTensors::read_metadata(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every committed seed of `target` through `oracle`.
    fn run_seeds(target: &str, oracle: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("seed directory") {
            let path = entry.expect("seed entry").path();
            oracle(&std::fs::read(&path).expect("seed file"));
            n += 1;
        }
        n
    }

    #[test]
    fn kernels_differential_seeds() {
        assert!(run_seeds("kernels_differential", kernels_differential) > 0);
    }

    #[test]
    fn safetensors_cli_seeds() {
        assert!(run_seeds("safetensors_cli", safetensors_cli) > 0);
    }

    /// The seed still asks for p = 0.01 (the mode byte's bits 2 to 4) over more than a thousand
    /// elements, the case it was written for.
    #[test]
    fn p_tiny_seed_selects_p_001() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/kernels_differential");
        let data = std::fs::read(dir.join("p_tiny_power_overflows")).expect("seed");
        assert_eq!(NORM_TYPES[(data[0] as usize >> 2) % 8], NormType::P(0.01));
        let mut inp = Input { d: &data[9..] };
        let bufs = buffers(&mut inp, long_allowed(&data));
        let elems: usize = bufs.iter().map(|(b, _)| b.grad().len()).sum();
        assert!((1000..=P_MAX_ELEMS).contains(&elems), "{elems} elements");
    }

    /// Small dense inputs of each dtype under every norm-type pick and scale-factor kind.
    #[test]
    fn every_norm_type_and_factor() {
        for mode in 0..32u8 {
            for dtype in 0..3u8 {
                let mut data = vec![mode, 7, 1, 2, 3, 4, 5, 6, 7, 2];
                for b in 0..3u8 {
                    // Control byte: dense, this dtype, offset b; 37 elements.
                    data.extend([dtype + 3 * b, 37, 0]);
                    data.extend((0..37u8 * 4).map(|i| i.wrapping_mul(97).wrapping_add(b)));
                }
                kernels_differential(&data);
            }
        }
    }

    /// A long sparse f32 buffer (just past one chunk) with patches at the chunk boundary: long
    /// inputs stay reachable, and the thread-count check runs on them.
    #[test]
    fn long_buffer_past_one_chunk() {
        for pick in [0u8, 1, 2] {
            let mut data = vec![0x80 | pick << 2, 0, 0, 0, 0, 0, 0, 0, 0];
            // One buffer; sparse f32 (225 % 3 == 0), offset 3; w >> 13 == 7: CHUNK_ELEMS + 3.
            data.extend([0, 225, 0x02, 0xE0]);
            // Two patches: at CHUNK_ELEMS - 5 and at the end, 4 elements repeated 64 times.
            data.push(2);
            for anchor in [16u8, 17] {
                data.extend([anchor, (-5i8) as u8, 3, 224]);
                data.extend(
                    [1.5f32, -2.0, 3.25, 1e-40]
                        .iter()
                        .flat_map(|x| x.to_le_bytes()),
                );
            }
            // A last byte that makes the input one of those allowed to be long.
            let last = (0..=255u8)
                .find(|&b| {
                    let mut d = data.clone();
                    d.push(b);
                    long_allowed(&d)
                })
                .expect("a byte that allows a long buffer");
            data.push(last);
            let mut inp = Input { d: &data[9..] };
            let bufs = buffers(&mut inp, long_allowed(&data));
            assert_eq!(bufs[0].0.grad().len(), CHUNK_ELEMS + 3);
            kernels_differential(&data);
        }
    }
}
