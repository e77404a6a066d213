//! Spectral radius of square matrices: exact (eigenvalues by the real Schur form, feature
//! `linalg`) and estimated by the power method.
//!
//! The reference text says that the largest eigenvalue of an `H × H` matrix with N(0, 1) entries
//! grows like √H. The circular law makes this precise: the eigenvalues of `A/√H` fill the unit
//! disc, so the spectral radius `ρ(A) = max |λ_i| → √H`, while the spectral norm `σ₁(A)`
//! (largest singular value, the γ of the gradient bound) tends to `2√H`.
//!
//! Power-method estimate of ρ: for a random start `x₀`, iterate `x_{k+1} = A x_k / ‖A x_k‖`;
//! after `burn_in` steps, average the log growth over `measure` steps:
//! `ρ̂ = exp((1/measure) Σ ln ‖A x_k‖)`. The average handles complex-conjugate dominant pairs
//! (for which `‖A x_k‖` oscillates) and converges like O(1/measure); its bias comes from
//! eigenvalues whose modulus is close to ρ.

use crate::rng::Rng;
use crate::stabilize::spectral::matvec;
use crate::toolkit_error::ToolkitError;

fn check_square(a_len: usize, n: usize) -> Result<(), ToolkitError> {
    if n == 0 {
        return Err(ToolkitError::param("n", 0.0, "at least 1"));
    }
    let nn = n.checked_mul(n).ok_or(ToolkitError::param(
        "n",
        n as f64,
        "n × n must fit in usize",
    ))?;
    ToolkitError::check_len("spectral radius: square matrix", nn, a_len)
}

/// `max |λ_i|` over the eigenvalues of the row-major `n × n` matrix `a`, from nalgebra's
/// real Schur decomposition. Errors on a shape mismatch or a non-finite entry.
#[cfg(feature = "linalg")]
pub fn spectral_radius_exact(a: &[f64], n: usize) -> Result<f64, ToolkitError> {
    check_square(a.len(), n)?;
    if let Some(x) = a.iter().find(|x| !x.is_finite()) {
        return Err(ToolkitError::param("matrix entry", *x, "finite"));
    }
    let m = nalgebra::DMatrix::from_row_slice(n, n, a);
    let eig = m.complex_eigenvalues();
    Ok(eig.iter().map(|z| z.norm()).fold(0.0, f64::max))
}

/// The power-method estimate `ρ̂` of the spectral radius (see the module docs). Mat-vecs run in
/// parallel for large matrices. Errors on a shape mismatch or `measure == 0`.
pub fn spectral_radius_power(
    a: &[f64],
    n: usize,
    burn_in: usize,
    measure: usize,
    rng: &mut Rng,
) -> Result<f64, ToolkitError> {
    check_square(a.len(), n)?;
    if measure == 0 {
        return Err(ToolkitError::param("measure", 0.0, "at least 1"));
    }
    let mut x = vec![0.0; n];
    let mut y = vec![0.0; n];
    rng.fill_normal_f64(&mut x, 1.0);
    let mut log_sum = 0.0;
    for k in 0..burn_in + measure {
        let nx = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if nx == 0.0 || !nx.is_finite() {
            return Ok(0.0);
        }
        x.iter_mut().for_each(|v| *v /= nx);
        matvec(a, n, &x, &mut y);
        if k >= burn_in {
            let ny = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            if ny == 0.0 {
                return Ok(0.0);
            }
            log_sum += ny.ln();
        }
        std::mem::swap(&mut x, &mut y);
    }
    Ok((log_sum / measure as f64).exp())
}
