//! File I/O and output helpers shared by `gradclip norm` and `gradclip clip`: the input read
//! with positioned reads and checked for changes, the write of OUT (atomic through a temporary
//! file, removed on SIGINT/SIGTERM; or streamed into a FIFO or character device), the progress
//! line, colours and the JSON layout. Validation and every number come from [`gradclip::st`].

use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use gradclip::st::{self, Compact, Layout, Source};
use gradclip::NormType;
use serde::Serialize;

/// Exit status for bad input or arguments.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status when a tensor holds NaN or ±inf.
pub const EXIT_NONFINITE: u8 = 3;

/// Files larger than this get a progress line on stderr (when stderr is a terminal).
const PROGRESS_THRESHOLD: u64 = 1 << 30;
/// The progress line is updated every this many bytes read.
const PROGRESS_STEP: u64 = 64 << 20;

/// Prints `gradclip CMD: MSG` as one line on stderr and returns exit status 2.
pub fn fail(cmd: &str, msg: impl std::fmt::Display) -> ExitCode {
    let line = st::one_line(&msg.to_string());
    let _ = writeln!(io::stderr(), "gradclip {cmd}: {line}");
    ExitCode::from(EXIT_BAD_INPUT)
}

/// Test hook: with `GRADCLIP_TEST_PAUSE=POINT` in the environment, the first time the run
/// reaches `POINT` (`read`: the first read of tensor data; `write`: the first bytes written to
/// OUT) it prints `gradclip: test pause at POINT` on stderr and waits for a line on stdin; every
/// other thread that reaches the same point meanwhile waits too, so nothing is read or written
/// during the pause. Tests use it to change the input or send a signal at a known moment;
/// nothing else sets it.
fn test_pause(point: &str) {
    static WANTED: OnceLock<Option<std::ffi::OsString>> = OnceLock::new();
    static PAUSE: Mutex<bool> = Mutex::new(false);
    let wanted = WANTED.get_or_init(|| std::env::var_os("GRADCLIP_TEST_PAUSE"));
    if wanted.as_deref() != Some(point.as_ref()) {
        return;
    }
    let mut done = PAUSE.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        *done = true;
        let _ = writeln!(io::stderr(), "gradclip: test pause at {point}");
        let _ = io::stdin().lock().read_line(&mut String::new());
    }
}

/// The input file, open for positioned reads (see [`gradclip::st::Source`]), with what it looked
/// like when it was opened, so a change during the run is noticed.
pub struct Input {
    file: File,
    shown: String,
    len: u64,
    modified: Option<SystemTime>,
    /// Bytes read since the progress label was set, and the label.
    done: AtomicU64,
    label: Mutex<&'static str>,
}

impl Source for Input {
    fn size(&self) -> io::Result<u64> {
        self.file.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset > 0 {
            // Offset 0 is the header; everything after it is tensor data.
            test_pause("read");
        }
        self.file.read_exact_at(buf, offset)?;
        let before = self.done.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if before / PROGRESS_STEP != (before + buf.len() as u64) / PROGRESS_STEP {
            self.progress(before + buf.len() as u64);
        }
        Ok(())
    }
}

impl Input {
    /// The file's name as shown in messages (one line).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The file's size when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts a new progress line (`reading`, `writing`): shown on stderr for files of 1 GiB
    /// and more when stderr is a terminal.
    pub fn start_progress(&self, label: &'static str) {
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label;
        self.done.store(0, Ordering::Relaxed);
    }

    fn progress(&self, done: u64) {
        if self.len < PROGRESS_THRESHOLD || !io::stderr().is_terminal() {
            return;
        }
        let label = *self.label.lock().unwrap_or_else(|e| e.into_inner());
        let gib = |n: u64| n as f64 / (1u64 << 30) as f64;
        let done = done.min(self.len);
        let _ = write!(
            io::stderr(),
            "\r\x1b[2K{label} {}: {:5.1}% ({:.2} / {:.2} GiB)",
            self.shown,
            100.0 * done as f64 / self.len as f64,
            gib(done),
            gib(self.len)
        );
    }

