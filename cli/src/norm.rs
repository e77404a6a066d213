//! `gradclip norm`: the norm of every tensor of a safetensors file and the total, as a table for
//! people or one JSON object for scripts.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use gradclip::st::{self, Compact, Layout, NormSummary};
use serde::Serialize;

use super::safetensors_io::{self as sio, ClipCase, Style, EXIT_NONFINITE};

/// Arguments of `gradclip norm`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  gradclip norm grads.safetensors
  gradclip norm grads.safetensors --top 10 --max-norm 1.0
  gradclip norm grads.safetensors --norm-type inf --json

Exit status: 0 all finite, 3 a NaN/inf was found (JSON still printed), 2 bad input,
including a P norm too large for f64 (a small p over many elements, e.g. --norm-type
0.01 over 10,000 ones gives 1e400): no JSON then, even if the file also holds a NaN/inf.")]
pub struct NormArgs {
    /// The safetensors file (F32, F16 and BF16 tensors).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Norm type: 2, 1, inf, or any finite p > 0.
    #[arg(
        long,
        value_name = "P",
        default_value = "2",
        allow_hyphen_values = true
    )]
    pub norm_type: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show only the K largest tensors (0 = all).
    #[arg(long, value_name = "K", default_value_t = 25)]
    pub top: usize,
    /// Also show the clip coefficient `gradclip clip --max-norm X` would apply.
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub max_norm: Option<String>,
}

#[derive(Serialize)]
struct TensorJson<'a> {
    name: &'a str,
    dtype: &'static str,
    shape: &'a [usize],
    norm: Option<f64>,
}

#[derive(Serialize)]
struct NormJson<'a> {
    norm_type: serde_json::Value,
    total_norm: Option<f64>,
    nonfinite: Option<sio::NonFiniteJson>,
    tensors: Vec<TensorJson<'a>>,
}

/// Runs `gradclip norm`.
pub fn run(args: NormArgs) -> ExitCode {
    let fail = |m: &dyn std::fmt::Display| sio::fail("norm", m);
    let norm_type = match st::parse_norm_type(&args.norm_type) {
        Ok(n) => n,
        Err(e) => return fail(&e),
    };
    let max_norm = match args.max_norm.as_deref().map(st::parse_max_norm).transpose() {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let (input, layout) = match sio::load(&args.file) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    input.start_progress("reading");
    let summary = st::norms(&input, &layout, norm_type);
    input.end_progress();
    let summary = match summary {
        Ok(s) => s,
        Err(e) => return fail(&sio::st_message(&input, &e)),
    };
    if let Err(e) = input.unchanged() {
        return fail(&e);
    }

    let printed = if args.json {
        print_json(&layout, &summary)
    } else {
        let shown = st::one_line(&args.file.display().to_string());
        print_table(&shown, &layout, &summary, args.top, max_norm)
    };
    if let Err(e) = printed {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return fail(&format!("cannot write to stdout: {e}"));
        }
    }
    if let Some(nf) = &summary.nonfinite {
        let _ = writeln!(
            io::stderr(),
            "gradclip norm: non-finite value {} in tensor `{}` at index {}",
            nf.value_str(),
            st::one_line(&nf.name),
            nf.index
        );
        return ExitCode::from(EXIT_NONFINITE);
    }
    ExitCode::SUCCESS
}

fn print_json(layout: &Layout, s: &NormSummary) -> io::Result<()> {
    let tensors = layout
        .tensors
        .iter()
        .zip(&s.norms)
        .map(|(t, &n)| TensorJson {
            name: &t.name,
            dtype: t.dtype_str(),
            shape: &t.shape,
            norm: sio::finite(n),
        })
        .collect();
    sio::print_json(&NormJson {
        norm_type: sio::norm_type_json(s.norm_type),
        total_norm: if s.nonfinite.is_some() {
            None
        } else {
            sio::finite(s.total_norm)
        },
        nonfinite: s.nonfinite.as_ref().map(Into::into),
        tensors,
    })
}

/// Most decades of dynamic range a log-scale bar covers (fewer when the norms span fewer).
const MAX_BAR_DECADES: f64 = 12.0;
/// Width of a full bar in characters.
const BAR_WIDTH: usize = 24;

/// The decades the bars span: from the smallest positive finite norm to the largest, at least
/// 1 and at most [`MAX_BAR_DECADES`].
fn bar_decades(norms: &[f64]) -> f64 {
    let pos = norms.iter().copied().filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = pos.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if hi > 0.0 {
        (hi / lo).log10().ceil().clamp(1.0, MAX_BAR_DECADES)
    } else {
        1.0
    }
}

/// A bar whose length is `log10(norm)` relative to the largest norm, over `decades` decades.
fn bar(norm: f64, largest: f64, decades: f64) -> String {
    if !(norm > 0.0 && largest > 0.0) {
        return String::new();
    }
    let frac = 1.0 - (largest / norm).log10() / decades;
    let eighths = (frac.clamp(0.0, 1.0) * (BAR_WIDTH * 8) as f64).round() as usize;
    let eighths = eighths.max(1);
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(PARTS[eighths % 8]);
    }
    s
}

/// The tensor's share of the total: of `Σ|x|^p` for the p-norms (so shares add up to 100%),
/// of the maximum for inf.
fn share(norm: f64, total: f64, p: f64) -> Option<f64> {
    if !(norm.is_finite() && total.is_finite() && total > 0.0) {
        return None;
    }
    let r = norm / total;
    Some(if p.is_infinite() { r } else { r.powf(p) })
}

