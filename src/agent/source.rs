//! One source's task: wait for a trigger, then one pass — ask the remote for its head, fetch
//! that commit, read its tree, validate, render, plan, apply — or, on a drift tick, compare
//! the cluster with the commit applied last. One pass at a time; triggers that arrive during
//! a pass coalesce into the next one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::runtime::events::Recorder;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::drift::Drift;
use super::metrics::Metrics;
use super::schedule::{jittered, Backoff, Pending, Trigger, Work};
use crate::cluster::sync::{Progress, SyncOptions};
use crate::cluster::Cluster;
use crate::git::{self, GitError, Mirror};
use crate::load::{FileEntry, LoadError, LoadOptions, Tree};
use crate::model::agent::{Credentials, GitRef, SourceConfig};
use crate::plan::{Action, ObjectRef};
use crate::reconcile::{self, Pass, ReconcileError};
use crate::render::Object;

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("cannot read the credentials of source \"{name}\": {reason}")]
    Credentials { name: String, reason: String },
    #[error(transparent)]
    Reconcile(Box<ReconcileError>),
    #[error("the git task failed: {0}")]
    Task(String),
}

impl From<ReconcileError> for SourceError {
    fn from(err: ReconcileError) -> SourceError {
        SourceError::Reconcile(Box::new(err))
    }
}

impl SourceError {
    /// A stable category: the `result` label of `meshops_reconcile_total`.
    pub fn category(&self) -> &'static str {
        match self {
            SourceError::Git(e) => e.category(),
            SourceError::Credentials { .. } => "credentials",
            SourceError::Reconcile(e) => e.category(),
            SourceError::Task(_) => "internal",
        }
    }

    /// A commit that is wrong stays wrong: retrying it cannot help, a new commit can.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            SourceError::Reconcile(e) if matches!(**e,
                ReconcileError::Invalid(_)
                    | ReconcileError::Render(_)
                    | ReconcileError::NamespaceNotAllowed { .. })
        )
    }
}

/// What `GET /api/v1/sources` shows of a source.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The commit applied last (the cluster matches it, drift aside).
    pub last_applied_commit: Option<String>,
    pub last_applied_at: Option<String>,
    /// The commit the last pass looked at.
    pub last_seen_commit: Option<String>,
    pub last_pass_at: Option<String>,
    /// `applied`, `unchanged`, `drifted`, `invalid`, or the error's category.
    pub result: Option<String>,
    pub error: Option<String>,
    pub drift_objects: usize,
    pub drift: Vec<String>,
}

/// A source as the HTTP handlers and its task share it.
pub struct SourceHandle {
    pub config: SourceConfig,
    pending: Mutex<Pending>,
    wake: Notify,
    status: Mutex<SourceStatus>,
}

impl SourceHandle {
    pub fn new(config: SourceConfig) -> SourceHandle {
        SourceHandle {
            config,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            status: Mutex::new(SourceStatus::default()),
        }
    }

    /// Asks for a pass; however many triggers arrive before it starts, it runs once.
    pub fn trigger(&self, trigger: Trigger) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.add(trigger);
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Option<(Work, Vec<Trigger>)> {
        self.pending.lock().ok()?.take()
    }

    pub fn status(&self) -> SourceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut SourceStatus)) {
        if let Ok(mut status) = self.status.lock() {
            change(&mut status);
        }
    }

    /// The JSON `GET /api/v1/sources` lists.
    pub fn view(&self) -> Value {
        let c = &self.config;
        let reference = match c.git_ref() {
            GitRef::Branch(b) => json!({ "branch": b }),
            GitRef::Tag(t) => json!({ "tag": t.tag }),
            GitRef::Commit(k) => json!({ "commit": k.commit }),
        };
        let mut view = json!({
            "name": c.name, "url": git::redact(&c.url), "ref": reference, "path": c.path(),
        });
        if let (Some(map), Ok(Value::Object(status))) =
            (view.as_object_mut(), serde_json::to_value(self.status()))
        {
            map.extend(status);
        }
        view
    }
}

/// What a source's task needs besides its handle.
pub struct Context {
    pub cluster: Cluster,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub state_dir: PathBuf,
    pub cancel: CancellationToken,
    pub max_file_bytes: u64,
}

