//! The long-running agent: follows each configured source's Git repository and keeps the
//! cluster at its latest valid commit.
//!
//! One task per source (triggers coalesce; one pass at a time), one HTTP server (webhooks,
//! probes, metrics, the sources API), one leader election. One cancellation token ends them
//! all: each leadership term is a child of it, so on SIGTERM or a lost Lease the passes are
//! dropped where they are and the cluster's write fence refuses any write still on its way;
//! the HTTP server drains and the lease is released so another replica takes over at once.

pub mod config;
pub mod drift;
pub mod http;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod pass;
pub mod pull;
pub mod schedule;
pub mod source;
pub mod state;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterError};
use crate::model::AgentConfig;
use leader::{Leadership, Timing};
use pass::Context;
use source::SourceHandle;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot read the webhook secret {path}: {source}")]
    WebhookSecret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the webhook secret {path} is empty")]
    EmptyWebhookSecret { path: PathBuf },
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up GitHub reporting: {0}")]
    Github(#[from] crate::github::GithubError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How the agent was started (flags), beside its config file.
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub listen: SocketAddr,
    /// Who this replica is in the leader election (the pod name in a cluster).
    pub identity: String,
}

/// Runs until `shutdown` is cancelled (SIGTERM/SIGINT in `meshops agent`).
pub async fn run(
    config: AgentConfig,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let webhook_secret = match &config.webhook {
        Some(webhook) => {
            let secret = std::fs::read(&webhook.secret_file).map_err(|source| {
                AgentError::WebhookSecret {
                    path: webhook.secret_file.clone(),
                    source,
                }
            })?;
            let secret = secret.trim_ascii().to_vec();
            if secret.is_empty() {
                return Err(AgentError::EmptyWebhookSecret {
                    path: webhook.secret_file.clone(),
                });
            }
            Some(secret)
        }
        None => None,
    };
    let state_dir = config
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/meshops"));
    std::fs::create_dir_all(&state_dir).map_err(|source| AgentError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let cluster =
        Cluster::connect(options.kubeconfig.as_deref(), options.context.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: options.listen,
            source,
        })?;
    let election = config.leader_election.clone().unwrap_or_default();
    let leadership = if election.enabled.unwrap_or(true) {
        let namespace = election
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let name = election
            .lease_name
            .clone()
            .unwrap_or_else(|| "meshops-agent".into());
        let duration = election
            .lease_duration
            .as_deref()
            .and_then(crate::model::agent::duration)
            .unwrap_or(Duration::from_secs(15));
        Leadership::elect(
            &cluster,
            &namespace,
            &name,
            &options.identity,
            Timing::new(duration),
            shutdown.clone(),
        )
    } else {
        Leadership::sole(&cluster, &shutdown)
    };
    let (metrics, mut registry) = metrics::Metrics::new(cluster.requests().clone());
    let recorder = Recorder::new(
        cluster.client().clone(),
        Reporter {
            controller: "meshops".into(),
            instance: Some(options.identity.clone()),
        },
    );
    let reports = match &config.github {
        Some(access) => Some(crate::report::Queue::spawn(
            Arc::new(crate::github::GitHub::connect(access)?),
            shutdown.clone(),
        )),
        None => None,
    };
    let reporter: Arc<dyn crate::report::Reporter> = match &reports {
        Some(queue) => {
            metrics::register_reports(&mut registry, queue.clone());
            queue.clone()
        }
        None => Arc::new(crate::report::Silent),
    };
    let context = Arc::new(Context {
        cluster,
        reporter,
        metrics: metrics.clone(),
        recorder,
        state_dir,
        max_file_bytes: crate::load::Limits::default().max_file_bytes,
    });
    let handles: Vec<Arc<SourceHandle>> = config
        .sources
        .iter()
        .cloned()
        .map(|s| Arc::new(SourceHandle::new(s)))
        .collect();
    let tasks: Vec<_> = handles
        .iter()
        .map(|handle| {
            tokio::spawn(source::run(
                handle.clone(),
                context.clone(),
                leadership.term.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    let shared = Arc::new(http::Shared {
        sources: handles,
        metrics,
        registry,
        webhook_secret,
        deliveries: Mutex::new(webhook::Deliveries::default()),
        failures: Mutex::new(webhook::FailureLimiter::new(
            webhook::FailureLimits::default(),
        )),
        term: leadership.term.clone(),
    });
    tracing::info!(
        listen = %options.listen,
        sources = config.sources.len(),
        identity = options.identity,
        "agent started"
    );
    let app = http::router(shared).into_make_service_with_connect_info::<SocketAddr>();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    if let Err(err) = server.await {
        tracing::error!(error = %err, "the HTTP server failed");
        shutdown.cancel();
    }
    for task in tasks {
        if let Err(err) = task.await {
            tracing::error!(error = %err, "a source task failed");
        }
    }
    leadership.stopped().await;
    if let Some(queue) = reports {
        queue.drained().await;
    }
    tracing::info!("agent stopped");
    Ok(())
}
