//! Spectral norm by power iteration, reproducing PyTorch's
//! `torch.nn.utils.parametrizations.spectral_norm`, and spectral normalization.
//!
//! For a row-major matrix `W` (`rows × cols`; an `nn.Linear` weight is `out × in`, a
//! convolution weight flattened to `out × (in·kh·kw)`, PyTorch's `dim = 0`) the state keeps
//! vectors `u ∈ R^rows` and `v ∈ R^cols` across calls. One power iteration is
//!
//! ```text
//! u ← W v / max(‖W v‖, eps),   v ← Wᵀu / max(‖Wᵀu‖, eps),   eps = 1e-12
//! ```
//!
//! and the estimate of the largest singular value σ₁(W) is `σ = uᵀ W v` (after an iteration
//! this equals `‖Wᵀu‖ ≥ 0`). The error after k iterations shrinks like `(σ₂/σ₁)^{2k}`.
//!
//! **Which PyTorch API, exactly** ([`SpectralNormApi::Parametrization`], the default):
//!
//! | PyTorch (`parametrizations.spectral_norm(module, n_power_iterations=n)`) | here |
//! | --- | --- |
//! | registration on a module in training mode (a fresh module's state): Gaussian `u`, `v`, each divided by `max(‖·‖, eps)`, 15 iterations in `_SpectralNorm.__init__`, then `n` more in the training forward `register_parametrization` runs to check the parametrization | [`SpectralNorm::new`]: 15 + `n` iterations |
//! | each read of `module.weight` in training mode: `n` iterations, then `W / σ` | [`SpectralNorm::sigma`] returns that σ |
//! | a read in eval mode: no iteration, `W / uᵀWv` | [`SpectralNorm::sigma_frozen`] |
//!
//! Registering on a module already in eval mode runs the 15 warm-up iterations only; that state
//! is not reproduced here (it differs by `n` iterations, which the estimate forgets as it
//! converges). PyTorch draws the start vectors from its own generator and this crate from
//! [`Rng`]; [`SpectralNorm::from_start_vectors`] takes given ones, so that the same draws give
//! the same iterates (the tests check σ, `u` and `v` against states recorded from torch 2.x in
//! float64, `tests/fixtures/spectral_norm_torch.json`).
//!
//! [`SpectralNormApi::LegacyHook`] reproduces the older `torch.nn.utils.spectral_norm` forward
//! pre-hook instead: the other order (`v ← normalize(Wᵀu)`, then `u ← normalize(W v)`, so
//! `σ = ‖W v‖`), no iteration at construction, `n` iterations per training forward. On the same
//! matrix and start vectors the two APIs give different σ, `u` and `v` (opposite signs, too)
//! until both have converged.
//!
//! Arithmetic: f64 throughout (f32 weights are widened exactly). PyTorch's float64 mat-vecs
//! sum in a different order, so iterates agree to rounding (about 1e-15), not bit for bit.
//!
//! [`spectral_normalize_`] divides `W` in place by the estimate, giving `σ₁(W) ≈ 1`.
//!
//! Degenerate inputs (the one deliberate difference from PyTorch): when the new `u` or `v`
//! would have a norm below eps (or a non-finite one) — `W` all zeros, or the current vector
//! orthogonal to `W`'s row or column space — PyTorch divides by eps and keeps the (near-)zero
//! vector, and with an all-zero `W` its `u` stays zero even after `W` changes. Here the vector
//! fed to that mat-vec is re-drawn from a seeded generator owned by the state (runs stay
//! reproducible) and the mat-vec repeated; if the result is still degenerate the new vector is
//! itself re-drawn. `u` and `v` therefore stay unit vectors, an all-zero `W` gives σ = 0, and the
//! estimate recovers as soon as `W` is non-zero. A `W` with a NaN or ±inf entry is rejected with
//! an error before any state changes. Shapes are checked (`rows · cols` without overflow and
//! equal to `w.len()`) before anything is allocated.
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

/// Iterations `_SpectralNorm.__init__` runs before the first forward.
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

/// Which PyTorch spectral-norm API a [`SpectralNorm`] reproduces (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpectralNormApi {
    /// `torch.nn.utils.parametrizations.spectral_norm`: `u ← normalize(W v)` then
    /// `v ← normalize(Wᵀu)`; construction runs 15 + `n_power_iterations` iterations (the
    /// state after registering on a module in training mode).
    #[default]
    Parametrization,
    /// The legacy `torch.nn.utils.spectral_norm` hook: `v ← normalize(Wᵀu)` then
    /// `u ← normalize(W v)`; no iteration at construction.
    LegacyHook,
}