/// The source's task: runs until `cancel`, acting only while `is_leader`.
pub async fn run(
    handle: Arc<SourceHandle>,
    context: Arc<Context>,
    mut is_leader: watch::Receiver<bool>,
) {
    let config = &handle.config;
    let mut worker = Worker {
        handle: handle.clone(),
        context: context.clone(),
        mirror: Mutex::new(None),
        backoff: Backoff::default(),
        last_applied: None,
        last_seen: None,
        drift: Drift::default(),
    };
    let now = Instant::now();
    let mut next_poll = now + jittered(config.interval(), fastrand::f64());
    let mut next_drift = now + jittered(config.drift_interval(), fastrand::f64());
    let mut next_retry: Option<Instant> = None;
    let mut election_running = true;
    if *is_leader.borrow_and_update() {
        handle.trigger(Trigger::Startup);
    }
    loop {
        let retry_at = next_retry.unwrap_or(next_poll);
        tokio::select! {
            _ = context.cancel.cancelled() => break,
            _ = handle.wake.notified() => {}
            _ = tokio::time::sleep_until(next_poll.into()) => {
                handle.trigger(Trigger::Poll);
                next_poll = Instant::now() + jittered(config.interval(), fastrand::f64());
            }
            _ = tokio::time::sleep_until(next_drift.into()) => {
                handle.trigger(Trigger::Drift);
                next_drift = Instant::now() + jittered(config.drift_interval(), fastrand::f64());
            }
            _ = tokio::time::sleep_until(retry_at.into()), if next_retry.is_some() => {
                next_retry = None;
                handle.trigger(Trigger::Retry);
            }
            changed = is_leader.changed(), if election_running => {
                if changed.is_err() {
                    // The election is over (or there is none): leadership stays as it is.
                    election_running = false;
                } else if *is_leader.borrow_and_update() {
                    tracing::info!(source = config.name, "leading: reconciling");
                    handle.trigger(Trigger::Startup);
                } else {
                    tracing::info!(source = config.name, "no longer leading: standing by");
                }
            }
        }
        if !*is_leader.borrow() {
            continue;
        }
        let Some((work, triggers)) = handle.take() else {
            continue;
        };
        let started = Instant::now();
        let span = tracing::info_span!(
            "reconcile",
            source = config.name,
            triggers = ?triggers.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            commit = tracing::field::Empty,
        );
        let outcome = worker.pass(work, &triggers).instrument(span).await;
        let seconds = started.elapsed().as_secs_f64();
        let stamp = now_text();
        match outcome {
            Ok(result) => {
                worker.backoff.succeeded();
                next_retry = None;
                context.metrics.reconciled(&config.name, result, seconds);
                handle.update(|s| {
                    s.result = Some(result.into());
                    s.error = None;
                    s.last_pass_at = Some(stamp);
                });
            }
            Err(err) => {
                let category = err.category();
                context.metrics.reconciled(&config.name, category, seconds);
                let message = match &err {
                    SourceError::Reconcile(e) => match e.as_ref() {
                        ReconcileError::Invalid(validation) => {
                            crate::validate::report::text(validation, false)
                        }
                        other => other.to_string(),
                    },
                    other => other.to_string(),
                };
                tracing::error!(source = config.name, error = %err, "reconcile failed");
                handle.update(|s| {
                    s.result = Some(category.into());
                    s.error = Some(message);
                    s.last_pass_at = Some(stamp);
                });
                if !err.is_permanent() && err.category() != "stopped" {
                    worker.backoff.failed();
                    let delay = worker.backoff.delay(fastrand::f64()).unwrap_or_default();
                    tracing::info!(source = config.name, retry_in = ?delay, failures = worker.backoff.failures(), "will retry");
                    next_retry = Some(Instant::now() + delay);
                }
            }
        }
    }
    tracing::debug!(source = config.name, "source task stopped");
}

/// RFC 3339, to the second: for status conditions and the sources API.
pub(super) fn now_text() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

struct Worker {
    handle: Arc<SourceHandle>,
    context: Arc<Context>,
    /// The bare clone, opened on the first pass and kept. (A Mutex only to make the worker
    /// `Sync`: git2's repository is `Send` but not `Sync`, and only one pass uses it.)
    mirror: Mutex<Option<Mirror>>,
    backoff: Backoff,
    /// The commit the cluster was last brought to (from the inventory after a restart).
    last_applied: Option<String>,
    /// The commit the last pass read, applied or found invalid: a poll that finds the same
    /// head does nothing.
    last_seen: Option<String>,
    /// Drift already announced.
    drift: Drift,
}

/// Stops an apply between phases when the agent shuts down.
struct StopOnCancel<'a>(&'a CancellationToken);

