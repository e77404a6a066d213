//! Criterion benches: one group per op × dtype, baselines and rooflines in the same group,
//! `Throughput::Bytes`. Run one group at a time on a small machine, e.g.
//! `cargo bench --bench kernels -- norm_l2_f32 --measurement-time 2`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gradclip::baseline::{naive_sum_sq_f32, naive_sum_sq_f64, read_roofline_par, rmw_roofline_par};
use gradclip::{
    bf16, clip_grad_norm_, exact_partial_with_isa, f16, get_total_norm, get_total_norm_exact,
    scale_, ClipOptions, DType, Element, Grad, GradMut, Isa, NormType,
};

const SIZES: [usize; 2] = [256 << 10, 64 << 20];

fn pool(t: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(t)
        .build()
        .unwrap()
}

/// Thread counts to measure at a size. Entering a pool from outside costs tens of microseconds
/// (a cross-thread wake-up), more than a cache-resident call itself, so cache-resident sizes
/// are measured on the calling thread only (where the library keeps them anyway).
fn thread_counts(size: usize) -> &'static [usize] {
    if size < (4 << 20) {
        &[]
    } else {
        &[1, 2]
    }
}

fn values<T: Element>(bytes: usize) -> Vec<T> {
    let mut s = 0x9E37_79B9u64;
    (0..bytes / std::mem::size_of::<T>())
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f32_rne(((s >> 40) as f32) / (1u64 << 24) as f32 - 0.5)
        })
        .collect()
}

fn rooflines(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    raw: &[u8],
    size: usize,
) {
    g.bench_with_input(BenchmarkId::new("read_roofline", size), raw, |b, r| {
        b.iter(|| read_roofline_par(black_box(r), 1))
    });
    for &t in thread_counts(size) {
        let p = pool(t);
        g.bench_with_input(
            BenchmarkId::new(format!("read_roofline_{t}t"), size),
            raw,
            |b, r| b.iter(|| p.install(|| read_roofline_par(black_box(r), t))),
        );
    }
}

/// L2 norm of one buffer of `T`: gradclip (calling thread, misaligned start, 1 and 2 threads
/// from memory), the naive loops and the read rooflines, in one group.
fn norm_group<T: Element>(c: &mut Criterion, name: &str)
where
    for<'a> Grad<'a>: From<&'a [T]>,
{
    let mut g = c.benchmark_group(name);
    for size in SIZES {
        let v: Vec<T> = values(size);
        let raw: Vec<u8> = bytemuck::cast_slice(&v).to_vec();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("gradclip", size), &v, |b, v| {
            b.iter(|| get_total_norm(&[Grad::from(black_box(v.as_slice()))], NormType::L2))
        });
        // Misaligned start: one element in.
        g.bench_with_input(BenchmarkId::new("gradclip_misaligned", size), &v, |b, v| {
            b.iter(|| get_total_norm(&[Grad::from(black_box(&v[1..]))], NormType::L2))
        });
        for &t in thread_counts(size) {
            let p = pool(t);
            g.bench_with_input(
                BenchmarkId::new(format!("gradclip_{t}t"), size),
                &v,
                |b, v| {
                    b.iter(|| {
                        p.install(|| {
                            get_total_norm(&[Grad::from(black_box(v.as_slice()))], NormType::L2)
                        })
                    })
                },
            );
        }
        if T::DTYPE == DType::F32 {
            let f: &[f32] = bytemuck::cast_slice(&v);
            g.bench_with_input(BenchmarkId::new("naive_f32", size), f, |b, f| {
                b.iter(|| naive_sum_sq_f32(black_box(f)))
            });
        }
        g.bench_with_input(BenchmarkId::new("naive_f64", size), &v, |b, v| {
            b.iter(|| {
                black_box(v)
                    .iter()
                    .map(|x| (x.to_f32() as f64) * (x.to_f32() as f64))
                    .sum::<f64>()
            })
        });
        rooflines(&mut g, &raw, size);
    }
    g.finish();
}

fn norm_l2_f32(c: &mut Criterion) {
    norm_group::<f32>(c, "norm_l2_f32");
}
fn norm_l2_f16(c: &mut Criterion) {
    norm_group::<f16>(c, "norm_l2_f16");
}
fn norm_l2_bf16(c: &mut Criterion) {
    norm_group::<bf16>(c, "norm_l2_bf16");
}

