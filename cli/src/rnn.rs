//! A vanilla tanh RNN trained with backpropagation through time (BPTT) on the adding problem:
//! the compute behind `gradclip demo`, kept in the CLI's library so that tests can drive it. Pure
//! computation: nothing prints; norms and clipping go through the crate's kernels.
//!
//! Model (hidden size H, input size 2, one scalar output after the last step):
//!
//! ```text
//! h_0 = 0,   h_{t+1} = tanh(W_xh x_t + W_hh h_t + b_h),   y = w_hy · h_T + b_y   ([`tanh_f32`])
//! L = (1/B) Σ_b (y_b − target_b)²
//! ```
//!
//! Backward: `∂L/∂h_T = (2/B)(y − target) w_hy`; for t = T−1 … 0,
//! `δ_t = ∂L/∂h_{t+1} ⊙ (1 − h_{t+1}²)`, `∂L/∂W_hh += δ_t h_tᵀ`, `∂L/∂W_xh += δ_t x_tᵀ`,
//! `∂L/∂b_h += δ_t`, `∂L/∂h_t = W_hhᵀ δ_t`. Truncated BPTT with horizon k stops after the last k
//! steps (t ≥ T − k), the same as detaching the hidden state k steps before the output.
//!
//! The Jacobian `∂h_{t+1}/∂h_t = diag(1 − h_{t+1}²) W_hh` has norm at most `‖W_hh‖₂ = γ`, hence
//! `‖∂L/∂h_t‖ ≤ ‖∂L/∂h_T‖ γ^{T−t}`; [`gradient_flow`] measures the left side.
//!
//! Adding problem: `x_t = (v_t, m_t)` with `v_t ~ U(0, 1)` and two markers `m_t = 1`; the target
//! is the sum of the two marked values. [`MarkerLayout::Early`] (Hochreiter & Schmidhuber's
//! variant) puts the first marker in `[0, 10)` and the second in `[10, T/2)`, so both are at
//! least T/2 steps before the output and a horizon k < T/2 cannot see them;
//! [`MarkerLayout::Halves`] puts one in each half. Predicting the mean (1) gives MSE 1/6 ≈ 0.167;
//! a prediction counts as correct when `|y − target| < 0.04`.
//!
//! The learning signal that reaches the markers is measured as `‖∂L/∂x_t‖` at the marker steps
//! (`∂L/∂x_t = W_xhᵀ δ_t`), stacked over the batch ([`BatchStats::marker_grad`]): it is exactly 0
//! when truncation stops the backward pass before the markers.
//!
//! Batches are split into fixed chunks computed in parallel (rayon) and merged in chunk order,
//! so results are identical for any thread count. (Feature `linalg`: the initialisation is
//! orthogonal.)

use std::time::Instant;

use rayon::prelude::*;

use gradclip::monitor::{GradientMonitor, MonitorConfig, Observation, Symptoms};
use gradclip::rng::Rng;
use gradclip::stabilize::{SpectralNorm, SPECTRAL_EPS};
use gradclip::ToolkitError;
use gradclip::{
    buffer_norm, clip_grad_norm_, get_total_norm, ClipOptions, Grad, GradMut, NonFinitePolicy,
    NormType,
};

/// Input size of the adding problem (value, marker).
pub const INPUT: usize = 2;
/// Tolerance of a correct answer on the adding problem.
pub const ADDING_TOLERANCE: f64 = 0.04;
const CHUNK: usize = 8;

/// The weights of the RNN (row-major matrices, rows = outputs).
#[derive(Debug, Clone, PartialEq)]
pub struct Rnn {
    /// Hidden size H.
    pub hidden: usize,
    /// `W_xh`, H × 2.
    pub w_xh: Vec<f32>,
    /// `W_hh`, H × H.
    pub w_hh: Vec<f32>,
    /// `b_h`, H.
    pub b_h: Vec<f32>,
    /// `w_hy`, 1 × H.
    pub w_hy: Vec<f32>,
    /// `b_y`, 1.
    pub b_y: Vec<f32>,
}

