//! `meshops agent` on a real kube-apiserver + etcd (the e2e suite's control plane), following a
//! generated repository over file://, as a child process built by the bench profile. Prints
//! one table: the initial apply, push → webhook → applied latency, idle RSS and idle CPU.
//!
//! `cargo bench --bench agent` (1,000 functions; `MESHOPS_BENCH_FUNCTIONS=N` for another
//! size, `MESHOPS_BENCH_PUSHES=N` for another number of pushes). Needs the envtest binaries
//! (`$KUBEBUILDER_ASSETS` or `/usr/local/kubebuilder/bin`, see docs/DEVELOPERS.md). The binary
//! is `CARGO_BIN_EXE_meshops`, which cargo builds with the bench profile before the bench.
//! `MESHOPS_BENCH_KEEP_LOG=FILE` keeps the agent's log (`MESHOPS_LOG`, default
//! `meshops=debug`: it has the end of each apply phase; `meshops=debug,kube_client=debug`
//! adds every request).

#[path = "../tests/support/agent.rs"]
mod agent;
mod common;
#[path = "../tests/support/control_plane.rs"]
mod control_plane;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::{push_event, AgentProcess, GitRepo};
use meshops::cluster::Cluster;
use serde_json::json;

const NAMESPACE: &str = "bench-agent";
const SOURCE: &str = "bench";
const SECRET: &str = "bench webhook secret";
/// Pushes measured, each changing another function (`MESHOPS_BENCH_PUSHES` for another
/// number).
const PUSHES: usize = 5;
/// How often the bench asks `/api/v1/sources` whether a commit is applied.
const POLL: Duration = Duration::from_millis(20);
/// Idle before memory is read, then the window idle CPU is measured over.
const SETTLE: Duration = Duration::from_secs(10);
const CPU_WINDOW: Duration = Duration::from_secs(20);
/// A second look at memory after the pushes, past tokio's 10 s keep-alive of idle blocking
/// threads (whose exit gives memory back).
const LATER: Duration = Duration::from_secs(20);

/// A process's memory from /proc/PID/status, in KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        threads: field("Threads:"),
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (anon {}, file {}; {} threads)",
            mib(self.rss),
            mib(self.anon),
            mib(self.file),
            self.threads
        )
    }
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After `(comm)`: field 3 (state) is first, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    fields[10] + fields[11]
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Polls `/api/v1/sources` every [`POLL`] until the source has applied `commit`; when.
fn applied_at(agent: &AgentProcess, commit: &str, timeout: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let source = agent
            .get("/api/v1/sources")
            .filter(|a| a.status == 200)
            .map(|a| a.json());
        let now = Instant::now();
        let entry = source.as_ref().and_then(|s| {
            s["sources"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == SOURCE)
                .cloned()
        });
        if let Some(entry) = &entry {
            if entry["lastAppliedCommit"] == commit {
                return now;
            }
            assert!(
                entry["error"].is_null(),
                "the agent failed: {entry}\n{}",
                agent.log_text()
            );
        }
        assert!(
            started.elapsed() < timeout,
            "{commit} not applied within {timeout:?}: {entry:?}\n{}",
            agent.log_text()
        );
        std::thread::sleep(POLL);
    }
}

