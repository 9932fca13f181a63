//! One pass for a source, as `meshops plan`/`apply` and the agent run it: a tree (a
//! directory or a commit's tree) → validated manifests → the desired objects → the live state
//! → the plan (a value) → apply → rollout → CR status.
//!
//! The CLI keeps the parsing and the printing; everything between is here, so the two ways of
//! running a source share one path. No clock: the caller says what time it is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cluster::rollout::{self, RolloutError};
use crate::cluster::sync::{self, Live, Progress, Report, SyncError, SyncOptions};
use crate::cluster::{Cluster, ClusterError};
use crate::load::Tree;
use crate::model::settings::Mode;
use crate::model::RenderSettings;
use crate::plan::{self, ObjectRef, Plan};
use crate::render::{self, Object, RenderError, SPEC_HASH};
use crate::validate::{self, Checked, Schemas, ValidateOptions, Validation};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "the manifests are invalid ({} errors); nothing was applied",
        .0.errors()
    )]
    Invalid(Box<Validation>),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(
        "{object} is outside the namespaces this source may write to ({}); nothing was applied",
        allowed.join(", ")
    )]
    NamespaceNotAllowed {
        object: ObjectRef,
        allowed: Vec<String>,
    },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl ReconcileError {
    /// A stable category for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Invalid(_) => "invalid",
            ReconcileError::Render(_) => "render",
            ReconcileError::NamespaceNotAllowed { .. } => "namespace-not-allowed",
            ReconcileError::Sync(SyncError::Cluster(e)) | ReconcileError::Cluster(e) => {
                e.category()
            }
            ReconcileError::Sync(SyncError::Conflict { .. }) => "conflict",
            ReconcileError::Sync(SyncError::Forbidden { .. }) => "forbidden",
            ReconcileError::Sync(SyncError::EmptyDesired { .. }) => "empty",
            ReconcileError::Sync(SyncError::Stopped) => "stopped",
            ReconcileError::Sync(SyncError::Inventory(e)) => e.category(),
        }
    }
}

/// Validates a tree: the typed manifests and their render settings (`mode` overrides the
/// source's meshops.yaml), or every diagnostic.
pub fn validated(
    tree: &Tree,
    mode: Option<Mode>,
) -> Result<(Vec<Checked>, RenderSettings), Box<Validation>> {
    let validation = validate::validate(tree, &Schemas::new(), ValidateOptions::default());
    if !validation.is_valid() {
        return Err(Box::new(validation));
    }
    let mut settings = render::settings_of(&validation.checked);
    if mode.is_some() {
        settings.mode = mode;
    }
    Ok((validation.checked, settings))
}

/// The desired state of a source: its tree validated and rendered.
pub fn desired(
    tree: &Tree,
    mode: Option<Mode>,
    source: &str,
) -> Result<Vec<Object>, ReconcileError> {
    let (checked, settings) = validated(tree, mode).map_err(ReconcileError::Invalid)?;
    Ok(render::render(&checked, &settings, source)?)
}

/// Refuses a desired state that writes outside `allowed` (the inventory counts).
pub fn check_namespaces(
    desired: &[Object],
    options: &SyncOptions,
    allowed: &BTreeSet<&str>,
) -> Result<(), ReconcileError> {
    let inventory =
        crate::cluster::inventory::reference(&options.inventory_namespace, &options.source);
    let offender = desired
        .iter()
        .map(|o| ObjectRef::of(&o.value))
        .chain([inventory])
        .find(|o| !allowed.contains(o.namespace.as_str()));
    match offender {
        Some(object) => Err(ReconcileError::NamespaceNotAllowed {
            object,
            allowed: allowed.iter().map(|n| n.to_string()).collect(),
        }),
        None => Ok(()),
    }
}

/// A source's desired state read against the cluster: what a plan shows and an apply runs.
pub struct Pass {
    pub desired: Vec<Object>,
    pub live: Live,
    pub plan: Plan,
    pub options: SyncOptions,
}

impl Pass {
    /// Nothing to change, this revision recorded as applied and no pass left unfinished: an
    /// apply writes nothing at all. (After an interrupted pass the plan can show no change
    /// while the inventory still says pending and lists objects that pass never created; the
    /// next apply settles it, with one write.)
    pub fn in_sync(&self) -> bool {
        !self.plan.has_changes()
            && self.live.revision.as_ref() == Some(&self.options.revision)
            && self.live.pending.is_none()
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
    // The plan says what this pass's apply does: without prune, nothing is deleted.
    let plan = if options.prune {
        plan
    } else {
        plan.without_prune()
    };
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
    let report = execute(cluster, pass, progress).await?;
    settle(cluster, pass, report, wait, now).await
}

/// The writes of an apply (objects, prune, inventory), without the rollout.
pub async fn execute(
    cluster: &Cluster,
    pass: &Pass,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    Ok(sync::execute_with(
        cluster,
        &pass.plan,
        &pass.desired,
        &pass.live,
        &pass.options,
        progress,
    )
    .await?)
}

/// After [`execute`]: waits for the rollout when `wait` is given, then writes the CR status.
pub async fn settle(
    cluster: &Cluster,
    pass: &Pass,
    mut report: Report,
    wait: Option<Duration>,
    now: &str,
) -> Result<Applied, ReconcileError> {
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
