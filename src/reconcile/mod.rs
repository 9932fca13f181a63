//! One pass for a source, as `meshops plan`/`apply` run it and the agent will: the desired
//! objects → the live state → the plan (a value) → apply → rollout → CR status.
//!
//! The CLI keeps the parsing and the printing; everything between is here, so the two ways of
//! running a source share one path. No clock: the caller says what time it is.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cluster::rollout::{self, RolloutError};
use crate::cluster::sync::{self, Live, Progress, Report, SyncError, SyncOptions};
use crate::cluster::{Cluster, ClusterError};
use crate::plan::{self, Plan};
use crate::render::{Object, SPEC_HASH};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A source's desired state read against the cluster: what a plan shows and an apply runs.
pub struct Pass {
    pub desired: Vec<Object>,
    pub live: Live,
    pub plan: Plan,
    pub options: SyncOptions,
}

impl Pass {
    /// Nothing to change and this revision already recorded: an apply writes nothing at all.
    pub fn in_sync(&self) -> bool {
        !self.plan.has_changes() && self.live.revision.as_ref() == Some(&self.options.revision)
    }
}

/// A content hash of the desired state: the revision recorded when no commit is given.
pub fn content_revision(desired: &[Object]) -> String {
    let mut hasher = Sha256::new();
    for object in desired {
        hasher.update(
            object.value["metadata"]["annotations"][SPEC_HASH]
                .as_str()
                .unwrap_or_default(),
        );
    }
    format!("sha256:{:x}", hasher.finalize())
}

/// Reads the live state the plan needs (one LIST per kind and namespace) and makes the plan.
pub async fn plan(
    cluster: &Cluster,
    desired: Vec<Object>,
    options: SyncOptions,
) -> Result<Pass, ReconcileError> {
    let live = sync::fetch(cluster, &desired, &options).await?;
    let plan = plan::plan(&desired, &live.objects, &live.inventory);
    Ok(Pass {
        desired,
        live,
        plan,
        options,
    })
}

/// The diffs of the changed objects (a server-side dry-run of each).
pub async fn diffs(
    cluster: &Cluster,
    pass: &Pass,
) -> Result<BTreeMap<plan::ObjectRef, String>, ReconcileError> {
    Ok(sync::diffs(cluster, &pass.plan, &pass.desired, &pass.live).await?)
}

/// What an apply did.
pub struct Applied {
    pub report: Report,
    /// How the rollout went, when it was waited for; the apply itself succeeded either way.
    pub rollout: Result<(), RolloutError>,
    /// Functions, Sources and Sinks whose status was written.
    pub statuses: usize,
}

/// Applies the pass, waits for the rollout when `wait` is given, then writes the status of
/// every Function, Source and Sink it changed (after the wait, so `Ready` says how far the
/// rollout got). `now` stamps the status conditions.
pub async fn apply(
    cluster: &Cluster,
    pass: &Pass,
    wait: Option<Duration>,
    now: &str,
    progress: &dyn Progress,
) -> Result<Applied, ReconcileError> {
    let mut report = sync::execute_with(
        cluster,
        &pass.plan,
        &pass.desired,
        &pass.live,
        &pass.options,
        progress,
    )
    .await?;
    let rollout = match wait {
        Some(timeout) => rollout::wait(cluster, &sync::rollouts(&pass.plan), timeout).await,
        None => Ok(()),
    };
    // After a wait the StatefulSets have moved on: read them again.
    let observed = if wait.is_some() {
        BTreeMap::new()
    } else {
        std::mem::take(&mut report.observed)
    };
    let statuses = sync::write_status(
        cluster,
        &pass.desired,
        &pass.plan,
        &pass.options.revision,
        now,
        &observed,
    )
    .await?;
    Ok(Applied {
        report,
        rollout,
        statuses,
    })
}
