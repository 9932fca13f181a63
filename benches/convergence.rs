//! How fast `meshops agent` converges through faults, on a real kube-apiserver + etcd behind
//! the fault proxy of the test suite (tests/support/fault_proxy.rs): push → applied for a
//! commit that changes 100 Functions with 0 %, 5 % and 20 % of requests answered 429/500/503
//! (`Retry-After: 1`), and the time to apply a commit pushed during a 60 s API outage once
//! the server is back. Prints one table.
//!
//! `cargo bench --bench convergence` (`MESHOPS_BENCH_FUNCTIONS=N` for another size,
//! `MESHOPS_BENCH_ROUNDS=N` for another number of pushes per fault level,
//! `MESHOPS_BENCH_OUTAGE_S=N` for another outage). Needs the envtest binaries, as
//! `cargo bench --bench agent` does.

#[path = "../tests/support/agent.rs"]
mod agent;
mod common;
#[path = "../tests/support/control_plane.rs"]
mod control_plane;
#[path = "../tests/support/fault_proxy.rs"]
mod fault_proxy;

use std::time::{Duration, Instant};

use agent::{push_event, AgentProcess, GitRepo};
use fault_proxy::FaultProxy;
use meshops::cluster::Cluster;
use meshops::model::crd::{crd, CRD_KINDS};
use serde_json::json;

const NAMESPACE: &str = "bench-faults";
const SOURCE: &str = "bench";
const SECRET: &str = "bench webhook secret";
/// How often the bench asks `/api/v1/sources` whether a commit is applied.
const POLL: Duration = Duration::from_millis(20);
/// The agent's poll interval: after a failure it retries at least this often.
const INTERVAL: &str = "5s";

fn number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Polls `/api/v1/sources` until the source has applied `commit`; when.
fn applied_at(agent: &AgentProcess, commit: &str, timeout: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let source = agent.source(SOURCE);
        if source["lastAppliedCommit"] == commit {
            return Instant::now();
        }
        assert!(
            started.elapsed() < timeout,
            "{commit} not applied within {timeout:?}: {source}\n{}",
            agent.log_text()
        );
        std::thread::sleep(POLL);
    }
}

/// Gives every generated Function a new image tag: one commit changing `functions` CRs and
/// their StatefulSets.
fn retag(repo: &GitRepo, functions: u64, from: &str, to: &str) -> String {
    for i in 0..functions {
        repo.edit(
            &format!("deploy/team-{}/fn-{i}.yaml", i % 10),
            &format!("image: registry.example.com/fn:{i}{from}\n"),
            &format!("image: registry.example.com/fn:{i}{to}\n"),
        );
    }
    repo.commit(&format!("all functions: tag {to}"))
}

fn push(agent: &AgentProcess, repo: &GitRepo, commit: &str) {
    let body = push_event("acme/functions", &repo.url(), "refs/heads/main", commit);
    let signature = meshops::agent::webhook::sign(SECRET.as_bytes(), &body);
    let answer = agent.post(
        "/webhooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", commit),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    );
    assert_eq!(answer.status, 202, "the webhook was refused");
}

