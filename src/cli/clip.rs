//! `gradclip clip` (being written).

use std::process::ExitCode;

/// Arguments of `gradclip clip`.
#[derive(clap::Args, Debug)]
pub struct ClipArgs {}

/// Runs `gradclip clip`.
pub fn run(_args: ClipArgs) -> ExitCode {
    eprintln!("gradclip clip: not available yet");
    ExitCode::from(2)
}
