//! meshops against `kubectl apply --server-side` and `kubectl diff --server-side` on a real
//! kube-apiserver + etcd (the e2e suite's control plane), the same objects in the same run:
//! first apply, no-op apply, no-change plan. Prints one table: time, requests and writes.
//!
//! `cargo bench --bench cluster` (1,000 functions; `MESHOPS_BENCH_FUNCTIONS=N` for another
//! size). `MESHOPS_BENCH_RTT_MS=N` puts both tools behind a TCP relay that delays every byte
//! by N/2 ms each way: an API server N ms away, as a managed control plane is from a CI runner
//! or a laptop, instead of one on loopback. Needs the envtest binaries (`$KUBEBUILDER_ASSETS` or `/usr/local/kubebuilder/bin`,
//! see docs/DEVELOPERS.md); kubectl is taken from there too, or from PATH.

mod common;
#[path = "../tests/support/control_plane.rs"]
mod control_plane;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshops::cluster::Cluster;

/// One measured command.
struct Measured {
    elapsed: Duration,
    requests: u64,
    writes: u64,
    output: String,
    /// CPU time of the command itself, and of kube-apiserver + etcd while it ran: on a small
    /// machine they share the cores, and the server's share bounds what concurrency can gain.
    client_cpu: Duration,
    server_cpu: Duration,
}

/// The control plane's process ids, read once by `main`.
static SERVER_PIDS: std::sync::OnceLock<[u32; 2]> = std::sync::OnceLock::new();

/// utime + stime of a running process, from /proc/PID/stat.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

fn server_cpu() -> Duration {
    SERVER_PIDS
        .get()
        .map(|pids| pids.iter().map(|&pid| process_cpu(pid)).sum())
        .unwrap_or_default()
}

/// CPU time of the children this process has waited for.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Runs a command, returning its wall time, output, own CPU and the server's CPU meanwhile.
fn run(program: &Path, args: &[&str]) -> (Duration, std::process::Output, Duration, Duration) {
    let (client_before, server_before) = (children_cpu(), server_cpu());
    let started = Instant::now();
    let output = Command::new(program).args(args).output().unwrap();
    let elapsed = started.elapsed();
    let cpu = (
        children_cpu() - client_before,
        server_cpu().saturating_sub(server_before),
    );
    assert!(
        output.status.success() || output.status.code() == Some(1) && args[0] == "diff",
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    (elapsed, output, cpu.0, cpu.1)
}

/// meshops prints `cost: N requests (…), W writes` on stderr.
fn meshops(binary: &Path, args: &[&str]) -> Measured {
    let (elapsed, output, client_cpu, server_cpu) = run(binary, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // With MESHOPS_LOG set (say `meshops=debug,kube_client=debug`), each step's log is shown.
    if std::env::var_os("MESHOPS_LOG").is_some() {
        eprintln!("--- meshops {}\n{stderr}", args.join(" "));
    }
    let cost = stderr
        .lines()
        .find(|l| l.starts_with("cost: "))
        .unwrap_or_else(|| panic!("no cost line: {stderr}"));
    let number = |after: &str| -> u64 {
        cost.split(after)
            .next()
            .unwrap_or_default()
            .rsplit(' ')
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0)
    };
    Measured {
        elapsed,
        requests: number(" requests"),
        writes: number(" writes"),
        output: String::from_utf8_lossy(&output.stdout).into_owned(),
        client_cpu,
        server_cpu,
    }
}

/// kubectl at -v=6 logs one line per request: `… "GET https://…" 200 OK in 3 milliseconds`
/// (older releases) or `… "Response" verb="GET" url="…" status="200 OK"` (newer ones).
fn kubectl(binary: &Path, args: &[&str]) -> Measured {
    let mut all = args.to_vec();
    all.push("-v=6");
    let (elapsed, output, client_cpu, server_cpu) = run(binary, &all);
    let log = String::from_utf8_lossy(&output.stderr);
    let verbs: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            ["GET", "PATCH", "POST", "PUT", "DELETE"]
                .into_iter()
                .find(|verb| {
                    line.contains(&format!("verb=\"{verb}\"")) && line.contains("\"Response\"")
                        || line.contains(&format!("\"{verb} https://"))
                        || line.contains(&format!("] {verb} https://"))
                })
        })
        .collect();
    let dry_run = |line: &&str| line.contains("dryRun");
    let writes = log
        .lines()
        .filter(|l| !dry_run(l))
        .filter(|l| {
            ["PATCH", "POST", "PUT", "DELETE"].iter().any(|v| {
                l.contains(&format!("verb=\"{v}\"")) && l.contains("\"Response\"")
                    || l.contains(&format!("\"{v} https://"))
                    || l.contains(&format!("] {v} https://"))
            })
        })
        .count();
    Measured {
        elapsed,
        requests: verbs.len() as u64,
        writes: writes as u64,
        output: String::from_utf8_lossy(&output.stdout).into_owned(),
        client_cpu,
        server_cpu,
    }
}