/// Gradients with the shapes of [`Rnn`].
#[derive(Debug, Clone, PartialEq)]
pub struct RnnGrads {
    /// ∂L/∂W_xh.
    pub w_xh: Vec<f32>,
    /// ∂L/∂W_hh.
    pub w_hh: Vec<f32>,
    /// ∂L/∂b_h.
    pub b_h: Vec<f32>,
    /// ∂L/∂w_hy.
    pub w_hy: Vec<f32>,
    /// ∂L/∂b_y.
    pub b_y: Vec<f32>,
}

impl RnnGrads {
    /// Zero gradients for hidden size `hidden` (an existing [`Rnn`]'s, at most [`MAX_HIDDEN`];
    /// panics on a size overflow like `vec!`).
    pub fn zeros(hidden: usize) -> Self {
        RnnGrads {
            w_xh: vec![0.0; hidden * INPUT],
            w_hh: vec![0.0; hidden * hidden],
            b_h: vec![0.0; hidden],
            w_hy: vec![0.0; hidden],
            b_y: vec![0.0; 1],
        }
    }

    /// The five buffers as mutable views for the clipping kernels.
    pub fn views_mut(&mut self) -> [GradMut<'_>; 5] {
        [
            GradMut::from(&mut self.w_xh),
            GradMut::from(&mut self.w_hh),
            GradMut::from(&mut self.b_h),
            GradMut::from(&mut self.w_hy),
            GradMut::from(&mut self.b_y),
        ]
    }

    /// The five buffers as views for the norm kernels.
    pub fn views(&self) -> [Grad<'_>; 5] {
        [
            Grad::from(&self.w_xh),
            Grad::from(&self.w_hh),
            Grad::from(&self.b_h),
            Grad::from(&self.w_hy),
            Grad::from(&self.b_y),
        ]
    }

    fn fill_zero(&mut self) {
        for b in [
            &mut self.w_xh,
            &mut self.w_hh,
            &mut self.b_h,
            &mut self.w_hy,
            &mut self.b_y,
        ] {
            b.iter_mut().for_each(|x| *x = 0.0);
        }
    }

    fn add(&mut self, other: &RnnGrads) {
        let pairs = [
            (&mut self.w_xh, &other.w_xh),
            (&mut self.w_hh, &other.w_hh),
            (&mut self.b_h, &other.b_h),
            (&mut self.w_hy, &other.w_hy),
            (&mut self.b_y, &other.b_y),
        ];
        for (a, b) in pairs {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
    }
}

/// How `W_hh` is initialised (the other weights: Xavier-uniform, biases zero).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecurrentInit {
    /// `γ · Q` with Q orthogonal: every singular value is γ (γ = 1: plain orthogonal).
    ScaledOrthogonal(f64),
}

/// The largest hidden size [`Rnn::new`] accepts (`W_hh` is then 64 MiB of f32).
pub const MAX_HIDDEN: usize = 4096;

/// The largest number of input values of one [`AddingBatch`] (1 GiB of f32).
const MAX_BATCH_ELEMS: usize = 1 << 28;

impl Rnn {
    /// A network of hidden size `hidden` with `W_hh` from `init`, drawn from `rng`.
    pub fn new(hidden: usize, init: RecurrentInit, rng: &mut Rng) -> Result<Self, ToolkitError> {
        use gradclip::stabilize::{orthogonal_, xavier_uniform_};
        if !(1..=MAX_HIDDEN).contains(&hidden) {
            return Err(ToolkitError::param(
                "hidden",
                hidden as f64,
                "in 1..=MAX_HIDDEN (4096)",
            ));
        }
        let mut rnn = Rnn {
            hidden,
            w_xh: vec![0.0; hidden * INPUT],
            w_hh: vec![0.0; hidden * hidden],
            b_h: vec![0.0; hidden],
            w_hy: vec![0.0; hidden],
            b_y: vec![0.0; 1],
        };
        xavier_uniform_(&mut rnn.w_xh, hidden, INPUT, 1.0, rng)?;
        match init {
            RecurrentInit::ScaledOrthogonal(gamma) => {
                if !(gamma.is_finite() && gamma > 0.0) {
                    return Err(ToolkitError::param("gamma", gamma, "finite and > 0"));
                }
                orthogonal_(&mut rnn.w_hh, hidden, hidden, gamma, rng)?;
            }
        }
        xavier_uniform_(&mut rnn.w_hy, 1, hidden, 1.0, rng)?;
        Ok(rnn)
    }

