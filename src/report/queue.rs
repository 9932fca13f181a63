//! The bounded per-source queue between the agent and GitHub, so that a slow or absent GitHub
//! costs a deploy nothing: [`Queue`]'s `status()` and `plan()` return at once and a worker per
//! source delivers to the [`Sink`] behind it.
//!
//! Only the newest report per key is worth posting (a commit's `pending` is moot once it is
//! `success`), so a report replaces the one waiting with the same key, and a failed delivery is
//! retried with backoff — unless a newer report with its key has arrived meanwhile. GitHub down
//! for an hour leaves each source at most [`QueueOptions::capacity`] reports, the newest state
//! of each commit and pull request, posted when it answers again. Each source has its own
//! worker, so one source's backlog never holds up another's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PlanReport, ReportError, Reporter, Sink, Status};

/// The longest a worker waits when the service names a time to come back (a rate limit's
/// reset is at most an hour away).
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How a [`Queue`] holds and retries reports.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// Reports waiting per source; a report that finds its source's backlog full drops the
    /// oldest one waiting (counted in [`Queue::dropped`]).
    pub capacity: usize,
    /// The wait after a first failed delivery, doubled on each failure in a row (±20 %)…
    pub first_backoff: Duration,
    /// … up to this.
    pub max_backoff: Duration,
    /// How long reports still go out after shutdown; what waits after that is dropped.
    pub grace: Duration,
}

impl Default for QueueOptions {
    fn default() -> QueueOptions {
        QueueOptions {
            capacity: 64,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            grace: Duration::from_secs(2),
        }
    }
}

/// One report waiting for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Report {
    Status {
        repo: String,
        sha: String,
        status: Status,
    },
    Plan {
        repo: String,
        plan: PlanReport,
    },
}

/// What a newer report replaces: the same status context on the same commit, the same
/// source's plan on the same pull request.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    Status {
        repo: &'a str,
        sha: &'a str,
        context: &'a str,
    },
    Plan {
        repo: &'a str,
        source: &'a str,
        pull_request: u64,
    },
}

impl Report {
    fn key(&self) -> Key<'_> {
        match self {
            Report::Status { repo, sha, status } => Key::Status {
                repo,
                sha,
                context: &status.context,
            },
            Report::Plan { repo, plan } => Key::Plan {
                repo,
                source: &plan.source,
                pull_request: plan.pull_request,
            },
        }
    }

    fn repo(&self) -> &str {
        match self {
            Report::Status { repo, .. } | Report::Plan { repo, .. } => repo,
        }
    }

    /// Whose backlog the report waits in.
    fn source(&self) -> &str {
        match self {
            Report::Status { status, .. } => status.source(),
            Report::Plan { plan, .. } => &plan.source,
        }
    }

    async fn deliver(&self, sink: &dyn Sink) -> Result<(), ReportError> {
        match self {
            Report::Status { repo, sha, status } => sink.status(repo, sha, status).await,
            Report::Plan { repo, plan } => sink.plan(repo, plan).await,
        }
    }
}

/// The reports of one source waiting for delivery: in order of arrival, at most one per key,
/// at most `capacity`.
#[derive(Debug)]
struct Backlog {
    reports: VecDeque<Report>,
    capacity: usize,
}

