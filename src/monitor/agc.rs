//! Unit-wise adaptive gradient clipping (AGC, Brock et al., 2021, the NFNets paper).
//!
//! For a weight matrix `W` and its gradient `G`, both row-major with one row per unit (output
//! neuron), each row is clipped independently:
//!
//! ```text
//! m_i = λ · max(‖w_i‖₂, eps)
//! if ‖g_i‖₂ > m_i:   g_i ← g_i · m_i / max(‖g_i‖₂, 1e-6)
//! ```
//!
//! Defaults λ = 0.01 (`clipping`), eps = 1e-3 (so that zero-initialised rows can still move).
//! Row norms come from the crate's compensated kernels ([`crate::buffer_norm`]) and rows are
//! scaled with [`crate::scale_`].
//!
//! Vectors (biases, gains) are **one unit**: pass `cols = len` (a single row), so the whole
//! vector's norm is compared with the whole weight vector's norm. This is what the reference
//! implementations do — the NFNets code and timm's `unitwise_norm` take the full norm of any
//! tensor with at most one dimension. Passing `cols = 1` would clip every bias element against
//! its own (often zero, hence `eps`) weight, which is a different and much harsher rule.
//!
//! ```
//! use gradclip::monitor::{agc_, AgcOptions};
//! let w = [1.0f32, 0.0, 0.0, 2.0]; // 2×2, row norms 1 and 2
//! let mut g = [0.0f32, 1.0, 0.001, 0.0];
//! let r = agc_(&w, &mut g, 2, AgcOptions::default()).unwrap();
//! assert_eq!(r.clipped_rows, 1);
//! assert!((g[1] - 0.01).abs() < 1e-6); // ‖g_0‖ clipped to 0.01 · 1
//! ```

use crate::toolkit_error::ToolkitError;
use crate::{buffer_norm, scale_, Grad, GradMut, NormType};

/// Parameters of [`agc_`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgcOptions {
    /// λ: the largest allowed ratio ‖g_i‖ / max(‖w_i‖, eps) (default 0.01).
    pub clipping: f64,
    /// Floor of the weight row norm (default 1e-3).
    pub eps: f64,
}

impl Default for AgcOptions {
    fn default() -> Self {
        AgcOptions {
            clipping: 0.01,
            eps: 1e-3,
        }
    }
}

/// What [`agc_`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgcReport {
    /// Number of rows.
    pub rows: usize,
    /// Number of rows whose gradient was scaled down.
    pub clipped_rows: usize,
}

/// Clips each row of `grad` against the matching row of `weight` (row-major, `cols` columns);
/// see the module docs. Errors on a shape mismatch, on bad options and on non-finite values
/// (nothing is modified then).
pub fn agc_(
    weight: &[f32],
    grad: &mut [f32],
    cols: usize,
    opts: AgcOptions,
) -> Result<AgcReport, ToolkitError> {
    if !(opts.clipping.is_finite() && opts.clipping > 0.0) {
        return Err(ToolkitError::param(
            "clipping",
            opts.clipping,
            "finite and > 0",
        ));
    }
    if !(opts.eps.is_finite() && opts.eps >= 0.0) {
        return Err(ToolkitError::param("eps", opts.eps, "finite and >= 0"));
    }
    ToolkitError::check_len("agc: grad vs weight", weight.len(), grad.len())?;
    if cols == 0 {
        if weight.is_empty() {
            return Ok(AgcReport {
                rows: 0,
                clipped_rows: 0,
            });
        }
        return Err(ToolkitError::param(
            "cols",
            0.0,
            "> 0 for a non-empty matrix",
        ));
    }
    if !weight.len().is_multiple_of(cols) {
        return Err(ToolkitError::ShapeMismatch {
            what: "agc: length not a multiple of cols",
            expected: weight.len() / cols * cols,
            got: weight.len(),
        });
    }
    let rows = weight.len() / cols;
    // First pass: every factor (so that a non-finite value anywhere leaves everything untouched).
    let mut factors = Vec::with_capacity(rows);
    for (w_row, g_row) in weight.chunks_exact(cols).zip(grad.chunks_exact(cols)) {
        let w_norm = buffer_norm(Grad::F32(w_row), NormType::L2)?;
        let g_norm = buffer_norm(Grad::F32(g_row), NormType::L2)?;
        let max_norm = opts.clipping * w_norm.max(opts.eps);
        factors.push((g_norm > max_norm).then(|| max_norm / g_norm.max(1e-6)));
    }
    let mut clipped_rows = 0;
    for (g_row, f) in grad.chunks_exact_mut(cols).zip(factors) {
        if let Some(f) = f {
            scale_(&mut [GradMut::F32(g_row)], f)?;
            clipped_rows += 1;
        }
    }
    Ok(AgcReport { rows, clipped_rows })
}