    fn check(&self) -> Result<(), ToolkitError> {
        let h = self.hidden;
        ToolkitError::check_len("rnn: w_xh", h * INPUT, self.w_xh.len())?;
        ToolkitError::check_len("rnn: w_hh", h * h, self.w_hh.len())?;
        ToolkitError::check_len("rnn: b_h", h, self.b_h.len())?;
        ToolkitError::check_len("rnn: w_hy", h, self.w_hy.len())?;
        ToolkitError::check_len("rnn: b_y", 1, self.b_y.len())
    }

    /// Parameter views for the norm kernels.
    pub fn views(&self) -> [Grad<'_>; 5] {
        [
            Grad::from(&self.w_xh),
            Grad::from(&self.w_hh),
            Grad::from(&self.b_h),
            Grad::from(&self.w_hy),
            Grad::from(&self.b_y),
        ]
    }
}

/// Where the two markers of the adding problem may fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MarkerLayout {
    /// First marker in `[0, T/2)`, second in `[T/2, T)` (the common modern variant).
    #[default]
    Halves,
    /// First marker in `[0, 10)`, second in `[10, T/2)`: both at least T/2 steps back.
    Early,
}

/// A batch of the adding problem.
#[derive(Debug, Clone, PartialEq)]
pub struct AddingBatch {
    /// Number of sequences B.
    pub batch: usize,
    /// Sequence length T.
    pub seq_len: usize,
    /// `B × T × 2` inputs, sample-major.
    pub inputs: Vec<f32>,
    /// `B` targets.
    pub targets: Vec<f32>,
}

impl AddingBatch {
    /// Draws `batch` sequences of length `seq_len` (≥ 4) from `rng`; see the module docs.
    pub fn sample(
        batch: usize,
        seq_len: usize,
        layout: MarkerLayout,
        rng: &mut Rng,
    ) -> Result<Self, ToolkitError> {
        if seq_len < 4 {
            return Err(ToolkitError::param("seq_len", seq_len as f64, "at least 4"));
        }
        let len = batch
            .checked_mul(seq_len)
            .and_then(|n| n.checked_mul(INPUT))
            .filter(|&n| n <= MAX_BATCH_ELEMS)
            .ok_or(ToolkitError::param(
                "batch × seq_len",
                batch as f64 * seq_len as f64,
                "at most 2^28 input values",
            ))?;
        let mut inputs = vec![0.0f32; len];
        let mut targets = vec![0.0f32; batch];
        let half = seq_len / 2;
        let (first_end, second_start, second_end) = match layout {
            MarkerLayout::Halves => (half, half, seq_len),
            MarkerLayout::Early => {
                let e = 10.min(half - 1).max(1);
                (e, e, half)
            }
        };
        for (b, target) in targets.iter_mut().enumerate() {
            let seq = &mut inputs[b * seq_len * INPUT..(b + 1) * seq_len * INPUT];
            for t in 0..seq_len {
                seq[t * INPUT] = rng.uniform() as f32;
            }
            let p1 = rng.below(first_end);
            let p2 = second_start + rng.below(second_end - second_start);
            seq[p1 * INPUT + 1] = 1.0;
            seq[p2 * INPUT + 1] = 1.0;
            *target = seq[p1 * INPUT] + seq[p2 * INPUT];
        }
        Ok(AddingBatch {
            batch,
            seq_len,
            inputs,
            targets,
        })
    }
}

/// Loss and accuracy of a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchStats {
    /// Mean squared error.
    pub loss: f64,
    /// Fraction of answers within [`ADDING_TOLERANCE`].
    pub accuracy: f64,
    /// `‖∂L/∂x_t‖` over the marker steps of the batch (stacked); `None` for a forward-only pass.
    pub marker_grad: Option<f64>,
}

struct Workspace {
    hs: Vec<f32>,
    z: Vec<f32>,
    dh: Vec<f32>,
    dz: Vec<f32>,
    w_hh_t: Vec<f32>,
}