/// Starts the agent as a pod runs it, its log in `log`: `$MESHOPS_LOG` when set (e.g.
/// `meshops=debug,kube_client=debug` for every request), else meshops at debug.
fn spawn(config: &Path, kubeconfig: &str, log: &Path) -> AgentProcess {
    let port = agent::free_port();
    let filter = std::env::var("MESHOPS_LOG").unwrap_or_else(|_| "meshops=debug".into());
    let child = Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(["agent", "--config"])
        .arg(config)
        .args(["--kubeconfig", kubeconfig, "--identity", "bench-agent"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("MESHOPS_LOG", filter)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    AgentProcess {
        child,
        port,
        log: log.to_path_buf(),
    }
}

/// Where the agent's time went in the pass that applied `commit`, from its log's timestamps:
/// push received → end of the first apply phase (ls-remote, fetch, read, validate, render, the
/// plan's LISTs, the plan), → end of the last phase (the writes), → the pass's `applied` line
/// (prune, inventory), which is when `lastAppliedCommit` moves; the CR status writes follow.
fn phases(log: &str, commit: &str) -> Option<(Duration, Duration, Duration)> {
    let stamp = |line: &str| -> Option<jiff::Timestamp> { line.split(' ').next()?.parse().ok() };
    let mut lines = log.lines().skip_while(|l| {
        !(l.contains("push received") && l.contains(&format!("commit=\"{commit}\"")))
    });
    let received = stamp(lines.next()?)?;
    let mut first_phase = None;
    let mut last_phase = None;
    for line in lines {
        if line.contains("applied phase") {
            first_phase = first_phase.or(stamp(line));
            last_phase = stamp(line);
        } else if line.contains(&format!(": applied commit=\"{commit}\"")) {
            let done = stamp(line)?;
            let span = |a: jiff::Timestamp, b: jiff::Timestamp| {
                Duration::try_from(b.duration_since(a)).unwrap_or_default()
            };
            let (first, last) = (first_phase?, last_phase?);
            return Some((span(received, first), span(first, last), span(last, done)));
        }
    }
    None
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent benchmark: run it with `cargo bench --bench agent`");
        return;
    }
    let Some(assets) = control_plane::assets() else {
        println!(
            "skipped: no control plane (kube-apiserver and etcd not found; see docs/DEVELOPERS.md)"
        );
        return;
    };
    let number = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let functions = number("MESHOPS_BENCH_FUNCTIONS", 1000);
    let pushes = number("MESHOPS_BENCH_PUSHES", PUSHES).max(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let plane = runtime
        .block_on(control_plane::ControlPlane::start(&assets))
        .unwrap();
    let kubeconfig = plane.kubeconfig.to_str().unwrap().to_owned();
    runtime.block_on(async {
        let cluster = Cluster::connect(Some(&plane.kubeconfig), None)
            .await
            .unwrap();
        control_plane::install_function_mesh(&cluster, &[NAMESPACE]).await;
    });

    // The repository: the generated functions under deploy/, one commit.
    let work = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&work.path().join("repo"));
    let deploy = repo.dir.join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    common::generate_in(&deploy, functions, NAMESPACE);
    let first = repo.commit("generated functions");

    let secret_file = work.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    // Production settings (leader election with a 15 s lease, a webhook secret, namespaces
    // allowed), but `rolloutTimeout: 0s`: no controller runs on this API server, StatefulSets
    // never roll out, and with the default (5m) every pass would follow them that long, the
    // next push waiting behind it. Poll 1h and drift 5m keep passes out of the idle windows.
    let config = work.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: meshops.io/v1alpha1\nkind: AgentConfig\nstateDir: {state}\n\
             webhook: {{secretFile: {secret}}}\n\
             leaderElection: {{namespace: default, leaseName: meshops-bench, leaseDuration: 15s}}\n\
             sources:\n- name: {SOURCE}\n  url: {url}\n  path: deploy\n  interval: 1h\n  \
             driftInterval: 5m\n  rolloutTimeout: 0s\n  namespaces: [{NAMESPACE}, default]\n",
            state = work.path().join("state").display(),
            secret = secret_file.display(),
            url = repo.url(),
        ),
    )
    .unwrap();
    let log = work.path().join("agent.log");

    // 4. Startup → the first commit applied.
    let started = Instant::now();
    let agent = spawn(&config, &kubeconfig, &log);
    let pid = agent.child.id();
    let mut listening = None;
    let mut leading = None;
    let mut at_startup = Memory::default();
    while leading.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent did not start:\n{}",
            agent.log_text()
        );
        if listening.is_none() && agent.get("/healthz").is_some_and(|r| r.status == 200) {
            listening = Some(started.elapsed());
            at_startup = memory(pid);
        }
        if listening.is_some() && agent.get("/readyz").is_some_and(|r| r.status == 200) {
            leading = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let initial = applied_at(&agent, &first, Duration::from_secs(600)) - started;

    // 2. Memory after SETTLE idle; 3. CPU over the next CPU_WINDOW, nobody asking anything.
    std::thread::sleep(SETTLE);
    let idle = memory(pid);
    let ticks = clock_ticks_per_second();
    let (cpu_before, window_start) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(CPU_WINDOW);
    let (cpu_after, window) = (cpu_ticks(pid), window_start.elapsed());
    let cpu_ticks_idle = cpu_after - cpu_before;
    let idle_cpu = cpu_ticks_idle as f64 / ticks as f64 / window.as_secs_f64() * 100.0;
    let after_window = memory(pid);

    // 1. Commit a changed function, push the signed webhook, wait for it to be applied.
    struct Push {
        function: usize,
        commit: String,
        git: Duration,
        latency: Duration,
        memory: Memory,
    }
    let mut rounds = Vec::new();
    for round in 0..pushes {
        let i = (round * functions / pushes + round) % functions;
        let file = format!("deploy/team-{}/fn-{i}.yaml", i % 10);
        repo.edit(
            &file,
            &format!("image: registry.example.com/fn:{i}\n"),
            &format!("image: registry.example.com/fn:{i}-r{round}\n"),
        );
        let committed = Instant::now();
        let commit = repo.commit(&format!("fn-{i}: a new image"));
        let git = committed.elapsed();
        let body = push_event("acme/functions", &repo.url(), "refs/heads/main", &commit);
        let pushed = Instant::now();
        let answer = agent.webhook(SECRET, "push", &format!("bench-{round}"), &body);
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert_eq!(
            answer.json()["triggered"],
            json!([SOURCE]),
            "{}",
            answer.body
        );
        let latency = applied_at(&agent, &commit, Duration::from_secs(120)) - pushed;
        rounds.push(Push {
            function: i,
            commit,
            git,
            latency,
            memory: memory(pid),
        });
    }
    std::thread::sleep(SETTLE);
    let idle_after_pushes = memory(pid);
    std::thread::sleep(LATER);
    let later_after_pushes = memory(pid);

    let text = agent.log_text();
    let status = agent.terminate();
    assert!(status.success(), "the agent exited with {status}");
    if let Ok(keep) = std::env::var("MESHOPS_BENCH_KEEP_LOG") {
        std::fs::copy(&log, PathBuf::from(keep)).unwrap();
    }

    let mut sorted: Vec<Duration> = rounds.iter().map(|r| r.latency).collect();
    sorted.sort();
    println!();
    println!(
        "{functions} functions ({} objects); `meshops agent` (bench profile) following file:// \
         with leader election (15 s lease); one kube-apiserver {} + etcd on loopback",
        functions * 5 + 1,
        plane.server,
    );
    println!();
    println!("| measure | value | target |");
    println!("| --- | ---: | ---: |");
    println!(
        "| startup → /healthz answers / leading (/readyz 200) | {} / {} | |",
        secs(listening.unwrap()),
        secs(leading.unwrap())
    );
    println!(
        "| startup → first commit applied ({functions} functions) | {} | |",
        secs(initial)
    );
    println!(
        "| push webhook → `lastAppliedCommit`, min / median / max of {pushes} | {} / {} / {} | < 2 s |",
        secs(sorted[0]),
        secs(sorted[sorted.len() / 2]),
        secs(sorted[sorted.len() - 1])
    );
    println!("| RSS at startup (first /healthz answer) | {at_startup} | |");
    println!(
        "| RSS idle, {} s after the initial apply | {idle} | < 64 MiB |",
        SETTLE.as_secs()
    );
    println!("| VmHWM after the initial apply | {} | |", mib(idle.hwm));
    println!(
        "| idle CPU over {:.0} s (poll 1h, drift 5m: no pass inside) | {idle_cpu:.2} % of one core ({cpu_ticks_idle} ticks of 1/{ticks} s) | |",
        window.as_secs_f64(),
    );
    println!("| RSS idle after that window | {after_window} | |");
    println!(
        "| RSS idle {} s after the {pushes} pushes | {idle_after_pushes} | |",
        SETTLE.as_secs()
    );
    println!(
        "| RSS idle {} s after the {pushes} pushes | {later_after_pushes} | |",
        (SETTLE + LATER).as_secs()
    );
    println!(
        "| VmHWM after the {pushes} pushes | {} | |",
        mib(idle_after_pushes.hwm)
    );
    println!();
    println!(
        "| push | function | git commit | webhook → applied | agent: to 1st apply phase | apply phases | prune, inventory | RSS / VmHWM after |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, round) in rounds.iter().enumerate() {
        let split = phases(&text, &round.commit)
            .map(|(a, b, c)| format!("{} | {} | {}", secs(a), secs(b), secs(c)))
            .unwrap_or_else(|| "? | ? | ?".into());
        println!(
            "| {} | fn-{} | {} | {} | {split} | {} / {} |",
            n + 1,
            round.function,
            secs(round.git),
            secs(round.latency),
            mib(round.memory.rss),
            mib(round.memory.hwm),
        );
    }
}
