//! SVG figures of the demo (plotters).

use std::path::Path;

use plotters::prelude::*;

const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// One named line of (x, y) points; non-finite or non-positive y values are dropped (log axes).
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
    /// Dashed reference line instead of a solid measurement.
    pub dashed: bool,
    /// Index into the colour table.
    pub color: usize,
}

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let mut x = (f64::MAX, f64::MIN);
    let mut y = (f64::MAX, f64::MIN);
    for s in series {
        for &(a, b) in &s.points {
            if b.is_finite() && b > 0.0 {
                x = (x.0.min(a), x.1.max(a));
                y = (y.0.min(b), y.1.max(b));
            }
        }
    }
    if x.0 > x.1 {
        return (0.0, 1.0, 1e-3, 1.0);
    }
    (x.0, x.1.max(x.0 + 1.0), y.0 / 2.0, y.1 * 2.0)
}

/// Writes a line chart with a log-scale y axis to `path`. Values above `y_cap` (if given) are
/// drawn at the cap, so that one diverging run does not flatten the others.
pub fn log_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
    y_cap: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let capped: Vec<Series> = series
        .iter()
        .map(|s| Series {
            label: s.label.clone(),
            points: s
                .points
                .iter()
                .map(|&(x, y)| (x, y_cap.map_or(y, |c| if y > c { c } else { y })))
                .collect(),
            dashed: s.dashed,
            color: s.color,
        })
        .collect();
    let series = &capped[..];
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1, y0, y1) = bounds(series);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    for s in series {
        let color = COLORS[s.color % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect();
        // Thin lines for long, noisy series.
        let style = if s.dashed || pts.len() > 500 {
            color.stroke_width(1)
        } else {
            color.stroke_width(2)
        };
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts, 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(pts, style))?
        };
        drawn.label(s.label.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
        });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend)
        .draw()?;
    root.present()?;
    Ok(())
}
