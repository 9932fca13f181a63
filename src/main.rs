//! The `meshops` binary: parse arguments, set up logging, run.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Rendering builds and drops hundreds of thousands of small JSON values; mimalloc does that
/// markedly faster than glibc's allocator and returns memory to the system sooner.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v2's mimalloc.h (the sys crate names no constant for
/// it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(target_os = "linux")]
extern "C" {
    fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
}

fn main() -> ExitCode {
    // Give freed pages back after 1 ms instead of mimalloc's 10 ms: rendering frees on one
    // thread what another allocated, and the default delay kept more memory at the peak. Not
    // at once either: purging every page the moment it empties made the kernel zero the same
    // memory again and again (~10 % of a 1,000-function render; docs/performance.md).
    // MIMALLOC_PURGE_DELAY still overrides it.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1) };
    }
    // No transparent huge pages: mimalloc asks for them on its 1 GiB arena (reserved before
    // main runs, so its own option comes too late), and each first touch then zeroes and keeps
    // 2 MiB. Without them a render peaks 7-9 MiB lower, as fast on average and with less
    // spread. MIMALLOC_ALLOW_THP set leaves the choice to mimalloc.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        const PR_SET_THP_DISABLE: std::ffi::c_int = 41;
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) only sets a flag of this process; on
        // a kernel without it the call fails and nothing changes.
        unsafe {
            prctl(
                PR_SET_THP_DISABLE,
                1 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
            )
        };
    }
    let cli = match meshops::cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // At the default level only meshops itself speaks: errors are printed once by the
    // command, and a library's own lines (the kube client's TLS-bypass warning, its logged
    // connection errors) appear from -v on.
    let default_level = match cli.verbose {
        // The agent is a service: what it did belongs in its log.
        0 if matches!(cli.command, meshops::cli::Command::Agent(_)) => "meshops=info",
        0 => "meshops=warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("MESHOPS_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    meshops::cli::run(cli)
}