/// tanh in f32 from plain IEEE operations (no libm call), so that the loop over a hidden vector
/// vectorises and every platform computes the same bits:
/// `tanh|x| = (e^{2|x|} − 1) / (e^{2|x|} + 1)`, with `e^y − 1 = 2^k (e^r − 1) + (2^k − 1)`,
/// `y = k ln 2 + r`, `|r| ≤ ln2 / 2`, and `e^r − 1` by its Taylor polynomial to degree 7
/// (truncation error below 2e-8 relative). Saturates at |x| = 9 (tanh 9 = 1 in f32); NaN
/// propagates. Maximum error against the correctly rounded tanh: a few ulps.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO with LN2_HI = 355/512 (9 bits), so k · LN2_HI is exact here.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let a = x.abs().min(9.0);
    let y = 2.0 * a;
    let k = (y * LOG2E + 0.5) as i32; // y ≥ 0: truncation is floor
    let kf = k as f32;
    let r = (y - kf * LN2_HI) - kf * LN2_LO;
    let em1_r = r
        * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let two_k = f32::from_bits(((k + 127) as u32) << 23);
    let em1 = two_k * em1_r + (two_k - 1.0);
    let t = (em1 / (em1 + 2.0)).copysign(x);
    if x.is_nan() {
        x
    } else {
        t
    }
}

fn transpose(w: &[f32], n: usize, out: &mut [f32]) {
    for i in 0..n {
        for j in 0..n {
            out[j * n + i] = w[i * n + j];
        }
    }
}

/// Forward pass of one sample; fills `ws.hs` ((T+1) × H) and returns y.
fn forward_sample(rnn: &Rnn, ws: &mut Workspace, x: &[f32], seq_len: usize) -> f32 {
    let h = rnn.hidden;
    ws.hs[..h].iter_mut().for_each(|v| *v = 0.0);
    for t in 0..seq_len {
        let (prev, next) = ws.hs.split_at_mut((t + 1) * h);
        let h_prev = &prev[t * h..];
        let z = &mut ws.z;
        z.copy_from_slice(&rnn.b_h);
        let (x0, x1) = (x[t * INPUT], x[t * INPUT + 1]);
        for (i, zi) in z.iter_mut().enumerate() {
            *zi += rnn.w_xh[i * INPUT] * x0 + rnn.w_xh[i * INPUT + 1] * x1;
        }
        // z += W_hh h_prev as a sum of scaled columns (rows of the transpose): vectorises.
        for (j, &hj) in h_prev.iter().enumerate() {
            if hj != 0.0 {
                let col = &ws.w_hh_t[j * h..(j + 1) * h];
                z.iter_mut().zip(col).for_each(|(zi, w)| *zi += w * hj);
            }
        }
        for (o, zi) in next[..h].iter_mut().zip(z.iter()) {
            *o = tanh_f32(*zi);
        }
    }
    let h_last = &ws.hs[seq_len * h..(seq_len + 1) * h];
    rnn.b_y[0] + rnn.w_hy.iter().zip(h_last).map(|(a, b)| a * b).sum::<f32>()
}

