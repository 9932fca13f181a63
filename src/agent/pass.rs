//! One pass of a source, as the state machine asked for it: deploy a commit (read its tree,
//! validate, render, plan against the cluster, apply), check the applied commit for drift,
//! or look at a rollout in progress. Each ends in an [`Outcome`] for the machine; statuses
//! go to the reporter, which never makes a pass wait.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::Recorder;
use tokio_util::sync::CancellationToken;

use super::drift::Drift;
use super::memory::{self, MemoryError};
use super::metrics::Metrics;
use super::state::{Commit, Failure, Outcome, Rollout};
use crate::cluster::rollout::{self as rollouts, Rollout as Progress};
use crate::cluster::sync::{self, SyncError, SyncOptions};
use crate::cluster::{Cluster, ClusterError};
use crate::git::{self, GitError, Mirror};
use crate::load::{FileEntry, LoadError, LoadOptions, Tree};
use crate::model::agent::{Credentials, GitRef, SourceConfig};
use crate::plan::{Action, ObjectRef, Plan};
use crate::reconcile::{self, Pass, ReconcileError};
use crate::render::Object;
use crate::report::{self, Reporter, State, Status};

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("cannot read the credentials of source \"{name}\": {reason}")]
    Credentials { name: String, reason: String },
    #[error(transparent)]
    Reconcile(Box<ReconcileError>),
    #[error(transparent)]
    Task(#[from] MemoryError),
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

    /// What the state machine makes of it: a commit that is wrong stays wrong (a new commit
    /// can help, retrying cannot); a pass that was stopped is owed again; the rest is tried
    /// again later.
    pub fn outcome(&self) -> Outcome {
        let cluster = |e: &ClusterError| match e {
            ClusterError::Fenced { .. } => None,
            e if e.is_transient() => Some(Failure::Unreachable),
            _ => Some(Failure::Refused),
        };
        let failure = match self {
            SourceError::Reconcile(e) => match e.as_ref() {
                ReconcileError::Invalid(validation) => {
                    return Outcome::Rejected {
                        label: self.category(),
                        errors: crate::validate::report::text(validation, false),
                    }
                }
                ReconcileError::Render(_) | ReconcileError::NamespaceNotAllowed { .. } => {
                    return Outcome::Rejected {
                        label: self.category(),
                        errors: e.to_string(),
                    }
                }
                ReconcileError::Sync(SyncError::Stopped) => return Outcome::Interrupted,
                ReconcileError::Sync(SyncError::Cluster(c)) | ReconcileError::Cluster(c) => {
                    match cluster(c) {
                        Some(failure) => failure,
                        None => return Outcome::Interrupted,
                    }
                }
                ReconcileError::Sync(_) => Failure::Refused,
            },
            SourceError::Git(_) | SourceError::Credentials { .. } | SourceError::Task(_) => {
                Failure::Unreachable
            }
        };
        Outcome::Failed {
            failure,
            label: self.category(),
            message: self.to_string(),
        }
    }
}

/// What every pass of every source needs.
pub struct Context {
    pub cluster: Cluster,
    /// Where statuses and pull-request plans go (GitHub, or nowhere); never waited for.
    pub reporter: Arc<dyn Reporter>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub state_dir: PathBuf,
    pub max_file_bytes: u64,
}

/// A rollout being followed after an apply: the loop looks at it every few seconds, between
/// passes, so that a new commit, a drift tick or a shutdown never waits for it.
pub struct Watch {
    pub commit: Commit,
    pub statefulsets: Vec<ObjectRef>,
    pub deadline: Instant,
    timeout: Duration,
    summary: String,
    /// The CRs whose status says how far their rollout got, and the writes that touched
    /// them (what [`sync::write_status`] needs).
    crs: Vec<Object>,
    writes: Plan,
}

/// How a pass ended, and a rollout to follow when it applied one.
pub struct Done {
    pub outcome: Outcome,
    pub watch: Option<Watch>,
}

impl From<Outcome> for Done {
    fn from(outcome: Outcome) -> Done {
        Done {
            outcome,
            watch: None,
        }
    }
}

/// One source's passes: its Git mirror and what it has announced of drift.
pub struct Worker {
    pub config: SourceConfig,
    pub context: Arc<Context>,
    /// The bare clone, opened on the first pass and kept. (A Mutex only to make the worker
    /// `Sync`: git2's repository is `Send` but not `Sync`, and only one pass uses it.)
    mirror: Mutex<Option<Mirror>>,
    drift: Drift,
}

