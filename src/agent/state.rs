//! A source's state as a value: which commit the remote shows, which one the cluster is at,
//! which one a retry is owed to, what the head's validation found, what drifted.
//!
//! The loop (`source.rs`) feeds it what happened — the remote's head, how a pass or a rollout
//! ended — and asks it what the next pass does. It holds no clock and does no I/O, so its
//! rules are tested with plain values and with random interleavings of events:
//!
//! - a commit is done only when it was applied, or found invalid (an invalid commit is never
//!   retried until a new commit arrives);
//! - a poll, a webhook or a drift tick never clears a retry that is owed;
//! - drift checks and self-heal never plan a commit older than the newest one attempted:
//!   after a failed deploy of B they retry B, never re-apply A — even when the head has moved
//!   on to an invalid C.
//!
//! What the sources API and the metrics report is read from here, so a drift tick cannot
//! make an invalid head's errors disappear.

use super::schedule::Backoff;

/// A commit and when the remote first showed it as the head: later means newer, whatever
/// Git's history says (a force-push back to an old commit is the newest wish).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    seen: u64,
}

/// What a pass is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Plan the commit against the cluster and apply what differs.
    Deploy(Commit),
    /// Compare the cluster with the commit it is at; put it back with self-heal.
    CheckDrift(Commit),
    /// Nothing to do: the cluster is at the head, or the head is invalid.
    Idle,
}

/// Why a pass did not bring the cluster to its commit, as far as the next pass goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The API server, the Git remote or a credential could not be used.
    Unreachable,
    /// The cluster refused (RBAC, a conflict, an object it rejected); someone may fix that
    /// outside Git, so it is tried again too.
    Refused,
}

/// How a pass for a commit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The cluster is at the commit: written by this pass (`wrote`), or found matching.
    Applied { wrote: bool },
    /// A drift check of the commit the cluster is at wrote it back (self-heal).
    Healed,
    /// The cluster is at the commit but differs from it, and nothing was written: `objects`
    /// say how (empty: no drift).
    Compared { objects: Vec<String> },
    /// The commit cannot be applied as it is (invalid manifests, a namespace not allowed);
    /// `label` is the error's stable category.
    Rejected { label: &'static str, errors: String },
    /// Not applied; `label` is the error's stable category (a metric label).
    Failed {
        failure: Failure,
        label: &'static str,
        message: String,
    },
    /// Stopped before the end: shutdown, a lost Lease, or a newer commit to deploy.
    Interrupted,
}

/// How the rollout of an applied commit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Being waited for.
    Waiting,
    RolledOut,
    /// A pod failed, or `rolloutTimeout` passed.
    Failed(String),
    /// A newer commit was deployed before it finished.
    Superseded,
}

/// The last pass's result, as the sources API and `meshops_reconcile_total` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassResult {
    Applied,
    Unchanged,
    Drifted,
    Healed,
    Rejected(&'static str),
    Failed(&'static str),
    Interrupted,
}

impl PassResult {
    pub fn label(self) -> &'static str {
        match self {
            PassResult::Applied => "applied",
            PassResult::Unchanged => "unchanged",
            PassResult::Drifted => "drifted",
            PassResult::Healed => "healed",
            PassResult::Rejected(category) | PassResult::Failed(category) => category,
            PassResult::Interrupted => "stopped",
        }
    }
}

/// One source's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// The newest head the remote showed.
    head: Option<Commit>,
    /// The newest commit the cluster was brought to.
    applied: Option<Commit>,
    /// The commit a retry is owed to (its deploy failed or was interrupted), and why.
    owed: Option<(Commit, Option<String>)>,
    /// The head found invalid, with its errors; kept until a newer commit arrives.
    rejected: Option<(Commit, String)>,
    /// The rollout of the applied commit.
    rollout: Option<Rollout>,
    /// Why the remote could not be asked for its head, until it answers again.
    remote: Option<String>,
    /// What the last drift check found differing; empty when in sync.
    drift: Vec<String>,
    last: Option<PassResult>,
    backoff: Backoff,
    /// Counts heads, so that every new one is newer than all before.
    heads: u64,
}