impl Backlog {
    fn new(capacity: usize) -> Backlog {
        Backlog {
            reports: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds `report` — in the place of a waiting one with the same key, which it makes moot —
    /// dropping the oldest when full; whether one was dropped.
    fn push(&mut self, report: Report) -> bool {
        if let Some(waiting) = self.reports.iter_mut().find(|r| r.key() == report.key()) {
            *waiting = report;
            return false;
        }
        let dropped = self.reports.len() >= self.capacity && self.reports.pop_front().is_some();
        self.reports.push_back(report);
        dropped
    }

    fn pop(&mut self) -> Option<Report> {
        self.reports.pop_front()
    }

    /// Puts back a report whose delivery failed, first in line: it is the oldest. Not when a
    /// newer one with its key arrived meanwhile, nor when the backlog filled up while it was
    /// out; whether it was dropped for room.
    fn retry(&mut self, report: Report) -> bool {
        if self.reports.iter().any(|r| r.key() == report.key()) {
            return false;
        }
        if self.reports.len() >= self.capacity {
            return true;
        }
        self.reports.push_front(report);
        false
    }

    fn len(&self) -> usize {
        self.reports.len()
    }
}

/// A [`Reporter`] that queues and returns at once; see the module documentation.
pub struct Queue {
    shared: Arc<Shared>,
}

struct Shared {
    sink: Arc<dyn Sink>,
    options: QueueOptions,
    /// Where workers are spawned: reports may be queued from outside the runtime's threads.
    runtime: Handle,
    shutdown: CancellationToken,
    /// Cancelled `grace` after `shutdown`: what still waits then is dropped.
    stop: CancellationToken,
    /// A source has a backlog here exactly while its worker runs: the worker removes it, under
    /// this lock, when it finds it empty, and the next report starts a new worker.
    backlogs: Mutex<HashMap<String, Backlog>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    dropped: AtomicU64,
    /// Repositories that refused a report, each logged once: a refusal does not heal by
    /// itself, and every later report would log it again.
    refused: Mutex<HashSet<String>>,
}

/// A poisoned lock still holds consistent data here: every critical section is a few
/// collection operations that leave it whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `wait` ±20 %, so that sources that failed together do not retry together.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(0.8 + 0.4 * fastrand::f64())
}

impl Queue {
    /// A queue in front of `sink` with the default bound (64 per source), backoff (1 s doubling
    /// to 1 min) and shutdown grace (2 s). Called within a Tokio runtime, whose tasks deliver.
    pub fn spawn(sink: Arc<dyn Sink>, shutdown: CancellationToken) -> Arc<Queue> {
        Queue::with_options(sink, shutdown, QueueOptions::default())
    }

    /// [`Queue::spawn`] with other bounds and waits. Called within a Tokio runtime.
    pub fn with_options(
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
        options: QueueOptions,
    ) -> Arc<Queue> {
        let runtime = Handle::current();
        let stop = CancellationToken::new();
        let grace = options.grace;
        runtime.spawn({
            let (shutdown, stop) = (shutdown.clone(), stop.clone());
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                stop.cancel();
            }
        });
        Arc::new(Queue {
            shared: Arc::new(Shared {
                sink,
                options,
                runtime,
                shutdown,
                stop,
                backlogs: Mutex::default(),
                workers: Mutex::default(),
                dropped: AtomicU64::new(0),
                refused: Mutex::default(),
            }),
        })
    }

    /// Reports waiting, all sources together (not counting those being delivered).
    pub fn depth(&self) -> usize {
        lock(&self.shared.backlogs).values().map(Backlog::len).sum()
    }

    /// Reports dropped because their source's backlog was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until no report waits or is being delivered. After shutdown that is at most the
    /// grace away, so the agent awaits it last: the final statuses get their chance.
    pub async fn drained(&self) {
        loop {
            let workers = std::mem::take(&mut *lock(&self.shared.workers));
            if workers.is_empty() {
                return;
            }
            for worker in workers {
                if let Err(err) = worker.await {
                    tracing::error!(error = %err, "a report worker failed");
                }
            }
        }
    }

    fn enqueue(&self, report: Report) {
        let shared = &self.shared;
        if shared.stop.is_cancelled() {
            tracing::debug!(repo = report.repo(), "shut down: the report is not sent");
            return;
        }
        let source = report.source().to_owned();
        let mut backlogs = lock(&shared.backlogs);
        let dropped = match backlogs.get_mut(&source) {
            Some(backlog) => backlog.push(report),
            None => {
                let mut backlog = Backlog::new(shared.options.capacity);
                backlog.push(report);
                backlogs.insert(source.clone(), backlog);
                let worker = shared
                    .runtime
                    .spawn(Shared::work(shared.clone(), source.clone()));
                let mut workers = lock(&shared.workers);
                workers.retain(|w| !w.is_finished());
                workers.push(worker);
                false
            }
        };
        drop(backlogs);
        if dropped {
            shared.count_drop(&source);
        }
    }
}

