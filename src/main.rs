//! The `meshops` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = meshops::cli::Cli::parse();
    // At the default level only meshops itself speaks: errors are printed once by the
    // command, and a library's own lines (the kube client's TLS-bypass warning, its logged
    // connection errors) appear from -v on.
    let default_level = match cli.verbose {
        0 => "meshops=warn",
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
