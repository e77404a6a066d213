//! Command-line argument values shared by `gradclip norm` and `gradclip clip`.

use super::error::{one_line, StError};
use crate::norm_type::NormType;

/// Parses a `--max-norm` value: a finite number > 0.
pub fn parse_max_norm(s: &str) -> Result<f64, StError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(StError::Argument(format!(
            "invalid --max-norm `{}`: expected a finite number > 0",
            one_line(s)
        ))),
    }
}

/// Parses a `--norm-type` value: `2`, `1`, `inf` (also `+inf`, `infinity`, any case) or any
/// finite `p > 0`.
pub fn parse_norm_type(s: &str) -> Result<NormType, StError> {
    let t = s.trim();
    let unsigned = t.strip_prefix('+').unwrap_or(t);
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity") {
        return Ok(NormType::Inf);
    }
    let bad = || {
        StError::Argument(format!(
            "invalid --norm-type `{}`: expected 2, 1, inf or a finite number > 0",
            one_line(s)
        ))
    };
    let p: f64 = t.parse().map_err(|_| bad())?;
    if !(p.is_finite() && p > 0.0) {
        return Err(bad());
    }
    Ok(if p == 1.0 {
        NormType::L1
    } else if p == 2.0 {
        NormType::L2
    } else {
        NormType::P(p)
    })
}
