//! `gradclip clip`: scale every tensor of a safetensors file so the global norm is at most
//! `--max-norm`, writing a new file atomically.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use gradclip::st::{self, Compact, StError};
use serde::Serialize;

use super::safetensors_io::{self as sio, ClipCase, EXIT_NONFINITE};

/// Arguments of `gradclip clip`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  gradclip clip grads.safetensors --max-norm 1.0 -o clipped.safetensors --json

Every element becomes round_to_dtype(f32(x) * f32(clip_coef)) with
clip_coef = min(1, max_norm / (total_norm + 1e-6)); when f32(clip_coef) is 1
(clip_coef is 1, or within 2^-25 of it), OUT is a byte-for-byte copy.
A regular OUT is written to a temporary file in its folder and renamed into place:
  -o FILE      replaces FILE atomically with the clipped data; FILE is left as it
               was whenever nothing is written (exit 2 or 3, or SIGINT/SIGTERM,
               which remove the temporary file);
  -o LINK      when OUT is a symbolic link (to a regular file, or dangling), the
               link itself is replaced by a regular file; its target is not touched.
An existing FIFO or character device (/dev/null, /dev/stdout), or a link to one, is
never replaced: the clipped file is written into it (if the run fails part-way, its
reader has seen part of it). A block device, a socket, and a link into /proc that
leads to a regular file (/dev/stdout redirected to a file) are refused (exit 2).
The temporary file is synced to the disk before the rename (the disk starts on it
every 64 MiB while it is written), so after a crash OUT is the old file or the new one.
The input is read twice (measure, then write); if it changes in between (another
process rewrites or truncates it) the run is refused (exit 2, OUT not written).
Memory: at most 1 MiB of the input per thread is held at a time (the write pass
uses at most 4 threads: one writes while the others read the next pieces).

Exit status: 0 written, 3 a NaN/inf was found (OUT not written), 2 bad input,
including a P norm too large for f64 (a small p over many elements; OUT not written)
and an input that changed while it was read; killed by SIGINT/SIGTERM: 130/143.")]
pub struct ClipArgs {
    /// The safetensors file (F32, F16 and BF16 tensors).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The largest allowed total norm (required; a finite number > 0).
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub max_norm: Option<String>,
    /// Where to write the clipped file (required; may be FILE itself; a symlink is replaced,
    /// not followed; a FIFO or character device is written into).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<std::ffi::OsString>,
    /// Norm type: 2, 1, inf, or any finite p > 0.
    #[arg(
        long,
        value_name = "P",
        default_value = "2",
        allow_hyphen_values = true
    )]
    pub norm_type: String,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ClipJson {
    norm_type: serde_json::Value,
    total_norm: Option<f64>,
    max_norm: f64,
    clip_coef: Option<f64>,
    clipped: bool,
    nonfinite: Option<sio::NonFiniteJson>,
}

/// Runs `gradclip clip`.
pub fn run(args: ClipArgs) -> ExitCode {
    let fail = |m: &dyn std::fmt::Display| sio::fail("clip", m);
    // Arguments are checked here rather than by clap so every failure is one line, exit 2.
    let norm_type = match st::parse_norm_type(&args.norm_type) {
        Ok(n) => n,
        Err(e) => return fail(&e),
    };
    let max_norm = match args.max_norm.as_deref() {
        None => return fail(&"missing --max-norm X (the largest allowed total norm)"),
        Some(s) => match st::parse_max_norm(s) {
            Ok(m) => m,
            Err(e) => return fail(&e),
        },
    };
    // A value-less `-o` arrives as an empty path (so clap need not print a multi-line error).
    let out_path = match args.output {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => return fail(&"missing -o OUT (where to write the clipped file)"),
    };
    let (input, layout) = match sio::load(&args.file) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };

    input.start_progress("measuring");
    let result = st::clip(&input, &layout, max_norm, norm_type);
    input.end_progress();
    let clipped = match result {
        Ok(c) => c,
        Err(StError::NonFinite(nf)) => {
            if args.json {
                let _ = sio::print_json(&ClipJson {
                    norm_type: sio::norm_type_json(norm_type),
                    total_norm: None,
                    max_norm,
                    clip_coef: None,
                    clipped: false,
                    nonfinite: Some((&nf).into()),
                });
            }
            let _ = writeln!(
                io::stderr(),
                "gradclip clip: non-finite value {} in tensor `{}` at index {}; {} not written",
                nf.value_str(),
                st::one_line(&nf.name),
                nf.index,
                st::one_line(&out_path.display().to_string())
            );
            return ExitCode::from(EXIT_NONFINITE);
        }
        Err(e) => return fail(&sio::st_message(&input, &e)),
    };

    input.start_progress("writing");
    let written = sio::write_output(&out_path, &args.file, |w| {
        clipped
            .write_to(&input, &layout, w)
            .map_err(|e| sio::st_message(&input, &e))?;
        // Bytes already copied are not read again: a change to them shows in the metadata.
        input.unchanged()
    });
    input.end_progress();
    if let Err(e) = written {
        return fail(&e);
    }

    let printed = if args.json {
        sio::print_json(&ClipJson {
            norm_type: sio::norm_type_json(norm_type),
            total_norm: sio::finite(clipped.total_norm),
            max_norm,
            clip_coef: sio::finite(clipped.clip_coef),
            clipped: clipped.clipped,
            nonfinite: None,
        })
    } else {
        let name = sio::norm_name(norm_type);
        let out = st::one_line(&out_path.display().to_string());
        let (t, m, c) = (
            Compact(clipped.total_norm),
            Compact(max_norm),
            Compact(clipped.clip_coef),
        );
        let eps = Compact(sio::EPS);
        let within = if clipped.total_norm <= max_norm {
            format!("is within max-norm {m}")
        } else {
            format!("> max-norm {m}")
        };
        let msg = match ClipCase::of(clipped.total_norm, max_norm, clipped.clip_coef) {
            ClipCase::Within => format!(
                "total {name} norm {t} {within}: nothing to scale; wrote an identical copy to {out}"
            ),
            ClipCase::RoundsToOne => format!(
                "total {name} norm {t} {within}; the coefficient max_norm / (total_norm + {eps}) = {c} is 1 once rounded to f32, so nothing changed; wrote an identical copy to {out}"
            ),
            ClipCase::Scales { by_eps: true } => format!(
                "total {name} norm {t} {within}, but eps = {eps} in max_norm / (total_norm + eps) makes the coefficient {c}: scaled every element by {c}; wrote {out}"
            ),
            ClipCase::Scales { by_eps: false } => format!(
                "total {name} norm {t} {within}: scaled every element by {c}; wrote {out}"
            ),
        };
        writeln!(io::stdout(), "{msg}")
    };
    match printed {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            fail(&format!("cannot write to stdout: {e}"))
        }
        _ => ExitCode::SUCCESS,
    }
}