    /// Clears the progress line.
    pub fn end_progress(&self) {
        if self.len >= PROGRESS_THRESHOLD && io::stderr().is_terminal() {
            let _ = write!(io::stderr(), "\r\x1b[2K");
        }
    }

    /// Fails when the file's size or modification time differ from when it was opened: another
    /// process wrote to it during the run, so what was read may mix old and new data.
    pub fn unchanged(&self) -> Result<(), String> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| format!("cannot read `{}`: {e}", self.shown))?;
        if meta.len() != self.len || meta.modified().ok() != self.modified {
            return Err(format!(
                "`{}` changed while it was read (its size or modification time differ from when it was opened): another process is writing it; run again once it is complete",
                self.shown
            ));
        }
        Ok(())
    }
}

/// Opens `path` for positioned reads. The error message names the file.
///
/// Only regular files are read: a pipe, FIFO, socket or device (`gradclip norm <(cat f)`,
/// `/dev/stdin`) is refused with exit 2 rather than copied into memory, since memory use must
/// stay bounded by the scratch buffer and not grow with the input, and `clip` reads its input
/// twice. Opening a FIFO would also block until a writer appears, so the type is checked before
/// the file is opened.
pub fn open(path: &Path) -> Result<Input, String> {
    let shown = st::one_line(&path.display().to_string());
    let not_regular = || {
        format!(
            "`{shown}` is not a regular file (a pipe, FIFO or device?): gradclip reads its input at chosen offsets, and twice for clip; save it to a file first"
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
    Ok(Input {
        file,
        shown,
        len: meta.len(),
        modified: meta.modified().ok(),
        done: AtomicU64::new(0),
        label: Mutex::new("reading"),
    })
}

/// Opens `path` and validates its header and layout (no tensor data is read).
pub fn load(path: &Path) -> Result<(Input, Layout), String> {
    let input = open(path)?;
    let layout = st::read_layout(&input).map_err(|e| format!("`{}`: {e}", input.shown))?;
    Ok((input, layout))
}

/// The message for an error of [`gradclip::st`] about `input`: reading errors name the file.
pub fn st_message(input: &Input, e: &st::StError) -> String {
    match e {
        st::StError::Read { .. } | st::StError::Changed { .. } => {
            format!("`{}`: {e}", input.shown())
        }
        _ => e.to_string(),
    }
}

/// How OUT is written, from what exists at its path.
enum OutKind {
    /// Missing, a regular file, or a symbolic link (dangling or to a regular file): a new regular
    /// file is written next to it and renamed over the path.
    Replace,
    /// An existing FIFO or character device (`/dev/null`, `/dev/stdout` on a pipe or terminal),
    /// or a link to one: opened and written into, never replaced.
    Stream,
}

fn out_kind(out: &Path, shown: &str) -> Result<OutKind, String> {
    // `metadata` follows links: the type that matters is the one of what would be written.
    let meta = match std::fs::metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OutKind::Replace),
        Err(e) => return Err(format!("cannot inspect output `{shown}`: {e}")),
    };
    if meta.is_dir() {
        return Err(format!("output `{shown}` is a directory"));
    }
    if meta.is_file() {
        if links_into_proc(out) {
            return Err(format!(
                "output `{shown}` is a link into /proc, to a file another process has open (as /dev/stdout is to a redirected stdout): refusing to replace the link; give the file's own path"
            ));
        }
        return Ok(OutKind::Replace);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() || t.is_char_device() {
            return Ok(OutKind::Stream);
        }
        let what = if t.is_block_device() {
            "a block device (a disk)"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        Err(format!(
            "output `{shown}` is {what}: refusing to write to it or replace it; give a regular file, a FIFO or a character device"
        ))
    }
    #[cfg(not(unix))]
    Err(format!(
        "output `{shown}` is not a regular file: refusing to replace it"
    ))
}

/// True when `out` is a symbolic link that leads, possibly through other links, into `/proc`
/// (`/dev/stdout` -> `/proc/self/fd/1`): it names a file that a process has open, not a place in
/// the file system, and replacing it would replace `/dev/stdout` itself.
fn links_into_proc(out: &Path) -> bool {
    let mut at = out.to_path_buf();
    // As many hops as the kernel follows.
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&at) else {
            return false;
        };
        let target = match at.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
        if target.starts_with("/proc") {
            return true;
        }
        at = target;
    }
    false
}

