//! `gradclip bench`: the kernels against naive loops and the memory-bandwidth rooflines.
//!
//! Every row is measured as interleaved samples (roofline, kernel, naive, roofline, kernel, …)
//! so that each ratio compares runs made under the same machine load; the median of the samples
//! is reported. Bandwidths count the buffer's bytes once (a read-modify-write moves them twice,
//! and so does its roofline).

use crate::outln;
use std::cell::RefCell;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use gradclip::baseline::{compute_roofline, read_roofline_par, rmw_roofline_par};
use gradclip::{
    bf16, clip_grad_norm_, dispatch, f16, get_total_norm, get_total_norm_exact, scale_,
    ClipOptions, DType, Element, Grad, GradMut, Isa, NormType,
};
use rayon::prelude::*;

/// Arguments of `gradclip bench`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  gradclip bench\n  gradclip bench --size 1073741824 --threads 2 --json\n\n\
Two rooflines: the read roofline (XOR of the same bytes, measured beside each row) and, for the \
sums (norm_l2, norm_l1, clip_noop, the exact rows), the compute roofline: each element widened \
to f64 and its square added to plain f64 lanes, in cache, on the ISA the sums run on, times the \
thread count (rows compute_roofline_<isa>, one per dtype and ISA). `--json` prints the rows of \
its schema (norm_l2, norm_l1, norm_inf, scale, clip_noop, many_small) and, only when asked for \
with --op, the exact and compute_roofline rows (same keys).\n\n\
--size is at most 64 GiB and must fit four times in the memory available; --samples is at \
most 1000, --threads at most 1024 (exit 2 otherwise). Output to a pipe that closes early \
(`gradclip bench | head -1`) ends the run quietly with exit status 0."
)]
pub struct BenchArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Bytes per buffer for the memory-resident rows (a cache-resident 256 KiB row is always added).
    #[arg(long, default_value_t = 256 << 20)]
    size: usize,
    /// Thread count to measure (default: 1 and 2).
    #[arg(long)]
    threads: Option<usize>,
    /// Samples per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    samples: usize,
    /// Only these ops (repeatable): norm_l2, norm_l1, norm_inf, scale, clip_noop, clip, many_small,
    /// the exact mode: norm_l2_exact, norm_l1_exact (gradient-like data), norm_l2_exact_heavy
    /// (heavy-tailed), norm_l2_exact_adversarial (the whole finite range), and compute_roofline
    /// (the sums' unavoidable arithmetic in cache, per ISA).
    #[arg(long = "op", value_parser = [
        "norm_l2", "norm_l1", "norm_inf", "scale", "clip_noop", "clip", "many_small",
        "norm_l2_exact", "norm_l1_exact", "norm_l2_exact_heavy", "norm_l2_exact_adversarial",
        "compute_roofline",
    ])]
    ops: Vec<String>,
    /// Only these dtypes (repeatable): f32, f16, bf16.
    #[arg(long = "dtype", value_parser = ["f32", "f16", "bf16"])]
    dtypes: Vec<String>,
    /// Skip the cache-resident 256 KiB rows.
    #[arg(long)]
    no_cache_rows: bool,
}

/// Which rows to run.
struct Filter {
    ops: Vec<String>,
    dtypes: Vec<String>,
}

impl Filter {
    fn op(&self, op: &str) -> bool {
        self.ops.is_empty() || self.ops.iter().any(|o| o == op)
    }
    fn dtype(&self, d: DType) -> bool {
        self.dtypes.is_empty() || self.dtypes.iter().any(|o| o == d.name())
    }
}

/// One measured row.
struct Row {
    op: &'static str,
    dtype: DType,
    bytes: usize,
    threads: usize,
    gbps: f64,
    roofline_gbps: f64,
    naive_gbps: f64,
    /// Table-only comparison (many_small: one buffer of the same bytes; exact rows: the
    /// compensated norm of the same data), as (label, GB/s).
    extra: Option<(&'static str, f64)>,
    /// The compute roofline of the sums for this dtype on the sums' ISA, times the thread count
    /// (rows of sums only).
    compute_gbps: Option<f64>,
}

impl Row {
    /// A row from interleaved medians `[roofline, kernel, naive]` in seconds per call.
    fn measured(op: &'static str, dtype: DType, bytes: usize, threads: usize, t: &[f64]) -> Row {
        Row {
            op,
            dtype,
            bytes,
            threads,
            gbps: gbps(bytes, t[1]),
            roofline_gbps: gbps(bytes, t[0]),
            naive_gbps: gbps(bytes, t[2]),
            extra: None,
            compute_gbps: None,
        }
    }

