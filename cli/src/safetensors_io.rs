//! File I/O and output helpers shared by `gradclip norm` and `gradclip clip`: the memory-mapped
//! input, the atomic write of OUT, the progress line, colours and the JSON layout.
//! Validation and every number come from [`gradclip::st`].

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gradclip::st::{self, Layout};
use gradclip::NormType;
use serde::Serialize;

/// Exit status for bad input or arguments.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status when a tensor holds NaN or ±inf.
pub const EXIT_NONFINITE: u8 = 3;

/// Files larger than this get a progress line on stderr (when stderr is a terminal).
const PROGRESS_THRESHOLD: usize = 1 << 30;

/// Prints `gradclip CMD: MSG` as one line on stderr and returns exit status 2.
pub fn fail(cmd: &str, msg: impl std::fmt::Display) -> ExitCode {
    let line = st::one_line(&msg.to_string());
    let _ = writeln!(io::stderr(), "gradclip {cmd}: {line}");
    ExitCode::from(EXIT_BAD_INPUT)
}

/// The bytes of the input file: memory-mapped, or empty for an empty file (which cannot be
/// mapped).
pub enum Input {
    /// A read-only mapping of the whole file.
    Mapped(memmap2::Mmap),
    /// A zero-length file.
    Empty,
}

impl Input {
    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Empty => &[],
        }
    }
}

/// Opens and maps `path`. The error message names the file.
///
/// Only regular files are read: a pipe, FIFO, socket or device (`gradclip norm <(cat f)`,
/// `/dev/stdin`) is refused with exit 2 rather than copied into memory, since memory use must
/// stay bounded by the scratch buffer and not grow with the input. Opening a FIFO would also
/// block until a writer appears, so the type is checked before the file is opened.
pub fn open(path: &Path) -> Result<Input, String> {
    let shown = st::one_line(&path.display().to_string());
    let not_regular = || {
        format!(
            "`{shown}` is not a regular file (a pipe, FIFO or device?): gradclip memory-maps its input, save it to a file first"
        )
    };
    let kind = std::fs::metadata(path).map_err(|e| format!("cannot open `{shown}`: {e}"))?;
    if kind.is_dir() {
        return Err(format!("`{shown}` is a directory, not a safetensors file"));
    }
    if !kind.is_file() {
        return Err(not_regular());
    }
    let file = File::open(path).map_err(|e| format!("cannot open `{shown}`: {e}"))?;
    // Checked again on the open file, in case the path changed in between.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    if meta.is_dir() {
        return Err(format!("`{shown}` is a directory, not a safetensors file"));
    }
    if !meta.is_file() {
        return Err(not_regular());
    }
    if meta.len() == 0 {
        return Ok(Input::Empty);
    }
    // SAFETY: the mapping is read-only and private to this process. gradclip never writes to
    // the input file (OUT is written to a new file and renamed into place, so even `-o FILE`
    // replaces the directory entry, not the mapped bytes). Another process truncating or
    // rewriting the file while we run is outside what any reader can defend against; it is
    // the same contract as the `safetensors` crate's own documented use of memmap2.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| format!("cannot memory-map `{shown}`: {e}"))?;
    Ok(Input::Mapped(map))
}

/// Opens, maps and validates `path`, touching every page with a progress line first when the
/// file is large and stderr is a terminal.
pub fn load(path: &Path) -> Result<(Input, Layout), String> {
    let input = open(path)?;
    let shown = st::one_line(&path.display().to_string());
    let layout = st::parse(input.bytes()).map_err(|e| format!("`{shown}`: {e}"))?;
    prefault_with_progress(input.bytes(), &shown);
    Ok((input, layout))
}

/// Reads every page of a large mapping so the disk time shows as a progress line; a no-op
/// below [`PROGRESS_THRESHOLD`] or when stderr is not a terminal.
fn prefault_with_progress(bytes: &[u8], shown: &str) {
    if bytes.len() < PROGRESS_THRESHOLD || !io::stderr().is_terminal() {
        return;
    }
    const STEP: usize = 64 << 20;
    let total = bytes.len();
    let gib = |n: usize| n as f64 / (1u64 << 30) as f64;
    let mut err = io::stderr();
    let mut sink = 0u8;
    for (i, chunk) in bytes.chunks(STEP).enumerate() {
        for page in chunk.chunks(4096) {
            sink ^= page.first().copied().unwrap_or(0);
        }
        let done = (i * STEP + chunk.len()).min(total);
        let _ = write!(
            err,
            "\rreading {shown}: {:5.1}% ({:.2} / {:.2} GiB)",
            100.0 * done as f64 / total as f64,
            gib(done),
            gib(total)
        );
    }
    std::hint::black_box(sink);
    let _ = write!(err, "\r\x1b[2K");
}