/// Writes OUT with `write`, which gets a buffered writer and returns a one-line error.
///
/// A regular OUT (or a new one) is written to a temporary file in OUT's folder and renamed into
/// place once complete, so a half-written OUT never exists; the new file gets the permissions of
/// `like` when it can; SIGINT or SIGTERM during the write removes the temporary file and ends
/// the process by that signal. The temporary file is on the disk (`fsync`) before the rename and
/// the rename is synced after it (the folder), so after a crash OUT is either the old file or the
/// new one, and once the command has ended it is the new one; the disk starts writing the file
/// while it is still produced (see [`SyncBehind`]), so the `fsync` costs little time. An
/// existing FIFO or character device (or a link to one) is written into directly and never
/// replaced: its reader sees the data as it is produced, so a failure part-way leaves it a
/// truncated stream. Anything else that exists and is not a regular file is refused.
pub fn write_output(
    out: &Path,
    like: &Path,
    write: impl FnOnce(&mut (dyn Write + Send)) -> Result<(), String>,
) -> Result<(), String> {
    let shown = st::one_line(&out.display().to_string());
    match out_kind(out, &shown)? {
        OutKind::Stream => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(out)
                .map_err(|e| format!("cannot open output `{shown}`: {e}"))?;
            let mut w = io::BufWriter::with_capacity(1 << 20, Paused(&file));
            write(&mut w)?;
            w.flush()
                .map_err(|e| format!("cannot write `{shown}`: {e}"))
        }
        OutKind::Replace => write_atomically(out, &shown, like, write),
    }
}

/// A writer that takes the `write` test pause before its first write (see [`test_pause`]).
struct Paused<W>(W);

impl<W: Write> Write for Paused<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        test_pause("write");
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The temporary file to remove if SIGINT or SIGTERM arrives, behind a lock that the rename
/// into place also holds. The first call starts the thread that waits for those signals (the
/// `signal-hook` crate): on one it removes the file named here, if any, and ends the process by
/// the same signal, as if it had not been caught (the shell sees 128 + the signal number).
fn temp_on_signal() -> MutexGuard<'static, Option<PathBuf>> {
    static PENDING: Mutex<Option<PathBuf>> = Mutex::new(None);
    static WATCHER: OnceLock<()> = OnceLock::new();
    let lock = || PENDING.lock().unwrap_or_else(|e| e.into_inner());
    WATCHER.get_or_init(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        // The watcher registers the signals itself and says so before the write starts; if it
        // cannot start or register, the signals keep their default action (and a temporary
        // file may be left behind, as without this).
        let (registered, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("gradclip-signals".into())
            .spawn(move || {
                let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
                    return;
                };
                let _ = registered.send(());
                if let Some(sig) = signals.forever().next() {
                    if let Some(tmp) = lock().take() {
                        let _ = std::fs::remove_file(tmp);
                    }
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            });
        if spawned.is_ok() {
            let _ = wait.recv();
        }
    });
    lock()
}

/// Forgets the temporary file registered with [`temp_on_signal`] when dropped.
struct TempRegistered;

impl Drop for TempRegistered {
    fn drop(&mut self) {
        *temp_on_signal() = None;
    }
}

/// Bytes written between two starts of the write-back (see [`SyncBehind`]).
const SYNC_STEP: u64 = 64 << 20;