    /// Attaches the compute roofline to a row of sums.
    fn with_compute(mut self, compute: &Compute) -> Row {
        self.compute_gbps = compute.for_sums(self.dtype, self.threads);
        self
    }
}

/// The compute rooflines measured at the start of the run: (dtype, ISA, GB/s on one thread).
#[derive(Default)]
struct Compute(Vec<(DType, Isa, f64)>);

impl Compute {
    /// The sums' compute roofline for `dtype` with `threads` threads: one thread's rate on the
    /// ISA the sums run on, times the thread count.
    fn for_sums(&self, dtype: DType, threads: usize) -> Option<f64> {
        let isa = dispatch().sums;
        self.0
            .iter()
            .find(|(d, i, _)| *d == dtype && *i == isa)
            .map(|(_, _, g)| g * threads as f64)
    }
}

/// The compute roofline rows: per dtype and available ISA, on a cache-resident 256 KiB buffer
/// on the calling thread, interleaved with the read roofline of the same bytes and the naive
/// loop. Returns the rows and the rates the other rows are compared with.
fn bench_compute(samples: usize, filter: &Filter) -> (Vec<Row>, Compute) {
    fn one<T: Wrap>(rows: &mut Vec<Row>, compute: &mut Compute, samples: usize, filter: &Filter) {
        if !filter.dtype(T::DTYPE) {
            return;
        }
        let n = (256 << 10) / std::mem::size_of::<T>();
        let mut v = filled(n, T::ZERO);
        fill(&mut v, 0xC0FE);
        let raw = copied(bytemuck::cast_slice::<T, u8>(&v));
        let bytes = raw.len();
        for isa in Isa::available() {
            let t = measure(
                samples,
                &mut [
                    &mut || {
                        black_box(read_roofline_par(black_box(&raw), 1));
                    },
                    &mut || {
                        black_box(compute_roofline(T::wrap(black_box(&v)), isa).ok());
                    },
                    &mut || {
                        black_box(naive_norm(black_box(&v), NormType::L2));
                    },
                ],
            );
            let op = match isa {
                Isa::Avx512 => "compute_roofline_avx512",
                Isa::Avx2 => "compute_roofline_avx2",
                Isa::Neon => "compute_roofline_neon",
                _ => "compute_roofline_portable",
            };
            let row = Row::measured(op, T::DTYPE, bytes, 1, &t);
            compute.0.push((T::DTYPE, isa, row.gbps));
            rows.push(row);
        }
    }
    let mut rows = Vec::new();
    let mut compute = Compute::default();
    one::<f32>(&mut rows, &mut compute, samples, filter);
    one::<f16>(&mut rows, &mut compute, samples, filter);
    one::<bf16>(&mut rows, &mut compute, samples, filter);
    (rows, compute)
}

/// The largest `--size`: the bench holds [`BUFFERS`] buffers of it at once.
const MAX_SIZE: usize = 64 << 30;
/// Buffers of `--size` bytes alive at once (the data, its bytes, the roofline's, the naive copy).
const BUFFERS: usize = 4;
/// The largest `--samples`.
const MAX_SAMPLES: usize = 1000;
/// The largest `--threads`.
const MAX_THREADS: usize = 1024;

/// `n` copies of `v`, or the end of the run (one line, exit 2) when the memory is not there.
fn filled<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut out = Vec::new();
    if out.try_reserve_exact(n).is_err() {
        no_memory(n.saturating_mul(std::mem::size_of::<T>()));
    }
    out.resize(n, v);
    out
}

/// A copy of `s`, as [`filled`].
fn copied<T: Clone>(s: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    if out.try_reserve_exact(s.len()).is_err() {
        no_memory(std::mem::size_of_val(s));
    }
    out.extend_from_slice(s);
    out
}

fn no_memory(bytes: usize) -> ! {
    eprintln!(
        "gradclip bench: cannot allocate {} for a buffer",
        human_bytes(bytes)
    );
    std::process::exit(2);
}

