//! One source's task: triggers in (startup, polls, webhooks, drift ticks, retries, a manual
//! sync), one pass at a time, and the state machine (`state.rs`) deciding what each pass
//! does. Triggers that arrive during a pass coalesce into the next one. A rollout after an
//! apply is looked at between passes, so a new commit, a drift tick or a shutdown never
//! waits for it. Every pass runs inside the current leadership term and is dropped the
//! moment the term ends (shutdown, a lost Lease).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::leader::Term;
use super::memory;
use super::pass::{now_text, Context, Done, Watch, Worker};
use super::pull::{PullQueue, Queued, Waiting};
use super::schedule::{jittered, Pending, Trigger, Work};
use super::state::{Outcome, Rollout, SourceState, Step};
use crate::git;
use crate::model::agent::{GitRef, SourceConfig};

/// How often a rollout in progress is looked at.
const ROLLOUT_LOOK: Duration = Duration::from_secs(2);

/// What the sources API shows beside the state machine: when things happened.
#[derive(Default)]
struct Shown {
    state: SourceState,
    last_applied_at: Option<String>,
    last_pass_at: Option<String>,
}

/// A source as the HTTP handlers and its task share it.
pub struct SourceHandle {
    pub config: SourceConfig,
    pending: Mutex<Pending>,
    /// Pull requests waiting for a plan (a push to one while it waits plans the newest head),
    /// at most `pullRequests.maxQueued`.
    pulls: Mutex<PullQueue>,
    wake: Notify,
    shown: Mutex<Shown>,
}

impl SourceHandle {
    pub fn new(config: SourceConfig) -> SourceHandle {
        let max_queued = config.max_queued_pull_requests();
        SourceHandle {
            config,
            pending: Mutex::new(Pending::default()),
            pulls: Mutex::new(PullQueue::new(max_queued)),
            wake: Notify::new(),
            shown: Mutex::new(Shown::default()),
        }
    }

    /// Asks for a pass; however many triggers arrive before it starts, it runs once.
    pub fn trigger(&self, trigger: Trigger) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.add(trigger);
        }
        self.wake.notify_one();
    }

    /// Asks for a plan of pull request `number` at `head`, after the current pass and any
    /// deploy waiting; what it did to the queue (a full queue drops the oldest request).
    pub fn plan_pull_request(&self, number: u64, head: &str) -> Queued {
        let queued = match self.pulls.lock() {
            Ok(mut pulls) => pulls.push(number, head),
            Err(_) => return Queued::Added,
        };
        self.trigger(Trigger::PullRequest);
        queued
    }

    /// The next pull request to plan — none while a deploy (any trigger but a pull request)
    /// is waiting: a plan never delays a deploy, the loop comes back to the plans after it.
    fn next_pull_request(&self) -> Option<Waiting> {
        let deploy_waiting = self
            .pending
            .lock()
            .map(|p| p.beyond_pull_requests())
            .unwrap_or(false);
        if deploy_waiting {
            return None;
        }
        self.pulls.lock().ok()?.pop()
    }

    fn take(&self) -> Option<(Work, Vec<Trigger>)> {
        self.pending.lock().ok()?.take()
    }

    /// Reads the state (a copy: the lock is not held across a pass).
    fn state(&self) -> SourceState {
        self.shown
            .lock()
            .map(|s| s.state.clone())
            .unwrap_or_default()
    }

    fn update(&self, change: impl FnOnce(&mut Shown)) {
        if let Ok(mut shown) = self.shown.lock() {
            change(&mut shown);
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
        let Ok(shown) = self.shown.lock() else {
            return json!({ "name": c.name });
        };
        let view = shown.state.view();
        let rollout = view.rollout.map(|r| match r {
            Rollout::Waiting => "waiting",
            Rollout::RolledOut => "rolled-out",
            Rollout::Failed(_) => "failed",
            Rollout::Superseded => "superseded",
        });
        json!({
            "name": c.name,
            "url": git::redact(&c.url),
            "ref": reference,
            "path": c.path(),
            "lastAppliedCommit": view.applied,
            "lastAppliedAt": shown.last_applied_at,
            "lastSeenCommit": view.head,
            "lastPassAt": shown.last_pass_at,
            "retryingCommit": view.retrying,
            "result": view.result.map(|r| r.label()),
            "error": view.error,
            "rollout": rollout,
            "driftObjects": view.drift.len(),
            "drift": view.drift,
        })
    }
}