macro_rules! scale_group {
    ($fn:ident, $t:ty, $wrap:path, $name:literal) => {
        fn $fn(c: &mut Criterion) {
            let mut g = c.benchmark_group($name);
            for size in SIZES {
                let mut v: Vec<$t> = values(size);
                let mut w: Vec<f32> = vec![0.5; size / 4];
                g.throughput(Throughput::Bytes(size as u64));
                let mut flip = false;
                g.bench_function(BenchmarkId::new("gradclip", size), |b| {
                    b.iter(|| {
                        flip = !flip;
                        scale_(&mut [$wrap(&mut v)], if flip { 0.999 } else { 1.0 / 0.999 })
                    })
                });
                g.bench_function(BenchmarkId::new("rmw_roofline", size), |b| {
                    b.iter(|| rmw_roofline_par(black_box(&mut w), black_box(1.0), 1))
                });
                for &t in thread_counts(size) {
                    let p = pool(t);
                    let mut flip = false;
                    g.bench_function(BenchmarkId::new(format!("gradclip_{t}t"), size), |b| {
                        b.iter(|| {
                            flip = !flip;
                            let f = if flip { 0.999 } else { 1.0 / 0.999 };
                            p.install(|| scale_(&mut [$wrap(&mut v)], f))
                        })
                    });
                    g.bench_function(BenchmarkId::new(format!("rmw_roofline_{t}t"), size), |b| {
                        b.iter(|| {
                            p.install(|| rmw_roofline_par(black_box(&mut w), black_box(1.0), t))
                        })
                    });
                }
            }
            g.finish();
        }
    };
}
scale_group!(scale_f32, f32, GradMut::F32, "scale_f32");
scale_group!(scale_f16, f16, GradMut::F16, "scale_f16");
scale_group!(scale_bf16, bf16, GradMut::BF16, "scale_bf16");

/// Clip when nothing needs clipping (must cost what the norm costs) and a full clip (floor: one
/// read pass plus one read-modify-write pass).
fn clip_f32(c: &mut Criterion) {
    let mut g = c.benchmark_group("clip_f32");
    for size in SIZES {
        let mut v: Vec<f32> = values(size);
        let raw: Vec<u8> = bytemuck::cast_slice(&v).to_vec();
        let mut w: Vec<f32> = vec![0.5; size / 4];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("norm_only", size), |b| {
            b.iter(|| get_total_norm(&[Grad::F32(black_box(&v))], NormType::L2))
        });
        g.bench_function(BenchmarkId::new("clip_noop", size), |b| {
            b.iter(|| clip_grad_norm_(&mut [GradMut::F32(&mut v)], 1e30, ClipOptions::default()))
        });
        // Every call clips to 0.999 of the current norm; every 600 calls the values are scaled
        // back up so they never drift towards subnormals.
        let norm0 = get_total_norm(&[Grad::F32(&v)], NormType::L2).unwrap();
        let mut level = norm0;
        let mut calls = 0u32;
        g.bench_function(BenchmarkId::new("clip_full", size), |b| {
            b.iter(|| {
                level *= 0.999;
                calls += 1;
                let r = clip_grad_norm_(&mut [GradMut::F32(&mut v)], level, ClipOptions::default());
                if calls.is_multiple_of(600) {
                    scale_(&mut [GradMut::F32(&mut v)], norm0 / level).unwrap();
                    level = norm0;
                }
                r
            })
        });
        // gradclip runs on the calling thread below 256 KiB and on the global pool above.
        let t = if size < (4 << 20) { 1 } else { 2 };
        g.bench_function(BenchmarkId::new("roofline_read_plus_rmw", size), |b| {
            b.iter(|| {
                black_box(read_roofline_par(black_box(&raw), t));
                rmw_roofline_par(black_box(&mut w), black_box(1.0), t);
            })
        });
    }
    g.finish();
}

