//! Spectral norm by power iteration, with PyTorch's semantics, and spectral normalization.
//!
//! For a row-major matrix `W` (`rows × cols`) the state keeps unit vectors `u ∈ R^rows` and
//! `v ∈ R^cols` across calls. Each call runs `n_power_iterations` steps of
//!
//! ```text
//! v ← Wᵀu / max(‖Wᵀu‖, eps),   u ← W v / max(‖W v‖, eps),   eps = 1e-12
//! ```
//!
//! and returns `σ = uᵀ W v`, the estimate of the largest singular value σ₁(W). Because `u`
//! persists, one iteration per training step is enough once the estimate has converged
//! (PyTorch's default); [`SpectralNorm::new`] starts from Gaussian `u`, `v` and runs 15 warm-up
//! iterations as PyTorch's parametrization does. The error after k iterations shrinks like
//! `(σ₂/σ₁)^{2k}`.
//!
//! [`spectral_normalize_`] divides `W` in place by the estimate, giving `σ₁(W) ≈ 1`.
//!
//! Degenerate inputs: when `‖Wᵀu‖ < eps` (or is not finite) the iteration cannot move — with an
//! all-zero `W`, PyTorch's `u` becomes the zero vector and stays there even after `W` changes.
//! Here `u` is then re-drawn from a seeded generator owned by the state (so runs stay
//! reproducible) and `Wᵀu` recomputed; an all-zero `W` gives σ = 0 with a random unit `u`, and
//! the estimate recovers as soon as `W` is non-zero. A `W` with a NaN or ±inf entry is rejected
//! with an error before any state changes. Shapes are checked (`rows · cols` without overflow
//! and equal to `w.len()`) before anything is allocated.
//!
//! Mat-vecs accumulate in f64 and run on rayon for matrices of at least
//! [`PARALLEL_MIN_ELEMS`] elements: `W v` splits by rows and `Wᵀu` by blocks of columns, each
//! output element summed in a fixed order, so the result does not depend on the thread count.
//!
//! ```
//! use gradclip::rng::Rng;
//! use gradclip::stabilize::{spectral_normalize_, SpectralNorm};
//! // diag(3, 1): σ₁ = 3
//! let mut w = vec![3.0f32, 0.0, 0.0, 1.0];
//! let mut sn = SpectralNorm::new(&w, 2, 2, 1, &mut Rng::new(0)).unwrap();
//! assert!((sn.sigma(&w).unwrap() - 3.0).abs() < 1e-9);
//! spectral_normalize_(&mut w, &mut sn).unwrap();
//! assert!((w[0] - 1.0).abs() < 1e-6);
//! ```

use rayon::prelude::*;

use crate::rng::Rng;
use crate::toolkit_error::ToolkitError;
use crate::{scale_, GradMut};

/// Matrices with at least this many elements use parallel mat-vecs.
pub const PARALLEL_MIN_ELEMS: usize = 1 << 16;

/// The `eps` of the normalisations (PyTorch's default).
pub const SPECTRAL_EPS: f64 = 1e-12;

const WARMUP_ITERATIONS: usize = 15;

/// Element type of a matrix handled by the power iteration (f32 weights, f64 studies).
pub trait MatElem: Copy + Send + Sync {
    /// Widening to f64.
    fn to_f64(self) -> f64;
}

impl MatElem for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl MatElem for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// `out = W x` for row-major `W` (`rows × cols`); sizes are the caller's contract.
pub(crate) fn matvec<T: MatElem>(w: &[T], cols: usize, x: &[f64], out: &mut [f64]) {
    let row_dot =
        |row: &[T]| -> f64 { row.iter().zip(x).map(|(a, b)| a.to_f64() * b).sum::<f64>() };
    if cols == 0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    if w.len() >= PARALLEL_MIN_ELEMS {
        out.par_iter_mut()
            .zip(w.par_chunks_exact(cols))
            .for_each(|(o, row)| *o = row_dot(row));
    } else {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(cols)) {
            *o = row_dot(row);
        }
    }
}

