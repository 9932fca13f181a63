//! The CLI end to end, as a user runs it: `meshops validate`, `meshops render` (YAML and
//! JSON) of a generated repository of 1,000 Functions, the binary started afresh each time,
//! its output written to a file. Prints best and median wall time and the peak RSS of each
//! command (from `wait4`), beside issue 11's targets.
//!
//! `cargo bench --bench cli` (`MESHOPS_BENCH_FUNCTIONS=N` for another size,
//! `MESHOPS_BENCH_RUNS=N` for another number of runs).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One run of the binary: wall time and peak resident memory.
struct Run {
    elapsed: Duration,
    peak_rss_kib: i64,
}

/// Runs `binary args…` with stdout to `output`, reaping it with `wait4` for its peak RSS.
fn run_once(binary: &Path, args: &[&str], output: &Path) -> Run {
    let file = std::fs::File::create(output).unwrap();
    let started = Instant::now();
    // Reaped by wait4 below, which also gives its rusage (Child::wait would not).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(binary)
        .args(args)
        .stdout(Stdio::from(file))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: wait4 fills the zeroed rusage and the status of the child spawned above, which
    // nothing else waits for.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
        usage
    };
    let elapsed = started.elapsed();
    let status = std::process::ExitStatus::from_raw(status);
    assert!(status.success(), "meshops {args:?}: {status}");
    Run {
        elapsed,
        peak_rss_kib: usage.ru_maxrss,
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`; timing belongs here only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("CLI benchmark: run it with `cargo bench --bench cli`");
        return;
    }
    let number = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let functions = number("MESHOPS_BENCH_FUNCTIONS", 1000);
    let runs = number("MESHOPS_BENCH_RUNS", 15).max(1);
    let binary = Path::new(env!("CARGO_BIN_EXE_meshops"));
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    common::generate(&repo, functions);
    let repo = repo.to_str().unwrap();
    let output = work.path().join("out");

    println!();
    println!("{functions} functions, {runs} runs each after 3 warm-up runs, output to a file");
    println!();
    println!("| command | best | median | peak RSS (max) | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    let commands: [(&str, &[&str], &str); 3] = [
        ("meshops validate", &["validate", repo], "< 50 ms, < 64 MiB"),
        ("meshops render", &["render", repo], "< 100 ms, < 64 MiB"),
        (
            "meshops render -o json",
            &["render", repo, "-o", "json"],
            "",
        ),
    ];
    for (name, args, target) in commands {
        for _ in 0..3 {
            run_once(binary, args, &output);
        }
        let mut measured: Vec<Run> = (0..runs).map(|_| run_once(binary, args, &output)).collect();
        measured.sort_by_key(|r| r.elapsed);
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let peak = measured.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        println!(
            "| `{name}` | {} | {} | {:.1} MiB | {target} |",
            ms(measured[0].elapsed),
            ms(measured[measured.len() / 2].elapsed),
            peak as f64 / 1024.0
        );
    }
}
