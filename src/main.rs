//! The `meshops` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = meshops::cli::Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("MESHOPS_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    meshops::cli::run(cli)
}