impl SpectralNormApi {
    /// Iterations run at construction for `n_power_iterations` per call.
    fn construction_iterations(self, n_power_iterations: usize) -> usize {
        match self {
            SpectralNormApi::Parametrization => WARMUP_ITERATIONS + n_power_iterations,
            SpectralNormApi::LegacyHook => 0,
        }
    }
}

/// Persistent power-iteration state for one matrix shape; see the module docs.
#[derive(Debug, Clone)]
pub struct SpectralNorm {
    rows: usize,
    cols: usize,
    n_power_iterations: usize,
    api: SpectralNormApi,
    u: Vec<f64>,
    v: Vec<f64>,
    wv: Vec<f64>,
    /// Source of fresh vectors when the iteration degenerates.
    redraw: Rng,
}

/// Seed of the re-draw generator of [`SpectralNorm::from_start_vectors`].
const FIXED_REDRAW_SEED: u64 = 0x5EED_5EC7_4A1B_0002;

/// `true` when a vector of this norm can be normalised as PyTorch does without degenerating.
fn usable_norm(n: f64) -> bool {
    n.is_finite() && n >= SPECTRAL_EPS
}

impl SpectralNorm {
    /// State for `w` (`rows × cols`, row-major) reproducing
    /// `torch.nn.utils.parametrizations.spectral_norm(module, n_power_iterations)` on a module
    /// in training mode: Gaussian `u`, `v` drawn from `rng` and normalised, then
    /// 15 + `n_power_iterations` iterations on `w`. `n_power_iterations` (≥ 1) is the number
    /// run by each later [`SpectralNorm::sigma`]. Errors (before allocating) on an empty or
    /// mismatched shape, an overflowing `rows · cols` and a non-finite entry.
    pub fn new<T: MatElem>(
        w: &[T],
        rows: usize,
        cols: usize,
        n_power_iterations: usize,
        rng: &mut Rng,
    ) -> Result<Self, ToolkitError> {
        SpectralNorm::with_api(
            w,
            rows,
            cols,
            n_power_iterations,
            SpectralNormApi::Parametrization,
            rng,
        )
    }

    /// Like [`SpectralNorm::new`], reproducing the given PyTorch API ([`SpectralNormApi`]).
    pub fn with_api<T: MatElem>(
        w: &[T],
        rows: usize,
        cols: usize,
        n_power_iterations: usize,
        api: SpectralNormApi,
        rng: &mut Rng,
    ) -> Result<Self, ToolkitError> {
        check_arguments(w, rows, cols, n_power_iterations)?;
        let mut u = vec![0.0; rows];
        let mut v = vec![0.0; cols];
        rng.fill_normal_f64(&mut u, 1.0);
        rng.fill_normal_f64(&mut v, 1.0);
        // A clone, so that the caller's stream does not depend on whether a re-draw happens.
        let redraw = Rng::new(rng.clone().next_u64() ^ 0x5EED_5EC7_4A1B_0001);
        Ok(SpectralNorm::start(
            w,
            n_power_iterations,
            api,
            u,
            v,
            redraw,
        ))
    }

    /// State for `w` started from the given vectors instead of random ones — e.g. the raw
    /// Gaussian draws PyTorch made (`u0` of length `rows`, `v0` of length `cols`). They are
    /// normalised here as PyTorch normalises its draws, then the construction iterations of
    /// `api` run. Errors, besides those of [`SpectralNorm::new`], on a start vector of the
    /// wrong length, with a non-finite entry, or of norm below eps (1e-12). Re-draws, if the
    /// iteration ever degenerates, come from a generator with a fixed seed.
    pub fn from_start_vectors<T: MatElem>(
        w: &[T],
        rows: usize,
        cols: usize,
        n_power_iterations: usize,
        api: SpectralNormApi,
        u0: &[f64],
        v0: &[f64],
    ) -> Result<Self, ToolkitError> {
        check_arguments(w, rows, cols, n_power_iterations)?;
        ToolkitError::check_len("spectral norm: start vector u", rows, u0.len())?;
        ToolkitError::check_len("spectral norm: start vector v", cols, v0.len())?;
        for x in [u0, v0] {
            check_finite(x)?;
            let n = norm2(x);
            if !usable_norm(n) {
                return Err(ToolkitError::param(
                    "start vector norm",
                    n,
                    "at least 1e-12",
                ));
            }
        }
        Ok(SpectralNorm::start(
            w,
            n_power_iterations,
            api,
            u0.to_vec(),
            v0.to_vec(),
            Rng::new(FIXED_REDRAW_SEED),
        ))
    }