/// The one-line status line on stderr for a long step of a large file (terminal only).
pub fn status(bytes_len: usize, msg: &str) {
    if bytes_len >= PROGRESS_THRESHOLD && io::stderr().is_terminal() {
        let _ = write!(io::stderr(), "\r\x1b[2K{msg}");
    }
}

/// Clears the status line written by [`status`].
pub fn clear_status(bytes_len: usize) {
    if bytes_len >= PROGRESS_THRESHOLD && io::stderr().is_terminal() {
        let _ = write!(io::stderr(), "\r\x1b[2K");
    }
}

/// Writes OUT through a temporary file in OUT's folder, renamed into place once complete, so a
/// half-written OUT never exists. The new file gets the permissions of `like` when it can.
pub fn write_atomically(
    out: &Path,
    like: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), String> {
    let shown = st::one_line(&out.display().to_string());
    let dir: PathBuf = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if out.is_dir() {
        return Err(format!("output `{shown}` is a directory"));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".gradclip-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| format!("cannot create a temporary file next to `{shown}`: {e}"))?;
    {
        let mut w = io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut w)
            .and_then(|()| w.flush())
            .map_err(|e| format!("cannot write `{shown}`: {e}"))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| format!("cannot write `{shown}`: {e}"))?;
    if let Ok(meta) = std::fs::metadata(like) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.persist(out)
        .map_err(|e| format!("cannot rename into `{shown}`: {}", e.error))?;
    Ok(())
}

/// The JSON value of `norm_type`: the number given (integers without `.0`) or `"inf"`.
pub fn norm_type_json(n: NormType) -> serde_json::Value {
    let p = n.exponent();
    if p.is_infinite() {
        serde_json::Value::from("inf")
    } else if p.fract() == 0.0 && p.abs() < 9.0e15 {
        serde_json::Value::from(p as i64)
    } else {
        serde_json::Value::from(p)
    }
}

/// A finite float, or `None` (printed as `null`).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The `nonfinite` JSON object.
#[derive(Serialize)]
pub struct NonFiniteJson {
    /// Tensor name.
    pub tensor: String,
    /// Row-major flat index.
    pub index: usize,
    /// `"NaN"`, `"inf"` or `"-inf"`.
    pub value: &'static str,
}

impl From<&st::Located> for NonFiniteJson {
    fn from(l: &st::Located) -> Self {
        NonFiniteJson {
            tensor: l.name.clone(),
            index: l.index,
            value: l.value_str(),
        }
    }
}

/// serde_json's compact output with a space after `:` and `,`, as in the documented examples.
struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Prints `value` as one JSON line on stdout.
pub fn print_json<T: Serialize>(value: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, Spaced);
    value.serialize(&mut ser).map_err(io::Error::other)?;
    buf.push(b'\n');
    let mut out = io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()
}

/// ANSI styling, enabled only when stdout is a terminal and `NO_COLOR` is unset.
#[derive(Clone, Copy)]
pub struct Style {
    on: bool,
}

impl Style {
    /// Detects whether stdout should get colours.
    pub fn detect() -> Style {
        Style {
            on: io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn wrap(self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// Bold red (non-finite values).
    pub fn alert(self, s: &str) -> String {
        self.wrap("1;31", s)
    }

    /// Bold.
    pub fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }

    /// Dim (secondary information).
    pub fn dim(self, s: &str) -> String {
        self.wrap("2", s)
    }

    /// Cyan (bars).
    pub fn bar(self, s: &str) -> String {
        self.wrap("36", s)
    }

    /// Yellow (warnings such as "would clip").
    pub fn warn(self, s: &str) -> String {
        self.wrap("33", s)
    }
}

/// The human name of a norm type: `L2`, `L1`, `Linf`, `L3`, `L0.5`.
pub fn norm_name(n: NormType) -> String {
    match n {
        NormType::L2 => "L2".into(),
        NormType::L1 => "L1".into(),
        NormType::Inf => "Linf".into(),
        NormType::P(p) => format!("L{p}"),
    }
}

/// `[2, 3]` style shape text.
pub fn shape_str(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Row-major coordinates of a flat index in `shape` (empty for a scalar).
pub fn coords(shape: &[usize], mut index: usize) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for (slot, &d) in c.iter_mut().zip(shape).rev() {
        if d > 0 {
            *slot = index % d;
            index /= d;
        }
    }
    c
}