/// The source's task: runs until `shutdown`, acting only while a leadership term lasts.
pub async fn run(
    handle: Arc<SourceHandle>,
    context: Arc<Context>,
    mut term: watch::Receiver<Term>,
    shutdown: CancellationToken,
) {
    let config = handle.config.clone();
    let mut source = Source {
        worker: Worker::new(config.clone(), context.clone()),
        handle: handle.clone(),
        context,
        watch: None,
    };
    let now = Instant::now();
    let mut next_poll = now + jittered(config.interval(), fastrand::f64());
    let mut next_drift = now + jittered(config.drift_interval(), fastrand::f64());
    let mut next_retry: Option<Instant> = None;
    let mut next_look = now + ROLLOUT_LOOK;
    let mut election_running = true;
    let mut leading = term.borrow_and_update().clone();
    if leading.is_some() {
        handle.trigger(Trigger::Startup);
    }
    loop {
        let retry_at = next_retry.unwrap_or(next_poll);
        let following = source.watch.is_some();
        let mut look = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
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
            _ = tokio::time::sleep_until(next_look.into()), if following => {
                look = true;
                next_look = Instant::now() + ROLLOUT_LOOK;
            }
            changed = term.changed(), if election_running => {
                if changed.is_err() {
                    // The election is over (or there is none): the term stays as it is.
                    election_running = false;
                } else {
                    leading = term.borrow_and_update().clone();
                    if leading.is_some() {
                        tracing::info!(source = config.name, "leading: reconciling");
                        handle.trigger(Trigger::Startup);
                    } else {
                        tracing::info!(source = config.name, "no longer leading: standing by");
                        source.watch = None;
                    }
                }
            }
        }
        let Some(token) = leading.clone().filter(|t| !t.is_cancelled()) else {
            continue;
        };
        if let Some((work, triggers)) = handle.take() {
            if work != Work::PullRequests {
                source.serve(work, &triggers, &token).await;
                next_retry = source.retry_at();
            }
            while let Some(pull) = handle.next_pull_request() {
                let span = tracing::info_span!(
                    "plan",
                    source = config.name,
                    pull_request = pull.number,
                    head = pull.head
                );
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = source.worker.plan_pull_request(pull.number).instrument(span) => {}
                }
            }
            memory::release();
        } else if look {
            source.look(&token).await;
        }
    }
    tracing::debug!(source = config.name, "source task stopped");
}

/// The task's own state beside the handle.
struct Source {
    worker: Worker,
    handle: Arc<SourceHandle>,
    context: Arc<Context>,
    /// The rollout of the commit applied last, while it is followed.
    watch: Option<Watch>,
}

impl Source {
    /// One pass for `triggers`: asks the remote where its head is unless only a drift tick
    /// is served, then does what the state machine says.
    async fn serve(&mut self, work: Work, triggers: &[Trigger], term: &CancellationToken) {
        let name = self.handle.config.name.clone();
        let started = Instant::now();
        let span = tracing::info_span!(
            "reconcile",
            source = name,
            triggers = ?triggers.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            commit = tracing::field::Empty,
        );
        let label = async {
            let ask_remote = matches!(work, Work::Sync { .. }) || !self.handle.state().knows_head();
            if ask_remote {
                let head = tokio::select! {
                    _ = term.cancelled() => return "stopped",
                    head = self.worker.remote_head() => head,
                };
                match head {
                    Ok(head) => self.handle.update(|s| s.state.observe(&head)),
                    Err(err) => {
                        tracing::error!(source = name, error = %err, "cannot read the remote");
                        let label = err.category();
                        let message = err.to_string();
                        self.handle
                            .update(|s| s.state.remote_failed(label, message));
                        return label;
                    }
                }
            }
            let force = matches!(work, Work::Sync { force: true });
            let drift = triggers.contains(&Trigger::Drift);
            let manual = triggers.contains(&Trigger::Manual);
            let step = self.handle.state().step(force, drift);
            let (commit, done) = match step {
                Step::Idle => return "unchanged",
                Step::Deploy(commit) => {
                    tracing::Span::current().record("commit", commit.sha.as_str());
                    let done = tokio::select! {
                        _ = term.cancelled() => Done::from(Outcome::Interrupted),
                        done = self.worker.deploy(&commit, manual, term) => done,
                    };
                    (commit, done)
                }
                Step::CheckDrift(commit) => {
                    tracing::Span::current().record("commit", commit.sha.as_str());
                    let done = tokio::select! {
                        _ = term.cancelled() => Done::from(Outcome::Interrupted),
                        done = self.worker.check_drift(&commit, term) => done,
                    };
                    (commit, done)
                }
            };
            let applied = matches!(
                done.outcome,
                Outcome::Applied { wrote: true } | Outcome::Healed
            );
            if let Some(old) = self.watch.take_if(|w| applied && w.commit != commit) {
                self.worker.superseded(&old, &commit).await;
                self.handle
                    .update(|s| s.state.rollout(&old.commit, Rollout::Superseded));
            }
            if applied {
                let unix = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
                self.context.metrics.applied_at(&name, unix);
            }
            let stamp = now_text();
            self.handle.update(|s| {
                s.state.finished(&commit, done.outcome);
                if applied || (s.last_applied_at.is_none() && s.state.applied().is_some()) {
                    s.last_applied_at = Some(stamp);
                }
            });
            if let Some(watch) = done.watch {
                self.handle
                    .update(|s| s.state.rollout(&watch.commit, Rollout::Waiting));
                self.watch = Some(watch);
            }
            self.handle
                .state()
                .view()
                .result
                .map(|r| r.label())
                .unwrap_or("unchanged")
        }
        .instrument(span)
        .await;
        let seconds = started.elapsed().as_secs_f64();
        self.context.metrics.reconciled(&name, label, seconds);
        let stamp = now_text();
        self.handle.update(|s| s.last_pass_at = Some(stamp));
    }