/// Backward pass of one sample with output gradient `dy`, accumulating into `g`. When
/// `flow` is given, `flow[t]` receives `‖∂L/∂h_t‖²` (t = 0..=T) of this sample.
#[allow(clippy::too_many_arguments)]
fn backward_sample(
    rnn: &Rnn,
    ws: &mut Workspace,
    x: &[f32],
    seq_len: usize,
    dy: f32,
    horizon: usize,
    g: &mut RnnGrads,
    marker_sq: &mut f64,
    mut flow: Option<&mut [f64]>,
) {
    let h = rnn.hidden;
    let h_last = &ws.hs[seq_len * h..(seq_len + 1) * h];
    g.b_y[0] += dy;
    for ((gw, &hv), (d, &w)) in g
        .w_hy
        .iter_mut()
        .zip(h_last)
        .zip(ws.dh.iter_mut().zip(&rnn.w_hy))
    {
        *gw += dy * hv;
        *d = dy * w;
    }
    let sq = |v: &[f32]| v.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>();
    if let Some(f) = flow.as_deref_mut() {
        f[seq_len] += sq(&ws.dh);
    }
    let t_stop = seq_len.saturating_sub(horizon);
    for t in (t_stop..seq_len).rev() {
        let h_next = &ws.hs[(t + 1) * h..(t + 2) * h];
        let h_prev = &ws.hs[t * h..(t + 1) * h];
        for ((dz, &d), &hn) in ws.dz.iter_mut().zip(&ws.dh).zip(h_next) {
            *dz = d * (1.0 - hn * hn);
        }
        let (x0, x1) = (x[t * INPUT], x[t * INPUT + 1]);
        if x1 != 0.0 {
            // ∂L/∂x_t = W_xhᵀ δ_t at a marker step.
            let (mut d0, mut d1) = (0.0f64, 0.0f64);
            for (i, &dzi) in ws.dz.iter().enumerate() {
                d0 += (rnn.w_xh[i * INPUT] * dzi) as f64;
                d1 += (rnn.w_xh[i * INPUT + 1] * dzi) as f64;
            }
            *marker_sq += d0 * d0 + d1 * d1;
        }
        for (i, &dzi) in ws.dz.iter().enumerate() {
            g.b_h[i] += dzi;
            g.w_xh[i * INPUT] += dzi * x0;
            g.w_xh[i * INPUT + 1] += dzi * x1;
            if dzi != 0.0 {
                let row = &mut g.w_hh[i * h..(i + 1) * h];
                row.iter_mut()
                    .zip(h_prev)
                    .for_each(|(gw, &hp)| *gw += dzi * hp);
            }
        }
        if t == t_stop && flow.is_none() {
            break; // ∂L/∂h_{t_stop} is not needed for the gradients
        }
        ws.dh.iter_mut().for_each(|v| *v = 0.0);
        for (i, &dzi) in ws.dz.iter().enumerate() {
            if dzi != 0.0 {
                let row = &rnn.w_hh[i * h..(i + 1) * h];
                ws.dh.iter_mut().zip(row).for_each(|(d, w)| *d += dzi * w);
            }
        }
        if let Some(f) = flow.as_deref_mut() {
            f[t] += sq(&ws.dh);
        }
    }
}

fn workspace(rnn: &Rnn, seq_len: usize) -> Workspace {
    let h = rnn.hidden;
    let mut w_hh_t = vec![0.0; h * h];
    transpose(&rnn.w_hh, h, &mut w_hh_t);
    Workspace {
        hs: vec![0.0; (seq_len + 1) * h],
        z: vec![0.0; h],
        dh: vec![0.0; h],
        dz: vec![0.0; h],
        w_hh_t,
    }
}

fn check_batch(rnn: &Rnn, data: &AddingBatch) -> Result<(), ToolkitError> {
    rnn.check()?;
    ToolkitError::check_len(
        "adding batch: inputs",
        data.batch * data.seq_len * INPUT,
        data.inputs.len(),
    )?;
    ToolkitError::check_len("adding batch: targets", data.batch, data.targets.len())
}

/// Loss and accuracy of `rnn` on `data` (forward only).
pub fn evaluate(rnn: &Rnn, data: &AddingBatch) -> Result<BatchStats, ToolkitError> {
    check_batch(rnn, data)?;
    let per_seq = data.seq_len * INPUT;
    let parts: Vec<(f64, usize)> = (0..data.batch)
        .collect::<Vec<_>>()
        .par_chunks(CHUNK)
        .map(|idx| {
            let mut ws = workspace(rnn, data.seq_len);
            let mut loss = 0.0;
            let mut correct = 0;
            for &b in idx {
                let x = &data.inputs[b * per_seq..(b + 1) * per_seq];
                let y = forward_sample(rnn, &mut ws, x, data.seq_len) as f64;
                let e = y - data.targets[b] as f64;
                loss += e * e;
                correct += usize::from(e.abs() < ADDING_TOLERANCE);
            }
            (loss, correct)
        })
        .collect();
    let (loss, correct) = parts
        .iter()
        .fold((0.0, 0), |(l, c), (pl, pc)| (l + pl, c + pc));
    let n = data.batch.max(1) as f64;
    Ok(BatchStats {
        loss: loss / n,
        accuracy: correct as f64 / n,
        marker_grad: None,
    })
}