fn stats(samples: &mut [Duration]) -> String {
    samples.sort();
    let s = |d: Duration| format!("{:.2}", d.as_secs_f64());
    format!(
        "{} / {} / {} s",
        s(samples[0]),
        s(samples[samples.len() / 2]),
        s(samples[samples.len() - 1])
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("convergence benchmark: run it with `cargo bench --bench convergence`");
        return;
    }
    let Some(assets) = control_plane::assets() else {
        println!(
            "skipped: no control plane (kube-apiserver and etcd not found; see docs/DEVELOPERS.md)"
        );
        return;
    };
    let functions = number("MESHOPS_BENCH_FUNCTIONS", 100);
    let rounds = number("MESHOPS_BENCH_ROUNDS", 3).max(1);
    let outage = Duration::from_secs(number("MESHOPS_BENCH_OUTAGE_S", 60));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let plane = runtime
        .block_on(control_plane::ControlPlane::start(&assets))
        .unwrap();
    let proxy = runtime.block_on(FaultProxy::for_plane(&plane, 15)).unwrap();
    runtime.block_on(async {
        let cluster = Cluster::connect(Some(&plane.kubeconfig), None)
            .await
            .unwrap();
        for (kind, plural) in CRD_KINDS {
            cluster.apply(&crd(kind, plural), false).await.unwrap();
        }
        let object =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
        cluster.apply(&object, false).await.unwrap();
        let names: Vec<String> = CRD_KINDS
            .iter()
            .map(|(_, plural)| format!("{plural}.compute.functionmesh.io"))
            .collect();
        control_plane::wait_established(&cluster, &names).await;
    });

    let work = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&work.path().join("repo"));
    let deploy = repo.dir.join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    common::generate_in(&deploy, functions as usize, NAMESPACE);
    let first = repo.commit("generated functions");
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        control_plane::kubeconfig(&proxy.url(), &plane.ca_file, &plane.admin_token),
    )
    .unwrap();
    let secret_file = work.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    // Production settings but `rolloutTimeout: 0s` (no controller runs pods here) and a 5 s
    // poll, which bounds how long a retry waits after a failed pass.
    let config = work.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: meshops.io/v1alpha1\nkind: AgentConfig\nstateDir: {state}\n\
             webhook: {{secretFile: {secret}}}\n\
             leaderElection: {{namespace: default, leaseName: meshops-bench, leaseDuration: 15s}}\n\
             sources:\n- name: {SOURCE}\n  url: {url}\n  path: deploy\n  interval: {INTERVAL}\n  \
             driftInterval: 1h\n  rolloutTimeout: 0s\n  namespaces: [{NAMESPACE}, default]\n",
            state = work.path().join("state").display(),
            secret = secret_file.display(),
            url = repo.url(),
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(
        &config,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--identity",
            "bench",
        ],
        &work.path().join("agent.log"),
    );
    applied_at(&agent, &first, Duration::from_secs(120));

    // Push → applied, each fault level `rounds` times.
    let mut table = Vec::new();
    let mut tag = String::new();
    for share in [0.0, 0.05, 0.20] {
        proxy.fail_share(share, &[429, 500, 503]);
        let mut samples = Vec::new();
        let before = proxy.requests().len();
        for round in 0..rounds {
            let next = format!("-{}-{round}", (share * 100.0) as u32);
            let commit = retag(&repo, functions, &tag, &next);
            tag = next;
            let pushed = Instant::now();
            push(&agent, &repo, &commit);
            samples.push(applied_at(&agent, &commit, Duration::from_secs(300)) - pushed);
        }
        let seen = &proxy.requests()[before..];
        let failed = seen.iter().filter(|r| !r.forwarded()).count();
        table.push((
            format!("push → applied, {:.0} % failing", share * 100.0),
            format!(
                "{} (min / median / max of {rounds}; {failed} of {} requests failed by the proxy)",
                stats(&mut samples),
                seen.len()
            ),
        ));
    }
    proxy.clear();

    // A commit pushed during an outage: applied how long after the server is back?
    proxy.outage();
    let commit = retag(&repo, functions, &tag, "-outage");
    push(&agent, &repo, &commit);
    std::thread::sleep(outage);
    proxy.heal();
    let healed = Instant::now();
    let after = applied_at(&agent, &commit, Duration::from_secs(300)) - healed;
    table.push((
        format!("applied after a {} s outage", outage.as_secs()),
        format!(
            "{:.2} s after the server's return (poll {INTERVAL})",
            after.as_secs_f64()
        ),
    ));
    let retries = agent.metric("meshops_api_retries_total");
    assert!(agent.terminate().success());

    println!("\nmeshops agent convergence: {functions} functions changed per commit");
    for (what, value) in &table {
        println!("  {what:<34} {value}");
    }
    println!("  {:<34} {retries}", "requests sent again (retry layer)");
}
