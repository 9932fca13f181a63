//! What the agent tells GitHub, as values: commit statuses, pull-request plans, and the text
//! they carry. The agent talks to a [`Reporter`]; [`Queue`] is the one it is given, which hands
//! the reports to a [`Sink`] (`crate::github`) in the background so that GitHub is never on
//! the deploy path. Everything here but the traits and the queue is pure text-making, tested
//! with plain values; this module knows neither the agent nor GitHub's wire protocol.

mod queue;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::plan::{Action, Plan};
use crate::validate::{Severity, Validation};

pub use queue::{Queue, QueueOptions};

/// GitHub's limit on a status description.
pub const DESCRIPTION_CHARS: usize = 140;
/// GitHub's limit on a comment body.
pub const COMMENT_CHARS: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Pending,
    Success,
    Failure,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
            State::Error => "error",
        }
    }
}

/// A commit status: `context` is `meshops/sync/<source>`, `meshops/drift/<source>` or
/// `meshops/plan/<source>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub context: String,
    pub state: State,
    pub description: String,
}

impl Status {
    pub fn new(kind: &str, source: &str, state: State, description: &str) -> Status {
        Status {
            context: format!("meshops/{kind}/{source}"),
            state,
            description: bounded(description, DESCRIPTION_CHARS),
        }
    }

    /// The source the status is about: the last part of `meshops/<kind>/<source>` (the whole
    /// context for one made by hand).
    pub fn source(&self) -> &str {
        let mut parts = self.context.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(_), Some(source)) => source,
            _ => &self.context,
        }
    }
}

/// A problem to show at its line in the pull request's diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub path: String,
    pub line: u32,
    pub title: String,
    pub message: String,
}

/// A pull request's plan for one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanReport {
    pub source: String,
    pub pull_request: u64,
    pub head_sha: String,
    pub status: Status,
    /// The sticky comment, already split to fit GitHub's limit.
    pub comments: Vec<String>,
    pub annotations: Vec<Annotation>,
}

/// Where the agent's reports go. Reporting never fails a sync and never holds one up: the
/// futures return nothing, and [`Queue`] returns them at once.
pub trait Reporter: Send + Sync {
    fn status<'a>(&'a self, repo: &'a str, sha: &'a str, status: Status) -> BoxFuture<'a, ()>;
    fn plan<'a>(&'a self, repo: &'a str, plan: PlanReport) -> BoxFuture<'a, ()>;
}

/// No GitHub configured: nothing is reported.
pub struct Silent;

impl Reporter for Silent {
    fn status<'a>(&'a self, _: &'a str, _: &'a str, _: Status) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn plan<'a>(&'a self, _: &'a str, _: PlanReport) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Why a report did not reach its destination, as far as the [`Queue`] needs to know: whether
/// trying again later can help.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No answer in time, a broken connection, a 5xx or a rate limit: worth another try,
    /// not before `retry_after` when the service said so.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The service said no in a way that trying again will not change (credentials, a
    /// repository that does not exist or is not ours, a request it does not take).
    #[error("{reason}")]
    Refused { reason: String },
}

/// Where a [`Queue`] delivers, one report at a time per source: the real reporter (GitHub).
/// Unlike [`Reporter`], it says whether the report arrived, so the queue knows what to retry.
pub trait Sink: Send + Sync {
    fn status<'a>(
        &'a self,
        repo: &'a str,
        sha: &'a str,
        status: &'a Status,
    ) -> BoxFuture<'a, Result<(), ReportError>>;
    fn plan<'a>(
        &'a self,
        repo: &'a str,
        plan: &'a PlanReport,
    ) -> BoxFuture<'a, Result<(), ReportError>>;
}

/// At most `max` characters, with an ellipsis when cut.
pub fn bounded(text: &str, max: usize) -> String {
    let text = text.lines().next().unwrap_or_default().trim();
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// `invalid manifests: 3 errors; first deploy/x.yaml:6:3 unknown field "replicaz"`.
pub fn invalid(validation: &Validation) -> String {
    let first = validation
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error);
    match first {
        Some(d) => {
            let place = match d.position {
                Some(p) => format!("{}:{p}", d.file.display()),
                None => d.file.display().to_string(),
            };
            let errors = validation.errors();
            let noun = if errors == 1 { "error" } else { "errors" };
            format!(
                "invalid manifests: {errors} {noun}; first {place} {}",
                d.message
            )
        }
        None => "invalid manifests".to_owned(),
    }
}

