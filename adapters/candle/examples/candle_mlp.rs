//! An MLP that diverges to NaN within a few SGD steps, and the same run with one line of
//! gradclip: `clip_grad_norm(&vars, &mut grads, 1.0, ClipOptions::default())`.
//!
//! `cargo run --release -p gradclip-candle --example candle_mlp [-- STEPS]`
//!
//! The data: 256 points in 16 dimensions with large features, targets from a fixed random
//! "teacher" network scaled by 50. The learning rate (0.05) is far too high for gradients of
//! that size: without clipping the first steps overshoot, the ReLU network's weights grow
//! multiplicatively and the loss overflows f32. With the global norm clipped to 1, every step
//! moves the weights by at most `lr`, and the loss comes down.

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Linear, Optimizer, SGD};
use gradclip_candle::{clip_grad_norm, ClipOptions};

/// What one training run gives.
#[derive(Debug, Clone)]
pub struct Run {
    /// The loss before each step.
    pub losses: Vec<f32>,
    /// The global gradient norm before clipping, per step.
    pub norms: Vec<f64>,
    /// The first step whose loss or gradient norm was not finite.
    pub first_nonfinite: Option<usize>,
    /// The first step whose loss was NaN (the run stops there).
    pub first_nan: Option<usize>,
}

impl Run {
    /// The last finite loss.
    pub fn final_loss(&self) -> f32 {
        self.losses
            .iter()
            .rev()
            .copied()
            .find(|l| l.is_finite())
            .unwrap_or(f32::NAN)
    }
}

/// A seeded xorshift generator (candle's CPU device cannot be seeded).
struct Rng(u64);

impl Rng {
    fn normal(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let mut s = 0.0f32;
                for _ in 0..6 {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    s += (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                s * 2.0 * scale // variance of 6 uniforms on [-1/2, 1/2) is 1/2
            })
            .collect()
    }

    fn tensor(&mut self, dims: &[usize], scale: f32) -> Result<Tensor> {
        let n = dims.iter().product();
        Tensor::from_vec(self.normal(n, scale), dims, &Device::Cpu)
    }
}

const INPUT: usize = 16;
const HIDDEN: usize = 64;
const POINTS: usize = 256;
const LEARNING_RATE: f64 = 0.05;

/// The data set: inputs with large features, targets from a fixed random teacher.
fn data(rng: &mut Rng) -> Result<(Tensor, Tensor)> {
    let x = rng.tensor(&[POINTS, INPUT], 3.0)?;
    let teacher = rng.tensor(&[INPUT, 1], 1.0)?;
    let y = (x.matmul(&teacher)?.tanh()? * 50.0)?;
    Ok((x, y))
}

/// Trains the MLP `INPUT -> HIDDEN (ReLU) -> 1` with plain SGD on the mean squared error for
/// `steps` steps, clipping the global gradient norm to `max_norm` when given.
pub fn train(steps: usize, max_norm: Option<f64>) -> Result<Run> {
    let mut rng = Rng(0x5EED_0F6A_DC11_B0B5);
    let (x, y) = data(&mut rng)?;
    let he = |fan_in: usize| (2.0 / fan_in as f32).sqrt();
    let w1 = Var::from_tensor(&rng.tensor(&[HIDDEN, INPUT], he(INPUT))?)?;
    let b1 = Var::zeros(HIDDEN, DType::F32, &Device::Cpu)?;
    let w2 = Var::from_tensor(&rng.tensor(&[1, HIDDEN], he(HIDDEN))?)?;
    let b2 = Var::zeros(1, DType::F32, &Device::Cpu)?;
    let vars = vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()];
    let l1 = Linear::new(w1.as_tensor().clone(), Some(b1.as_tensor().clone()));
    let l2 = Linear::new(w2.as_tensor().clone(), Some(b2.as_tensor().clone()));
    let mut opt = SGD::new(vars.clone(), LEARNING_RATE)?;
    let mut run = Run {
        losses: Vec::with_capacity(steps),
        norms: Vec::with_capacity(steps),
        first_nonfinite: None,
        first_nan: None,
    };
    for step in 0..steps {
        let pred = l2.forward(&l1.forward(&x)?.relu()?)?;
        let loss = (pred - &y)?.sqr()?.mean_all()?;
        let loss_value = loss.to_scalar::<f32>()?;
        run.losses.push(loss_value);
        let mut grads = loss.backward()?;
        let norm = gradclip_candle::total_norm(&vars, &grads, gradclip_candle::NormType::L2)
            .unwrap_or(f64::NAN);
        run.norms.push(norm);
        if !(loss_value.is_finite() && norm.is_finite()) && run.first_nonfinite.is_none() {
            run.first_nonfinite = Some(step);
        }
        if loss_value.is_nan() {
            run.first_nan = Some(step);
            break;
        }
        if let Some(max_norm) = max_norm {
            clip_grad_norm(&vars, &mut grads, max_norm, ClipOptions::default())?;
        }
        opt.step(&grads)?;
    }
    Ok(run)
}

fn show(name: &str, run: &Run) {
    let shown: Vec<String> = run
        .losses
        .iter()
        .take(8)
        .map(|l| format!("{l:.3e}"))
        .collect();
    println!("{name}");
    println!("  loss, first steps: {}", shown.join(" "));
    println!(
        "  gradient norm, first steps: {}",
        run.norms
            .iter()
            .take(8)
            .map(|n| format!("{n:.2e}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    match (run.first_nonfinite, run.first_nan) {
        (Some(s), Some(n)) => println!("  inf/NaN from step {s}, loss NaN at step {n}"),
        (Some(s), None) => println!("  inf/NaN from step {s}"),
        (None, _) => println!(
            "  {} steps, loss {:.3e} -> {:.3e}",
            run.losses.len(),
            run.losses[0],
            run.final_loss()
        ),
    }
}

fn main() -> Result<()> {
    let steps = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("STEPS must be a number"))
        .unwrap_or(300);
    println!(
        "MLP {INPUT} -> {HIDDEN} (ReLU) -> 1, SGD lr {LEARNING_RATE}, {POINTS} points, {steps} steps"
    );
    show("without clipping:", &train(steps, None)?);
    show(
        "with gradclip_candle::clip_grad_norm(.., 1.0, ..):",
        &train(steps, Some(1.0))?,
    );
    Ok(())
}
