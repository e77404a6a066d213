//! The C ABI from C: programs built with `gcc -std=c11 -Wall -Wextra -Werror
//! -fsanitize=address,undefined` against `libgradclip.a`, and the header built as C++17.
//!
//! - `c/abi_cases.c` runs a table of calls written here (every function that computes, every
//!   dtype, every policy, both summations, sets that run the parallel path, under 1, 2, 3 and
//!   the default number of threads) on data written here, and compares every result bit, every
//!   partial byte (40-byte and exact 96-byte partials) and a hash of every modified buffer with
//!   what the Rust API gives on the same data.
//! - `c/abi_contract.c` checks every status code, every NULL / overlap / alignment / dtype /
//!   length rule, that nothing is modified on a non-zero status, the identity of both partials,
//!   the summation values, the strings and the thread-count setter.
//! - `c/header.cpp` includes the header as C++17 and calls the library.
//!
//! When gcc (or g++) is not installed the tests print a note and pass.

mod common;

use std::fmt::Write as _;
use std::process::Command;

use gradclip_core::{
    bf16, clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, exact_partial, f16,
    first_nonfinite, get_total_norm, get_total_norm_with, scale_, total_norm_partial, ClipOptions,
    Error, ExactPartial, Grad, GradMut, Isa, NonFinite, NonFinitePolicy, NormPartial, NormType,
    Summation,
};

use common::*;

/// One gradient buffer the tests own.
#[derive(Clone)]
enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::F32(v) => bytemuck::cast_slice(v),
            Buf::F16(v) => bytemuck::cast_slice(v),
            Buf::BF16(v) => bytemuck::cast_slice(v),
        }
    }
    fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::F16(v) => v.len(),
            Buf::BF16(v) => v.len(),
        }
    }
    fn dtype(&self) -> u32 {
        match self {
            Buf::F32(_) => 0,
            Buf::F16(_) => 1,
            Buf::BF16(_) => 2,
        }
    }
    fn grad(&self) -> Grad<'_> {
        match self {
            Buf::F32(v) => Grad::from(v),
            Buf::F16(v) => Grad::from(v),
            Buf::BF16(v) => Grad::from(v),
        }
    }
    fn grad_mut(&mut self) -> GradMut<'_> {
        match self {
            Buf::F32(v) => GradMut::from(v),
            Buf::F16(v) => GradMut::from(v),
            Buf::BF16(v) => GradMut::from(v),
        }
    }
    /// Elements `r` of this buffer as a buffer of their own.
    fn slice(&self, r: std::ops::Range<usize>) -> Buf {
        match self {
            Buf::F32(v) => Buf::F32(v[r].to_vec()),
            Buf::F16(v) => Buf::F16(v[r].to_vec()),
            Buf::BF16(v) => Buf::BF16(v[r].to_vec()),
        }
    }
}

/// xorshift64*: the same data on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A random finite f32 with magnitude in [2^lo, 2^hi).
    fn f32(&mut self, lo: i32, hi: i32) -> f32 {
        let r = self.next();
        let m = 1.0 + (r >> 41) as f32 / (1u64 << 23) as f32;
        let e = lo + ((r >> 8) % (hi - lo) as u64) as i32;
        let s = if r & 1 == 1 { -1.0 } else { 1.0 };
        s * m * 2f32.powi(e)
    }
    fn f32s(&mut self, n: usize, lo: i32, hi: i32) -> Buf {
        Buf::F32((0..n).map(|_| self.f32(lo, hi)).collect())
    }
    fn f16s(&mut self, n: usize, lo: i32, hi: i32) -> Buf {
        Buf::F16((0..n).map(|_| f16::from_f32(self.f32(lo, hi))).collect())
    }
    fn bf16s(&mut self, n: usize, lo: i32, hi: i32) -> Buf {
        Buf::BF16((0..n).map(|_| bf16::from_f32(self.f32(lo, hi))).collect())
    }
}

/// A gradient set; `null[i]` marks an empty buffer passed with `data == NULL`.
#[derive(Clone)]
struct Set {
    bufs: Vec<Buf>,
    null: Vec<bool>,
}

