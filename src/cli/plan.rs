//! `meshops plan` and `meshops apply`: the same plan, two executors.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::render::{desired, source_name, ModeArg};
use super::{exit, LoadArgs};
use crate::cluster::sync::{self, SyncOptions};
use crate::cluster::Cluster;
use crate::plan;
use crate::reconcile::{self, Pass};

pub const PLAN_AFTER_HELP: &str = "\
Reads the cluster with one LIST per kind and namespace, decides what changed from the spec-hash
annotation and the fields meshops owns (managedFields), and asks the API server for a dry-run
of the changed objects only. Secret values are masked in every diff.

The plan is that of `meshops apply` with the same flags: without --prune an object removed
from the repository is shown as \"would be pruned with --prune\" and not counted as a delete
(nor as a change); with --prune it is a delete.

Exit status:
  0  success: no changes, or changes without --detailed-exitcode
  1  any error: invalid manifests, usage, I/O, cluster, a prune of everything refused
  2  changes, with --detailed-exitcode only (as terraform)

Examples:
  meshops plan examples/prod --context prod --prune
  meshops plan -o markdown --detailed-exitcode . > plan.md
  GITHUB_TOKEN=… meshops plan clusters/prod --github-comment acme/functions#42";

pub const APPLY_AFTER_HELP: &str = "\
Applies with server-side apply (field manager `meshops`, force) in order: ServiceAccounts,
ConfigMaps and Secrets, CRs, Services, StatefulSets, then HPA/VPA/PDB/AuthorizationPolicy.
Workloads are owned by their CR. A change to an immutable field is a delete + create. An
object that exists without meshops' labels is adopted; one that another source owns is a
conflict and nothing is applied unless --take-over. RBAC is asked before the first write, so
a user without the rights changes nothing. With --prune, objects in the inventory that the
repository no longer renders are deleted (never those annotated meshops.io/prune: disabled).
With --wait, apply follows every StatefulSet it changed until it is rolled out, fails fast on
a stuck pod and exits 1 at --timeout naming each StatefulSet that is not ready. The status of
every Function, Source and Sink it changed is written either way. It first prints the plan it
executes: the lines and summary of `meshops plan` with the same flags, without the diffs.

Exit status:
  0  applied (or nothing to apply, or --dry-run)
  1  any error: invalid manifests, usage, cluster, conflicts, RBAC, a refused delete,
     a rollout that failed or timed out

Examples:
  meshops apply examples/prod --context prod --prune --wait --timeout 10m
  meshops apply . --dry-run";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanOutput {
    Text,
    Json,
    Markdown,
}

/// Options shared by plan and apply.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Kubeconfig context (default: the current one, or the in-cluster service account).
    #[arg(long)]
    pub context: Option<String>,

    /// Kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Source name: the unit of inventory and pruning (default: the directory's name).
    #[arg(long)]
    pub source: Option<String>,

    /// Namespace of the inventory ConfigMap `meshops-inventory-<source>`.
    #[arg(long, default_value = "default")]
    pub inventory_namespace: String,

    /// Render native workloads or only the CRs; overrides meshops.yaml.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Output format (markdown is what a pull-request comment shows).
    #[arg(short, long, value_enum, default_value_t = PlanOutput::Text)]
    pub output: PlanOutput,

    #[command(flatten)]
    pub prune: PruneArgs,

    /// Exit 2 when there are changes (0 when there are none, 1 on any error).
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Also post the plan on a pull request, as the agent does: one sticky comment per
    /// source (edited in place) and the `meshops/plan/<source>` status on its head commit.
    /// Token from $GITHUB_TOKEN, API from $GITHUB_API_URL (default https://api.github.com).
    #[arg(long, value_name = "OWNER/REPO#N")]
    pub github_comment: Option<String>,
}

/// Pruning, shared by plan and apply so that a plan shows exactly the deletes of the apply
/// with the same flags.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Delete what the inventory lists and the repository no longer renders.
    #[arg(long)]
    pub prune: bool,

    /// Prune even when the repository renders nothing.
    #[arg(long)]
    pub allow_empty: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    #[command(flatten)]
    pub prune: PruneArgs,

    /// Show the plan and stop.
    #[arg(long)]
    pub dry_run: bool,

    /// Revision recorded in the inventory (default: a hash of the rendered objects).
    #[arg(long)]
    pub revision: Option<String>,

    /// Wait until every StatefulSet has rolled out (fails fast on CrashLoopBackOff,
    /// ImagePullBackOff, ErrImagePull, CreateContainerConfigError).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,

    /// Apply objects that another source owns (its meshops.io/source label), taking them over,
    /// instead of refusing.
    #[arg(long)]
    pub take_over: bool,
}