fn fmt_norm(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        "inf".into()
    } else if x == 0.0 {
        "0".into()
    } else if (1e-3..1e6).contains(&x.abs()) {
        format!("{x:.6}")
    } else {
        format!("{x:.6e}")
    }
}

fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n >= width {
        s.to_string()
    } else {
        format!("{s}{}", " ".repeat(width - n))
    }
}

fn print_table(
    file: &str,
    layout: &Layout,
    s: &NormSummary,
    top: usize,
    max_norm: Option<f64>,
) -> io::Result<()> {
    let style = Style::detect();
    let p = s.norm_type.exponent();
    let name = sio::norm_name(s.norm_type);
    let n = layout.tensors.len();
    let elements: u128 = layout.tensors.iter().map(|t| t.numel() as u128).sum();

    // Largest first; a tensor holding NaN/inf sorts above every finite one; ties in file order.
    let mut order: Vec<usize> = (0..n).collect();
    let key = |i: usize| {
        let v = s.norms.get(i).copied().unwrap_or(0.0);
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    let shown = if top == 0 { n } else { top.min(n) };
    let largest = s
        .norms
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);

    let decades = bar_decades(&s.norms);
    let rows: Vec<[String; 5]> = order[..shown]
        .iter()
        .map(|&i| {
            let t = &layout.tensors[i];
            let v = s.norms.get(i).copied().unwrap_or(f64::NAN);
            [
                st::one_line(&t.name),
                t.dtype_str().to_string(),
                sio::shape_str(&t.shape),
                fmt_norm(v),
                share(v, s.total_norm, p)
                    .map(|r| {
                        if r > 0.0 && r < 5e-5 {
                            "<0.01%".to_string()
                        } else {
                            format!("{:.2}%", 100.0 * r)
                        }
                    })
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let headers = ["tensor", "dtype", "shape", "norm", "share"];
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }

    let mut out = io::BufWriter::new(io::stdout().lock());
    writeln!(
        out,
        "{} {} tensors, {} elements",
        style.bold(file),
        n,
        elements
    )?;
    if let Some(meta) = layout.metadata.as_ref().filter(|m| !m.is_empty()) {
        let text: Vec<String> = meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut text = st::one_line(&text.join(", "));
        if text.chars().count() > 160 {
            text = text.chars().take(157).collect::<String>() + "...";
        }
        writeln!(out, "{}", style.dim(&format!("metadata: {text}")))?;
    }
    let head: Vec<String> = headers.iter().zip(widths).map(|(h, w)| pad(h, w)).collect();
    writeln!(
        out,
        "{}",
        style.dim(&format!(
            "{}  {name}, log scale over {decades} decade{}",
            head.join("  "),
            if decades == 1.0 { "" } else { "s" }
        ))
    )?;
    for (&i, r) in order[..shown].iter().zip(&rows) {
        let v = s.norms.get(i).copied().unwrap_or(f64::NAN);
        let cells: Vec<String> = r.iter().zip(widths).map(|(c, w)| pad(c, w)).collect();
        let line = cells.join("  ");
        if v.is_finite() {
            writeln!(out, "{line}  {}", style.bar(&bar(v, largest, decades)))?;
        } else {
            writeln!(out, "{}", style.alert(&format!("{line}  non-finite")))?;
        }
    }
    if shown < n {
        writeln!(
            out,
            "{}",
            style.dim(&format!(
                "... {} more tensors (--top 0 shows all)",
                n - shown
            ))
        )?;
    }
    match &s.nonfinite {
        Some(nf) => {
            let shape = layout
                .tensors
                .get(nf.tensor)
                .map(|t| t.shape.as_slice())
                .unwrap_or(&[]);
            writeln!(
                out,
                "{}",
                style.alert(&format!(
                    "first non-finite: {} in tensor `{}` at index {} (element {})",
                    nf.value_str(),
                    st::one_line(&nf.name),
                    nf.index,
                    sio::shape_str(&sio::coords(shape, nf.index))
                ))
            )?;
            writeln!(out, "total {name} norm: {}", style.alert("non-finite"))?;
        }
        None => {
            writeln!(
                out,
                "total {name} norm: {}",
                style.bold(&Compact(s.total_norm).to_string())
            )?;
        }
    }
    if let Some(m) = max_norm {
        let shown = Compact(m);
        if s.nonfinite.is_some() {
            writeln!(
                out,
                "clip to --max-norm {shown}: refused, the gradients are not finite"
            )?;
        } else if let Ok(c) = st::clip_coefficient(m, s.total_norm) {
            let (cc, eps) = (Compact(c), Compact(sio::EPS));
            let verdict = match ClipCase::of(s.total_norm, m, c) {
                ClipCase::Within => "no change (already within the bound)".to_string(),
                ClipCase::RoundsToOne => {
                    "no change (the coefficient is 1 once rounded to f32)".to_string()
                }
                ClipCase::Scales { by_eps } => {
                    let why = if by_eps {
                        format!(" (the norm is within the bound; eps = {eps} in max_norm / (total_norm + eps) makes the coefficient < 1)")
                    } else {
                        String::new()
                    };
                    style.warn(&format!("would scale every element by {cc}{why}"))
                }
            };
            writeln!(
                out,
                "clip to --max-norm {shown}: coefficient {cc}: {verdict}"
            )?;
        }
    }
    out.flush()
}