impl Set {
    fn new(bufs: Vec<Buf>) -> Set {
        let null = bufs.iter().map(|b| b.len() == 0).collect();
        Set { bufs, null }
    }
    fn grads(&self) -> Vec<Grad<'_>> {
        self.bufs.iter().map(Buf::grad).collect()
    }
    fn grads_mut(&mut self) -> Vec<GradMut<'_>> {
        self.bufs.iter_mut().map(Buf::grad_mut).collect()
    }
    /// FNV-1a 64 over the bytes of every buffer, in order (`abi_cases.c` computes the same).
    fn hash(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in &self.bufs {
            for &x in b.bytes() {
                h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

fn sets() -> Vec<Set> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let small = Set::new(vec![
        r.f32s(1000, -8, 8),
        r.f16s(333, -10, 10),
        r.bf16s(77, -20, 20),
        Buf::F32(vec![]),
        r.bf16s(1, 0, 3),
    ]);
    // More than the 256 KiB fork threshold and several 65536-element chunks: the parallel path.
    let big = Set::new(vec![
        r.f32s(3 * 65536 + 17, -30, 30),
        r.bf16s(200_001, -40, 40),
        r.f16s(70_000, -14, 14),
    ]);
    let mut nan = Set::new(vec![
        r.f32s(100, -3, 3),
        r.f16s(50, -3, 3),
        r.bf16s(30, -3, 3),
    ]);
    if let Buf::F16(v) = &mut nan.bufs[1] {
        v[10] = f16::INFINITY;
        v[20] = f16::NAN;
    }
    if let Buf::BF16(v) = &mut nan.bufs[2] {
        v[3] = bf16::NAN;
    }
    let mut inf = Set::new(vec![r.bf16s(40, -3, 3), r.f32s(10, -3, 3)]);
    if let Buf::BF16(v) = &mut inf.bufs[0] {
        v[7] = bf16::NEG_INFINITY;
    }
    if let Buf::F32(v) = &mut inf.bufs[1] {
        v[9] = f32::INFINITY;
    }
    let huge = Set::new(vec![Buf::F32(vec![3e38; 1000])]);
    let special = Set::new(vec![
        Buf::F32(vec![
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(0x007f_ffff),
            f32::MIN_POSITIVE,
            f32::MAX,
            -f32::MAX,
            1.0,
        ]),
        Buf::F16(vec![
            f16::from_bits(1),
            f16::from_bits(0x83ff),
            f16::MAX,
            f16::MIN,
            f16::from_f32(-0.0),
        ]),
        Buf::BF16(vec![
            bf16::from_bits(1),
            bf16::MAX,
            bf16::MIN_POSITIVE,
            bf16::ONE,
        ]),
    ]);
    let empty = Set::new(vec![]);
    let empty_bufs = Set {
        bufs: vec![Buf::F32(vec![]), Buf::F16(vec![]), Buf::BF16(vec![])],
        // the middle one is passed with a non-NULL (aligned) pointer
        null: vec![true, false, true],
    };
    // Pieces of `small` cut at arbitrary element boundaries, as shards would hold it.
    let [a, b, c, _, e] = &small.bufs[..] else {
        unreachable!()
    };
    let p0 = Set::new(vec![a.slice(0..123)]);
    let p1 = Set::new(vec![a.slice(123..1000), b.slice(0..200)]);
    let p2 = Set::new(vec![b.slice(200..333), c.clone(), e.clone()]);
    let p3 = Set::new(vec![]);
    // One f32 buffer, and the same numbers as three buffers: the exact summation gives both the
    // same norm and the same clipped bytes.
    let whole_a = Set::new(vec![a.clone()]);
    let split_a = Set::new(vec![a.slice(0..123), a.slice(123..500), a.slice(500..1000)]);
    // Sums on a rounding tie broken only by a far smaller term: with 1.5 the exact L2 sum
    // 2.25 + 2^-52 + 2^-106 + 2^-298 rounds up and the L1 sum 1.5 + 2^-26 + 2^-53 + 2^-149 too,
    // where a sum that loses the last term lands on the tie and rounds to even. The same numbers
    // in three buffers of three dtypes.
    let tiny = [2f32.powi(-26), 2f32.powi(-53), f32::from_bits(1)];
    let hard = Set::new(vec![Buf::F32(vec![1.5, tiny[0], tiny[1], tiny[2]])]);
    let hard_split = Set::new(vec![
        Buf::F32(vec![tiny[2]]),
        Buf::BF16(vec![bf16::from_f32(tiny[1]), bf16::from_f32(tiny[0])]),
        Buf::F16(vec![f16::from_f32(1.5)]),
    ]);
    vec![
        small, big, nan, inf, huge, special, empty, empty_bufs, p0, p1, p2, p3, whole_a, split_a,
        hard, hard_split,
    ]
}

const SMALL: usize = 0;
const BIG: usize = 1;
const NAN: usize = 2;
const INF: usize = 3;
const HUGE: usize = 4;
const SPECIAL: usize = 5;
const EMPTY: usize = 6;
const EMPTY_BUFS: usize = 7;
const PIECES: std::ops::Range<usize> = 8..12;
const WHOLE_A: usize = 12;
const SPLIT_A: usize = 13;
const HARD: usize = 14;
const HARD_SPLIT: usize = 15;

/// The operations of `abi_cases.c` (same numbers there).
#[derive(Clone, Copy)]
enum Op {
    TotalNorm = 0,
    ClipGradNorm = 1,
    ClipWithNorm = 2,
    Scale = 3,
    ClipValue = 4,
    FirstNonfinite = 5,
    /// Partials of sets `set..set_end`, merged in order, and finished.
    Partial = 6,
    /// `gradclip_total_norm_with`.
    TotalNormWith = 7,
    /// `gradclip_clip_grad_norm_with`.
    ClipGradNormWith = 8,
    /// Exact partials of sets `set..set_end`, merged in order (and in reverse order in C),
    /// finished and summed.
    ExactPartial = 9,
}

/// One call and what the Rust API says it gives.
struct Case {
    op: Op,
    set: usize,
    set_end: usize,
    a: f64,
    b: f64,
    policy: u32,
    summation: u32,
    status: i32,
    /// total norm / report (norm, coef) / partial bytes (40 or 96), as words.
    r: [u64; 12],
    clipped: i32,
    /// `gradclip_partial_finish` / `gradclip_exact_partial_finish`: its status and value.
    fin_status: i32,
    fin: u64,
    /// `gradclip_exact_partial_sum`'s value.
    sum: u64,
    hash: u64,
    bad: Option<NonFinite>,
}

impl Case {
    fn new(op: Op, set: usize, a: f64, b: f64) -> Case {
        Case {
            op,
            set,
            set_end: set + 1,
            a,
            b,
            policy: 0,
            summation: 0,
            status: 0,
            r: [0; 12],
            clipped: 0,
            fin_status: 0,
            fin: 0,
            sum: 0,
            hash: 0,
            bad: None,
        }
    }
}

/// The contract's status of a Rust error.
fn status(e: &Error) -> i32 {
    match e {
        Error::NonFinite(_) => 1,
        Error::NormOverflow { .. } => -5,
        _ => -2,
    }
}

fn norm_type(p: f64) -> NormType {
    if p == f64::INFINITY {
        NormType::Inf
    } else {
        NormType::P(p)
    }
}

fn words(p: &NormPartial) -> [u64; 12] {
    let mut w = [0; 12];
    w[..5].copy_from_slice(&bytemuck::cast::<_, [u64; 5]>(*p));
    w
}

fn exact_words(p: &ExactPartial) -> [u64; 12] {
    bytemuck::cast(*p)
}

fn summation(v: u32) -> Summation {
    [Summation::Compensated, Summation::Exact][v as usize]
}

fn policy(v: u32) -> NonFinitePolicy {
    [
        NonFinitePolicy::Error,
        NonFinitePolicy::Skip,
        NonFinitePolicy::Propagate,
    ][v as usize]
}

/// Records a failed call's status, and its first non-finite element.
fn record_error(c: &mut Case, e: Error) {
    c.status = status(&e);
    if let Error::NonFinite(nf) = e {
        c.bad = Some(nf);
    }
}

/// `clip_grad_norm_` on `set` with the case's arguments (a = max_norm, b = norm type).
fn expect_clip(c: &mut Case, set: &mut Set) {
    let options = ClipOptions {
        norm_type: norm_type(c.b),
        on_nonfinite: policy(c.policy),
        summation: summation(c.summation),
        ..ClipOptions::default()
    };
    match clip_grad_norm_(&mut set.grads_mut(), c.a, options) {
        Ok(rep) => {
            c.r[0] = rep.total_norm.to_bits();
            c.r[1] = rep.clip_coef.to_bits();
            c.clipped = rep.clipped.into();
            c.bad = rep.nonfinite;
            if rep.nonfinite.is_some() && options.on_nonfinite == NonFinitePolicy::Skip {
                c.status = 1; // GRADCLIP_NONFINITE: found, nothing written
            }
        }
        Err(e) => record_error(c, e),
    }
}

/// The exact partials of `sets` (the C calls' results: all-zero for an empty set once the norm
/// type is accepted), merged in order.
fn merged_exact(sets: &[Set], nt: NormType) -> Result<ExactPartial, Error> {
    let mut acc = ExactPartial::EMPTY;
    for s in sets {
        let p = exact_partial(&s.grads(), nt)?;
        acc = acc.merge(if s.bufs.is_empty() {
            ExactPartial::EMPTY
        } else {
            p
        });
    }
    Ok(acc)
}

/// Fills in what the Rust API gives for `c` on `sets`.
fn expect(mut c: Case, sets: &[Set]) -> Case {
    let mut set = sets[c.set].clone();
    match c.op {
        Op::TotalNorm => match get_total_norm(&set.grads(), norm_type(c.a)) {
            Ok(v) => c.r[0] = v.to_bits(),
            Err(e) => record_error(&mut c, e),
        },
        Op::TotalNormWith => {
            match get_total_norm_with(&set.grads(), norm_type(c.a), summation(c.summation)) {
                Ok(v) => c.r[0] = v.to_bits(),
                Err(e) => record_error(&mut c, e),
            }
        }
        Op::ClipGradNorm | Op::ClipGradNormWith => expect_clip(&mut c, &mut set),
        Op::ClipWithNorm => {
            if let Err(e) = clip_grads_with_norm_(&mut set.grads_mut(), c.a, c.b) {
                c.status = status(&e);
            }
        }
        Op::Scale => {
            if let Err(e) = scale_(&mut set.grads_mut(), c.a) {
                c.status = status(&e);
            }
        }
        Op::ClipValue => {
            if let Err(e) = clip_grad_value_(&mut set.grads_mut(), c.a) {
                c.status = status(&e);
            }
        }
        Op::FirstNonfinite => {
            c.bad = first_nonfinite(&set.grads());
            c.status = i32::from(c.bad.is_some());
        }
        Op::Partial => {
            let mut acc = NormPartial::EMPTY;
            for s in &sets[c.set..c.set_end] {
                // n == 0 gives the all-zero identity in C (the norm type still checked).
                let p = if s.bufs.is_empty() {
                    NormPartial::new(norm_type(c.a)).map(|_| NormPartial::EMPTY)
                } else {
                    total_norm_partial(&s.grads(), norm_type(c.a))
                };
                match p {
                    Ok(p) => acc = acc.merge(p),
                    Err(e) => {
                        c.status = status(&e);
                        break;
                    }
                }
            }
            if c.status == 0 {
                c.r = words(&acc);
                let v = acc.finish();
                if acc.is_finite() && !v.is_finite() {
                    c.fin_status = -5;
                } else {
                    c.fin = v.to_bits();
                }
            }
        }
        Op::ExactPartial => match merged_exact(&sets[c.set..c.set_end], norm_type(c.a)) {
            Ok(acc) => {
                c.r = exact_words(&acc);
                c.fin = acc.finish().to_bits();
                c.sum = acc.sum().to_bits();
            }
            Err(e) => c.status = status(&e),
        },
    }
    c.hash = set.hash();
    c
}

fn cases(sets: &[Set]) -> Vec<Case> {
    use Op::*;
    let inf = f64::INFINITY;
    let nan = f64::NAN;
    let norms = [2.0, 1.0, inf, 3.0, 0.5, 1.5];
    let mut out = Vec::new();
    let mut push = |c: Case| out.push(expect(c, sets));
    for set in [SMALL, BIG, NAN, INF, HUGE, SPECIAL, EMPTY, EMPTY_BUFS] {
        for p in norms {
            push(Case::new(TotalNorm, set, p, 0.0));
            push(Case::new(Partial, set, p, 0.0));
        }
        push(Case::new(TotalNorm, set, 0.01, 0.0));
        push(Case::new(Partial, set, 0.01, 0.0));
        for (max_norm, p) in [(1.0, 2.0), (1e30, 2.0), (0.5, 1.0), (2.0, inf), (1.0, 3.0)] {
            for policy in 0..3 {
                let mut c = Case::new(ClipGradNorm, set, max_norm, p);
                c.policy = policy;
                push(c);
            }
        }
        push(Case::new(ClipGradNorm, set, 1.0, 0.01));
        for (max_norm, total) in [(1.0, 123.5), (1.0, 0.5), (1.0, nan), (1.0, inf), (1.0, 0.0)] {
            push(Case::new(ClipWithNorm, set, max_norm, total));
        }
        for f in [0.5, 1.0, 3.0, 1e-40, -2.0, 0.0] {
            push(Case::new(Scale, set, f, 0.0));
        }
        for v in [0.1, 0.0, inf, 1e-3, 7.0] {
            push(Case::new(ClipValue, set, v, 0.0));
        }
        push(Case::new(FirstNonfinite, set, 0.0, 0.0));
    }
    for set in [
        SMALL, BIG, NAN, INF, HUGE, SPECIAL, EMPTY, EMPTY_BUFS, WHOLE_A, SPLIT_A, HARD, HARD_SPLIT,
    ] {
        for p in norms {
            push(Case::new(ExactPartial, set, p, 0.0));
            for summation in 0..2 {
                let mut c = Case::new(TotalNormWith, set, p, 0.0);
                c.summation = summation;
                push(c);
            }
        }
        for (max_norm, p) in [(1.0, 2.0), (1e30, 2.0), (0.5, 1.0), (2.0, inf), (1.0, 3.0)] {
            for policy in 0..3 {
                for summation in 0..2 {
                    let mut c = Case::new(ClipGradNormWith, set, max_norm, p);
                    c.policy = policy;
                    c.summation = summation;
                    push(c);
                }
            }
        }
    }
    // The norm of a set cut into pieces: partials merged in order.
    for p in norms {
        let mut c = Case::new(Partial, PIECES.start, p, 0.0);
        c.set_end = PIECES.end;
        push(c);
        let mut c = Case::new(ExactPartial, PIECES.start, p, 0.0);
        c.set_end = PIECES.end;
        push(c);
    }
    // Rejected arguments give the status the Rust error maps to.
    for p in [0.0, -1.0, nan, -inf] {
        push(Case::new(TotalNorm, SMALL, p, 0.0));
        push(Case::new(Partial, SMALL, p, 0.0));
        push(Case::new(Partial, EMPTY, p, 0.0));
        push(Case::new(ClipGradNorm, SMALL, 1.0, p));
        push(Case::new(ExactPartial, SMALL, p, 0.0));
        push(Case::new(ExactPartial, EMPTY, p, 0.0));
        for summation in 0..2 {
            let mut c = Case::new(TotalNormWith, SMALL, p, 0.0);
            c.summation = summation;
            push(c);
            let mut c = Case::new(ClipGradNormWith, SMALL, 1.0, p);
            c.summation = summation;
            push(c);
        }
    }
    // A P norm has no exact partial, with or without buffers.
    for p in [3.0, 0.01] {
        push(Case::new(ExactPartial, EMPTY, p, 0.0));
    }
    for m in [0.0, -1.0, nan, inf] {
        push(Case::new(ClipGradNorm, SMALL, m, 2.0));
        push(Case::new(ClipWithNorm, SMALL, m, 2.0));
    }
    push(Case::new(ClipWithNorm, SMALL, 1.0, -1.0));
    for f in [nan, inf, 1e39] {
        push(Case::new(Scale, SMALL, f, 0.0));
    }
    for v in [-1.0, nan] {
        push(Case::new(ClipValue, SMALL, v, 0.0));
    }
    out
}

/// What the exact rows must show before C runs them: the exact partial of `small` cut into
/// pieces has the bytes of the whole set's; one f32 buffer and the same numbers as three give
/// the same exact norm and the same clipped bytes; a P norm has no exact partial.
fn check_partition_invariance(cases: &[Case]) {
    let find = |op: Op, set: usize, set_end: usize, a: f64, b: f64, policy: u32, summation: u32| {
        cases
            .iter()
            .find(|c| {
                c.op as u32 == op as u32
                    && (c.set, c.set_end) == (set, set_end)
                    && c.a.to_bits() == a.to_bits()
                    && c.b.to_bits() == b.to_bits()
                    && (c.policy, c.summation) == (policy, summation)
            })
            .expect("a case of the table")
    };
    for p in [2.0, 1.0, f64::INFINITY] {
        let whole = find(Op::ExactPartial, SMALL, SMALL + 1, p, 0.0, 0, 0);
        let pieces = find(Op::ExactPartial, PIECES.start, PIECES.end, p, 0.0, 0, 0);
        assert_eq!((whole.status, pieces.status), (0, 0));
        assert_eq!(whole.r, pieces.r, "exact partial bytes of pieces, p = {p}");
        let norm = find(Op::TotalNormWith, SMALL, SMALL + 1, p, 0.0, 0, 1);
        assert_eq!(
            norm.r[0], pieces.fin,
            "exact norm = finished pieces, p = {p}"
        );
        let one = find(Op::TotalNormWith, WHOLE_A, WHOLE_A + 1, p, 0.0, 0, 1);
        let three = find(Op::TotalNormWith, SPLIT_A, SPLIT_A + 1, p, 0.0, 0, 1);
        assert_eq!(
            one.r[0], three.r[0],
            "exact norm of one buffer and of three, p = {p}"
        );
    }
    for policy in 0..3 {
        let one = find(
            Op::ClipGradNormWith,
            WHOLE_A,
            WHOLE_A + 1,
            1.0,
            2.0,
            policy,
            1,
        );
        let three = find(
            Op::ClipGradNormWith,
            SPLIT_A,
            SPLIT_A + 1,
            1.0,
            2.0,
            policy,
            1,
        );
        assert_eq!(
            (one.r, one.hash),
            (three.r, three.hash),
            "exact clip, one vs three"
        );
        assert_eq!(one.clipped, 1);
    }
    // The hard sums: the two summations differ (so the table tells them apart), and the exact
    // one does not see the split.
    for p in [2.0, 1.0] {
        let comp = find(Op::TotalNormWith, HARD, HARD + 1, p, 0.0, 0, 0);
        let exact = find(Op::TotalNormWith, HARD, HARD + 1, p, 0.0, 0, 1);
        let split = find(Op::TotalNormWith, HARD_SPLIT, HARD_SPLIT + 1, p, 0.0, 0, 1);
        assert_ne!(
            comp.r[0], exact.r[0],
            "compensated = exact on the hard set, p = {p}"
        );
        assert_eq!(
            exact.r[0], split.r[0],
            "exact norm of the hard set split, p = {p}"
        );
        let whole = find(Op::ExactPartial, HARD, HARD + 1, p, 0.0, 0, 0);
        let pieces = find(Op::ExactPartial, HARD_SPLIT, HARD_SPLIT + 1, p, 0.0, 0, 0);
        assert_eq!(
            whole.r, pieces.r,
            "exact partial bytes of the hard set split, p = {p}"
        );
        assert_eq!(whole.fin, exact.r[0]);
    }
    let p_norm = find(Op::ExactPartial, SMALL, SMALL + 1, 3.0, 0.0, 0, 0);
    assert_eq!(p_norm.status, -2, "a P norm has no exact partial");
}

/// `data.bin` (every buffer of every set, 64-byte aligned) and `expected.h` (where each buffer
/// is, the sets, the cases).
fn write_inputs(dir: &std::path::Path) {
    let sets = sets();
    let cases = cases(&sets);
    assert!(cases.iter().any(|c| c.status == -5), "an overflow case");
    assert!(
        cases.iter().any(|c| c.fin_status == -5),
        "a finish overflow"
    );
    assert!(cases.iter().any(|c| c.status == 1), "a non-finite case");
    check_partition_invariance(&cases);

    let mut data = Vec::new();
    let mut h = String::new();
    writeln!(h, "/* Written by capi/tests/c_abi.rs: do not edit. */").unwrap();
    writeln!(h, "#define GC_VERSION \"{}\"", env!("CARGO_PKG_VERSION")).unwrap();
    writeln!(h, "#define GC_ISA \"{}\"", Isa::selected().name()).unwrap();
    writeln!(h, "static const tbuf BUFS[] = {{").unwrap();
    let mut set_rows = Vec::new();
    let mut nbuf = 0;
    for s in &sets {
        set_rows.push((nbuf, s.bufs.len()));
        for (b, &null) in s.bufs.iter().zip(&s.null) {
            while data.len() % 64 != 0 {
                data.push(0xA5);
            }
            let offset = if null {
                "GC_NULL".to_string()
            } else {
                data.len().to_string()
            };
            data.extend_from_slice(b.bytes());
            writeln!(h, "  {{{offset}, {}, {}}},", b.len(), b.dtype()).unwrap();
            nbuf += 1;
        }
    }
    if nbuf == 0 {
        writeln!(h, "  {{0, 0, 0}},").unwrap();
    }
    writeln!(h, "}};\nstatic const tset SETS[] = {{").unwrap();
    for (first, count) in set_rows {
        writeln!(h, "  {{{first}, {count}}},").unwrap();
    }
    writeln!(h, "}};\n#define GC_DATA_BYTES {}", data.len()).unwrap();
    writeln!(h, "static const tcase CASES[] = {{").unwrap();
    for c in &cases {
        let bad = c.bad.map_or("0, 0, 0, 0".to_string(), |b| {
            format!(
                "1, {}, {}, 0x{:016x}u",
                b.buffer,
                b.index,
                b.value.to_bits()
            )
        });
        let r: Vec<String> = c.r.iter().map(|w| format!("0x{w:016x}u")).collect();
        writeln!(
            h,
            "  {{{}, {}, {}, 0x{:016x}u, 0x{:016x}u, {}, {}, {}, {{{}}}, {}, {}, 0x{:016x}u, 0x{:016x}u, 0x{:016x}u, {}}},",
            c.op as u32,
            c.set,
            c.set_end,
            c.a.to_bits(),
            c.b.to_bits(),
            c.policy,
            c.summation,
            c.status,
            r.join(", "),
            c.clipped,
            c.fin_status,
            c.fin,
            c.sum,
            c.hash,
            bad
        )
        .unwrap();
    }
    writeln!(h, "}};").unwrap();
    std::fs::write(dir.join("data.bin"), &data).unwrap();
    std::fs::write(dir.join("expected.h"), h).unwrap();
}

#[test]
fn c_results_are_the_rust_apis_bits() {
    if !have("gcc") {
        return;
    }
    let dir = scratch("inputs");
    write_inputs(&dir);
    let include = format!("-I{}", dir.display());
    let src = capi_dir().join("tests/c/abi_cases.c");
    let data = dir.join("data.bin");
    build_and_run(
        "gcc",
        &src,
        &[&include],
        "abi_cases",
        &[&data],
        "abi_cases: ok",
    );
}

#[test]
fn c_contract_statuses_and_rules() {
    if have("gcc") {
        let src = capi_dir().join("tests/c/abi_contract.c");
        build_and_run("gcc", &src, &[], "abi_contract", &[], "abi_contract: ok");
    }
}

#[test]
fn header_builds_as_cxx17() {
    if have("g++") {
        let src = capi_dir().join("tests/c/header.cpp");
        build_and_run("g++", &src, &[], "header_cxx", &[], "header.cpp: ok");
    }
}

#[test]
fn example_clip_c_builds_and_runs() {
    if !have("gcc") {
        return;
    }
    let src = capi_dir().join("examples/clip.c");
    // Against the static library, with the sanitizers ...
    let out = build_and_run("gcc", &src, &[], "clip_static", &[], "clipped yes");
    // ... and against the shared one, as a user would link it.
    let exe = scratch("clip_shared").join("clip_shared");
    let lib = lib_dir();
    run_ok(
        Command::new("gcc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
            .arg("-I")
            .arg(capi_dir().join("include"))
            .arg(&src)
            .arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-lgradclip", "-lm"])
            .arg("-o")
            .arg(&exe),
    );
    assert_eq!(
        out,
        run_ok(&mut Command::new(&exe)),
        "static and shared builds agree"
    );
}