/// Loss, accuracy and gradients (written to `grads`) of `rnn` on `data`, backpropagating through
/// the last `horizon` steps (`None`: full BPTT).
pub fn loss_and_grad(
    rnn: &Rnn,
    data: &AddingBatch,
    horizon: Option<usize>,
    grads: &mut RnnGrads,
) -> Result<BatchStats, ToolkitError> {
    check_batch(rnn, data)?;
    if horizon == Some(0) {
        return Err(ToolkitError::param("horizon", 0.0, "at least 1"));
    }
    let horizon = horizon.unwrap_or(data.seq_len);
    let per_seq = data.seq_len * INPUT;
    let scale = 2.0 / data.batch.max(1) as f32;
    let parts: Vec<(f64, usize, f64, RnnGrads)> = (0..data.batch)
        .collect::<Vec<_>>()
        .par_chunks(CHUNK)
        .map(|idx| {
            let mut ws = workspace(rnn, data.seq_len);
            let mut g = RnnGrads::zeros(rnn.hidden);
            let mut loss = 0.0;
            let mut correct = 0;
            let mut marker_sq = 0.0;
            for &b in idx {
                let x = &data.inputs[b * per_seq..(b + 1) * per_seq];
                let y = forward_sample(rnn, &mut ws, x, data.seq_len);
                let e = y - data.targets[b];
                loss += (e as f64) * (e as f64);
                correct += usize::from((e as f64).abs() < ADDING_TOLERANCE);
                backward_sample(
                    rnn,
                    &mut ws,
                    x,
                    data.seq_len,
                    scale * e,
                    horizon,
                    &mut g,
                    &mut marker_sq,
                    None,
                );
            }
            (loss, correct, marker_sq, g)
        })
        .collect();
    grads.fill_zero();
    let mut loss = 0.0;
    let mut correct = 0;
    let mut marker_sq = 0.0;
    for (l, c, m, g) in &parts {
        loss += l;
        correct += c;
        marker_sq += m;
        grads.add(g);
    }
    let n = data.batch.max(1) as f64;
    Ok(BatchStats {
        loss: loss / n,
        accuracy: correct as f64 / n,
        marker_grad: Some(marker_sq.sqrt()),
    })
}

/// `‖∂L/∂h_t‖` for t = 0..=T (full BPTT, the batch's gradients stacked), measured on `data`.
pub fn gradient_flow(rnn: &Rnn, data: &AddingBatch) -> Result<Vec<f64>, ToolkitError> {
    check_batch(rnn, data)?;
    let per_seq = data.seq_len * INPUT;
    let scale = 2.0 / data.batch.max(1) as f32;
    let mut ws = workspace(rnn, data.seq_len);
    let mut g = RnnGrads::zeros(rnn.hidden);
    let mut flow_sq = vec![0.0f64; data.seq_len + 1];
    for b in 0..data.batch {
        let x = &data.inputs[b * per_seq..(b + 1) * per_seq];
        let y = forward_sample(rnn, &mut ws, x, data.seq_len);
        let e = y - data.targets[b];
        backward_sample(
            rnn,
            &mut ws,
            x,
            data.seq_len,
            scale * e,
            data.seq_len,
            &mut g,
            &mut 0.0,
            Some(&mut flow_sq),
        );
    }
    Ok(flow_sq.into_iter().map(f64::sqrt).collect())
}

/// The defences of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Defences {
    /// `clip_grad_norm_(max_norm)` before each update.
    pub clip_max_norm: Option<f64>,
    /// Reparametrise `W_hh` as `W / σ₁(W)` (one power iteration per step, persistent u).
    pub spectral_norm: bool,
    /// Truncated BPTT horizon.
    pub bptt_horizon: Option<usize>,
}

/// One training run's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Hidden size.
    pub hidden: usize,
    /// Sequence length T.
    pub seq_len: usize,
    /// Sequences per step.
    pub batch: usize,
    /// SGD steps.
    pub steps: usize,
    /// Learning rate η of `θ ← θ − η g`.
    pub lr: f64,
    /// Seed of the weights and the data (runs with the same seed see the same batches).
    pub seed: u64,
    /// Recurrent initialisation.
    pub init: RecurrentInit,
    /// Defences.
    pub defences: Defences,
    /// Momentum μ of SGD (`v ← μ v + g`, `θ ← θ − η v`; 0 for plain SGD).
    pub momentum: f64,
    /// Marker layout of the adding problem.
    pub layout: MarkerLayout,
    /// Sequences in the final evaluation.
    pub eval_batch: usize,
    /// Monitor thresholds.
    pub monitor: MonitorConfig,
}

