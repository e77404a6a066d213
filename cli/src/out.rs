//! Standard output for the long reports (`demo`, `bench`): a reader that goes away
//! (`gradclip bench | head -1`) ends the run quietly.
//!
//! `println!` panics when stdout is a closed pipe (Rust ignores SIGPIPE, so the write fails with
//! `EPIPE` instead of killing the process). [`outln!`](crate::outln) writes the line and, on `EPIPE`, exits
//! with status 0 and no message, as `norm` and `clip` already do for their output: the reader
//! took what it wanted. Any other write error is one line on stderr and exit status 2.

use std::io::{self, Write};

/// Writes one formatted line to stdout; see the module docs for what happens when it cannot.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        failed(&e);
    }
}

/// Ends the process after a failed write to stdout: quietly with status 0 for a closed pipe,
/// else with a one-line message and status 2.
pub fn failed(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let _ = writeln!(io::stderr(), "gradclip: cannot write to stdout: {e}");
    std::process::exit(2);
}

/// `println!` that ends the process quietly when stdout is a closed pipe (see [`line()`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
