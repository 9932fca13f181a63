//! One source's task: wait for a trigger, then one pass — ask the remote for its head, fetch
//! that commit, read its tree, validate, render, plan, apply — or, on a drift tick, compare
//! the cluster with the commit applied last. One pass at a time; triggers that arrive during
//! a pass coalesce into the next one.

use std::collections::BTreeSet;
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
use crate::report::{self, PlanReport, Reporter, State, Status};

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
    /// Pull requests waiting for a plan (a push to one while it waits plans the newest head).
    pulls: Mutex<BTreeSet<u64>>,
    wake: Notify,
    status: Mutex<SourceStatus>,
}

impl SourceHandle {
    pub fn new(config: SourceConfig) -> SourceHandle {
        SourceHandle {
            config,
            pending: Mutex::new(Pending::default()),
            pulls: Mutex::new(BTreeSet::new()),
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

    /// Asks for a plan of pull request `number`, after the current pass.
    pub fn plan_pull_request(&self, number: u64) {
        if let Ok(mut pulls) = self.pulls.lock() {
            pulls.insert(number);
        }
        self.trigger(Trigger::PullRequest);
    }

    fn take_pull_requests(&self) -> Vec<u64> {
        self.pulls
            .lock()
            .map(|mut p| std::mem::take(&mut *p).into_iter().collect())
            .unwrap_or_default()
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
    /// Where statuses and pull-request plans go (GitHub, or nowhere).
    pub reporter: Arc<dyn Reporter>,
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
        if work != Work::PullRequests {
            worker.reconcile(work, &triggers, &mut next_retry).await;
        }
        for number in handle.take_pull_requests() {
            let span = tracing::info_span!("plan", source = config.name, pull_request = number);
            worker.plan_pull_request(number).instrument(span).await;
        }
        release_memory();
    }
    tracing::debug!(source = config.name, "source task stopped");
}

impl Worker {
    /// One reconcile pass with its bookkeeping: metrics, the sources API, the retry.
    async fn reconcile(
        &mut self,
        work: Work,
        triggers: &[Trigger],
        next_retry: &mut Option<Instant>,
    ) {
        let handle = self.handle.clone();
        let context = self.context.clone();
        let config = &handle.config;
        let worker = self;
        let started = Instant::now();
        let span = tracing::info_span!(
            "reconcile",
            source = config.name,
            triggers = ?triggers.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            commit = tracing::field::Empty,
        );
        let outcome = worker.pass(work, triggers).instrument(span).await;
        let seconds = started.elapsed().as_secs_f64();
        let stamp = now_text();
        match outcome {
            Ok(result) => {
                worker.backoff.succeeded();
                *next_retry = None;
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
                    *next_retry = Some(Instant::now() + delay);
                }
            }
        }
    }
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
        let (mirror, result) = off_async(move || {
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
        .await?;
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

    /// The files of `revision` under the source's path, loaded as a tree (fetched first if
    /// the mirror lacks them); the commit they are at.
    async fn tree_at(&mut self, revision: Revision) -> Result<(String, Tree), SourceError> {
        let max = self.context.max_file_bytes;
        let path = self.config().path().to_owned();
        let (commit, files) = self
            .with_mirror(move |m| {
                let commit = match revision {
                    Revision::Commit(commit) => {
                        m.fetch(&commit)?;
                        commit
                    }
                    Revision::PullRequest(number) => m.fetch_pull(number)?,
                };
                let files = m.files(&commit, &path, max)?;
                Ok((commit, files))
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
        Ok((commit, tree))
    }

    /// Validates and renders a tree, off the async threads (a large repository takes a
    /// while).
    async fn render(&self, tree: Tree) -> Result<Vec<Object>, SourceError> {
        let mode = self.config().mode;
        let source = self.config().name.clone();
        let desired = off_async(move || reconcile::desired(&tree, mode, &source)).await??;
        Ok(desired)
    }

    /// The desired objects of `commit` (fetched if the mirror lacks it).
    async fn desired_at(&mut self, commit: &str) -> Result<Vec<Object>, SourceError> {
        let (_, tree) = self.tree_at(Revision::Commit(commit.to_owned())).await?;
        self.render(tree).await
    }

    /// Plans pull request `number` against the live cluster (never applies) and reports it:
    /// the `meshops/plan/<source>` status on its head, the sticky comment, the check run.
    async fn plan_pull_request(&mut self, number: u64) {
        let Some(repo) = self.config().github.as_ref().map(|g| g.repo.clone()) else {
            tracing::debug!("no github.repo for this source: pull requests are not planned");
            return;
        };
        let (sha, tree) = match self.tree_at(Revision::PullRequest(number)).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the pull request");
                return;
            }
        };
        let source = self.config().name.clone();
        let status = |state, description: &str| Status::new("plan", &source, state, description);
        let (status, comment, annotations) = match self.planned(&sha, tree).await {
            Ok((plan, diffs)) => {
                let details = crate::plan::markdown(&plan, &diffs);
                let comment = report::plan_comment(&source, &sha, &plan, &details);
                (status(State::Success, &plan.summary()), comment, Vec::new())
            }
            Err(err) => match err {
                SourceError::Reconcile(e) => match *e {
                    ReconcileError::Invalid(validation) => (
                        status(State::Failure, &report::invalid(&validation)),
                        report::invalid_comment(&source, &sha, &validation),
                        report::annotations(&validation),
                    ),
                    other => failed_plan(
                        &source,
                        &sha,
                        &other.to_string(),
                        status(State::Failure, &other.to_string()),
                    ),
                },
                other => failed_plan(
                    &source,
                    &sha,
                    &other.to_string(),
                    status(State::Error, &other.to_string()),
                ),
            },
        };
        tracing::info!(commit = sha, status = status.description, "planned");
        let report = PlanReport {
            comments: report::split(&source, &comment),
            source,
            pull_request: number,
            head_sha: sha,
            status,
            annotations,
        };
        self.context.reporter.plan(&repo, report).await;
    }

    /// The plan of a pull request's tree and its diffs (dry-runs: nothing is written).
    async fn planned(
        &mut self,
        sha: &str,
        tree: Tree,
    ) -> Result<
        (
            crate::plan::Plan,
            std::collections::BTreeMap<ObjectRef, String>,
        ),
        SourceError,
    > {
        let desired = self.render(tree).await?;
        let options = self.options(sha);
        if let Some(allowed) = self.config().allowed_namespaces() {
            reconcile::check_namespaces(&desired, &options, &allowed)?;
        }
        let pass = reconcile::plan(&self.context.cluster, desired, options).await?;
        let diffs = reconcile::diffs(&self.context.cluster, &pass).await?;
        Ok((pass.plan, diffs))
    }

    fn options(&self, commit: &str) -> SyncOptions {
        let config = self.config();
        SyncOptions {
            source: config.name.clone(),
            inventory_namespace: config.inventory_namespace(),
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
            // Served by the loop itself.
            Work::PullRequests => return Ok("unchanged"),
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
        let outcome = self.sync(&commit, triggers).await;
        if let Err(err) = &outcome {
            let (state, description) = failed_sync(err);
            self.status(&commit, "sync", state, &description).await;
        }
        outcome
    }

    /// Brings the cluster to `commit`, reporting on it as it goes.
    async fn sync(
        &mut self,
        commit: &str,
        triggers: &[Trigger],
    ) -> Result<&'static str, SourceError> {
        // An invalid commit is seen (not fetched again on every poll) but never applied.
        let desired = self.desired_at(commit).await;
        self.last_seen = Some(commit.to_owned());
        let desired = desired?;
        let options = self.options(commit);
        if let Some(allowed) = self.config().allowed_namespaces() {
            reconcile::check_namespaces(&desired, &options, &allowed)?;
        }
        let cluster = &self.context.cluster;
        let pass = reconcile::plan(cluster, desired, options).await?;
        if pass.in_sync() {
            self.applied(commit, false);
            let description = format!(
                "{} is applied; the cluster matches it",
                report::short(commit)
            );
            self.status(commit, "sync", State::Success, &description)
                .await;
            self.report_drift(&pass, commit).await;
            return Ok("unchanged");
        }
        // The cluster is at this commit already and differs: that is drift, not a deploy.
        let same_commit = pass.live.revision.as_deref() == Some(commit);
        let manual = triggers.contains(&Trigger::Manual);
        if same_commit && !manual && !self.config().self_heal.unwrap_or(false) {
            self.last_applied = Some(commit.to_owned());
            self.report_drift(&pass, commit).await;
            return Ok("drifted");
        }
        self.apply(&pass, commit).await
    }

    /// Applies, follows the rollout (up to `rolloutTimeout`), writes the CR status; the
    /// `result` label: `applied`, or `rollout-failed` (the apply itself went through).
    async fn apply(&mut self, pass: &Pass, commit: &str) -> Result<&'static str, SourceError> {
        let summary = pass.plan.summary();
        self.status(
            commit,
            "sync",
            State::Pending,
            &format!("applying: {summary}"),
        )
        .await;
        let context = self.context.clone();
        let stop = StopOnCancel(&context.cancel);
        let cluster = &context.cluster;
        let written = reconcile::execute(cluster, pass, &stop).await?;
        tracing::info!(
            commit,
            applied = written.applied.len(),
            deleted = written.deleted.len(),
            plan = summary,
            "applied"
        );
        for (object, error) in &written.failed_deletes {
            tracing::warn!(%object, error, "could not prune");
        }
        self.applied(commit, true);
        self.drift = Drift::default();
        self.context.metrics.drift(&self.config().name, 0);
        self.handle.update(|s| {
            s.drift_objects = 0;
            s.drift.clear();
        });
        let wait = self.config().rollout_timeout();
        let rollouts = crate::cluster::sync::rollouts(&pass.plan).len();
        if wait.is_some() && rollouts > 0 {
            let description = format!("applied; rolling out {rollouts} StatefulSet(s)");
            self.status(commit, "sync", State::Pending, &description)
                .await;
        }
        let wait = wait.filter(|_| rollouts > 0);
        let settled = reconcile::settle(cluster, pass, written, wait, &now_text()).await?;
        match settled.rollout {
            Ok(()) => {
                let done = if wait.is_some() {
                    "applied and rolled out"
                } else {
                    "applied"
                };
                self.status(
                    commit,
                    "sync",
                    State::Success,
                    &format!("{done}: {summary}"),
                )
                .await;
                self.drift_status(commit, &crate::plan::Plan::default())
                    .await;
                Ok("applied")
            }
            Err(err) => {
                tracing::warn!(commit, error = %err, "rollout failed");
                self.status(commit, "sync", State::Failure, &err.to_string())
                    .await;
                Ok("rollout-failed")
            }
        }
    }

    /// Posts a commit status of `kind` (`sync`, `drift`) when the source names its GitHub
    /// repository.
    async fn status(&self, sha: &str, kind: &str, state: State, description: &str) {
        if let Some(github) = &self.config().github {
            let status = Status::new(kind, &self.config().name, state, description);
            self.context
                .reporter
                .status(&github.repo, sha, status)
                .await;
        }
    }

    /// The drift status on the deployed commit: the drifted objects, or in sync.
    async fn drift_status(&self, commit: &str, plan: &crate::plan::Plan) {
        let (state, description) = match report::drifted(plan) {
            Some(drift) => (State::Failure, drift),
            None => (
                State::Success,
                format!("the cluster matches {}", report::short(commit)),
            ),
        };
        self.status(commit, "drift", state, &description).await;
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
        self.drift_status(commit, &pass.plan).await;
    }

    /// Compares the cluster with `commit` (the one applied last) and reports what differs;
    /// with `selfHeal` puts it back.
    async fn drift_pass(&mut self, commit: &str) -> Result<&'static str, SourceError> {
        let desired = self.desired_at(commit).await?;
        let pass = reconcile::plan(&self.context.cluster, desired, self.options(commit)).await?;
        if pass.plan.has_changes() && self.config().self_heal.unwrap_or(false) {
            self.report_drift(&pass, commit).await;
            return match self.apply(&pass, commit).await? {
                "applied" => Ok("healed"),
                other => Ok(other),
            };
        }
        self.report_drift(&pass, commit).await;
        Ok(if pass.plan.has_changes() {
            "drifted"
        } else {
            "unchanged"
        })
    }
}

/// Runs blocking work (git, validation, rendering) on rayon's threads, which validation and
/// rendering use anyway, so that what a pass allocates lives in the heaps of threads that
/// stay, and [`release_memory`] can give it back; tokio's blocking threads come and go and
/// leave their freed memory behind in the allocator.
async fn off_async<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SourceError> {
    let (done, result) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let _ = done.send(outcome);
    });
    match result.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(SourceError::Task("a git or render job panicked".into())),
        Err(_) => Err(SourceError::Task("a git or render job was dropped".into())),
    }
}