fn kubectl_binary(assets: &Path) -> Option<PathBuf> {
    let bundled = assets.join("kubectl");
    if bundled.is_file() {
        return Some(bundled);
    }
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("kubectl"))
}

/// A TCP relay on loopback to `target` that delivers every chunk `one_way` after it arrived,
/// in both directions, without limiting throughput: a link with a round trip of twice that.
async fn delaying_relay(target: std::net::SocketAddr, one_way: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        one_way: Duration,
    ) {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((due, chunk)) = receiver.recv().await {
                tokio::time::sleep_until(due.into()).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        });
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            if sender
                .send((Instant::now() + one_way, buffer[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        drop(sender);
        let _ = writer.await;
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pipe(client_read, server_write, one_way),
                    pipe(server_read, client_write, one_way)
                );
            });
        }
    });
    address
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a two-minute measurement has no place in the test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster benchmark: run it with `cargo bench --bench cluster`");
        return;
    }
    let Some(assets) = control_plane::assets() else {
        println!(
            "skipped: no control plane (kube-apiserver and etcd not found; see docs/DEVELOPERS.md)"
        );
        return;
    };
    let functions: usize = std::env::var("MESHOPS_BENCH_FUNCTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_meshops"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let plane = runtime
        .block_on(control_plane::ControlPlane::start(&assets))
        .unwrap();
    SERVER_PIDS.get_or_init(|| plane.server_pids());
    let work = tempfile::tempdir().unwrap();
    let rtt: u64 = std::env::var("MESHOPS_BENCH_RTT_MS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Both tools reach the server through the relay; setting up and checking go direct.
    let kubeconfig = if rtt == 0 {
        plane.kubeconfig.clone()
    } else {
        let target = plane.server.trim_start_matches("https://").parse().unwrap();
        let relay = runtime.block_on(delaying_relay(target, Duration::from_micros(rtt * 500)));
        let path = work.path().join("kubeconfig-relayed");
        let config = control_plane::kubeconfig(
            &format!("https://{relay}"),
            &plane.ca_file,
            &plane.admin_token,
        );
        std::fs::write(&path, config).unwrap();
        path
    };
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    common::generate_in(&repo, functions, "bench-meshops");

    runtime.block_on(async {
        let cluster = Cluster::connect(Some(&plane.kubeconfig), None)
            .await
            .unwrap();
        control_plane::install_function_mesh(&cluster, &["bench-meshops", "bench-kubectl"]).await;
        // The API server builds a resource's watch cache on its first LIST (about a second
        // for a custom resource); warm every kind up so neither tool pays that in its time.
        let kinds = [
            ("v1", "ConfigMap"),
            ("v1", "Service"),
            ("apps/v1", "StatefulSet"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("policy/v1", "PodDisruptionBudget"),
            (meshops::model::FUNCTION_MESH_API_VERSION, "Function"),
        ];
        for (api_version, kind) in kinds {
            cluster
                .list(api_version, kind, "default", "")
                .await
                .unwrap();
        }
    });

    let repo_arg = repo.to_str().unwrap();
    let common = ["--kubeconfig", kubeconfig.as_str(), "--source", "bench"];
    let with = |head: &[&'static str]| -> Vec<String> {
        head.iter()
            .map(|s| s.to_string())
            .chain([repo_arg.to_owned()])
            .chain(common.iter().map(|s| s.to_string()))
            .collect()
    };
    let call = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        meshops(&binary, &args)
    };

    // The same objects for kubectl, in a namespace of their own.
    let kubectl_repo = work.path().join("kubectl-repo");
    std::fs::create_dir_all(&kubectl_repo).unwrap();
    common::generate_in(&kubectl_repo, functions, "bench-kubectl");
    let rendered = Command::new(&binary)
        .args([
            "render",
            kubectl_repo.to_str().unwrap(),
            "--source",
            "bench",
        ])
        .output()
        .unwrap();
    let manifests = String::from_utf8_lossy(&rendered.stdout).into_owned();
    let objects = manifests.matches("\n---\n").count() + 1;
    let file = work.path().join("objects.yaml");
    std::fs::write(&file, manifests).unwrap();
    let file_arg = file.to_str().unwrap();

    let first = call(with(&["apply"]));
    let noop = call(with(&["apply"]));
    let plan = call(with(&["plan"]));
    assert!(plan.output.contains("No changes"), "{}", plan.output);
    assert_eq!(noop.writes, 0, "a no-op apply writes nothing");

    let rows_kubectl = kubectl_binary(&assets).map(|program| {
        let args = |verb: &'static str| {
            vec![
                verb,
                "--server-side",
                "--field-manager",
                "kubectl-bench",
                "-f",
                file_arg,
                "--kubeconfig",
                kubeconfig.as_str(),
            ]
        };
        let first = kubectl(&program, &args("apply"));
        let noop = kubectl(&program, &args("apply"));
        let diff = kubectl(&program, &args("diff"));
        (first, noop, diff)
    });

    println!();
    let link = match rtt {
        0 => "on loopback".to_owned(),
        ms => format!("{ms} ms away (a delaying relay on loopback)"),
    };
    println!(
        "{functions} functions, {objects} objects, one kube-apiserver {} + etcd {link}",
        plane.server
    );
    println!();
    println!("| step | meshops | requests | writes | kubectl | requests | writes | speed-up |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let ms = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let steps = [
        ("first apply", &first, "apply --server-side", 0),
        ("no-op apply", &noop, "apply --server-side (again)", 1),
        ("no-change plan", &plan, "diff --server-side", 2),
    ];
    for (name, ours, theirs_name, index) in steps {
        match &rows_kubectl {
            Some(k) => {
                let theirs = [&k.0, &k.1, &k.2][index];
                println!(
                    "| {name} (kubectl {theirs_name}) | {} | {} | {} | {} | {} | {} | {:.1}× |",
                    ms(ours.elapsed),
                    ours.requests,
                    ours.writes,
                    ms(theirs.elapsed),
                    theirs.requests,
                    theirs.writes,
                    theirs.elapsed.as_secs_f64() / ours.elapsed.as_secs_f64()
                );
            }
            None => println!(
                "| {name} | {} | {} | {} | (no kubectl) | | | |",
                ms(ours.elapsed),
                ours.requests,
                ours.writes
            ),
        }
    }
    // What the server's own work allows: its CPU time for meshops' first apply, spread over
    // every core of this machine, is the least any client could take for those writes.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let floor = first.server_cpu.as_secs_f64() / cores as f64;
    println!();
    print!(
        "The API server and etcd spent {:.2} s of CPU on meshops' first apply: on {cores} cores \
         no client takes less than {floor:.2} s for it",
        first.server_cpu.as_secs_f64()
    );
    match &rows_kubectl {
        Some(k) => println!(
            ", {:.1}× kubectl at most.",
            k.0.elapsed.as_secs_f64() / floor
        ),
        None => println!("."),
    }
    println!();
    println!("CPU time while each step ran (the client; kube-apiserver + etcd):");
    println!();
    println!("| step | meshops | its server | kubectl | its server |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, ours, _, index) in steps {
        let theirs = rows_kubectl.as_ref().map(|k| [&k.0, &k.1, &k.2][index]);
        let cpu = |m: Option<&Measured>, server: bool| match m {
            Some(m) => ms(if server { m.server_cpu } else { m.client_cpu }),
            None => "–".to_owned(),
        };
        println!(
            "| {name} | {} | {} | {} | {} |",
            cpu(Some(ours), false),
            cpu(Some(ours), true),
            cpu(theirs, false),
            cpu(theirs, true)
        );
    }
}
