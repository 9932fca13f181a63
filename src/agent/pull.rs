//! Planning pull requests: the head of a pull request against the followed branch is read,
//! validated, rendered and planned against the live cluster with dry-runs (nothing is
//! written), and reported as the `meshops/plan/<source>` status, one sticky comment and a
//! check run.

use std::collections::BTreeMap;

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
