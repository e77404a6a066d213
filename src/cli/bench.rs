//! `gradclip bench` (being written).

use std::process::ExitCode;

/// Arguments of `gradclip bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs `gradclip bench`.
pub fn run(_args: BenchArgs) -> ExitCode {
    eprintln!("gradclip bench: not available yet");
    ExitCode::from(2)
}