/// What the sources API shows of the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View<'a> {
    pub head: Option<&'a str>,
    pub applied: Option<&'a str>,
    /// The commit a retry is owed to.
    pub retrying: Option<&'a str>,
    pub result: Option<PassResult>,
    /// Why the head is not applied (its validation errors, the failure a retry is owed
    /// for), or why its rollout failed.
    pub error: Option<&'a str>,
    pub rollout: Option<&'a Rollout>,
    pub drift: &'a [String],
}

impl SourceState {
    /// The remote's tracked ref points at `sha` (ls-remote).
    pub fn observe(&mut self, sha: &str) {
        if self.remote.take().is_some() && self.owed.is_none() {
            self.backoff.succeeded();
        }
        if self.head.as_ref().is_some_and(|h| h.sha == sha) {
            return;
        }
        self.heads += 1;
        self.head = Some(Commit {
            sha: sha.to_owned(),
            seen: self.heads,
        });
    }

    /// The remote could not be asked for its head (`label`: the error's category). Nothing
    /// in the cluster changes; the loop asks again after the backoff.
    pub fn remote_failed(&mut self, label: &'static str, message: String) {
        self.remote = Some(message);
        self.backoff.failed();
        self.last = Some(PassResult::Failed(label));
    }

    /// Whether the remote was asked at least once; until then no pass knows what to do.
    pub fn knows_head(&self) -> bool {
        self.head.is_some()
    }

    /// What the next pass does. `force` (startup, a manual sync) plans the head even when it
    /// was applied (the cluster may have moved while nobody looked); `drift` asks for a drift
    /// check when there is nothing to deploy.
    pub fn step(&self, force: bool, drift: bool) -> Step {
        let Some(head) = &self.head else {
            return Step::Idle;
        };
        if self.rejected.as_ref().is_some_and(|(r, _)| r == head) {
            // The head cannot be applied. A deploy left half done is finished (the newest
            // valid commit attempted); otherwise the cluster stays at the commit applied
            // last, and that is what drift is measured against.
            return match (&self.owed, &self.applied) {
                (Some((owed, _)), _) => Step::Deploy(owed.clone()),
                (None, Some(applied)) if drift => Step::CheckDrift(applied.clone()),
                _ => Step::Idle,
            };
        }
        let at_head = self.applied.as_ref().is_some_and(|a| a.sha == head.sha);
        if self.owed.is_some() || !at_head || force {
            return Step::Deploy(head.clone());
        }
        if drift {
            return Step::CheckDrift(head.clone());
        }
        Step::Idle
    }

    /// A pass for `commit` (the one its [`Step`] named) ended with `outcome`.
    pub fn finished(&mut self, commit: &Commit, outcome: Outcome) {
        match outcome {
            Outcome::Applied { wrote } => {
                self.reached(commit, wrote);
                self.drift.clear();
                self.last = Some(if wrote {
                    PassResult::Applied
                } else {
                    PassResult::Unchanged
                });
            }
            Outcome::Healed => {
                self.reached(commit, true);
                self.drift.clear();
                self.last = Some(PassResult::Healed);
            }
            Outcome::Compared { objects } => {
                self.reached(commit, false);
                self.last = Some(if objects.is_empty() {
                    PassResult::Unchanged
                } else {
                    PassResult::Drifted
                });
                self.drift = objects;
            }
            Outcome::Rejected { label, errors } => {
                self.rejected = Some((commit.clone(), errors));
                self.last = Some(PassResult::Rejected(label));
            }
            Outcome::Failed { label, message, .. } => {
                self.owe(commit, Some(message));
                self.backoff.failed();
                self.last = Some(PassResult::Failed(label));
            }
            Outcome::Interrupted => {
                self.owe(commit, None);
                self.last = Some(PassResult::Interrupted);
            }
        }
    }

    /// The rollout of the applied commit `commit` moved on.
    pub fn rollout(&mut self, commit: &Commit, rollout: Rollout) {
        if self.applied.as_ref() == Some(commit) {
            self.rollout = Some(rollout);
        }
    }

    /// Failures in a row since the last success: the loop's retry delay.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The commit a retry is owed to.
    pub fn owed(&self) -> Option<&Commit> {
        self.owed.as_ref().map(|(c, _)| c)
    }

    pub fn applied(&self) -> Option<&Commit> {
        self.applied.as_ref()
    }