/// What happened at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// Training loss (before the update).
    pub loss: f64,
    /// Total L2 gradient norm before clipping (NaN/inf when the gradients were not finite).
    pub grad_norm: f64,
    /// True when clipping rescaled the gradients.
    pub clipped: bool,
    /// The monitor's symptoms.
    pub symptoms: Symptoms,
    /// σ₁(W_hh) estimate (the effective matrix for spectral normalization), if measured.
    pub sigma_hh: f64,
    /// `‖∂L/∂x_t‖` at the marker steps ([`BatchStats::marker_grad`]), before clipping.
    pub marker_grad: f64,
}

/// The result of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// One record per step run.
    pub records: Vec<StepRecord>,
    /// First step whose loss or gradient was NaN/inf (training stops there).
    pub nan_step: Option<usize>,
    /// First step with a monitor alert.
    pub first_alert: Option<usize>,
    /// Number of steps with a monitor alert.
    pub alerts: usize,
    /// Largest finite pre-clip gradient norm.
    pub peak_norm: f64,
    /// Evaluation on a held-out batch after training (`None` when the weights are not finite).
    pub eval: Option<BatchStats>,
    /// Loss and accuracy of the initial weights on the held-out batch.
    pub initial_eval: BatchStats,
    /// Wall time of the run in seconds.
    pub seconds: f64,
    /// The final weights (effective W_hh for spectral normalization).
    pub final_model: Rnn,
}