/// `3 objects drifted: StatefulSet prod/alerts-function image by kubectl-edit, …`, from the
/// plan's drift reasons (`changed in the cluster by M (fields)`).
pub fn drifted(plan: &Plan) -> Option<String> {
    let drifted: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| c.action.is_change())
        .map(|c| {
            let o = &c.object;
            let how = c
                .reason
                .strip_prefix("changed in the cluster by ")
                .map(|rest| match rest.split_once(" (") {
                    Some((manager, fields)) => {
                        let field = fields
                            .trim_end_matches(')')
                            .split(", ")
                            .next()
                            .unwrap_or("");
                        let leaf = field.rsplit('.').next().unwrap_or(field);
                        format!("{leaf} by {manager}")
                    }
                    None => format!("by {rest}"),
                })
                .unwrap_or_else(|| c.action.verb().to_owned());
            format!("{} {}/{} {how}", o.kind, o.namespace, o.name)
        })
        .collect();
    match drifted.len() {
        0 => None,
        1 => Some(format!("1 object drifted: {}", drifted[0])),
        n => Some(format!("{n} objects drifted: {}", drifted.join(", "))),
    }
}

/// The hidden marker that finds a source's sticky comment on a pull request (part `n` of a
/// split one).
pub fn marker(source: &str, part: usize) -> String {
    format!("<!-- meshops:plan:{source}:{part} -->")
}

/// Create / update / recreate / delete by kind, as a markdown table.
pub fn table(plan: &Plan) -> String {
    let mut by_kind: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    for change in &plan.changes {
        let column = match change.action {
            Action::Create | Action::Adopt => 0,
            Action::Update | Action::Conflict => 1,
            Action::Recreate => 2,
            Action::Delete => 3,
            Action::Keep | Action::Prunable | Action::Unchanged => continue,
        };
        by_kind.entry(&change.object.kind).or_default()[column] += 1;
    }
    if by_kind.is_empty() {
        return String::new();
    }
    let mut out =
        "| kind | create | update | recreate | delete |\n| --- | --: | --: | --: | --: |\n"
            .to_owned();
    for (kind, [create, update, recreate, delete]) in by_kind {
        out.push_str(&format!(
            "| {kind} | {create} | {update} | {recreate} | {delete} |\n"
        ));
    }
    out
}

/// The comment body for a valid pull request: heading, table, then the per-object
/// `<details>` blocks of `plan::markdown` (whose diffs are already masked).
pub fn plan_comment(source: &str, sha: &str, plan: &Plan, details: &str) -> String {
    format!(
        "### meshops plan: `{source}` at {}\n\n{}\n{details}",
        short(sha),
        table(plan)
    )
}

/// The comment body for an invalid pull request: every error at its file and line.
pub fn invalid_comment(source: &str, sha: &str, validation: &Validation) -> String {
    let mut out = format!(
        "### meshops plan: `{source}` at {}\n\n**{}: nothing would be applied.**\n\n",
        short(sha),
        invalid(validation)
            .split(';')
            .next()
            .unwrap_or("invalid manifests")
    );
    for d in &validation.diagnostics {
        let place = match d.position {
            Some(p) => format!("{}:{p}", d.file.display()),
            None => d.file.display().to_string(),
        };
        let level = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("- {level} `{place}` {} ({})\n", d.message, d.code));
    }
    out
}

/// Validation errors as annotations at their file and line.
pub fn annotations(validation: &Validation) -> Vec<Annotation> {
    validation
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| Annotation {
            path: d.file.display().to_string(),
            line: d.position.map_or(1, |p| p.line),
            title: d.code.to_owned(),
            message: d.message.clone(),
        })
        .collect()
}

