//! When a source reconciles: triggers, how they coalesce, poll jitter and retry backoff.
//!
//! Pure: the loop around it (`source.rs`) owns the clock and the randomness and hands them in,
//! so every rule here is tested with plain values.

use std::collections::BTreeSet;
use std::time::Duration;

/// Why a source should reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// The agent started (or became the leader).
    Startup,
    /// The poll interval passed.
    Poll,
    /// GitHub said the tracked branch moved.
    Webhook,
    /// `POST /api/v1/sources/{name}/sync`.
    Manual,
    /// The drift interval passed.
    Drift,
    /// The backoff after a failure ran out.
    Retry,
    /// A pull request to plan (opened, pushed to, reopened).
    PullRequest,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Poll => "poll",
            Trigger::Webhook => "webhook",
            Trigger::Manual => "manual",
            Trigger::Drift => "drift",
            Trigger::Retry => "retry",
            Trigger::PullRequest => "pull-request",
        }
    }
}

/// What one pass does for the triggers it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Ask the remote for its head, then do what the source's state says (deploy a new or
    /// owed commit). `force` plans the head even when it is the commit applied last (startup,
    /// a manual sync): the cluster may have moved while nobody looked.
    Sync { force: bool },
    /// Only compare the cluster with the commit it is at (or retry a commit owed).
    Drift,
    /// Only plan the pull requests waiting (every pass plans them after its work).
    PullRequests,
}

/// Triggers that arrived while a pass ran (or before the first): however many there are,
/// one pass serves them all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending(BTreeSet<Trigger>);

impl Pending {
    pub fn add(&mut self, trigger: Trigger) {
        self.0.insert(trigger);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether anything but a pull-request plan waits: a sync or a drift check, which go
    /// before plans.
    pub fn beyond_pull_requests(&self) -> bool {
        self.0.iter().any(|t| *t != Trigger::PullRequest)
    }

    /// Takes everything pending as one piece of work, and the triggers it serves. A sync
    /// also measures drift, so a drift tick waiting beside any other trigger is served by it.
    pub fn take(&mut self) -> Option<(Work, Vec<Trigger>)> {
        if self.0.is_empty() {
            return None;
        }
        let triggers: Vec<Trigger> = std::mem::take(&mut self.0).into_iter().collect();
        let force = triggers
            .iter()
            .any(|t| matches!(t, Trigger::Startup | Trigger::Manual));
        let work = if triggers == [Trigger::Drift] {
            Work::Drift
        } else if triggers == [Trigger::PullRequest] {
            Work::PullRequests
        } else {
            Work::Sync { force }
        };
        Some((work, triggers))
    }
}

/// `interval` ±10 %, so that many agents (or sources) started together do not poll in step.
/// `random` is uniform in [0, 1).
pub fn jittered(interval: Duration, random: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * random.clamp(0.0, 1.0))
}

/// Capped exponential backoff with jitter: 1 s, 2 s, 4 s … up to 5 min, each ±20 %, after
/// consecutive failures; a success starts over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);

    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long to wait before the next try; `None` when the last pass succeeded.
    pub fn delay(&self, random: f64) -> Option<Duration> {
        if self.failures == 0 {
            return None;
        }
        let exponent = (self.failures - 1).min(16);
        let raw = Self::BASE.saturating_mul(1u32 << exponent).min(Self::CAP);
        Some(raw.mul_f64(0.8 + 0.4 * random.clamp(0.0, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_coalesce_into_one_pass() {
        let mut pending = Pending::default();
        assert_eq!(pending.take(), None);
        pending.add(Trigger::Poll);
        pending.add(Trigger::Webhook);
        pending.add(Trigger::Poll);
        pending.add(Trigger::Drift);
        assert_eq!(
            pending.take(),
            Some((
                Work::Sync { force: false },
                vec![Trigger::Poll, Trigger::Webhook, Trigger::Drift]
            ))
        );
        assert!(pending.is_empty());
        assert_eq!(pending.take(), None);
    }

    #[test]
    fn startup_and_manual_force_a_pass_and_drift_alone_only_compares() {
        for trigger in [Trigger::Startup, Trigger::Manual] {
            let mut pending = Pending::default();
            pending.add(Trigger::Poll);
            pending.add(trigger);
            assert_eq!(pending.take().unwrap().0, Work::Sync { force: true });
        }
        // A retry asks the remote like a poll; what is owed is the state's to know.
        let mut pending = Pending::default();
        pending.add(Trigger::Retry);
        assert_eq!(pending.take().unwrap().0, Work::Sync { force: false });
        let mut pending = Pending::default();
        pending.add(Trigger::Drift);
        pending.add(Trigger::Drift);
        assert_eq!(pending.take().unwrap(), (Work::Drift, vec![Trigger::Drift]));
        pending.add(Trigger::PullRequest);
        assert_eq!(pending.take().unwrap().0, Work::PullRequests);
        pending.add(Trigger::PullRequest);
        pending.add(Trigger::Webhook);
        assert_eq!(pending.take().unwrap().0, Work::Sync { force: false });
    }

    #[test]
    fn poll_jitter_stays_within_ten_percent() {
        let minute = Duration::from_secs(60);
        assert_eq!(jittered(minute, 0.0), Duration::from_secs(54));
        assert_eq!(jittered(minute, 0.5), minute);
        assert!(jittered(minute, 0.999_999) <= Duration::from_secs(66));
        assert_eq!(jittered(minute, 7.0), Duration::from_secs(66));
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter_and_resets_on_success() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.delay(0.5), None);
        let mut seen = Vec::new();
        for _ in 0..12 {
            backoff.failed();
            seen.push(backoff.delay(0.5).unwrap().as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff.delay(0.0), Some(Duration::from_secs(240)));
        assert_eq!(backoff.delay(1.0), Some(Duration::from_secs(360)));
        for _ in 0..100 {
            backoff.failed();
        }
        assert_eq!(backoff.delay(0.5), Some(Duration::from_secs(300)));
        backoff.succeeded();
        assert_eq!(backoff.delay(0.5), None);
        assert_eq!(backoff.failures(), 0);
    }
}