/// Returns the memory a pass freed to the system. The allocator keeps freed pages in the
/// heap of the thread that allocated them until that thread allocates again; rayon's
/// threads sleep between passes, so without this an idle agent keeps its largest pass's
/// memory (measured: 113 MiB idle after a 1,000-function apply, docs/performance.md).
fn release_memory() {
    // SAFETY: mi_collect only frees unused pages of the calling thread's own heap (and, with
    // `force`, its abandoned segments); it is safe to call at any time on any thread.
    rayon::broadcast(|_| unsafe { libmimalloc_sys::mi_collect(true) });
    // SAFETY: as above, for this thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
    RELEASED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts [`release_memory`] calls, so that each async worker thread collects once after
/// each pass (see [`collect_after_pass`]).
static RELEASED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// For tokio's `on_thread_park`: a worker thread going idle after a pass returns what it
/// holds too. The async threads decode the LIST responses of a pass (the live state, with
/// managedFields, 100+ MiB at 1,000 functions); without this an idle agent kept 118 MiB
/// after a few pushes (`cargo bench --bench agent`). Parking is frequent, so a thread
/// collects only when a pass has ended since its last collection.
pub fn collect_after_pass() {
    thread_local! {
        static SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let released = RELEASED.load(std::sync::atomic::Ordering::Relaxed);
    if SEEN.get() != released {
        SEEN.set(released);
        // SAFETY: as in release_memory, for this thread.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

/// What is read for a pass: a commit of the tracked ref, or a pull request's head.
enum Revision {
    Commit(String),
    PullRequest(u64),
}

/// The report of a pull request that could not be planned: the reason as its comment.
fn failed_plan(
    source: &str,
    sha: &str,
    reason: &str,
    status: Status,
) -> (Status, String, Vec<report::Annotation>) {
    let comment = format!(
        "### meshops plan: `{source}` at {}\n\n**Not planned:** {reason}\n",
        report::short(sha)
    );
    (status, comment, Vec::new())
}

/// The sync status for a pass that failed: `failure` when the commit or the cluster refused
/// it (invalid manifests, an apply error naming the object), `error` when something could
/// not be reached.
fn failed_sync(err: &SourceError) -> (State, String) {
    let state = match err.category() {
        "network" | "timeout" | "unreachable" | "io" | "internal" | "stopped" => State::Error,
        _ => State::Failure,
    };
    let description = match err {
        SourceError::Reconcile(e) => match e.as_ref() {
            ReconcileError::Invalid(validation) => report::invalid(validation),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    (state, description)
}
