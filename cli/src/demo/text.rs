//! Terminal rendering helpers of the demo: sparklines and number formatting.

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `values` on a log10 scale between `lo` and `hi` (both > 0), resampled to
/// `width` columns by taking the largest value of each bucket. Non-finite values show as `×`,
/// columns past the end of the series as spaces.
pub fn log_sparkline(values: &[f64], total_len: usize, width: usize, lo: f64, hi: f64) -> String {
    let (llo, lhi) = (lo.log10(), hi.log10());
    let span = (lhi - llo).max(1e-12);
    let total_len = total_len.max(values.len()).max(1);
    (0..width)
        .map(|c| {
            let a = c * total_len / width;
            let b = ((c + 1) * total_len / width).max(a + 1);
            if a >= values.len() {
                return ' ';
            }
            let bucket = &values[a..b.min(values.len())];
            if bucket.iter().any(|v| !v.is_finite()) {
                return '×';
            }
            let m = bucket.iter().cloned().fold(f64::MIN_POSITIVE, f64::max);
            let x = ((m.max(lo).log10() - llo) / span).clamp(0.0, 1.0);
            BARS[((x * 7.0).round() as usize).min(7)]
        })
        .collect()
}

/// A number in a short human form: `1.23e5`, `0.0123`, `12.3`, `NaN`.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else {
            "inf".into()
        };
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{x:.2e}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}