impl Progress for StopOnCancel<'_> {
    fn done(&self, object: &ObjectRef, action: Action) {
        tracing::debug!(%object, action = action.verb(), "applied");
    }

    fn stopped(&self) -> bool {
        self.0.is_cancelled()
    }
}

impl Worker {
    fn config(&self) -> &SourceConfig {
        &self.handle.config
    }

    fn remote(&self) -> Result<git::Remote, SourceError> {
        let config = self.config();
        let unreadable = |reason: String| SourceError::Credentials {
            name: config.name.clone(),
            reason,
        };
        let credentials = match &config.credentials {
            None => git::Credentials::None,
            Some(Credentials::TokenFile(f)) => {
                let token = std::fs::read_to_string(&f.token_file)
                    .map_err(|e| unreadable(format!("{}: {e}", f.token_file.display())))?;
                git::Credentials::Token(token.trim().to_owned())
            }
            Some(Credentials::TokenEnv(e)) => git::Credentials::Token(
                std::env::var(&e.token_env)
                    .map_err(|_| unreadable(format!("${} is not set", e.token_env)))?
                    .trim()
                    .to_owned(),
            ),
            Some(Credentials::Ssh(s)) => git::Credentials::Ssh {
                key_file: s.ssh_key_file.clone(),
                known_hosts_file: s.known_hosts_file.clone(),
            },
        };
        let reference = match config.git_ref() {
            GitRef::Branch(b) => git::Reference::Branch(b),
            GitRef::Tag(t) => git::Reference::Tag(t.tag),
            GitRef::Commit(c) => git::Reference::Commit(c.commit),
        };
        Ok(git::Remote {
            url: config.url.clone(),
            reference,
            credentials,
            timeout: config.timeout(),
        })
    }

    /// Runs `job` on the mirror in a blocking thread (git2 is synchronous), opening the
    /// mirror first if this is the first use.
    async fn with_mirror<T: Send + 'static>(
        &mut self,
        job: impl FnOnce(&Mirror) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, SourceError> {
        let remote = self.remote()?;
        let mirror = self.mirror.get_mut().ok().and_then(Option::take);
        let state_dir = self.context.state_dir.clone();
        let name = self.config().name.clone();
        let (mirror, result) = tokio::task::spawn_blocking(move || {
            let mirror = match mirror {
                Some(mirror) => mirror,
                None => match Mirror::open(&state_dir, &name, remote) {
                    Ok(mirror) => mirror,
                    Err(err) => return (None, Err(err)),
                },
            };
            let result = job(&mirror);
            (Some(mirror), result)
        })
        .await
        .map_err(|e| SourceError::Task(e.to_string()))?;
        if let Ok(slot) = self.mirror.get_mut() {
            *slot = mirror;
        }
        Ok(result?)
    }

