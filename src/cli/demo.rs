//! `gradclip demo` (being written).

use std::process::ExitCode;

/// Arguments of `gradclip demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Runs `gradclip demo`.
pub fn run(_args: DemoArgs) -> ExitCode {
    eprintln!("gradclip demo: not available yet");
    ExitCode::from(2)
}