impl Shared {
    /// One source's worker: delivers its backlog until empty, or until the grace after
    /// shutdown is over.
    async fn work(self: Arc<Shared>, source: String) {
        tokio::select! {
            () = self.deliver_all(&source) => {}
            () = self.stop.cancelled() => {
                let left = lock(&self.backlogs).remove(&source).map_or(0, |b| b.len());
                tracing::warn!(source, left, "shut down before GitHub took these reports");
            }
        }
    }

    async fn deliver_all(&self, source: &str) {
        let mut backoff = self.options.first_backoff;
        let mut failures = 0u32;
        loop {
            let report = {
                let mut backlogs = lock(&self.backlogs);
                match backlogs.get_mut(source).and_then(Backlog::pop) {
                    Some(report) => report,
                    None => {
                        backlogs.remove(source);
                        return;
                    }
                }
            };
            let (reason, retry_after) = match report.deliver(&*self.sink).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(source, failures, "GitHub took the reports again");
                    }
                    failures = 0;
                    backoff = self.options.first_backoff;
                    continue;
                }
                Err(ReportError::Refused { reason }) => {
                    self.log_refusal(report.repo(), &reason);
                    continue;
                }
                Err(ReportError::Unavailable {
                    reason,
                    retry_after,
                }) => (reason, retry_after),
            };
            failures += 1;
            let repo = report.repo().to_owned();
            if failures == 1 {
                tracing::warn!(
                    source,
                    repo,
                    error = reason,
                    "could not report to GitHub; retrying in the background"
                );
            } else {
                tracing::debug!(
                    source,
                    repo,
                    failures,
                    error = reason,
                    "could not report to GitHub"
                );
            }
            let dropped = lock(&self.backlogs)
                .get_mut(source)
                .is_some_and(|backlog| backlog.retry(report));
            if dropped {
                self.count_drop(source);
            }
            if self.shutdown.is_cancelled() {
                let left = lock(&self.backlogs).remove(source).map_or(0, |b| b.len());
                tracing::warn!(
                    source,
                    left,
                    "shut down while GitHub is unavailable; reports dropped"
                );
                return;
            }
            let wait = jittered(backoff)
                .max(retry_after.unwrap_or_default())
                .min(LONGEST_RETRY_AFTER);
            // Shutdown cuts the wait short: one more try within the grace.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => {}
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    fn count_drop(&self, source: &str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            source,
            capacity = self.options.capacity,
            dropped_total = total,
            "GitHub is behind: dropped the oldest report waiting"
        );
    }

    fn log_refusal(&self, repo: &str, reason: &str) {
        if lock(&self.refused).insert(repo.to_owned()) {
            tracing::error!(
                repo,
                error = reason,
                "GitHub refused the report (logged once for this repository)"
            );
        } else {
            tracing::debug!(repo, error = reason, "GitHub refused the report");
        }
    }
}