struct Prepared {
    cluster: Cluster,
    pass: Pass,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

/// Runs a cluster command: a failure is exit status 1 (2 means "changes" for plan, as
/// terraform has it), printed once with its causes.
fn cluster_command(
    work: impl std::future::Future<Output = anyhow::Result<u8>>,
) -> anyhow::Result<u8> {
    match runtime()?.block_on(work) {
        Ok(code) => Ok(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(exit::ERROR)
        }
    }
}

/// What apply does beyond what plan does.
#[derive(Default)]
struct ApplyChoices {
    prune: bool,
    allow_empty: bool,
    revision: Option<String>,
    take_over: bool,
}

async fn prepare(args: &ClusterArgs, choices: ApplyChoices) -> anyhow::Result<Option<Prepared>> {
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| source_name(&args.load));
    let Some(desired) = desired(&args.load, args.mode, &source)? else {
        return Ok(None);
    };
    let cluster = Cluster::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let options = SyncOptions {
        source,
        inventory_namespace: args.inventory_namespace.clone(),
        prune: choices.prune,
        allow_empty: choices.allow_empty,
        revision: choices
            .revision
            .unwrap_or_else(|| reconcile::content_revision(&desired)),
        take_over: choices.take_over,
    };
    let pass = reconcile::plan(&cluster, desired, options).await?;
    if let Some(pending) = &pass.live.pending {
        eprintln!(
            "note: an apply of revision {pending} to source \"{}\" did not finish; the next apply \
             completes it (and prunes what it wrote that the repository no longer has)",
            pass.options.source
        );
    }
    Ok(Some(Prepared { cluster, pass }))
}

fn cost(cluster: &Cluster) -> String {
    let counts = cluster.requests().snapshot();
    let by_verb: Vec<String> = counts
        .iter()
        .map(|(verb, n)| format!("{verb} {n}"))
        .collect();
    format!(
        "cost: {} requests ({}), {} writes",
        cluster.requests().total(),
        by_verb.join(", "),
        cluster.requests().writes()
    )
}

/// `OWNER/REPO#N` → (`OWNER/REPO`, N).
fn pull_request(text: &str) -> anyhow::Result<(String, u64)> {
    let parsed = text.split_once('#').and_then(|(repo, number)| {
        let valid = repo.split('/').filter(|p| !p.is_empty()).count() == 2;
        Some((repo.to_owned(), number.parse().ok()?)).filter(|_| valid)
    });
    parsed.ok_or_else(|| anyhow::anyhow!("--github-comment takes OWNER/REPO#NUMBER, not {text:?}"))
}

/// Posts the plan (or the validation errors) of `source` on pull request `target`.
async fn comment_on_github(
    target: &str,
    source: &str,
    outcome: Result<(&plan::Plan, &str), &crate::validate::Validation>,
) -> anyhow::Result<()> {
    use crate::report::{self, PlanReport, State, Status};
    let (repo, number) = pull_request(target)?;
    let token = std::env::var("GITHUB_TOKEN").context("--github-comment needs $GITHUB_TOKEN")?;
    let api = std::env::var("GITHUB_API_URL")
        .unwrap_or_else(|_| crate::github::DEFAULT_API_URL.to_owned());
    let github = crate::github::GitHub::with_token(&api, token)?;
    let sha = github.pull_head(&repo, number).await?;
    let status = |state, description: &str| Status::new("plan", source, state, description);
    let (status, comment, annotations) = match outcome {
        Ok((plan, details)) => (
            status(State::Success, &plan.summary()),
            report::plan_comment(source, &sha, plan, details),
            Vec::new(),
        ),
        Err(validation) => (
            status(State::Failure, &report::invalid(validation)),
            report::invalid_comment(source, &sha, validation),
            report::annotations(validation),
        ),
    };
    let plan = PlanReport {
        comments: report::split(source, &comment),
        source: source.to_owned(),
        pull_request: number,
        head_sha: sha,
        status,
        annotations,
    };
    github.post_plan(&repo, &plan).await?;
    eprintln!("posted the plan on {repo}#{number}");
    Ok(())
}