/// Stops an apply between phases when the term ends (shutdown, a lost Lease); the cluster's
/// write fence stops it at the next request in any case.
struct StopWhen<'a>(&'a CancellationToken);

impl sync::Progress for StopWhen<'_> {
    fn done(&self, object: &ObjectRef, action: Action) {
        tracing::debug!(%object, action = action.verb(), "applied");
    }

    fn stopped(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// What is read for a pass: a commit of the tracked ref, or a pull request's head.
pub enum Revision {
    Commit(String),
    PullRequest(u64),
}

impl Worker {
    pub fn new(config: SourceConfig, context: Arc<Context>) -> Worker {
        Worker {
            config,
            context,
            mirror: Mutex::new(None),
            drift: Drift::default(),
        }
    }

    fn remote(&self) -> Result<git::Remote, SourceError> {
        let config = &self.config;
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
        let name = self.config.name.clone();
        let (mirror, result) = memory::off_async(move || {
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
    pub async fn remote_head(&mut self) -> Result<String, SourceError> {
        let result = self.with_mirror(|m| m.remote_head()).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.category(),
        };
        self.context.metrics.fetched(&self.config.name, label);
        result
    }

    /// The files of `revision` under the source's path, loaded as a tree (fetched first if
    /// the mirror lacks them); the commit they are at.
    pub async fn tree_at(&mut self, revision: Revision) -> Result<(String, Tree), SourceError> {
        let max = self.context.max_file_bytes;
        let path = self.config.path().to_owned();
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
    pub async fn render(&self, tree: Tree) -> Result<Vec<Object>, SourceError> {
        let mode = self.config.mode;
        let source = self.config.name.clone();
        let desired = memory::off_async(move || reconcile::desired(&tree, mode, &source)).await??;
        Ok(desired)
    }

    /// The desired objects of `commit` (fetched if the mirror lacks it).
    async fn desired_at(&mut self, commit: &str) -> Result<Vec<Object>, SourceError> {
        let (_, tree) = self.tree_at(Revision::Commit(commit.to_owned())).await?;
        self.render(tree).await
    }

    pub fn options(&self, commit: &str) -> SyncOptions {
        SyncOptions {
            source: self.config.name.clone(),
            inventory_namespace: self.config.inventory_namespace(),
            prune: self.config.prune.unwrap_or(true),
            allow_empty: false,
            revision: commit.to_owned(),
            take_over: false,
        }
    }

    /// The desired objects of `commit` planned against the live cluster.
    pub async fn plan(&mut self, commit: &str) -> Result<Pass, SourceError> {
        let desired = self.desired_at(commit).await?;
        self.plan_desired(commit, desired).await
    }

    pub async fn plan_desired(
        &self,
        commit: &str,
        desired: Vec<Object>,
    ) -> Result<Pass, SourceError> {
        let options = self.options(commit);
        if let Some(allowed) = self.config.allowed_namespaces() {
            reconcile::check_namespaces(&desired, &options, &allowed)?;
        }
        Ok(reconcile::plan(&self.context.cluster, desired, options).await?)
    }

    /// Brings the cluster to `commit`. `manual` (a sync asked for by hand) applies even when
    /// the cluster is at this commit and only drifted.
    pub async fn deploy(
        &mut self,
        commit: &Commit,
        manual: bool,
        term: &CancellationToken,
    ) -> Done {
        match self.try_deploy(commit, manual, term).await {
            Ok(done) => done,
            Err(err) => {
                let outcome = err.outcome();
                let state = match &outcome {
                    Outcome::Interrupted => None,
                    Outcome::Failed {
                        failure: Failure::Unreachable,
                        ..
                    } => Some(State::Error),
                    _ => Some(State::Failure),
                };
                if let Some(state) = state {
                    tracing::error!(source = self.config.name, commit = commit.sha, error = %err, "reconcile failed");
                    let description = match &outcome {
                        Outcome::Rejected { .. } => match &err {
                            SourceError::Reconcile(e) => match e.as_ref() {
                                ReconcileError::Invalid(validation) => report::invalid(validation),
                                other => other.to_string(),
                            },
                            other => other.to_string(),
                        },
                        _ => err.to_string(),
                    };
                    self.status(&commit.sha, "sync", state, &description).await;
                } else {
                    tracing::info!(
                        source = self.config.name,
                        commit = commit.sha,
                        "pass interrupted"
                    );
                }
                outcome.into()
            }
        }
    }

    async fn try_deploy(
        &mut self,
        commit: &Commit,
        manual: bool,
        term: &CancellationToken,
    ) -> Result<Done, SourceError> {
        let sha = commit.sha.as_str();
        let pass = self.plan(sha).await?;
        if pass.in_sync() {
            let description = format!("{} is applied; the cluster matches it", report::short(sha));
            self.status(sha, "sync", State::Success, &description).await;
            let objects = self.report_drift(&pass, sha).await;
            return Ok(Outcome::Compared { objects }.into());
        }
        // The cluster is at this commit already and differs: that is drift, not a deploy. (An
        // apply that did not finish is not "at" any commit: it is finished.)
        let same_commit = pass.live.revision.as_deref() == Some(sha) && pass.live.pending.is_none();
        if same_commit && !manual && !self.config.self_heal.unwrap_or(false) {
            let objects = self.report_drift(&pass, sha).await;
            return Ok(Outcome::Compared { objects }.into());
        }
        let watch = self.apply(&pass, commit, term).await?;
        Ok(Done {
            outcome: Outcome::Applied { wrote: true },
            watch,
        })
    }

    /// Applies and writes the CR status; hands back the rollout to follow when the source
    /// waits for rollouts (`rolloutTimeout`) and the apply started any.
    async fn apply(
        &mut self,
        pass: &Pass,
        commit: &Commit,
        term: &CancellationToken,
    ) -> Result<Option<Watch>, SourceError> {
        let sha = commit.sha.as_str();
        let summary = pass.plan.summary();
        self.status(sha, "sync", State::Pending, &format!("applying: {summary}"))
            .await;
        let cluster = &self.context.cluster;
        let written = reconcile::execute(cluster, pass, &StopWhen(term)).await?;
        tracing::info!(
            commit = sha,
            applied = written.applied.len(),
            deleted = written.deleted.len(),
            plan = summary,
            "applied"
        );
        for (object, error) in &written.failed_deletes {
            tracing::warn!(%object, error, "could not prune");
        }
        self.drift.clear();
        self.context.metrics.drift(&self.config.name, 0);
        reconcile::settle(cluster, pass, written, None, &now_text()).await?;
        let statefulsets = sync::rollouts(&pass.plan);
        let Some(timeout) = self
            .config
            .rollout_timeout()
            .filter(|_| !statefulsets.is_empty())
        else {
            self.status(sha, "sync", State::Success, &format!("applied: {summary}"))
                .await;
            self.drift_status(sha, &Plan::default()).await;
            return Ok(None);
        };
        let description = format!("applied; rolling out {} StatefulSet(s)", statefulsets.len());
        self.status(sha, "sync", State::Pending, &description).await;
        let writes = Plan {
            changes: pass
                .plan
                .changes
                .iter()
                .filter(|c| c.action.writes())
                .cloned()
                .collect(),
        };
        let crs = pass
            .desired
            .iter()
            .filter(|o| matches!(o.kind(), "Function" | "Source" | "Sink"))
            .cloned()
            .collect();
        Ok(Some(Watch {
            commit: commit.clone(),
            statefulsets,
            deadline: Instant::now() + timeout,
            timeout,
            summary,
            crs,
            writes,
        }))
    }

    /// Looks at a rollout once: `None` while it goes on, else how it ended (reported on the
    /// commit, and on the CRs' status). Errors reading the cluster are not the rollout's:
    /// they are logged and the next look tries again.
    pub async fn follow(&self, watch: &mut Watch) -> Option<Rollout> {
        let cluster = &self.context.cluster;
        let mut waiting = Vec::new();
        for object in &watch.statefulsets {
            match rollouts::check(cluster, object).await {
                Ok(Progress::Done) => {}
                Ok(Progress::Failed { pod, reason }) => {
                    let error = rollouts::RolloutError::PodFailed {
                        object: object.clone(),
                        pod,
                        reason,
                    };
                    return Some(self.rolled_out(watch, Err(error.to_string())).await);
                }
                Ok(Progress::Progressing(why)) => waiting.push((object.clone(), why)),
                Err(err) => {
                    tracing::warn!(%object, error = %err, "cannot read the rollout; looking again");
                    return None;
                }
            }
        }
        if waiting.is_empty() {
            return Some(self.rolled_out(watch, Ok(())).await);
        }
        if Instant::now() >= watch.deadline {
            let error = rollouts::RolloutError::Timeout {
                timeout: watch.timeout,
                pending: waiting,
            };
            return Some(self.rolled_out(watch, Err(error.to_string())).await);
        }
        watch.statefulsets = waiting.into_iter().map(|(o, _)| o).collect();
        None
    }

    async fn rolled_out(&self, watch: &Watch, result: Result<(), String>) -> Rollout {
        let sha = watch.commit.sha.as_str();
        let statuses = sync::write_status(
            &self.context.cluster,
            &watch.crs,
            &watch.writes,
            sha,
            &now_text(),
            &Default::default(),
        )
        .await;
        if let Err(err) = statuses {
            tracing::warn!(commit = sha, error = %err, "could not write the CR status");
        }
        match result {
            Ok(()) => {
                let description = format!("applied and rolled out: {}", watch.summary);
                self.status(sha, "sync", State::Success, &description).await;
                self.drift_status(sha, &Plan::default()).await;
                Rollout::RolledOut
            }
            Err(reason) => {
                tracing::warn!(commit = sha, reason, "rollout failed");
                self.status(sha, "sync", State::Failure, &reason).await;
                Rollout::Failed(reason)
            }
        }
    }

    /// A newer commit was applied before `watch`'s rollout ended: its commit says so.
    pub async fn superseded(&self, watch: &Watch, by: &Commit) {
        let description = format!(
            "superseded by {} before its rollout finished",
            report::short(&by.sha)
        );
        self.status(&watch.commit.sha, "sync", State::Error, &description)
            .await;
    }

    /// Compares the cluster with `commit` (the one it is at) and reports what differs; with
    /// `selfHeal` puts it back.
    pub async fn check_drift(&mut self, commit: &Commit, term: &CancellationToken) -> Done {
        let sha = commit.sha.as_str();
        let checked: Result<Done, SourceError> = async {
            let pass = self.plan(sha).await?;
            let objects = self.report_drift(&pass, sha).await;
            if pass.plan.has_changes() && self.config.self_heal.unwrap_or(false) {
                let watch = self.apply(&pass, commit, term).await?;
                return Ok(Done {
                    outcome: Outcome::Healed,
                    watch,
                });
            }
            Ok(Outcome::Compared { objects }.into())
        }
        .await;
        checked.unwrap_or_else(|err| {
            tracing::warn!(source = self.config.name, commit = sha, error = %err, "drift check failed");
            err.outcome().into()
        })
    }

    /// Posts a commit status of `kind` (`sync`, `drift`) when the source names its GitHub
    /// repository. Returns at once: the reporter queues it.
    pub async fn status(&self, sha: &str, kind: &str, state: State, description: &str) {
        if let Some(github) = &self.config.github {
            let status = Status::new(kind, &self.config.name, state, description);
            self.context
                .reporter
                .status(&github.repo, sha, status)
                .await;
        }
    }

    /// The drift status on the deployed commit: the drifted objects, or in sync.
    async fn drift_status(&self, commit: &str, plan: &Plan) {
        let (state, description) = match report::drifted(plan) {
            Some(drift) => (State::Failure, drift),
            None => (
                State::Success,
                format!("the cluster matches {}", report::short(commit)),
            ),
        };
        self.status(commit, "drift", state, &description).await;
    }

    /// Tells the drift `pass` shows (Events, conditions, the drift status), then the gauge;
    /// returns one line per drifted object.
    async fn report_drift(&mut self, pass: &Pass, commit: &str) -> Vec<String> {
        let context = self.context.clone();
        let lines = self
            .drift
            .report(
                &context.cluster,
                &context.recorder,
                pass,
                &self.config.name,
                commit,
                &now_text(),
            )
            .await;
        self.drift_status(commit, &pass.plan).await;
        context.metrics.drift(&self.config.name, lines.len());
        lines
    }
}

/// RFC 3339, to the second: for status conditions and the sources API.
pub fn now_text() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
