//! The `meshops` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Rendering builds and drops hundreds of thousands of small JSON values; mimalloc does that
/// markedly faster than glibc's allocator and returns memory to the system sooner.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
