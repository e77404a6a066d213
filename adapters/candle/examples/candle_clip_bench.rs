//! Clip time per step on a ~25M-parameter model: gradclip-candle against candle's own ops.
//!
//! `cargo run --release -p gradclip-candle --example candle_clip_bench [-- SAMPLES [DTYPE]]`
//! (DTYPE: f32, the default, or bf16 or f16)
//!
//! The model: 8 transformer-style blocks of width 512 (four 512x512 attention matrices, a
//! 512x2048 and a 2048x512 MLP matrix, biases and layer norms): 25.2M parameters in 128 tensors.
//! Each method clips the global L2 norm of the same gradients to 1 in every step:
//!
//! - `gradclip`: `clip_grad_norm(&vars, &mut grads, 1.0, ..)`, read and scaled in place;
//! - `candle f32`: what a candle user writes today: `g.sqr()?.sum_all()` per tensor, summed,
//!   `sqrt`, then `g.broadcast_mul(coef)` per tensor put back into the `GradStore`;
//! - `candle f64`: the same with the squares summed in f64 (`g.to_dtype(F64)?.sqr()?.sum_all()`),
//!   the accurate variant.
//!
//! Samples are interleaved (one step of each method in turn, for 1 and then 2 rayon threads) so
//! that each ratio compares steps run under the same load; medians are printed. The norm column
//! gives each method's relative distance to gradclip's norm (which is within 1e-14 of the exact
//! value).

use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use gradclip_candle::{clip_grad_norm, ClipOptions};

const WIDTH: usize = 512;
const BLOCKS: usize = 8;

fn shapes() -> Vec<Vec<usize>> {
    let mut s = Vec::new();
    for _ in 0..BLOCKS {
        for _ in 0..4 {
            s.push(vec![WIDTH, WIDTH]);
            s.push(vec![WIDTH]);
        }
        s.push(vec![4 * WIDTH, WIDTH]);
        s.push(vec![4 * WIDTH]);
        s.push(vec![WIDTH, 4 * WIDTH]);
        s.push(vec![WIDTH]);
        for _ in 0..4 {
            s.push(vec![WIDTH]); // two layer norms: weight and bias
        }
    }
    s
}

/// Seeded gradient values in roughly [-1, 1).
fn values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Model {
    vars: Vec<Var>,
    /// The gradients every method starts from (never modified).
    grads: Vec<Tensor>,
}

impl Model {
    fn new(dtype: DType) -> Result<Model> {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut vars = Vec::new();
        let mut grads = Vec::new();
        for shape in shapes() {
            let n = shape.iter().product();
            vars.push(Var::zeros(shape.as_slice(), dtype, &Device::Cpu)?);
            let g = Tensor::from_vec(values(n, &mut seed), shape.as_slice(), &Device::Cpu)?;
            grads.push(g.to_dtype(dtype)?);
        }
        Ok(Model { vars, grads })
    }

    fn params(&self) -> usize {
        self.grads.iter().map(Tensor::elem_count).sum()
    }

    /// A fresh store holding copies of the gradients.
    fn store(&self) -> Result<GradStore> {
        let mut s = GradStore::default();
        for (v, g) in self.vars.iter().zip(&self.grads) {
            s.insert(v, g.copy()?);
        }
        Ok(s)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Gradclip,
    CandleF32,
    CandleF64,
}

impl Method {
    const ALL: [Method; 3] = [Method::Gradclip, Method::CandleF32, Method::CandleF64];

    fn name(self) -> &'static str {
        match self {
            Method::Gradclip => "gradclip",
            Method::CandleF32 => "candle f32",
            Method::CandleF64 => "candle f64",
        }
    }

    /// One clip of `grads` to norm 1; returns the norm before clipping.
    fn clip(self, vars: &[Var], grads: &mut GradStore) -> Result<f64> {
        if self == Method::Gradclip {
            return Ok(clip_grad_norm(vars, grads, 1.0, ClipOptions::default())?.total_norm);
        }
        let mut sum = 0.0f64;
        for v in vars {
            let g = grads.get(v).expect("a gradient");
            sum += if self == Method::CandleF32 {
                g.to_dtype(DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()? as f64
            } else {
                g.to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?
            };
        }
        let norm = sum.sqrt();
        let coef = (1.0 / (norm + 1e-6)).min(1.0);
        for v in vars {
            let g = grads.get(v).expect("a gradient");
            let c = Tensor::new(coef as f32, &Device::Cpu)?.to_dtype(g.dtype())?;
            let scaled = g.broadcast_mul(&c)?;
            grads.insert(v, scaled);
        }
        Ok(norm)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let samples: usize = args.next().map_or(7, |s| s.parse().expect("SAMPLES"));
    let dtype = match args.next().as_deref() {
        None | Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some(other) => panic!("unknown dtype {other}"),
    };
    let model = Model::new(dtype)?;
    println!(
        "clip per step, {} parameters in {} {} tensors, {} samples per cell (interleaved), \
         median ms",
        model.params(),
        model.vars.len(),
        dtype.as_str(),
        samples
    );
    println!(
        "{:>7} {:>11} {:>9} {:>12} {:>14}",
        "threads", "method", "ms/step", "vs gradclip", "norm rel.diff"
    );
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        let mut stores: Vec<GradStore> = Method::ALL
            .iter()
            .map(|_| model.store())
            .collect::<Result<_>>()?;
        let mut times = vec![Vec::new(); Method::ALL.len()];
        let mut first_norm = [0.0f64; 3];
        pool.install(|| -> Result<()> {
            for sample in 0..=samples {
                for (i, m) in Method::ALL.iter().enumerate() {
                    let t = Instant::now();
                    let norm = m.clip(&model.vars, &mut stores[i])?;
                    let dt = t.elapsed();
                    if sample == 0 {
                        first_norm[i] = norm; // the first step doubles as warm-up
                    } else {
                        times[i].push(dt);
                    }
                }
            }
            Ok(())
        })?;
        let medians: Vec<Duration> = times.into_iter().map(median).collect();
        for (i, m) in Method::ALL.iter().enumerate() {
            let rel = (first_norm[i] - first_norm[0]) / first_norm[0];
            println!(
                "{:>7} {:>11} {:>9.2} {:>11.2}x {:>14.1e}",
                threads,
                m.name(),
                medians[i].as_secs_f64() * 1e3,
                medians[i].as_secs_f64() / medians[0].as_secs_f64(),
                rel
            );
        }
    }
    Ok(())
}