/// `MemAvailable` of `/proc/meminfo`, in bytes (Linux; `None` elsewhere).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks the arguments before anything is allocated: every size bounded, and the buffers of
/// `--size` must fit in the memory available now.
fn check_args(args: &BenchArgs) -> Result<Vec<usize>, String> {
    if !(4096..=MAX_SIZE).contains(&args.size) {
        return Err(format!(
            "--size must be between 4096 bytes and {}, got {}",
            human_bytes(MAX_SIZE),
            args.size
        ));
    }
    if !(1..=MAX_SAMPLES).contains(&args.samples) {
        return Err(format!(
            "--samples must be between 1 and {MAX_SAMPLES}, got {}",
            args.samples
        ));
    }
    let threads = match args.threads {
        Some(t) if !(1..=MAX_THREADS).contains(&t) => {
            return Err(format!(
                "--threads must be between 1 and {MAX_THREADS}, got {t}"
            ))
        }
        Some(t) => vec![t],
        None => vec![1, 2],
    };
    let needed = (args.size as u64).saturating_mul(BUFFERS as u64);
    if let Some(free) = available_memory().filter(|&free| needed > free) {
        return Err(format!(
            "--size {} needs about {} of memory ({BUFFERS} buffers of that size); {} is available",
            human_bytes(args.size),
            human_bytes(usize::try_from(needed).unwrap_or(usize::MAX)),
            human_bytes(usize::try_from(free).unwrap_or(usize::MAX))
        ));
    }
    Ok(threads)
}

