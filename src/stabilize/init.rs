//! Seeded weight initialisers (row-major `rows × cols` matrices of f32; `rows` = fan-out,
//! `cols` = fan-in, as PyTorch's `Linear` weights).
//!
//! - [`orthogonal_`] (feature `linalg`): `W = gain · Q` from the QR decomposition `A = QR` of a
//!   Gaussian matrix, with the columns of `Q` multiplied by `sign(R_ii)` so that `Q` is uniformly
//!   distributed (Haar). For `rows < cols` the decomposition is of the transpose, so the rows of
//!   `W` are orthonormal; otherwise its columns are. Every singular value of `W` is `gain`.
//! - [`xavier_uniform_`]: `U(−a, a)` with `a = gain · √(6 / (fan_in + fan_out))`.
//! - [`zeros_`], [`normal_`].
//!
//! All draws come from [`crate::rng::Rng`], so the same seed gives the same weights.

use crate::rng::Rng;
use crate::toolkit_error::ToolkitError;

fn check_shape(
    what: &'static str,
    w_len: usize,
    rows: usize,
    cols: usize,
) -> Result<(), ToolkitError> {
    let expected = rows.checked_mul(cols).ok_or(ToolkitError::ShapeMismatch {
        what,
        expected: usize::MAX,
        got: w_len,
    })?;
    ToolkitError::check_len(what, expected, w_len)
}

fn check_gain(gain: f64) -> Result<(), ToolkitError> {
    if gain.is_finite() {
        Ok(())
    } else {
        Err(ToolkitError::param("gain", gain, "a finite number"))
    }
}

/// Fills `w` (`rows × cols`) with a (semi-)orthogonal matrix times `gain`; see the module docs.
#[cfg(feature = "linalg")]
pub fn orthogonal_(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    gain: f64,
    rng: &mut Rng,
) -> Result<(), ToolkitError> {
    use nalgebra::DMatrix;
    check_shape("orthogonal_: matrix", w.len(), rows, cols)?;
    check_gain(gain)?;
    if w.is_empty() {
        return Ok(());
    }
    let mut gaussian = vec![0.0f64; rows * cols];
    rng.fill_normal_f64(&mut gaussian, 1.0);
    // Tall orientation: m ≥ n.
    let transpose = rows < cols;
    let (m, n) = if transpose {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let a = if transpose {
        DMatrix::from_row_slice(rows, cols, &gaussian).transpose()
    } else {
        DMatrix::from_row_slice(rows, cols, &gaussian)
    };
    let qr = a.qr();
    let mut q = qr.q(); // m × n
    let r = qr.r(); // n × n
    haar_sign_fix(&mut q, &r);
    debug_assert_eq!(q.shape(), (m, n));
    for i in 0..rows {
        for j in 0..cols {
            let x = if transpose { q[(j, i)] } else { q[(i, j)] };
            w[i * cols + j] = (gain * x) as f32;
        }
    }
    Ok(())
}

/// Multiplies column `j` of `q` by `sign(R_jj)`, so that `A = QR` holds with a positive diagonal
/// of `R` and `Q` is Haar-distributed. nalgebra 0.33's QR already returns `R` with a non-negative
/// diagonal (its `q()` folds the Householder signs in), so today this changes nothing; it keeps
/// the guarantee independent of the QR backend and is unit-tested on its own.
#[cfg(feature = "linalg")]
fn haar_sign_fix(q: &mut nalgebra::DMatrix<f64>, r: &nalgebra::DMatrix<f64>) {
    for j in 0..q.ncols().min(r.nrows()) {
        if r[(j, j)] < 0.0 {
            q.column_mut(j).neg_mut();
        }
    }
}

/// Fills `w` (`rows × cols`, fan-in = `cols`, fan-out = `rows`) with
/// `U(−a, a)`, `a = gain · √(6 / (cols + rows))`.
pub fn xavier_uniform_(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    gain: f64,
    rng: &mut Rng,
) -> Result<(), ToolkitError> {
    check_shape("xavier_uniform_: matrix", w.len(), rows, cols)?;
    check_gain(gain)?;
    if w.is_empty() {
        return Ok(());
    }
    let a = gain * (6.0 / (rows + cols) as f64).sqrt();
    for x in w.iter_mut() {
        *x = rng.uniform_range(-a, a) as f32;
    }
    Ok(())
}

/// Sets every element to zero (biases).
pub fn zeros_(w: &mut [f32]) {
    w.iter_mut().for_each(|x| *x = 0.0);
}

/// Fills `w` with `N(0, std²)` draws (`std` finite and ≥ 0).
pub fn normal_(w: &mut [f32], std: f64, rng: &mut Rng) -> Result<(), ToolkitError> {
    if !(std.is_finite() && std >= 0.0) {
        return Err(ToolkitError::param("std", std, "finite and >= 0"));
    }
    rng.fill_normal_f32(w, std);
    Ok(())
}

#[cfg(all(test, feature = "linalg"))]
mod tests {
    use nalgebra::DMatrix;

    #[test]
    fn sign_fix_makes_the_diagonal_of_r_positive() {
        // A = Q R with a negative R_00: the fix must negate column 0 of Q (and only it).
        let q0 = DMatrix::from_row_slice(3, 2, &[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        let r = DMatrix::from_row_slice(2, 2, &[-2.0, 1.0, 0.0, 3.0]);
        let a = &q0 * &r;
        let mut q = q0.clone();
        super::haar_sign_fix(&mut q, &r);
        assert_eq!(q.column(0), -q0.column(0));
        assert_eq!(q.column(1), q0.column(1));
        // With the fixed Q, QᵀA (the R of the factorisation) has a positive diagonal.
        let r_fixed = q.transpose() * a;
        assert!(r_fixed[(0, 0)] > 0.0 && r_fixed[(1, 1)] > 0.0, "{r_fixed}");
    }
}
