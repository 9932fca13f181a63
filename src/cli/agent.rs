//! `meshops agent`

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::exit;
use super::render::print_diagnostics;
use crate::agent;

pub const AFTER_HELP: &str = "\
Follows the Git repositories the config file lists and keeps the cluster at each one's latest
valid commit: polls (±10 % jitter) and acts on GitHub push webhooks, validates, renders,
plans and applies with server-side apply, prunes, and reports drift as Kubernetes Events.
An invalid commit applies nothing and keeps the last good state. With several replicas one
leads (a coordination.k8s.io Lease) and only the leader reports ready.

HTTP: POST /webhooks/github, GET /healthz, /readyz, /metrics, /api/v1/sources,
POST /api/v1/sources/{name}/sync. SIGTERM stops between apply phases and releases the lease.

Exit status: 0 stopped by a signal, 1 invalid config or startup failure.

Examples:
  meshops agent --config /etc/meshops/agent.yaml
  meshops agent --config examples/agent.yaml --check";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The AgentConfig file (see examples/agent.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,

    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster service
    /// account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,

    /// Address of the HTTP server (webhooks, probes, metrics, API).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// This replica's name in the leader election (default: $POD_NAME, else the host name).
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,

    /// Validate the config file and exit (0 valid, 1 invalid), touching no cluster.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let config = match agent::config::load(&args.config) {
        Ok(config) => config,
        Err(validation) => {
            print_diagnostics(&validation);
            return Ok(exit::ERROR);
        }
    };
    if args.check {
        println!(
            "{}: valid, {} source(s)",
            args.config.display(),
            config.sources.len()
        );
        return Ok(exit::OK);
    }
    let identity = args
        .identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("meshops-{}", std::process::id()));
    let options = agent::Options {
        kubeconfig: args.kubeconfig,
        context: args.context,
        listen: args.listen,
        identity,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(agent::memory::collect_after_pass)
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match agent::run(config, options, shutdown).await {
            Ok(()) => exit::OK,
            Err(err) => {
                eprintln!("error: {err}");
                exit::ERROR
            }
        }
    });
    // Dropping the runtime would wait for every blocking task (a name lookup, a stuck
    // connect) however long it takes; a stopping pod has its grace period to keep.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(code)
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    shutdown.cancel();
}