    /// Looks at the rollout being followed; a new trigger or the end of the term cuts the
    /// look short (it only reads, and the next look starts over).
    async fn look(&mut self, term: &CancellationToken) {
        let Some(mut watch) = self.watch.take() else {
            return;
        };
        let ended = tokio::select! {
            _ = term.cancelled() => None,
            _ = self.handle.wake.notified() => {
                // Keep the wake-up for the loop, which serves the trigger next.
                self.handle.wake.notify_one();
                None
            }
            ended = self.worker.follow(&mut watch) => ended,
        };
        match ended {
            Some(rollout) => self
                .handle
                .update(|s| s.state.rollout(&watch.commit, rollout)),
            None => self.watch = Some(watch),
        }
    }

    /// When to try again: after a failure, the backoff (1 s, 2 s, 4 s …) but never later
    /// than the next poll would, as Flux retries at its interval.
    fn retry_at(&self) -> Option<Instant> {
        let state = self.handle.state();
        let delay = state.backoff().delay(fastrand::f64())?;
        let poll = jittered(self.handle.config.interval(), fastrand::f64());
        let delay = delay.min(poll);
        tracing::info!(source = self.handle.config.name, retry_in = ?delay, failures = state.backoff().failures(), "will retry");
        Some(Instant::now() + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(max_queued: u32) -> SourceHandle {
        SourceHandle::new(
            serde_json::from_value(json!({
                "name": "prod", "url": "file:///mirror",
                "pullRequests": {"maxQueued": max_queued},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn pull_request_plans_wait_while_a_deploy_is_pending() {
        let handle = handle(5);
        assert_eq!(handle.plan_pull_request(7, "a"), Queued::Added);
        assert_eq!(handle.plan_pull_request(8, "b"), Queued::Added);
        handle.trigger(Trigger::Webhook);
        assert_eq!(handle.next_pull_request(), None, "the push goes first");
        let (work, _) = handle.take().unwrap();
        assert_eq!(work, Work::Sync { force: false });
        assert_eq!(handle.next_pull_request().map(|p| p.number), Some(7));
        handle.trigger(Trigger::Drift);
        assert_eq!(handle.next_pull_request(), None, "so does a drift check");
        handle.take();
        assert_eq!(handle.next_pull_request().map(|p| p.number), Some(8));
        assert_eq!(handle.next_pull_request(), None);
    }

    #[test]
    fn the_queue_holds_max_queued_pull_requests() {
        let handle = handle(2);
        handle.plan_pull_request(1, "a");
        handle.plan_pull_request(2, "b");
        assert_eq!(handle.plan_pull_request(2, "c"), Queued::Renewed);
        assert!(matches!(
            handle.plan_pull_request(3, "d"),
            Queued::Displaced(Waiting { number: 1, .. })
        ));
        let left: Vec<(u64, String)> = std::iter::from_fn(|| handle.next_pull_request())
            .map(|p| (p.number, p.head))
            .collect();
        assert_eq!(left, [(2, "c".to_owned()), (3, "d".to_owned())]);
    }
}