    /// Normalises the start vectors and runs the construction iterations (arguments checked).
    fn start<T: MatElem>(
        w: &[T],
        n_power_iterations: usize,
        api: SpectralNormApi,
        mut u: Vec<f64>,
        mut v: Vec<f64>,
        redraw: Rng,
    ) -> Self {
        normalize(&mut u);
        normalize(&mut v);
        let mut sn = SpectralNorm {
            rows: u.len(),
            cols: v.len(),
            n_power_iterations,
            api,
            wv: vec![0.0; u.len()],
            u,
            v,
            redraw,
        };
        sn.iterate(w, api.construction_iterations(n_power_iterations));
        sn
    }

    /// Shape and finiteness of `w`, checked before any state changes.
    fn check<T: MatElem>(&self, w: &[T]) -> Result<(), ToolkitError> {
        ToolkitError::check_len("spectral norm: matrix", self.rows * self.cols, w.len())?;
        check_finite(w)
    }

    fn iterate<T: MatElem>(&mut self, w: &[T], n: usize) {
        let cols = self.cols;
        let rng = &mut self.redraw;
        let w_times = |x: &[f64], out: &mut [f64]| matvec(w, cols, x, out);
        let wt_times = |x: &[f64], out: &mut [f64]| matvec_t(w, cols, x, out);
        for _ in 0..n {
            match self.api {
                SpectralNormApi::Parametrization => {
                    half_step(rng, &mut self.v, &mut self.u, w_times);
                    half_step(rng, &mut self.u, &mut self.v, wt_times);
                }
                SpectralNormApi::LegacyHook => {
                    half_step(rng, &mut self.u, &mut self.v, wt_times);
                    half_step(rng, &mut self.v, &mut self.u, w_times);
                }
            }
        }
    }

    /// Runs `n_power_iterations` iterations on `w` and returns `σ = uᵀ W v` (PyTorch's
    /// training-mode forward). Errors on a length mismatch or a non-finite entry, leaving `u`
    /// and `v` unchanged.
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

    /// The PyTorch API this state reproduces.
    pub fn api(&self) -> SpectralNormApi {
        self.api
    }
}

/// Argument checks shared by the constructors, in an order that allocates nothing.
fn check_arguments<T: MatElem>(
    w: &[T],
    rows: usize,
    cols: usize,
    n_power_iterations: usize,
) -> Result<(), ToolkitError> {
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
    check_finite(w)
}

/// `output ← normalize(product(input))` (`u ← normalize(W v)` or `v ← normalize(Wᵀu)`). When the
/// product is degenerate, `input` is re-drawn and the product repeated; if it stays degenerate,
/// `output` is re-drawn.
fn half_step(
    rng: &mut Rng,
    input: &mut [f64],
    output: &mut [f64],
    product: impl Fn(&[f64], &mut [f64]),
) {
    product(input, output);
    if !usable_norm(norm2(output)) {
        redraw_unit(rng, input);
        product(input, output);
    }
    normalize_or_redraw(rng, output);
}

/// A fresh Gaussian unit vector in `x`.
fn redraw_unit(rng: &mut Rng, x: &mut [f64]) {
    rng.fill_normal_f64(x, 1.0);
    normalize(x);
}

/// `x / ‖x‖`, or a fresh unit vector when `‖x‖` is below eps or not finite.
fn normalize_or_redraw(rng: &mut Rng, x: &mut [f64]) {
    if usable_norm(norm2(x)) {
        normalize(x);
    } else {
        redraw_unit(rng, x);
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

/// Scales `w` in place so that its spectral norm is `target`: a fresh [`SpectralNorm::new`]
/// state with `iterations` (at least 1) per call, one [`SpectralNorm::sigma`] — 15 + 2 ·
/// `iterations` power iterations from a random start in all. Returns the σ measured before
/// scaling.
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