    /// Asks the remote for the tracked ref's commit, counting the answer.
    async fn remote_head(&mut self) -> Result<String, SourceError> {
        let result = self.with_mirror(|m| m.remote_head()).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.category(),
        };
        self.context.metrics.fetched(&self.config().name, label);
        result
    }

    /// The desired objects of `commit` (fetched if the mirror lacks it).
    async fn desired_at(&mut self, commit: &str) -> Result<Vec<Object>, SourceError> {
        let max = self.context.max_file_bytes;
        let path = self.config().path().to_owned();
        let wanted = commit.to_owned();
        let files = self
            .with_mirror(move |m| {
                m.fetch(&wanted)?;
                m.files(&wanted, &path, max)
            })
            .await?;
        let options = LoadOptions {
            limits: crate::load::Limits {
                max_file_bytes: max,
                ..Default::default()
            },
            ..LoadOptions::default()
        };
        let entries = files
            .into_iter()
            .map(|f| FileEntry {
                path: f.path,
                content: f.content.ok_or(LoadError::TooLarge {
                    size: f.size,
                    limit: max,
                }),
            })
            .collect();
        let mut tree = Tree::default();
        tree.add_entries(entries, &options);
        let mode = self.config().mode;
        let source = self.config().name.clone();
        // Validating and rendering a large repository takes a while: off the async threads.
        let desired = tokio::task::spawn_blocking(move || reconcile::desired(&tree, mode, &source))
            .await
            .map_err(|e| SourceError::Task(e.to_string()))??;
        Ok(desired)
    }

    fn options(&self, commit: &str) -> SyncOptions {
        let config = self.config();
        SyncOptions {
            source: config.name.clone(),
            inventory_namespace: config
                .inventory_namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            prune: config.prune.unwrap_or(true),
            allow_empty: false,
            revision: commit.to_owned(),
            take_over: false,
        }
    }

    /// One pass; the `result` label on success.
    async fn pass(
        &mut self,
        work: Work,
        triggers: &[Trigger],
    ) -> Result<&'static str, SourceError> {
        let commit = match work {
            Work::Drift => match self.last_applied.clone() {
                Some(commit) => return self.drift_pass(&commit).await,
                // Nothing applied yet by this agent: a full pass finds out where things are.
                None => self.remote_head().await?,
            },
            Work::Sync { force } => {
                let head = self.remote_head().await?;
                let unchanged = self.last_seen.as_deref() == Some(head.as_str());
                if unchanged && !force {
                    if triggers.contains(&Trigger::Drift) {
                        if let Some(commit) = self.last_applied.clone() {
                            return self.drift_pass(&commit).await;
                        }
                    }
                    tracing::debug!(commit = head, "remote head unchanged");
                    return Ok("unchanged");
                }
                head
            }
        };
        tracing::Span::current().record("commit", commit.as_str());
        self.handle
            .update(|s| s.last_seen_commit = Some(commit.clone()));
        // An invalid commit is seen (not fetched again on every poll) but never applied.
        let desired = self.desired_at(&commit).await;
        self.last_seen = Some(commit.clone());
        let desired = desired?;
        let options = self.options(&commit);
        if let Some(allowed) = self.config().allowed_namespaces() {
            reconcile::check_namespaces(&desired, &options, &allowed)?;
        }
        let cluster = &self.context.cluster;
        let pass = reconcile::plan(cluster, desired, options).await?;
        if pass.in_sync() {
            self.applied(&commit, false);
            self.report_drift(&pass, &commit).await;
            return Ok("unchanged");
        }
        // The cluster is at this commit already and differs: that is drift, not a deploy.
        let same_commit = pass.live.revision.as_deref() == Some(commit.as_str());
        let manual = triggers.contains(&Trigger::Manual);
        if same_commit && !manual && !self.config().self_heal.unwrap_or(false) {
            self.last_applied = Some(commit.clone());
            self.report_drift(&pass, &commit).await;
            return Ok("drifted");
        }
        self.apply(&pass, &commit).await?;
        Ok("applied")
    }

    async fn apply(&mut self, pass: &Pass, commit: &str) -> Result<(), SourceError> {
        let summary = pass.plan.summary();
        let stop = StopOnCancel(&self.context.cancel);
        let applied =
            reconcile::apply(&self.context.cluster, pass, None, &now_text(), &stop).await?;
        tracing::info!(
            commit,
            applied = applied.report.applied.len(),
            deleted = applied.report.deleted.len(),
            plan = summary,
            "applied"
        );
        for (object, error) in &applied.report.failed_deletes {
            tracing::warn!(%object, error, "could not prune");
        }
        self.applied(commit, true);
        self.drift = Drift::default();
        self.context.metrics.drift(&self.config().name, 0);
        self.handle.update(|s| {
            s.drift_objects = 0;
            s.drift.clear();
        });
        Ok(())
    }

    /// Records that the cluster is at `commit`; `wrote` when this pass wrote it.
    fn applied(&mut self, commit: &str, wrote: bool) {
        self.last_applied = Some(commit.to_owned());
        let stamp = now_text();
        if wrote {
            let unix = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            self.context.metrics.applied_at(&self.config().name, unix);
        }
        self.handle.update(|s| {
            s.last_applied_commit = Some(commit.to_owned());
            if wrote || s.last_applied_at.is_none() {
                s.last_applied_at = Some(stamp);
            }
        });
    }

    async fn report_drift(&mut self, pass: &Pass, commit: &str) {
        self.drift
            .report(&self.context, &self.handle, pass, commit)
            .await;
    }

    /// Compares the cluster with `commit` (the one applied last) and reports what differs;
    /// with `selfHeal` puts it back.
    async fn drift_pass(&mut self, commit: &str) -> Result<&'static str, SourceError> {
        let desired = self.desired_at(commit).await?;
        let pass = reconcile::plan(&self.context.cluster, desired, self.options(commit)).await?;
        if pass.plan.has_changes() && self.config().self_heal.unwrap_or(false) {
            self.report_drift(&pass, commit).await;
            self.apply(&pass, commit).await?;
            return Ok("healed");
        }
        self.report_drift(&pass, commit).await;
        Ok(if pass.plan.has_changes() {
            "drifted"
        } else {
            "unchanged"
        })
    }
}