fn sgd_step(rnn: &mut Rnn, w_hh: &mut [f32], g: &RnnGrads, vel: &mut RnnGrads, lr: f32, mu: f32) {
    let upd = |p: &mut [f32], g: &[f32], v: &mut [f32]| {
        for ((p, g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
            *v = mu * *v + g;
            *p -= lr * *v;
        }
    };
    upd(&mut rnn.w_xh, &g.w_xh, &mut vel.w_xh);
    upd(w_hh, &g.w_hh, &mut vel.w_hh);
    upd(&mut rnn.b_h, &g.b_h, &mut vel.b_h);
    upd(&mut rnn.w_hy, &g.w_hy, &mut vel.w_hy);
    upd(&mut rnn.b_y, &g.b_y, &mut vel.b_y);
}

/// Trains an RNN with SGD under `cfg` and records every step; see the module docs.
pub fn train(cfg: &TrainConfig) -> Result<TrainOutcome, ToolkitError> {
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(ToolkitError::param("lr", cfg.lr, "finite and > 0"));
    }
    if !(cfg.momentum.is_finite() && (0.0..1.0).contains(&cfg.momentum)) {
        return Err(ToolkitError::param("momentum", cfg.momentum, "in [0, 1)"));
    }
    if cfg.batch == 0 || cfg.eval_batch == 0 {
        return Err(ToolkitError::param("batch", 0.0, "at least 1"));
    }
    let start = Instant::now();
    let h = cfg.hidden;
    let mut rnn = Rnn::new(h, cfg.init, &mut Rng::derive(cfg.seed, 1))?;
    let mut data_rng = Rng::derive(cfg.seed, 2);
    let eval_data = AddingBatch::sample(
        cfg.eval_batch,
        cfg.seq_len,
        cfg.layout,
        &mut Rng::derive(cfg.seed, 3),
    )?;
    let mut monitor = GradientMonitor::new(cfg.monitor)?;
    let mut grads = RnnGrads::zeros(h);
    let mut velocity = RnnGrads::zeros(h);
    let (lr, mu) = (cfg.lr as f32, cfg.momentum as f32);
    // For spectral normalization `raw` holds W and `rnn.w_hh` the effective W / σ.
    let mut raw = rnn.w_hh.clone();
    let mut sn = if cfg.defences.spectral_norm {
        Some(SpectralNorm::new(
            &raw,
            h,
            h,
            1,
            &mut Rng::derive(cfg.seed, 4),
        )?)
    } else {
        None
    };
    let mut sigma_probe = SpectralNorm::new(&rnn.w_hh, h, h, 1, &mut Rng::derive(cfg.seed, 5))?;
    let mut sigma = 0.0;
    if let Some(sn) = sn.as_mut() {
        sigma = sn.sigma(&raw)?;
        for (e, r) in rnn.w_hh.iter_mut().zip(&raw) {
            *e = (*r as f64 / sigma) as f32;
        }
    }
    let initial_eval = evaluate(&rnn, &eval_data)?;
    let mut records = Vec::with_capacity(cfg.steps);
    let mut nan_step = None;
    let mut peak_norm: f64 = 0.0;
    let clip_opts = ClipOptions {
        on_nonfinite: NonFinitePolicy::Skip,
        ..ClipOptions::default()
    };
    for step in 0..cfg.steps {
        let data = AddingBatch::sample(cfg.batch, cfg.seq_len, cfg.layout, &mut data_rng)?;
        let stats = loss_and_grad(&rnn, &data, cfg.defences.bptt_horizon, &mut grads)?;
        if let Some(sn) = sn.as_ref() {
            // Backprop through W / σ(W) with u, v held fixed (as PyTorch):
            // ∂L/∂W = (G − ⟨G, W_sn⟩ u vᵀ) / σ.
            let inner: f64 = grads
                .w_hh
                .iter()
                .zip(&rnn.w_hh)
                .map(|(g, w)| *g as f64 * *w as f64)
                .sum();
            let (u, v) = (sn.u(), sn.v());
            for (row, &ui) in grads.w_hh.chunks_exact_mut(h).zip(u) {
                for (g, &vj) in row.iter_mut().zip(v) {
                    *g = ((*g as f64 - inner * ui * vj) / sigma) as f32;
                }
            }
        }
        let norm = get_total_norm(&grads.views(), NormType::L2).unwrap_or(f64::NAN);
        let max_buffer = grads
            .views()
            .into_iter()
            .map(|g| buffer_norm(g, NormType::L2).unwrap_or(f64::NAN))
            .fold(0.0f64, |a, b| {
                if b.is_nan() || a.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            });
        let param_norm = get_total_norm(&rnn.views(), NormType::L2).unwrap_or(f64::NAN);
        let verdict = monitor.observe(
            Observation::norm(norm)
                .with_max_buffer_norm(max_buffer)
                .with_loss(stats.loss)
                .with_param_norm(param_norm),
        );
        if norm.is_finite() {
            peak_norm = peak_norm.max(norm);
        }
        let sigma_hh = if rnn.w_hh.iter().all(|x| x.is_finite()) {
            sigma_probe.sigma(&rnn.w_hh)?
        } else {
            f64::NAN
        };
        let mut clipped = false;
        if !norm.is_finite() || !stats.loss.is_finite() {
            records.push(StepRecord {
                loss: stats.loss,
                grad_norm: norm,
                clipped,
                symptoms: verdict.symptoms,
                sigma_hh,
                marker_grad: stats.marker_grad.unwrap_or(f64::NAN),
            });
            nan_step = Some(step);
            break;
        }
        if let Some(max_norm) = cfg.defences.clip_max_norm {
            let report = clip_grad_norm_(&mut grads.views_mut(), max_norm, clip_opts)?;
            clipped = report.clipped;
        }
        records.push(StepRecord {
            loss: stats.loss,
            grad_norm: norm,
            clipped,
            symptoms: verdict.symptoms,
            sigma_hh,
            marker_grad: stats.marker_grad.unwrap_or(f64::NAN),
        });
        if let Some(sn) = sn.as_mut() {
            sgd_step(&mut rnn, &mut raw, &grads, &mut velocity, lr, mu);
            sigma = sn.sigma(&raw)?;
            if sigma > SPECTRAL_EPS && sigma.is_finite() {
                for (e, r) in rnn.w_hh.iter_mut().zip(&raw) {
                    *e = (*r as f64 / sigma) as f32;
                }
            }
        } else {
            let mut w = std::mem::take(&mut rnn.w_hh);
            sgd_step(&mut rnn, &mut w, &grads, &mut velocity, lr, mu);
            rnn.w_hh = w;
        }
    }
    let finite = rnn
        .views()
        .iter()
        .all(|g| get_total_norm(&[*g], NormType::L2).is_ok());
    let eval = if finite {
        let e = evaluate(&rnn, &eval_data)?;
        e.loss.is_finite().then_some(e)
    } else {
        None
    };
    Ok(TrainOutcome {
        nan_step,
        first_alert: monitor.first_alert().map(|s| s as usize),
        alerts: monitor.alerts() as usize,
        peak_norm,
        eval,
        initial_eval,
        seconds: start.elapsed().as_secs_f64(),
        final_model: rnn,
        records,
    })
}