pub fn run_plan(args: PlanArgs) -> anyhow::Result<u8> {
    if let Some(target) = &args.github_comment {
        pull_request(target)?;
        let source = args
            .cluster
            .source
            .clone()
            .unwrap_or_else(|| source_name(&args.cluster.load));
        let tree = args.cluster.load.load();
        if let Err(validation) = reconcile::validated(&tree, args.cluster.mode.map(Into::into)) {
            super::render::print_diagnostics(&validation);
            runtime()?.block_on(comment_on_github(target, &source, Err(&validation)))?;
            return Ok(exit::ERROR);
        }
    }
    cluster_command(async {
        let choices = ApplyChoices {
            prune: args.prune.prune,
            allow_empty: args.prune.allow_empty,
            ..Default::default()
        };
        let Some(p) = prepare(&args.cluster, choices).await? else {
            return Ok(exit::ERROR);
        };
        // A plan whose apply would refuse to run fails as that apply would.
        sync::check_prune(&p.pass.plan, &p.pass.desired, &p.pass.live, &p.pass.options)?;
        let diffs = reconcile::diffs(&p.cluster, &p.pass).await?;
        let text = match args.output {
            PlanOutput::Text => plan::text(&p.pass.plan, &diffs),
            PlanOutput::Markdown => plan::markdown(&p.pass.plan, &diffs),
            PlanOutput::Json => {
                serde_json::to_string_pretty(
                    &serde_json::json!({"plan": p.pass.plan, "diffs": diffs.iter().map(|(k, v)| (k.to_string(), v)).collect::<std::collections::BTreeMap<_, _>>(), "summary": p.pass.plan.summary()}),
                )? + "\n"
            }
        };
        std::io::stdout().lock().write_all(text.as_bytes())?;
        eprintln!("{}", cost(&p.cluster));
        if let Some(target) = &args.github_comment {
            let details = plan::markdown(&p.pass.plan, &diffs);
            let plan = (&p.pass.plan, details.as_str());
            comment_on_github(target, &p.pass.options.source, Ok(plan)).await?;
        }
        Ok(if args.detailed_exitcode && p.pass.plan.has_changes() {
            exit::CHANGES
        } else {
            exit::OK
        })
    })
}

pub fn run_apply(args: ApplyArgs) -> anyhow::Result<u8> {
    cluster_command(async {
        let choices = ApplyChoices {
            prune: args.prune.prune,
            allow_empty: args.prune.allow_empty,
            revision: args.revision.clone(),
            take_over: args.take_over,
        };
        let Some(p) = prepare(&args.cluster, choices).await? else {
            return Ok(exit::ERROR);
        };
        let mut stdout = std::io::stdout().lock();
        // The plan this apply executes, as `meshops plan` with the same flags prints it (its
        // lines and summary; the diffs would cost a dry-run per changed object).
        stdout.write_all(plan::text(&p.pass.plan, &Default::default()).as_bytes())?;
        if args.dry_run || p.pass.in_sync() {
            eprintln!("{}", cost(&p.cluster));
            return Ok(exit::OK);
        }
        let wait = args.wait.then_some(args.timeout);
        if let Some(timeout) = wait {
            eprintln!(
                "will wait up to {} for {} StatefulSets to roll out",
                humantime::format_duration(timeout),
                sync::rollouts(&p.pass.plan).len()
            );
        }
        let total = p
            .pass
            .plan
            .changes
            .iter()
            .filter(|c| c.action.writes())
            .count();
        let progress = ApplyProgress::new(total as u64);
        // The status says how far the rollout got, whether it finished or not.
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let applied = reconcile::apply(&p.cluster, &p.pass, wait, &now, &progress).await;
        progress.finish();
        let applied = applied?;
        let report = &applied.report;
        let objects = |n: usize| {
            if n == 1 {
                "1 object".to_owned()
            } else {
                format!("{n} objects")
            }
        };
        writeln!(
            stdout,
            "Applied {}, deleted {}.",
            objects(report.applied.len()),
            report.deleted.len()
        )?;
        for (object, error) in &report.failed_deletes {
            writeln!(
                stdout,
                "could not delete {object}: {error} (kept in the inventory)"
            )?;
        }
        eprintln!("{}", cost(&p.cluster));
        applied.rollout?;
        if wait.is_some() {
            writeln!(stdout, "Rolled out.")?;
        }
        Ok(if report.failed_deletes.is_empty() {
            exit::OK
        } else {
            exit::ERROR
        })
    })
}