impl Reporter for Queue {
    fn status<'a>(&'a self, repo: &'a str, sha: &'a str, status: Status) -> BoxFuture<'a, ()> {
        self.enqueue(Report::Status {
            repo: repo.to_owned(),
            sha: sha.to_owned(),
            status,
        });
        Box::pin(std::future::ready(()))
    }

    fn plan<'a>(&'a self, repo: &'a str, plan: PlanReport) -> BoxFuture<'a, ()> {
        self.enqueue(Report::Plan {
            repo: repo.to_owned(),
            plan,
        });
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::State;
    use futures::FutureExt;
    use tokio::sync::{mpsc, Semaphore};

    fn status(source: &str, sha: &str, state: State) -> Report {
        Report::Status {
            repo: "acme/functions".into(),
            sha: sha.into(),
            status: Status::new("sync", source, state, state.as_str()),
        }
    }

    fn plan_report(source: &str, pull_request: u64, comment: &str) -> PlanReport {
        PlanReport {
            source: source.into(),
            pull_request,
            head_sha: "abc".into(),
            status: Status::new("plan", source, State::Success, "Plan"),
            comments: vec![comment.into()],
            annotations: Vec::new(),
        }
    }

    fn plan(source: &str, pull_request: u64, comment: &str) -> Report {
        Report::Plan {
            repo: "acme/functions".into(),
            plan: plan_report(source, pull_request, comment),
        }
    }

    fn states(backlog: &Backlog) -> Vec<String> {
        backlog
            .reports
            .iter()
            .map(|r| match r {
                Report::Status { sha, status, .. } => format!("{sha} {:?}", status.state),
                Report::Plan { plan, .. } => format!("#{} {}", plan.pull_request, plan.comments[0]),
            })
            .collect()
    }

    #[test]
    fn a_newer_report_replaces_the_one_waiting_with_its_key_in_place() {
        let mut backlog = Backlog::new(64);
        backlog.push(status("prod", "a", State::Pending));
        backlog.push(status("prod", "b", State::Pending));
        backlog.push(plan("prod", 7, "one"));
        backlog.push(status("prod", "a", State::Success));
        backlog.push(plan("prod", 7, "two"));
        backlog.push(plan("prod", 8, "other"));
        assert_eq!(
            states(&backlog),
            ["a Success", "b Pending", "#7 two", "#8 other"]
        );
    }

    #[test]
    fn a_full_backlog_drops_its_oldest_report() {
        let mut backlog = Backlog::new(2);
        assert!(!backlog.push(status("prod", "a", State::Pending)));
        assert!(!backlog.push(status("prod", "b", State::Pending)));
        assert!(
            !backlog.push(status("prod", "b", State::Success)),
            "replaced"
        );
        assert!(backlog.push(status("prod", "c", State::Pending)));
        assert_eq!(states(&backlog), ["b Success", "c Pending"]);
    }

    #[test]
    fn a_failed_report_goes_back_first_unless_it_is_moot() {
        let mut backlog = Backlog::new(2);
        backlog.push(status("prod", "a", State::Pending));
        let failed = backlog.pop().unwrap();
        backlog.push(status("prod", "b", State::Pending));
        assert!(!backlog.retry(failed.clone()));
        assert_eq!(states(&backlog), ["a Pending", "b Pending"]);

        // A newer state of the same commit arrived while it was out: the failed one is moot.
        let failed = backlog.pop().unwrap();
        backlog.push(status("prod", "a", State::Success));
        assert!(!backlog.retry(failed));
        assert_eq!(states(&backlog), ["b Pending", "a Success"]);

        // The backlog filled up meanwhile: the failed one is the oldest, so it goes.
        let failed = backlog.pop().unwrap();
        backlog.push(status("prod", "c", State::Pending));
        assert!(backlog.retry(failed));
        assert_eq!(states(&backlog), ["a Success", "c Pending"]);
    }

    /// A sink that records what arrives and holds each delivery until the test hands out a
    /// permit; reports of sources in `failing` fail as unavailable.
    struct Gate {
        permits: Semaphore,
        delivered: mpsc::UnboundedSender<String>,
        failing: Mutex<HashSet<String>>,
    }

    impl Gate {
        fn new() -> (Arc<Gate>, mpsc::UnboundedReceiver<String>) {
            let (delivered, received) = mpsc::unbounded_channel();
            let gate = Gate {
                permits: Semaphore::new(0),
                delivered,
                failing: Mutex::default(),
            };
            (Arc::new(gate), received)
        }

        async fn pass(&self, what: String, source: &str) -> Result<(), ReportError> {
            if lock(&self.failing).contains(source) {
                return Err(ReportError::Unavailable {
                    reason: "down".into(),
                    retry_after: None,
                });
            }
            self.permits.acquire().await.unwrap().forget();
            self.delivered.send(what).unwrap();
            Ok(())
        }
    }

    impl Sink for Gate {
        fn status<'a>(
            &'a self,
            _: &'a str,
            sha: &'a str,
            status: &'a Status,
        ) -> BoxFuture<'a, Result<(), ReportError>> {
            let what = format!("{} {sha} {:?}", status.source(), status.state);
            Box::pin(self.pass(what, status.source()))
        }

        fn plan<'a>(
            &'a self,
            _: &'a str,
            plan: &'a PlanReport,
        ) -> BoxFuture<'a, Result<(), ReportError>> {
            let what = format!("{} #{}", plan.source, plan.pull_request);
            Box::pin(self.pass(what, &plan.source))
        }
    }

    fn fast() -> QueueOptions {
        QueueOptions {
            capacity: 4,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            grace: Duration::from_millis(50),
        }
    }

    fn send(queue: &Queue, source: &str, sha: &str, state: State) {
        let status = Status::new("sync", source, state, "x");
        let call = queue.status("acme/functions", sha, status);
        assert!(call.now_or_never().is_some(), "the call returns at once");
    }

    #[tokio::test]
    async fn reports_return_at_once_and_the_newest_state_is_delivered() {
        let (gate, mut delivered) = Gate::new();
        let queue = Queue::with_options(gate.clone(), CancellationToken::new(), fast());
        send(&queue, "prod", "a", State::Pending);
        // The gate is shut: `b` goes through two states before anything is delivered.
        send(&queue, "prod", "b", State::Pending);
        send(&queue, "prod", "b", State::Success);
        let call = queue.plan("acme/functions", plan_report("prod", 7, "x"));
        assert!(call.now_or_never().is_some());
        gate.permits.add_permits(10);
        queue.drained().await;
        let mut got = Vec::new();
        while let Ok(what) = delivered.try_recv() {
            got.push(what);
        }
        assert_eq!(got, ["prod a Pending", "prod b Success", "prod #7"]);
        assert_eq!(queue.depth(), 0);
        assert_eq!(queue.dropped(), 0);
    }

    #[tokio::test]
    async fn one_sources_stuck_backlog_does_not_hold_up_another() {
        let (gate, mut delivered) = Gate::new();
        lock(&gate.failing).insert("stuck".into());
        let queue = Queue::with_options(gate.clone(), CancellationToken::new(), fast());
        for sha in ["a", "b", "c", "d", "e", "f"] {
            send(&queue, "stuck", sha, State::Success);
        }
        send(&queue, "prod", "a", State::Success);
        gate.permits.add_permits(1);
        assert_eq!(delivered.recv().await.unwrap(), "prod a Success");
        // Six reports for four places: the two oldest went.
        assert_eq!(queue.dropped(), 2);

        // GitHub answers for `stuck` again: its newest reports arrive.
        lock(&gate.failing).clear();
        gate.permits.add_permits(10);
        queue.drained().await;
        let mut got = Vec::new();
        while let Ok(what) = delivered.try_recv() {
            got.push(what);
        }
        assert_eq!(
            got,
            [
                "stuck c Success",
                "stuck d Success",
                "stuck e Success",
                "stuck f Success"
            ]
        );
    }

    #[tokio::test]
    async fn shutdown_gives_waiting_reports_a_grace_then_drops_them() {
        let (gate, mut delivered) = Gate::new();
        let shutdown = CancellationToken::new();
        let queue = Queue::with_options(gate.clone(), shutdown.clone(), fast());
        send(&queue, "prod", "a", State::Success);
        send(&queue, "prod", "b", State::Success);
        gate.permits.add_permits(1);
        assert_eq!(delivered.recv().await.unwrap(), "prod a Success");
        // `b` is held at the gate, which never opens again.
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), queue.drained())
            .await
            .expect("the grace ends the wait");
        assert_eq!(queue.depth(), 0);
        // After the grace nothing is taken any more.
        assert!(queue.shared.stop.is_cancelled());
        send(&queue, "prod", "c", State::Success);
        assert_eq!(queue.depth(), 0);
        assert!(delivered.try_recv().is_err());
    }
}
