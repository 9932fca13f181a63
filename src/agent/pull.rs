//! Planning pull requests: the head of a pull request against the followed branch is read,
//! validated, rendered and planned against the live cluster with dry-runs (nothing is
//! written), and reported as the `meshops/plan/<source>` status, one sticky comment and a
//! check run.
//!
//! The plan's reads and dry-runs go through the same cluster client as the source's deploys:
//! a pull request sees exactly what a merge would be allowed to do, with no broader identity.
//! Which pull requests get here at all is the source's policy (`webhook::plans`), and how
//! many may wait is bounded by [`PullQueue`].

use std::collections::{BTreeMap, VecDeque};

use super::pass::{Revision, SourceError, Worker};
use crate::load::Tree;
use crate::plan::{ObjectRef, Plan};
use crate::reconcile::{self, ReconcileError};
use crate::report::{self, PlanReport, State, Status};

impl Worker {
    /// Plans pull request `number` and reports it.
    pub async fn plan_pull_request(&mut self, number: u64) {
        let Some(repo) = self.config.github.as_ref().map(|g| g.repo.clone()) else {
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
        let source = self.config.name.clone();
        let status = |state, description: &str| Status::new("plan", &source, state, description);
        let (status, comment, annotations) = match self.planned(&sha, tree).await {
            Ok((plan, diffs)) => {
                let details = crate::plan::markdown(&plan, &diffs);
                let comment = report::plan_comment(&source, &sha, &plan, &details);
                (status(State::Success, &plan.summary()), comment, Vec::new())
            }
            Err(SourceError::Reconcile(e)) => match *e {
                ReconcileError::Invalid(validation) => (
                    status(State::Failure, &report::invalid(&validation)),
                    report::invalid_comment(&source, &sha, &validation),
                    report::annotations(&validation),
                ),
                other => not_planned(&source, &sha, &other.to_string(), State::Failure),
            },
            Err(other) => not_planned(&source, &sha, &other.to_string(), State::Error),
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

    /// The plan of a pull request's tree and its diffs.
    async fn planned(
        &mut self,
        sha: &str,
        tree: Tree,
    ) -> Result<(Plan, BTreeMap<ObjectRef, String>), SourceError> {
        let desired = self.render(tree).await?;
        let pass = self.plan_desired(sha, desired).await?;
        let diffs = reconcile::diffs(&self.context.cluster, &pass).await?;
        Ok((pass.plan, diffs))
    }
}

/// The report of a pull request that could not be planned: the reason as its comment.
fn not_planned(
    source: &str,
    sha: &str,
    reason: &str,
    state: State,
) -> (Status, String, Vec<report::Annotation>) {
    let comment = format!(
        "### meshops plan: `{source}` at {}\n\n**Not planned:** {reason}\n",
        report::short(sha)
    );
    (
        Status::new("plan", source, state, reason),
        comment,
        Vec::new(),
    )
}

/// A pull request waiting for a plan: its number and the head the webhook named (the plan
/// reads `refs/pull/N/head`, so it plans whatever is newest when its turn comes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub number: u64,
    pub head: String,
}

/// What queueing a pull request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Queued {
    /// It was not waiting yet.
    Added,
    /// It was waiting: now for its newer head, at the back.
    Renewed,
    /// Added, and the queue was full: the one waiting longest was dropped.
    Displaced(Waiting),
}

/// The pull requests a source will plan, oldest request first, at most `max`: one entry per
/// pull request (newest head wins), so a busy pull request cannot fill the queue, and a burst
/// of pull requests costs at most `max` plans.
#[derive(Debug)]
pub struct PullQueue {
    max: usize,
    waiting: VecDeque<Waiting>,
}

impl PullQueue {
    pub fn new(max: usize) -> PullQueue {
        PullQueue {
            max: max.max(1),
            waiting: VecDeque::new(),
        }
    }

    pub fn push(&mut self, number: u64, head: &str) -> Queued {
        let entry = Waiting {
            number,
            head: head.to_owned(),
        };
        if let Some(at) = self.waiting.iter().position(|w| w.number == number) {
            self.waiting.remove(at);
            self.waiting.push_back(entry);
            return Queued::Renewed;
        }
        self.waiting.push_back(entry);
        if self.waiting.len() > self.max {
            self.waiting
                .pop_front()
                .map_or(Queued::Added, Queued::Displaced)
        } else {
            Queued::Added
        }
    }

    /// The pull request to plan next.
    pub fn pop(&mut self) -> Option<Waiting> {
        self.waiting.pop_front()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_the_newest_head_of_at_most_max_pull_requests() {
        let mut queue = PullQueue::new(3);
        assert_eq!(queue.push(1, "a1"), Queued::Added);
        assert_eq!(queue.push(2, "b1"), Queued::Added);
        assert_eq!(queue.push(1, "a2"), Queued::Renewed);
        assert_eq!(queue.len(), 2, "one entry per pull request");
        assert_eq!(queue.push(3, "c1"), Queued::Added);
        // Full: #2 has waited longest (#1 was asked for again since).
        assert_eq!(
            queue.push(4, "d1"),
            Queued::Displaced(Waiting {
                number: 2,
                head: "b1".into()
            })
        );
        assert_eq!(queue.len(), 3);
        let order: Vec<(u64, String)> = std::iter::from_fn(|| queue.pop())
            .map(|w| (w.number, w.head))
            .collect();
        assert_eq!(
            order,
            [(1, "a2".into()), (3, "c1".into()), (4, "d1".into())]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn a_flood_of_pull_requests_stays_within_the_bound() {
        let mut queue = PullQueue::new(5);
        let dropped = (0..1000)
            .filter(|n| matches!(queue.push(*n, "x"), Queued::Displaced(_)))
            .count();
        assert_eq!(dropped, 995);
        assert_eq!(queue.len(), 5);
        assert_eq!(queue.pop().map(|w| w.number), Some(995));
        assert_eq!(PullQueue::new(0).max, 1);
    }
}