pub const STATUS_AFTER_HELP: &str = "\
One row per Function, Source and Sink: replicas ready out of desired, whether the cluster
matches the repository (and, when not, which fields another writer changed), and the revision
last applied.

Example:
  meshops status examples/prod --context prod";

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<u8> {
    cluster_command(async {
        let Some(p) = prepare(&args.cluster, ApplyChoices::default()).await? else {
            return Ok(exit::ERROR);
        };
        let mut rows = vec![[
            "KIND".to_owned(),
            "NAMESPACE".into(),
            "NAME".into(),
            "READY".into(),
            "SYNC".into(),
            "REVISION".into(),
        ]];
        for object in p
            .pass
            .desired
            .iter()
            .filter(|o| matches!(o.kind(), "Function" | "Source" | "Sink"))
        {
            let cr = crate::plan::ObjectRef::of(&object.value);
            let workload = format!("{}-{}", cr.name, cr.kind.to_ascii_lowercase());
            let sts = p.pass.live.objects.values().find(|v| {
                v["kind"] == "StatefulSet"
                    && v["metadata"]["name"] == workload.as_str()
                    && v["metadata"]["namespace"] == cr.namespace.as_str()
            });
            let ready = match sts {
                Some(s) => format!(
                    "{}/{}",
                    s["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    s["spec"]["replicas"].as_i64().unwrap_or(0)
                ),
                None => "-".into(),
            };
            let own: Vec<&crate::plan::Change> = p
                .pass
                .plan
                .changes
                .iter()
                .filter(|c| {
                    c.action.is_change()
                        && c.object.namespace == cr.namespace
                        && (c.object.name == cr.name || c.object.name.starts_with(&workload))
                })
                .collect();
            let sync = if own.is_empty() {
                "synced".to_owned()
            } else {
                let fields: Vec<String> = own
                    .iter()
                    .filter_map(|c| p.pass.live.objects.get(&c.object))
                    .flat_map(crate::plan::foreign_fields)
                    .collect();
                if fields.is_empty() {
                    format!("out of date ({} objects)", own.len())
                } else {
                    format!("drifted: {}", fields.join(", "))
                }
            };
            let revision = p
                .pass
                .live
                .objects
                .get(&cr)
                .and_then(|v| v["status"]["revision"].as_str().map(str::to_owned))
                .or_else(|| p.pass.live.revision.clone())
                .unwrap_or_else(|| "-".into());
            rows.push([
                cr.kind.clone(),
                cr.namespace.clone(),
                cr.name.clone(),
                ready,
                sync,
                revision,
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut stdout = std::io::stdout().lock();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            writeln!(stdout, "{}", cells.join("  ").trim_end())?;
        }
        Ok(exit::OK)
    })
}

/// A progress bar on a terminal, one line per object otherwise.
struct ApplyProgress(Option<indicatif::ProgressBar>);

impl ApplyProgress {
    fn new(total: u64) -> ApplyProgress {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return ApplyProgress(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
            bar.set_style(style);
        }
        ApplyProgress(Some(bar))
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl sync::Progress for ApplyProgress {
    fn done(&self, object: &crate::plan::ObjectRef, action: crate::plan::Action) {
        let verb = match action {
            crate::plan::Action::Create => "created",
            crate::plan::Action::Adopt => "adopted",
            crate::plan::Action::Update => "updated",
            crate::plan::Action::Recreate => "recreated",
            crate::plan::Action::Delete => "deleted",
            crate::plan::Action::Conflict => "taken over",
            crate::plan::Action::Keep => "kept",
            crate::plan::Action::Prunable => "not pruned",
            crate::plan::Action::Unchanged => "unchanged",
        };
        match &self.0 {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("{} {}/{}", verb, object.kind, object.name));
            }
            None => eprintln!("{verb} {object}"),
        }
    }
}
