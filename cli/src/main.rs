//! The `gradclip` command line: inspect and clip safetensors gradient dumps, run the
//! exploding-gradients demo, and benchmark the kernels against the memory-bandwidth roofline.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gradclip_cli as cli;

#[derive(Parser)]
#[command(
    name = "gradclip",
    version,
    about = "Gradient-norm clipping: inspect and clip safetensors gradient dumps, demo, bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small RNN with and without the defences against exploding gradients and report.
    Demo(cli::demo::DemoArgs),
    /// Norms of every tensor of a safetensors file, and the total.
    Norm(cli::norm::NormArgs),
    /// Clip a safetensors file's tensors to a global max norm, writing a new file.
    Clip(cli::clip::ClipArgs),
    /// Measure the kernels against naive loops and the memory-bandwidth rooflines.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            // --help and --version are not errors; a bare `gradclip` shows the help. Every other
            // parse failure is one line on stderr (scripts read it) and exit code 2.
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
                }
                _ => {
                    let text = e.render().to_string();
                    let message: Vec<&str> = text
                        .lines()
                        .map(str::trim)
                        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                        .filter(|l| !l.is_empty())
                        .collect();
                    let message = message.join(" ");
                    // Same prefix as the commands' own errors: `gradclip clip: ...`.
                    let sub = std::env::args()
                        .nth(1)
                        .filter(|a| ["demo", "norm", "clip", "bench"].contains(&a.as_str()));
                    let prefix = match sub {
                        Some(s) => format!("gradclip {s}"),
                        None => "gradclip".to_string(),
                    };
                    eprintln!(
                        "{prefix}: {} (see --help)",
                        message.trim_start_matches("error: ")
                    );
                    return ExitCode::from(2);
                }
            }
        }
    };
    match cli.command {
        Command::Demo(a) => cli::demo::run(a),
        Command::Norm(a) => cli::norm::run(a),
        Command::Clip(a) => cli::clip::run(a),
        Command::Bench(a) => cli::bench::run(a),
    }
}