/// `out = Wᵀ y` for row-major `W` (`rows × cols`); sizes are the caller's contract.
pub(crate) fn matvec_t<T: MatElem>(w: &[T], cols: usize, y: &[f64], out: &mut [f64]) {
    const COL_BLOCK: usize = 64;
    let block = |c0: usize, out: &mut [f64]| {
        out.iter_mut().for_each(|o| *o = 0.0);
        let width = out.len();
        for (row, &yi) in w.chunks_exact(cols).zip(y) {
            for (o, a) in out.iter_mut().zip(&row[c0..c0 + width]) {
                *o += a.to_f64() * yi;
            }
        }
    };
    if cols == 0 {
        return;
    }
    if w.len() >= PARALLEL_MIN_ELEMS {
        out.par_chunks_mut(COL_BLOCK)
            .enumerate()
            .for_each(|(b, o)| block(b * COL_BLOCK, o));
    } else {
        block(0, out);
    }
}

fn normalize(x: &mut [f64]) {
    let n = x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let d = n.max(SPECTRAL_EPS);
    x.iter_mut().for_each(|a| *a /= d);
}

fn norm2(x: &[f64]) -> f64 {
    x.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// `rows · cols`, or an error when it overflows or differs from `len`.
fn check_shape(
    what: &'static str,
    rows: usize,
    cols: usize,
    len: usize,
) -> Result<(), ToolkitError> {
    let n = rows.checked_mul(cols).ok_or(ToolkitError::param(
        "rows × cols",
        rows as f64 * cols as f64,
        "a product that fits in usize",
    ))?;
    ToolkitError::check_len(what, n, len)
}

fn check_finite<T: MatElem>(w: &[T]) -> Result<(), ToolkitError> {
    match w.iter().map(|x| x.to_f64()).find(|x| !x.is_finite()) {
        Some(x) => Err(ToolkitError::param("matrix entry", x, "finite")),
        None => Ok(()),
    }
}

/// Persistent power-iteration state for one matrix shape; see the module docs.
#[derive(Debug, Clone)]
pub struct SpectralNorm {
    rows: usize,
    cols: usize,
    n_power_iterations: usize,
    u: Vec<f64>,
    v: Vec<f64>,
    wv: Vec<f64>,
    /// Source of fresh `u` vectors when the iteration degenerates.
    redraw: Rng,
}

impl SpectralNorm {
    /// State for `w` (`rows × cols`, row-major): Gaussian `u`, `v` from `rng`, then 15 warm-up
    /// iterations on `w`. `n_power_iterations` (≥ 1) is the number run by each later call.
    /// Errors (before allocating) on an empty or mismatched shape, an overflowing `rows · cols`
    /// and a non-finite entry.
    pub fn new<T: MatElem>(
        w: &[T],
        rows: usize,
        cols: usize,
        n_power_iterations: usize,
        rng: &mut Rng,
    ) -> Result<Self, ToolkitError> {
        if rows == 0 || cols == 0 {
            return Err(ToolkitError::param(
                "rows/cols",
                rows.min(cols) as f64,
                "a non-empty matrix",
            ));
        }
        if n_power_iterations == 0 {
            return Err(ToolkitError::param("n_power_iterations", 0.0, "at least 1"));
        }
        check_shape("spectral norm: matrix", rows, cols, w.len())?;
        check_finite(w)?;
        let mut u = vec![0.0; rows];
        let mut v = vec![0.0; cols];
        rng.fill_normal_f64(&mut u, 1.0);
        rng.fill_normal_f64(&mut v, 1.0);
        normalize(&mut u);
        normalize(&mut v);
        // A clone, so that the caller's stream does not depend on whether a re-draw happens.
        let redraw = Rng::new(rng.clone().next_u64() ^ 0x5EED_5EC7_4A1B_0001);
        let mut sn = SpectralNorm {
            rows,
            cols,
            n_power_iterations,
            u,
            v,
            wv: vec![0.0; rows],
            redraw,
        };
        sn.iterate(w, WARMUP_ITERATIONS);
        Ok(sn)
    }

    /// Shape and finiteness of `w`, checked before any state changes.
    fn check<T: MatElem>(&self, w: &[T]) -> Result<(), ToolkitError> {
        ToolkitError::check_len("spectral norm: matrix", self.rows * self.cols, w.len())?;
        check_finite(w)
    }

    fn redraw_u(&mut self) {
        self.redraw.fill_normal_f64(&mut self.u, 1.0);
        normalize(&mut self.u);
    }

    fn iterate<T: MatElem>(&mut self, w: &[T], n: usize) {
        for _ in 0..n {
            matvec_t(w, self.cols, &self.u, &mut self.v);
            let nv = norm2(&self.v);
            if !(nv.is_finite() && nv >= SPECTRAL_EPS) {
                // Stuck (u = 0 after an all-zero W, or u ⟂ the row space): start afresh.
                self.redraw_u();
                matvec_t(w, self.cols, &self.u, &mut self.v);
            }
            normalize(&mut self.v);
            matvec(w, self.cols, &self.v, &mut self.u);
            let nu = norm2(&self.u);
            if nu.is_finite() && nu >= SPECTRAL_EPS {
                normalize(&mut self.u);
            } else {
                self.redraw_u(); // W v = 0: keep a unit u, never the zero vector
            }
        }
    }

    /// Runs `n_power_iterations` iterations on `w` and returns `σ = uᵀ W v`. Errors on a
    /// length mismatch or a non-finite entry, leaving `u` and `v` unchanged.
    pub fn sigma<T: MatElem>(&mut self, w: &[T]) -> Result<f64, ToolkitError> {
        self.check(w)?;
        self.iterate(w, self.n_power_iterations);
        Ok(self.sigma_frozen_unchecked(w))
    }

    /// `σ = uᵀ W v` with the current `u`, `v` (no iteration; PyTorch's eval mode).
    pub fn sigma_frozen<T: MatElem>(&mut self, w: &[T]) -> Result<f64, ToolkitError> {
        self.check(w)?;
        Ok(self.sigma_frozen_unchecked(w))
    }

    fn sigma_frozen_unchecked<T: MatElem>(&mut self, w: &[T]) -> f64 {
        matvec(w, self.cols, &self.v, &mut self.wv);
        self.u.iter().zip(&self.wv).map(|(a, b)| a * b).sum()
    }

    /// The left singular vector estimate `u` (length `rows`).
    pub fn u(&self) -> &[f64] {
        &self.u
    }

    /// The right singular vector estimate `v` (length `cols`).
    pub fn v(&self) -> &[f64] {
        &self.v
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// Estimates σ₁(W) with `state` ([`SpectralNorm::sigma`]) and divides `w` by it in place with
/// the crate's [`scale_`] kernel. Returns the σ used. A σ below 1e-12 leaves `w` unchanged.
pub fn spectral_normalize_(w: &mut [f32], state: &mut SpectralNorm) -> Result<f64, ToolkitError> {
    let sigma = state.sigma(w)?;
    if !sigma.is_finite() {
        return Err(ToolkitError::param(
            "sigma",
            sigma,
            "a finite spectral norm",
        ));
    }
    if sigma > SPECTRAL_EPS {
        scale_(&mut [GradMut::F32(w)], 1.0 / sigma)?;
    }
    Ok(sigma)
}

/// Scales `w` in place so that its spectral norm is `target` (power iteration with
/// `iterations` steps from a fresh random start). Returns the σ measured before scaling.
pub fn set_spectral_norm_(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    target: f64,
    iterations: usize,
    rng: &mut Rng,
) -> Result<f64, ToolkitError> {
    if !(target.is_finite() && target > 0.0) {
        return Err(ToolkitError::param("target", target, "finite and > 0"));
    }
    let mut sn = SpectralNorm::new(w, rows, cols, iterations.max(1), rng)?;
    let sigma = sn.sigma(w)?;
    if sigma > SPECTRAL_EPS {
        scale_(&mut [GradMut::F32(w)], target / sigma)?;
    }
    Ok(sigma)
}