    pub fn view(&self) -> View<'_> {
        let head = self.head.as_ref();
        let rejected = self
            .rejected
            .as_ref()
            .filter(|(r, _)| Some(r) == head)
            .map(|(_, errors)| errors.as_str());
        let owed = self.owed.as_ref().and_then(|(_, why)| why.as_deref());
        let rollout = match &self.rollout {
            Some(Rollout::Failed(reason)) => Some(reason.as_str()),
            _ => None,
        };
        View {
            head: head.map(|c| c.sha.as_str()),
            applied: self.applied.as_ref().map(|c| c.sha.as_str()),
            retrying: self.owed().map(|c| c.sha.as_str()),
            result: self.last,
            error: self.remote.as_deref().or(rejected).or(owed).or(rollout),
            rollout: self.rollout.as_ref(),
            drift: &self.drift,
        }
    }

    /// The cluster is at `commit`: whatever was owed to it or to an older one is paid.
    fn reached(&mut self, commit: &Commit, wrote: bool) {
        if self.applied.as_ref() != Some(commit) || wrote {
            self.rollout = None;
        }
        self.applied = Some(commit.clone());
        if self
            .owed
            .as_ref()
            .is_some_and(|(o, _)| o.seen <= commit.seen)
        {
            self.owed = None;
        }
        if self.owed.is_none() {
            self.backoff.succeeded();
        }
    }

    /// `commit` was attempted and is not done: the next pass tries it again (or a newer one).
    fn owe(&mut self, commit: &Commit, why: Option<String>) {
        match &self.owed {
            Some((owed, _)) if owed.seen > commit.seen => {}
            _ => self.owed = Some((commit.clone(), why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn failed() -> Outcome {
        Outcome::Failed {
            failure: Failure::Unreachable,
            label: "unreachable",
            message: "cannot reach the API server".into(),
        }
    }

    /// A source whose cluster is at `sha`, its only commit.
    fn applied(sha: &str) -> (SourceState, Commit) {
        let mut state = SourceState::default();
        state.observe(sha);
        let commit = deployed(&state);
        state.finished(&commit, Outcome::Applied { wrote: true });
        (state, commit)
    }

    fn deployed(state: &SourceState) -> Commit {
        match state.step(false, false) {
            Step::Deploy(commit) => commit,
            other => panic!("expected a deploy, got {other:?}"),
        }
    }

    #[test]
    fn a_new_head_is_deployed_and_then_nothing_is_left_to_do() {
        let mut state = SourceState::default();
        assert_eq!(
            state.step(true, true),
            Step::Idle,
            "the remote was never asked"
        );
        state.observe("a");
        let a = deployed(&state);
        assert_eq!(a.sha, "a");
        state.finished(&a, Outcome::Applied { wrote: true });
        assert_eq!(state.step(false, false), Step::Idle);
        assert_eq!(state.step(false, true), Step::CheckDrift(a.clone()));
        assert_eq!(state.step(true, false), Step::Deploy(a));
        assert_eq!(state.view().result, Some(PassResult::Applied));
    }

    #[test]
    fn a_failed_deploy_stays_owed_across_polls_and_drift_ticks() {
        // The lost commit of issue 15: the deploy of B failed during an API outage; polls
        // that find the same head must retry B, and a drift tick must not re-apply A.
        let (mut state, _) = applied("a");
        state.observe("b");
        let b = deployed(&state);
        state.finished(&b, failed());
        for _ in 0..3 {
            state.observe("b"); // a poll: same head
            assert_eq!(state.step(false, false), Step::Deploy(b.clone()));
            assert_eq!(state.step(false, true), Step::Deploy(b.clone()));
        }
        assert_eq!(state.view().retrying, Some("b"));
        assert_eq!(state.view().error, Some("cannot reach the API server"));
        assert_eq!(state.backoff().failures(), 1);
        state.finished(&b, Outcome::Applied { wrote: true });
        assert_eq!(state.step(false, false), Step::Idle);
        assert_eq!(state.view().retrying, None);
        assert_eq!(state.view().error, None);
        assert_eq!(state.backoff().failures(), 0);
    }

    #[test]
    fn an_invalid_head_is_not_retried_and_its_errors_stay_until_a_new_commit() {
        let (mut state, a) = applied("a");
        state.observe("b");
        let b = deployed(&state);
        state.finished(
            &b,
            Outcome::Rejected {
                label: "invalid",
                errors: "f.yaml:3:1 bad".into(),
            },
        );
        assert_eq!(state.step(false, false), Step::Idle);
        assert_eq!(
            state.step(true, false),
            Step::Idle,
            "not even a manual sync"
        );
        // Drift is measured against the commit the cluster is at; it changes nothing of
        // what is reported about the head.
        assert_eq!(state.step(false, true), Step::CheckDrift(a.clone()));
        state.finished(&a, Outcome::Compared { objects: vec![] });
        assert_eq!(state.view().error, Some("f.yaml:3:1 bad"));
        assert_eq!(state.view().head, Some("b"));
        assert_eq!(state.view().applied, Some("a"));
        state.observe("c");
        let c = deployed(&state);
        assert_eq!(c.sha, "c");
        state.finished(&c, Outcome::Applied { wrote: true });
        assert_eq!(state.view().error, None);
    }

    #[test]
    fn a_half_applied_commit_is_finished_when_the_head_turns_invalid() {
        let (mut state, _) = applied("a");
        state.observe("b");
        let b = deployed(&state);
        state.finished(&b, Outcome::Interrupted);
        state.observe("c");
        let c = deployed(&state);
        state.finished(
            &c,
            Outcome::Rejected {
                label: "invalid",
                errors: "bad".into(),
            },
        );
        assert_eq!(state.step(false, true), Step::Deploy(b.clone()));
        state.finished(&b, Outcome::Applied { wrote: true });
        assert_eq!(state.step(false, true), Step::CheckDrift(b));
    }

    #[test]
    fn the_newest_commit_wins_over_an_older_retry() {
        let mut state = SourceState::default();
        state.observe("a");
        let a = deployed(&state);
        state.finished(&a, failed());
        state.observe("b");
        let b = deployed(&state);
        assert_eq!(b.sha, "b");
        state.finished(&b, Outcome::Applied { wrote: true });
        assert_eq!(state.owed(), None);
        assert_eq!(state.step(false, false), Step::Idle);
        // A late failure of the older commit cannot make it owed again.
        state.finished(&a, failed());
        assert_eq!(state.owed(), Some(&a));
    }

    #[test]
    fn a_force_push_back_to_an_applied_commit_is_a_new_head() {
        let (mut state, _) = applied("a");
        state.observe("b");
        let b = deployed(&state);
        state.finished(&b, Outcome::Applied { wrote: true });
        state.observe("a");
        let again = deployed(&state);
        assert_eq!(again.sha, "a");
        assert!(again.seen > b.seen);
    }

    #[test]
    fn rollouts_belong_to_the_applied_commit() {
        let (mut state, a) = applied("a");
        state.rollout(&a, Rollout::Waiting);
        assert_eq!(state.view().rollout, Some(&Rollout::Waiting));
        state.rollout(&a, Rollout::Failed("pod x crashed".into()));
        assert_eq!(state.view().error, Some("pod x crashed"));
        state.observe("b");
        let b = deployed(&state);
        // The old rollout's end arriving late is ignored once another commit is applied.
        state.finished(&b, Outcome::Applied { wrote: true });
        state.rollout(&a, Rollout::RolledOut);
        assert_eq!(state.view().rollout, None);
        assert_eq!(state.view().error, None);
    }

    /// What can happen to a source, in any order.
    #[derive(Clone, Debug)]
    enum Event {
        /// A commit pushed: the remote's head moves to a new commit.
        Push { valid: bool },
        /// A poll, webhook or retry: the same head is seen again.
        Poll,
        /// A pass runs: `force` (startup, manual), `drift` (a drift tick), and how its
        /// writes would go (`ok` false: the API server fails it).
        Pass { force: bool, drift: bool, ok: bool },
        /// A pass is interrupted (shutdown, lost Lease).
        Interrupt,
        /// Someone edits the cluster.
        Drift,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            any::<bool>().prop_map(|valid| Event::Push { valid }),
            Just(Event::Poll),
            (any::<bool>(), any::<bool>(), any::<bool>())
                .prop_map(|(force, drift, ok)| Event::Pass { force, drift, ok }),
            Just(Event::Interrupt),
            Just(Event::Drift),
        ]
    }

    /// The world around the machine: which commits are valid, what the cluster holds.
    #[derive(Default)]
    struct World {
        head: Option<String>,
        commits: u32,
        invalid: std::collections::BTreeSet<String>,
        cluster: Option<String>,
        drifted: bool,
        /// The newest commit a deploy was started for, by head order.
        attempted: Option<Commit>,
    }

    impl World {
        /// Runs the machine's step like the loop does, against this world.
        fn pass(&mut self, state: &mut SourceState, force: bool, drift: bool, ok: bool, cut: bool) {
            if let Some(head) = &self.head {
                state.observe(head);
            }
            match state.step(force, drift) {
                Step::Idle => {}
                Step::Deploy(commit) => {
                    if self.invalid.contains(&commit.sha) {
                        let errors = "invalid".into();
                        state.finished(
                            &commit,
                            Outcome::Rejected {
                                label: "invalid",
                                errors,
                            },
                        );
                        return;
                    }
                    if let Some(attempted) = &self.attempted {
                        assert!(
                            commit.seen >= attempted.seen,
                            "deployed {commit:?} after {attempted:?}"
                        );
                    }
                    self.attempted = Some(commit.clone());
                    if cut {
                        state.finished(&commit, Outcome::Interrupted);
                    } else if ok {
                        self.cluster = Some(commit.sha.clone());
                        self.drifted = false;
                        state.finished(&commit, Outcome::Applied { wrote: true });
                    } else {
                        state.finished(&commit, failed());
                    }
                }
                Step::CheckDrift(commit) => {
                    if let Some(attempted) = &self.attempted {
                        assert!(
                            commit.seen >= attempted.seen,
                            "checked {commit:?} after {attempted:?}"
                        );
                    }
                    assert_eq!(self.cluster.as_deref(), Some(commit.sha.as_str()));
                    let objects = if self.drifted {
                        vec!["x".into()]
                    } else {
                        vec![]
                    };
                    state.finished(&commit, Outcome::Compared { objects });
                }
            }
        }
    }

    proptest! {
        /// Whatever happened before, once the API server answers again and the triggers keep
        /// coming, the machine ends wanting the newest valid commit applied — and gets it.
        #[test]
        fn every_interleaving_ends_at_the_head(events in proptest::collection::vec(event(), 0..60)) {
            let mut state = SourceState::default();
            let mut world = World::default();
            for event in events {
                match event {
                    Event::Push { valid } => {
                        world.commits += 1;
                        let sha = format!("c{}", world.commits);
                        if !valid {
                            world.invalid.insert(sha.clone());
                        }
                        world.head = Some(sha);
                    }
                    Event::Poll => world.pass(&mut state, false, false, true, false),
                    Event::Pass { force, drift, ok } => world.pass(&mut state, force, drift, ok, false),
                    Event::Interrupt => world.pass(&mut state, false, false, true, true),
                    Event::Drift => world.drifted = true,
                }
            }
            // The faults end: two polls and nothing is left to do.
            world.pass(&mut state, false, false, true, false);
            world.pass(&mut state, false, false, true, false);
            prop_assert_eq!(state.step(false, false), Step::Idle);
            prop_assert_eq!(state.owed(), None);
            let newest_valid = world.attempted.as_ref().map(|c| c.sha.clone());
            match &world.head {
                Some(head) if !world.invalid.contains(head) => {
                    prop_assert_eq!(world.cluster.as_deref(), Some(head.as_str()));
                    prop_assert_eq!(state.view().applied, Some(head.as_str()));
                    prop_assert_eq!(state.view().error, None);
                }
                Some(head) => {
                    // An invalid head: the cluster holds the newest valid commit attempted,
                    // and the head's errors are what is reported.
                    prop_assert_eq!(world.cluster.clone(), newest_valid);
                    prop_assert_eq!(state.view().error, Some("invalid"));
                    prop_assert_eq!(state.view().head, Some(head.as_str()));
                }
                None => prop_assert_eq!(world.cluster.as_deref(), None),
            }
        }
    }
}
