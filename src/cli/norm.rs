//! `gradclip norm` (being written).

use std::process::ExitCode;

/// Arguments of `gradclip norm`.
#[derive(clap::Args, Debug)]
pub struct NormArgs {}

/// Runs `gradclip norm`.
pub fn run(_args: NormArgs) -> ExitCode {
    eprintln!("gradclip norm: not available yet");
    ExitCode::from(2)
}