/// 10,000 buffers of 100..10,000 elements against one buffer of the same bytes.
fn many_small(c: &mut Criterion) {
    let mut g = c.benchmark_group("many_small_f32");
    let mut s = 42u64;
    let bufs: Vec<Vec<f32>> = (0..10_000)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            values(4 * (100 + (s % 9_901) as usize))
        })
        .collect();
    let one: Vec<f32> = bufs.concat();
    let grads: Vec<Grad<'_>> = bufs.iter().map(Grad::from).collect();
    g.throughput(Throughput::Bytes((one.len() * 4) as u64));
    g.bench_function("gradclip_10000_buffers", |b| {
        b.iter(|| get_total_norm(black_box(&grads), NormType::L2))
    });
    g.bench_function("gradclip_one_buffer", |b| {
        b.iter(|| get_total_norm(&[Grad::from(black_box(&one))], NormType::L2))
    });
    g.bench_function("naive_f64_10000_buffers", |b| {
        b.iter(|| bufs.iter().map(|v| naive_sum_sq_f64(v)).sum::<f64>())
    });
    g.finish();
}

/// Gradient-like values: tensors of 1,000..1,000,000 elements, each N(0, σ) with σ
/// log-uniform over 1e-6..1.
fn gradient_like<T: Element>(bytes: usize) -> Vec<T> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut unit = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let (mut left, mut sigma) = (0usize, 1.0f64);
    (0..bytes / std::mem::size_of::<T>())
        .map(|_| {
            if left == 0 {
                left = 1_000 + (unit() * 999_000.0) as usize;
                sigma = 10f64.powf(-6.0 * unit());
            }
            left -= 1;
            let r = (-2.0 * unit().ln()).sqrt() * (std::f64::consts::TAU * unit()).cos();
            T::from_f32_rne((r * sigma) as f32)
        })
        .collect()
}

/// Exact L2 norm of one buffer of gradient-like `T`: exact (calling thread, misaligned, each
/// ISA, 1 and 2 threads from memory), the compensated norm of the same data, and the rooflines.
fn exact_group<T: Element>(c: &mut Criterion, name: &str)
where
    for<'a> Grad<'a>: From<&'a [T]>,
{
    let mut g = c.benchmark_group(name);
    for size in SIZES {
        let v: Vec<T> = gradient_like(size);
        let raw: Vec<u8> = bytemuck::cast_slice(&v).to_vec();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("exact", size), &v, |b, v| {
            b.iter(|| get_total_norm_exact(&[Grad::from(black_box(v.as_slice()))], NormType::L2))
        });
        g.bench_with_input(BenchmarkId::new("exact_misaligned", size), &v, |b, v| {
            b.iter(|| get_total_norm_exact(&[Grad::from(black_box(&v[1..]))], NormType::L2))
        });
        for isa in Isa::available() {
            g.bench_with_input(
                BenchmarkId::new(format!("exact_{}", isa.name()), size),
                &v,
                |b, v| {
                    b.iter(|| {
                        exact_partial_with_isa(
                            &[Grad::from(black_box(v.as_slice()))],
                            NormType::L2,
                            isa,
                        )
                    })
                },
            );
        }
        g.bench_with_input(BenchmarkId::new("compensated", size), &v, |b, v| {
            b.iter(|| get_total_norm(&[Grad::from(black_box(v.as_slice()))], NormType::L2))
        });
        for &t in thread_counts(size) {
            let p = pool(t);
            g.bench_with_input(BenchmarkId::new(format!("exact_{t}t"), size), &v, |b, v| {
                b.iter(|| {
                    p.install(|| {
                        get_total_norm_exact(&[Grad::from(black_box(v.as_slice()))], NormType::L2)
                    })
                })
            });
        }
        rooflines(&mut g, &raw, size);
    }
    g.finish();
}

fn norm_l2_exact_f32(c: &mut Criterion) {
    exact_group::<f32>(c, "norm_l2_exact_f32");
}
fn norm_l2_exact_f16(c: &mut Criterion) {
    exact_group::<f16>(c, "norm_l2_exact_f16");
}
fn norm_l2_exact_bf16(c: &mut Criterion) {
    exact_group::<bf16>(c, "norm_l2_exact_bf16");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = norm_l2_f32, norm_l2_f16, norm_l2_bf16, scale_f32, scale_f16, scale_bf16, clip_f32, many_small,
        norm_l2_exact_f32, norm_l2_exact_f16, norm_l2_exact_bf16
}
criterion_main!(benches);