/// Splits a comment into parts that fit GitHub's limit once their marker and a continuation
/// line are added, cutting between lines and closing and reopening an open code fence or
/// `<details>` block, so every part renders on its own. Each part starts with its marker.
pub fn split(source: &str, body: &str) -> Vec<String> {
    // Room for the marker, the continuation notes and re-opened/closed blocks.
    let budget = COMMENT_CHARS - 400;
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut fence: Option<String> = None;
    let mut details: Option<String> = None;
    let close = |part: &mut String, fence: &Option<String>, details: &Option<String>| {
        if fence.is_some() {
            part.push_str("````\n");
        }
        if details.is_some() {
            part.push_str("</details>\n");
        }
        part.push_str("\n*(continued in the next comment)*\n");
    };
    for line in body.split_inclusive('\n') {
        // A single line longer than a comment is cut; it can only be a very long value.
        let line: String = if line.len() > budget / 2 {
            let mut cut: String = line.chars().take(budget / 4).collect();
            cut.push_str(" …\n");
            cut
        } else {
            line.to_owned()
        };
        if current.len() + line.len() > budget {
            close(&mut current, &fence, &details);
            parts.push(std::mem::take(&mut current));
            if let Some(summary) = &details {
                current.push_str(summary);
                current.push('\n');
            }
            if let Some(open) = &fence {
                current.push_str(open);
            }
        }
        let trimmed = line.trim_end();
        if trimmed.starts_with("<details>") {
            details = Some(trimmed.to_owned());
        } else if trimmed == "</details>" {
            details = None;
        } else if trimmed.starts_with("````") {
            fence = match fence {
                Some(_) => None,
                None => Some(line.clone()),
            };
        }
        current.push_str(&line);
    }
    parts.push(current);
    let total = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let heading = if total > 1 {
                format!(
                    "{}\n*(part {} of {total})*\n\n",
                    marker(source, i + 1),
                    i + 1
                )
            } else {
                format!("{}\n", marker(source, i + 1))
            };
            heading + &part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Change, ObjectRef};

    fn object(kind: &str, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            namespace: "prod".into(),
            name: name.into(),
        }
    }

    fn change(kind: &str, name: &str, action: Action, reason: &str) -> Change {
        Change {
            object: object(kind, name),
            action,
            reason: reason.into(),
        }
    }

    #[test]
    fn descriptions_fit_githubs_limit() {
        let status = Status::new("sync", "prod", State::Failure, &"x".repeat(500));
        assert_eq!(status.context, "meshops/sync/prod");
        assert_eq!(status.description.chars().count(), DESCRIPTION_CHARS);
        assert!(status.description.ends_with('…'));
        assert_eq!(bounded("first line\nsecond", 140), "first line");
        assert_eq!(status.source(), "prod");
        let by_hand = Status {
            context: "ci".into(),
            ..status
        };
        assert_eq!(by_hand.source(), "ci");
    }

    #[test]
    fn drift_names_object_field_and_manager() {
        let plan = Plan {
            changes: vec![
                change(
                    "StatefulSet",
                    "alerts-function",
                    Action::Update,
                    "changed in the cluster by kubectl-edit (spec.template.spec.containers[name=pulsar-function].image, spec.replicas)",
                ),
                change("Service", "alerts", Action::Create, "missing from the cluster"),
                change("ConfigMap", "same", Action::Unchanged, "in sync"),
            ],
        };
        assert_eq!(
            drifted(&plan).unwrap(),
            "2 objects drifted: StatefulSet prod/alerts-function image by kubectl-edit, Service prod/alerts create"
        );
        assert_eq!(drifted(&Plan::default()), None);
    }

    #[test]
    fn the_table_counts_by_kind() {
        let plan = Plan {
            changes: vec![
                change("StatefulSet", "a", Action::Update, ""),
                change("StatefulSet", "b", Action::Recreate, ""),
                change("Function", "c", Action::Create, ""),
                change("Function", "d", Action::Delete, ""),
                change("Function", "e", Action::Unchanged, ""),
            ],
        };
        assert_eq!(
            table(&plan),
            "| kind | create | update | recreate | delete |\n| --- | --: | --: | --: | --: |\n\
             | Function | 1 | 0 | 0 | 1 |\n| StatefulSet | 0 | 1 | 1 | 0 |\n"
        );
    }

    #[test]
    fn a_long_comment_is_split_into_parts_that_each_render() {
        let mut body = String::from("### plan\n");
        for i in 0..400 {
            body.push_str(&format!(
                "<details><summary>update x{i}</summary>\n\n````diff\n"
            ));
            for j in 0..20 {
                body.push_str(&format!("-  image: registry/{i}/{j}:{}\n", "a".repeat(4)));
            }
            body.push_str("````\n\n</details>\n");
        }
        let parts = split("prod", &body);
        assert!(parts.len() > 1, "{}", body.len());
        for (i, part) in parts.iter().enumerate() {
            assert!(part.len() <= COMMENT_CHARS, "part {i}: {}", part.len());
            assert!(part.starts_with(&marker("prod", i + 1)));
            // Fences and details balance in every part.
            assert_eq!(part.matches("````").count() % 2, 0, "part {i}");
            assert_eq!(
                part.matches("<details>").count(),
                part.matches("</details>").count(),
                "part {i}"
            );
        }
        assert!(parts[0].contains("*(continued in the next comment)*"));
        assert!(parts[1].contains(&format!("*(part 2 of {})*", parts.len())));
        // Nothing lost: every diff line is in some part.
        let joined = parts.concat();
        assert!(joined.contains("registry/399/19:aaaa"));
        assert_eq!(split("prod", "short").len(), 1);
        assert_eq!(
            split("prod", "short")[0],
            format!("{}\nshort", marker("prod", 1))
        );
    }
}