/// Runs `f` enough times per sample to last ≥ 20 ms, returns seconds per call.
fn sample(f: &mut dyn FnMut(), reps: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn reps_for(f: &mut dyn FnMut()) -> usize {
    let t = Instant::now();
    f();
    let one = t.elapsed().as_secs_f64().max(1e-7);
    ((0.02 / one).ceil() as usize).clamp(1, 100_000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Interleaved medians of several closures' seconds per call.
fn measure(samples: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let reps: Vec<usize> = fs.iter_mut().map(|f| reps_for(*f)).collect();
    let mut times = vec![Vec::with_capacity(samples); fs.len()];
    for _ in 0..samples.max(1) {
        for (i, f) in fs.iter_mut().enumerate() {
            times[i].push(sample(*f, reps[i]));
        }
    }
    times.into_iter().map(median).collect()
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// Deterministic gradient-like values in about [-1, 1].
fn fill<T: Element>(v: &mut [T], seed: u64) {
    let mut s = seed | 1;
    for x in v.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let u = ((s >> 40) as f32) / (1u64 << 24) as f32 * 2.0 - 1.0;
        *x = T::from_f32_rne(u);
    }
}

fn naive_norm<T: Element>(v: &[T], nt: NormType) -> f64 {
    match nt {
        NormType::L1 => v.iter().map(|x| (x.to_f32() as f64).abs()).sum(),
        NormType::Inf => v
            .iter()
            .fold(0.0f64, |m, x| m.max((x.to_f32() as f64).abs())),
        _ => v
            .iter()
            .map(|x| (x.to_f32() as f64) * (x.to_f32() as f64))
            .sum::<f64>()
            .sqrt(),
    }
}

fn naive_scale<T: Element>(v: &mut [T], c: f32) {
    for x in v.iter_mut() {
        *x = T::from_f32_rne(x.to_f32() * c);
    }
}

/// Wraps a slice of each dtype into the library's views.
trait Wrap: Element {
    fn wrap(v: &[Self]) -> Grad<'_>;
    fn wrap_mut(v: &mut [Self]) -> GradMut<'_>;
}
macro_rules! wrap_impl {
    ($t:ty, $v:ident) => {
        impl Wrap for $t {
            fn wrap(v: &[Self]) -> Grad<'_> {
                Grad::$v(v)
            }
            fn wrap_mut(v: &mut [Self]) -> GradMut<'_> {
                GradMut::$v(v)
            }
        }
    };
}
wrap_impl!(f32, F32);
wrap_impl!(f16, F16);
wrap_impl!(bf16, BF16);

fn bench_dtype<T: Wrap>(
    rows: &mut Vec<Row>,
    bytes: usize,
    threads: usize,
    samples: usize,
    filter: &Filter,
    compute: &Compute,
) {
    let ops = [
        "norm_l2",
        "norm_l1",
        "norm_inf",
        "scale",
        "clip_noop",
        "clip",
    ];
    if !filter.dtype(T::DTYPE) || !ops.iter().any(|o| filter.op(o)) {
        return;
    }
    let n = bytes / std::mem::size_of::<T>();
    let mut init = filled(n, T::ZERO);
    fill(&mut init, 0x5EED);
    let raw = copied(bytemuck::cast_slice::<T, u8>(&init));
    let buf = RefCell::new(init);
    let wrap = T::wrap;
    let wrap_mut = T::wrap_mut;
    let mut rmw_buf: Vec<f32> = filled(bytes / 4, 0.5);
    let dtype = T::DTYPE;
    let bytes = n * std::mem::size_of::<T>();

    for (op, nt) in [
        ("norm_l2", NormType::L2),
        ("norm_l1", NormType::L1),
        ("norm_inf", NormType::Inf),
    ] {
        if !filter.op(op) {
            continue;
        }
        let t = measure(
            samples,
            &mut [
                &mut || {
                    black_box(read_roofline_par(black_box(&raw), threads));
                },
                &mut || {
                    black_box(get_total_norm(&[wrap(black_box(&buf.borrow()))], nt).ok());
                },
                &mut || {
                    black_box(naive_norm(black_box(&buf.borrow()), nt));
                },
            ],
        );
        let row = Row::measured(op, dtype, bytes, threads, &t);
        rows.push(if nt == NormType::Inf {
            row
        } else {
            row.with_compute(compute)
        });
    }

    // Scale pass: alternate factors so the values stay in range over many samples.
    if filter.op("scale") {
        let mut flip = false;
        let mut flip2 = false;
        let t = measure(
            samples,
            &mut [
                &mut || rmw_roofline_par(black_box(&mut rmw_buf), black_box(1.0), threads),
                &mut || {
                    flip = !flip;
                    let c = if flip { 0.999 } else { 1.0 / 0.999 };
                    scale_(&mut [wrap_mut(&mut buf.borrow_mut())], c).ok();
                },
                &mut || {
                    flip2 = !flip2;
                    naive_scale(
                        &mut buf.borrow_mut(),
                        if flip2 { 0.999 } else { 1.0 / 0.999 },
                    );
                },
            ],
        );
        rows.push(Row::measured("scale", dtype, bytes, threads, &t));
    }

    // Clip with nothing to clip: must cost what the norm costs.
    if filter.op("clip_noop") {
        let t = measure(
            samples,
            &mut [
                &mut || {
                    black_box(read_roofline_par(black_box(&raw), threads));
                },
                &mut || {
                    black_box(
                        clip_grad_norm_(
                            &mut [wrap_mut(&mut buf.borrow_mut())],
                            1e30,
                            ClipOptions::default(),
                        )
                        .ok(),
                    );
                },
                &mut || {
                    black_box(naive_norm(black_box(&buf.borrow()), NormType::L2));
                },
            ],
        );
        rows.push(Row::measured("clip_noop", dtype, bytes, threads, &t).with_compute(compute));
    }
    if !filter.op("clip") {
        return;
    }

    // Full clip (norm, then scale): its floor is one read pass plus one read-modify-write pass.
    // Clip to 0.999 of the current norm, so every call clips; every 600 calls scale back up
    // (a 0.1% overhead) so the values never drift towards subnormals.
    let norm0 = get_total_norm(&[wrap(&buf.borrow())], NormType::L2).unwrap_or(1.0);
    let mut naive_buf = copied(&buf.borrow());
    let mut level = norm0;
    let mut calls = 0u32;
    let mut flip = false;
    let clean = measure(
        samples,
        &mut [
            &mut || {
                black_box(read_roofline_par(black_box(&raw), threads));
                rmw_roofline_par(black_box(&mut rmw_buf), black_box(1.0), threads);
            },
            &mut || {
                level *= 0.999;
                calls += 1;
                black_box(
                    clip_grad_norm_(
                        &mut [wrap_mut(&mut buf.borrow_mut())],
                        level,
                        ClipOptions::default(),
                    )
                    .ok(),
                );
                if calls.is_multiple_of(600) {
                    let up = norm0 / level;
                    scale_(&mut [wrap_mut(&mut buf.borrow_mut())], up).ok();
                    level = norm0;
                }
            },
            &mut || {
                // Its own copy: rescaling the kernel's buffer would leave the kernel's next call
                // with nothing to clip.
                flip = !flip;
                let n = naive_norm(&naive_buf, NormType::L2);
                let target = if flip { 0.999 * n } else { n / 0.999 };
                naive_scale(&mut naive_buf, (target / (n + 1e-6)) as f32);
            },
        ],
    );
    rows.push(Row::measured("clip", dtype, bytes, threads, &clean));
}

/// The data the exact rows run on.
#[derive(Clone, Copy, PartialEq)]
enum ExactData {
    /// Tensors of 1,000 to 1,000,000 elements, each N(0, σ) with σ log-uniform over 1e-6..1.
    GradientLike,
    /// The same tensors, Cauchy-distributed (heavy tails, clamped at 10^4) times σ.
    HeavyTailed,
    /// Random bit patterns over the whole finite range of the dtype (zeros and subnormals too).
    Adversarial,
}

/// xorshift64 step.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn unit(s: &mut u64) -> f64 {
    ((next(s) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Fills `v` with `kind` data, in parallel over 1 Mi-element pieces seeded by their index (so
/// the values do not depend on the thread count). A tensor boundary falls every few hundred
/// thousand elements.
fn fill_exact<T: Element>(v: &mut [T], kind: ExactData) {
    v.par_chunks_mut(1 << 20)
        .enumerate()
        .for_each(|(i, piece)| {
            let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            next(&mut s);
            let mut left = 0usize;
            let mut sigma = 1.0f64;
            for x in piece.iter_mut() {
                if left == 0 {
                    left = 1_000 + (next(&mut s) % 999_000) as usize;
                    sigma = 10f64.powf(-6.0 * unit(&mut s));
                }
                left -= 1;
                *x = match kind {
                    ExactData::GradientLike => {
                        let r = (-2.0 * unit(&mut s).ln()).sqrt();
                        T::from_f32_rne(
                            (r * (std::f64::consts::TAU * unit(&mut s)).cos() * sigma) as f32,
                        )
                    }
                    ExactData::HeavyTailed => {
                        // Clamped so that f16 stays finite (65504): tails up to 10^4 σ.
                        let c = (std::f64::consts::PI * (unit(&mut s) - 0.5))
                            .tan()
                            .clamp(-1e4, 1e4);
                        T::from_f32_rne((c * sigma) as f32)
                    }
                    ExactData::Adversarial => loop {
                        let bits = next(&mut s);
                        let y = if std::mem::size_of::<T>() == 2 {
                            T::from_abs_bits((bits & 0x7FFF) as u32)
                        } else {
                            T::from_abs_bits((bits & 0x7FFF_FFFF) as u32)
                        };
                        if y.abs_bits() < T::INF_BITS {
                            break y;
                        }
                    },
                };
            }
        });
}

/// Exact-mode rows: the exact norm, the read roofline, the naive loop and (table only) the
/// compensated norm of the same data, interleaved.
fn bench_exact<T: Wrap>(
    rows: &mut Vec<Row>,
    bytes: usize,
    threads: usize,
    samples: usize,
    filter: &Filter,
    compute: &Compute,
) {
    let ops = [
        "norm_l2_exact",
        "norm_l1_exact",
        "norm_l2_exact_heavy",
        "norm_l2_exact_adversarial",
    ];
    if !filter.dtype(T::DTYPE) || !ops.iter().any(|o| filter.op(o)) {
        return;
    }
    let n = bytes / std::mem::size_of::<T>();
    let bytes = n * std::mem::size_of::<T>();
    let mut data = vec![T::ZERO; n];
    let mut filled = None;
    for (op, nt, kind) in [
        ("norm_l2_exact", NormType::L2, ExactData::GradientLike),
        ("norm_l1_exact", NormType::L1, ExactData::GradientLike),
        ("norm_l2_exact_heavy", NormType::L2, ExactData::HeavyTailed),
        (
            "norm_l2_exact_adversarial",
            NormType::L2,
            ExactData::Adversarial,
        ),
    ] {
        if !filter.op(op) {
            continue;
        }
        if filled != Some(kind) {
            fill_exact(&mut data, kind);
            filled = Some(kind);
        }
        let raw: &[u8] = bytemuck::cast_slice(&data);
        let t = measure(
            samples,
            &mut [
                &mut || {
                    black_box(read_roofline_par(black_box(raw), threads));
                },
                &mut || {
                    black_box(get_total_norm_exact(&[T::wrap(black_box(&data))], nt).ok());
                },
                &mut || {
                    black_box(naive_norm(black_box(&data), nt));
                },
                &mut || {
                    black_box(get_total_norm(&[T::wrap(black_box(&data))], nt).ok());
                },
            ],
        );
        let mut row = Row::measured(op, T::DTYPE, bytes, threads, &t).with_compute(compute);
        row.extra = Some(("compensated", gbps(bytes, t[3])));
        rows.push(row);
    }
}

/// 10,000 buffers of 100..10,000 elements against one buffer of the same bytes.
fn bench_many_small(rows: &mut Vec<Row>, threads: usize, samples: usize) {
    let mut s = 0x1234_5678u64;
    let lens: Vec<usize> = (0..10_000)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            100 + (s % 9_901) as usize
        })
        .collect();
    let total: usize = lens.iter().sum();
    let mut one = vec![0f32; total];
    fill(&mut one, 77);
    let mut bufs = Vec::with_capacity(lens.len());
    let mut at = 0;
    for &l in &lens {
        bufs.push(one[at..at + l].to_vec());
        at += l;
    }
    let grads: Vec<Grad<'_>> = bufs.iter().map(Grad::from).collect();
    let raw: Vec<u8> = bytemuck::cast_slice(&one).to_vec();
    let bytes = total * 4;
    let t = measure(
        samples,
        &mut [
            &mut || {
                black_box(read_roofline_par(black_box(&raw), threads));
            },
            &mut || {
                black_box(get_total_norm(black_box(&grads), NormType::L2).ok());
            },
            &mut || {
                black_box(get_total_norm(&[Grad::from(black_box(&one))], NormType::L2).ok());
            },
            &mut || {
                black_box(
                    bufs.iter()
                        .map(|b| naive_norm(b, NormType::L2).powi(2))
                        .sum::<f64>(),
                );
            },
        ],
    );
    rows.push(Row {
        op: "many_small",
        dtype: DType::F32,
        bytes,
        threads,
        gbps: gbps(bytes, t[1]),
        roofline_gbps: gbps(bytes, t[0]),
        naive_gbps: gbps(bytes, t[3]),
        extra: Some(("one buffer", gbps(bytes, t[2]))),
        compute_gbps: None,
    });
}

/// The ops of the JSON schema (`gradclip bench --json`); the full clip row is table-only.
const JSON_OPS: [&str; 6] = [
    "norm_l2",
    "norm_l1",
    "norm_inf",
    "scale",
    "clip_noop",
    "many_small",
];

/// Rows printed with `--json` only when `--op` asks for them (same keys as the schema's rows).
const JSON_ON_REQUEST: [&str; 5] = [
    "norm_l2_exact",
    "norm_l1_exact",
    "norm_l2_exact_heavy",
    "norm_l2_exact_adversarial",
    "compute_roofline",
];

/// One `--json` line, fields in the documented order.
#[derive(serde::Serialize)]
struct JsonRow {
    op: &'static str,
    dtype: &'static str,
    bytes: usize,
    threads: usize,
    gbps: f64,
    roofline_gbps: f64,
    ratio_to_roofline: f64,
    naive_gbps: f64,
}

fn print_row(r: &Row, json: bool, filter: &Filter) {
    if json {
        let requested = JSON_ON_REQUEST
            .iter()
            .any(|o| r.op.starts_with(o) && filter.ops.iter().any(|f| f == o));
        if !JSON_OPS.contains(&r.op) && !requested {
            return;
        }
        let row = JsonRow {
            op: r.op,
            dtype: r.dtype.name(),
            bytes: r.bytes,
            threads: r.threads,
            gbps: r.gbps,
            roofline_gbps: r.roofline_gbps,
            ratio_to_roofline: r.gbps / r.roofline_gbps,
            naive_gbps: r.naive_gbps,
        };
        // Same spacing as `norm --json` and `clip --json`.
        if let Err(e) = super::safetensors_io::print_json(&row) {
            crate::out::failed(&e);
        }
    } else {
        let extra = match r.extra {
            Some((label, v)) => format!("  {label} {v:6.1} GB/s ({:.2}×)", r.gbps / v),
            None => String::new(),
        };
        let vs_compute = match r.compute_gbps {
            Some(c) => format!("{:>7.2}", r.gbps / c),
            None => format!("{:>7}", "-"),
        };
        outln!(
            "{:<25} {:<5} {:>10} {:>3} {:>8.1} {:>9.1} {:>7.2} {vs_compute} {:>9.1}×{extra}",
            r.op,
            r.dtype.name(),
            human_bytes(r.bytes),
            r.threads,
            r.gbps,
            r.roofline_gbps,
            r.gbps / r.roofline_gbps,
            r.gbps / r.naive_gbps,
        );
    }
}

fn human_bytes(b: usize) -> String {
    if b >= 1 << 40 {
        format!("{:.0} TiB", b as f64 / (1u64 << 40) as f64)
    } else if b >= 1 << 30 {
        format!("{:.0} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

/// Runs `gradclip bench`.
pub fn run(args: BenchArgs) -> ExitCode {
    let threads = match check_args(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gradclip bench: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = Filter {
        ops: args.ops.clone(),
        dtypes: args.dtypes.clone(),
    };
    if !args.json {
        let d = dispatch();
        let families = if d.sums == d.scale && d.max_abs == d.scale {
            String::new()
        } else {
            format!(
                " (sums on {}, max-abs on {}, scale on {})",
                d.sums.name(),
                d.max_abs.name(),
                d.scale.name()
            )
        };
        outln!(
            "gradclip bench — ISA {}{families}, {} CPUs; GB/s count the buffer's bytes once",
            Isa::selected().name(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        outln!(
            "ratio: to the read roofline; compute: to the sums' compute roofline (in cache, ×threads)"
        );
        outln!(
            "{:<25} {:<5} {:>10} {:>3} {:>8} {:>9} {:>7} {:>7} {:>10}",
            "op",
            "dtype",
            "size",
            "thr",
            "GB/s",
            "roof GB/s",
            "ratio",
            "compute",
            "vs naive"
        );
    }
    // The compute rooflines come first: every sum row is compared with them.
    let sums = [
        "norm_l2",
        "norm_l1",
        "clip_noop",
        "norm_l2_exact",
        "norm_l1_exact",
        "norm_l2_exact_heavy",
        "norm_l2_exact_adversarial",
    ];
    let needed = filter.op("compute_roofline") || (!args.json && sums.iter().any(|o| filter.op(o)));
    let (compute_rows, compute) = if needed {
        bench_compute(args.samples, &filter)
    } else {
        (Vec::new(), Compute::default())
    };
    if filter.op("compute_roofline") {
        for r in &compute_rows {
            print_row(r, args.json, &filter);
        }
    }
    for &t in &threads {
        let pool = match rayon::ThreadPoolBuilder::new().num_threads(t).build() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("gradclip bench: cannot start {t} threads: {e}");
                return ExitCode::from(2);
            }
        };
        pool.install(|| {
            let sizes: &[usize] = if args.no_cache_rows {
                &[args.size]
            } else {
                &[256 << 10, args.size]
            };
            for &size in sizes {
                let mut rows = Vec::new();
                bench_dtype::<f32>(&mut rows, size, t, args.samples, &filter, &compute);
                bench_dtype::<f16>(&mut rows, size, t, args.samples, &filter, &compute);
                bench_dtype::<bf16>(&mut rows, size, t, args.samples, &filter, &compute);
                bench_exact::<f32>(&mut rows, size, t, args.samples, &filter, &compute);
                bench_exact::<f16>(&mut rows, size, t, args.samples, &filter, &compute);
                bench_exact::<bf16>(&mut rows, size, t, args.samples, &filter, &compute);
                for r in &rows {
                    print_row(r, args.json, &filter);
                }
            }
            let mut rows = Vec::new();
            if filter.op("many_small") && filter.dtype(DType::F32) {
                bench_many_small(&mut rows, t, args.samples);
            }
            for r in &rows {
                print_row(r, args.json, &filter);
            }
        });
    }
    ExitCode::SUCCESS
}