/// A writer into the temporary file that, every [`SYNC_STEP`] bytes, asks a helper thread to
/// `fdatasync` what is written so far: the disk then works while the rest of the file is
/// produced, and the final `fsync` before the rename waits only for the last part.
struct SyncBehind<'a> {
    file: &'a File,
    since: u64,
    tx: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<'a> SyncBehind<'a> {
    /// Without a second handle or a thread, the write-back starts only at the final `fsync`.
    fn new(file: &'a File) -> SyncBehind<'a> {
        let mut s = SyncBehind {
            file,
            since: 0,
            tx: None,
            thread: None,
        };
        let Ok(clone) = file.try_clone() else {
            return s;
        };
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("gradclip-sync".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Requests that came in meanwhile are covered by this one.
                    while rx.try_recv().is_ok() {}
                    let _ = clone.sync_data();
                }
            });
        if let Ok(t) = spawned {
            s.tx = Some(tx);
            s.thread = Some(t);
        }
        s
    }

    /// Waits for the helper thread.
    fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Write for SyncBehind<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since += n as u64;
        if self.since >= SYNC_STEP {
            self.since = 0;
            if let Some(tx) = &self.tx {
                let _ = tx.send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_atomically(
    out: &Path,
    shown: &str,
    like: &Path,
    write: impl FnOnce(&mut (dyn Write + Send)) -> Result<(), String>,
) -> Result<(), String> {
    let dir: PathBuf = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".gradclip-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| format!("cannot create a temporary file next to `{shown}`: {e}"))?;
    *temp_on_signal() = Some(tmp.path().to_path_buf());
    // Declared after `tmp`, so dropped first: on every early return the registration goes
    // before the file does.
    let _registered = TempRegistered;
    {
        let mut sb = SyncBehind::new(tmp.as_file());
        let mut w = io::BufWriter::with_capacity(1 << 20, Paused(&mut sb));
        write(&mut w)?;
        w.flush()
            .map_err(|e| format!("cannot write `{shown}`: {e}"))?;
        drop(w);
        sb.finish();
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| format!("cannot write `{shown}`: {e}"))?;
    if let Ok(meta) = std::fs::metadata(like) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    // The rename and the end of the registration happen under the lock, so a signal either
    // removes the temporary file before the rename or finds nothing to remove after it.
    let mut pending = temp_on_signal();
    let persisted = tmp.persist(out);
    *pending = None;
    drop(pending);
    persisted.map_err(|e| format!("cannot rename into `{shown}`: {}", e.error))?;
    // The new name is made durable too. OUT is complete whatever happens now, so a folder that
    // cannot be synced (some file systems refuse) is not an error.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
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

/// The human name of a norm type: `L2`, `L1`, `Linf`, `L3`, `L0.5`, `L1e-308`.
pub fn norm_name(n: NormType) -> String {
    match n {
        NormType::L2 => "L2".into(),
        NormType::L1 => "L1".into(),
        NormType::Inf => "Linf".into(),
        NormType::P(p) => format!("L{}", Compact(p)),
    }
}

/// What a clip with coefficient `coef = min(1, max_norm / (total + eps))` does, for the human
/// text of `clip` and of `norm --max-norm` (the JSON says `clipped = coef < 1` regardless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipCase {
    /// `coef == 1`: the norm is within the bound, nothing changes.
    Within,
    /// `coef < 1` but `f32(coef) == 1`: every element would be multiplied by exactly 1, so
    /// nothing changes.
    RoundsToOne,
    /// Every element is scaled. `by_eps` when `total <= max_norm`: only the `eps` in the
    /// denominator makes the coefficient less than 1.
    Scales {
        /// The norm is within the bound; eps alone makes the coefficient less than 1.
        by_eps: bool,
    },
}

impl ClipCase {
    /// The case of a clip of a finite `total` to `max_norm` with coefficient `coef`.
    pub fn of(total: f64, max_norm: f64, coef: f64) -> ClipCase {
        if coef >= 1.0 {
            ClipCase::Within
        } else if coef as f32 == 1.0 {
            ClipCase::RoundsToOne
        } else {
            ClipCase::Scales {
                by_eps: total <= max_norm,
            }
        }
    }
}

/// The eps of `clip`: the library's default, as in PyTorch.
pub const EPS: f64 = 1e-6;

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
