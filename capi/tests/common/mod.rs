//! Compiling and running C and C++ programs against the built library: where it is, which
//! compiler flags, which sanitizer options.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The crate's directory (`capi/`).
pub fn capi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding a fresh `libgradclip.a` and `libgradclip.so`.
///
/// Cargo does not build a `cdylib`/`staticlib`-only library for its integration tests (they
/// cannot link it), so the library these tests link could be stale. The first call therefore
/// builds it, in release mode, with the cargo running the tests, into a target directory of its
/// own under `CARGO_TARGET_TMPDIR` (the outer build keeps its lock on the main one); later
/// builds are incremental.
pub fn lib_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi-build");
        let manifest = capi_dir().join("Cargo.toml");
        run_ok(
            Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet", "-p", "gradclip-capi"])
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&target),
        );
        let dir = target.join("release");
        assert!(dir.join("libgradclip.a").is_file() && dir.join("libgradclip.so").is_file());
        dir
    })
    .clone()
}

/// A scratch directory for one test's files.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("capi-tests")
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// True when `tool --version` runs; otherwise prints a note (the test is then skipped), or
/// fails when `GRADCLIP_REQUIRE_CC` is set (CI sets it, so the C tests cannot skip there).
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("GRADCLIP_REQUIRE_CC").is_none(),
            "`{tool}` not found and GRADCLIP_REQUIRE_CC is set"
        );
        eprintln!("NOTE: `{tool}` not found: skipping the test that needs it");
    }
    ok
}

/// The warning and sanitizer flags every C (`-std=c11`) and C++ (`-std=c++17`) program of the
/// tests is built with.
pub fn flags(std: &'static str) -> Vec<&'static str> {
    vec![
        std,
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Werror",
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ]
}

/// What a Rust static library needs from the system when linked into a C program.
pub const SYSTEM_LIBS: &[&str] = &["-lpthread", "-ldl", "-lm"];

/// Runs `cmd`, panicking with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// Compiles `source` with `compiler` (`gcc`, `g++`) and [`flags`] against the header and the
/// static library into `dir/name`, runs it with `args` under the sanitizers, and returns its
/// standard output, which must contain `expect`.
pub fn build_and_run(
    compiler: &str,
    source: &Path,
    extra: &[&str],
    name: &str,
    args: &[&Path],
    expect: &str,
) -> String {
    let std = if compiler == "g++" {
        "-std=c++17"
    } else {
        "-std=c11"
    };
    let exe = scratch(name).join(name);
    let mut cmd = Command::new(compiler);
    cmd.args(flags(std))
        .arg("-I")
        .arg(capi_dir().join("include"))
        .args(extra)
        .arg(source)
        .arg(lib_dir().join("libgradclip.a"))
        .args(SYSTEM_LIBS)
        .arg("-o")
        .arg(&exe);
    run_ok(&mut cmd);
    let out = run_ok(sanitized(&exe).args(args));
    assert!(out.contains(expect), "{name} printed:\n{out}");
    out
}

/// A command running a sanitizer-built program: any ASan or UBSan report ends it with a
/// non-zero status, and LeakSanitizer runs at exit. It reports nothing to suppress: the thread
/// pool lives in a static (reachable to the end), and a pool replaced by
/// `gradclip_set_num_threads` is freed when its last call returns.
pub fn sanitized(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    cmd
}
