//! The command line: one file per subcommand, wiring only.

mod agent;
mod crds;
mod plan;
mod render;
mod schema;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::load::{Limits, LoadOptions, Tree};

/// GitOps for Function Mesh: validate, render, plan and apply Pulsar Functions, Sources and
/// Sinks kept in Git.
#[derive(Debug, Parser)]
#[command(name = "meshops", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More log output (-v: debug, -vv: trace); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests against the schemas, the operator's admission rules and the topic graph.
    #[command(after_help = validate::AFTER_HELP)]
    Validate(validate::Args),
    /// Render manifests into the Kubernetes objects to apply (like `helm template`).
    #[command(after_help = render::AFTER_HELP)]
    Render(render::Args),
    /// Show what apply would change in the cluster, with diffs.
    #[command(after_help = plan::PLAN_AFTER_HELP)]
    Plan(plan::PlanArgs),
    /// Apply the repository to the cluster (server-side apply), optionally pruning.
    #[command(after_help = plan::APPLY_AFTER_HELP)]
    Apply(plan::ApplyArgs),
    /// Show each Function, Source and Sink: ready replicas, sync state, applied revision.
    #[command(after_help = plan::STATUS_AFTER_HELP)]
    Status(plan::StatusArgs),
    /// Run in the cluster: follow Git repositories, apply on push, report drift.
    #[command(after_help = agent::AFTER_HELP)]
    Agent(agent::Args),
    /// Print the Function Mesh CRDs (generated from the schemas).
    #[command(after_help = crds::AFTER_HELP)]
    Crds(crds::Args),
    /// Print the JSON Schema of a kind (for editors and CI tools).
    #[command(after_help = schema::AFTER_HELP)]
    Schema(schema::Args),
}

/// Options shared by every command that reads a repository.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Files or directories to read (directories are walked for *.yaml and *.yml).
    #[arg(value_name = "PATH", default_value = ".")]
    pub paths: Vec<PathBuf>,

    /// Namespace for objects whose metadata has none.
    #[arg(long, value_name = "NAMESPACE", default_value = "default")]
    pub default_namespace: String,

    /// Largest manifest file accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_file_size: u64,
}

impl LoadArgs {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            limits: Limits {
                max_file_bytes: self.max_file_size,
                ..Default::default()
            },
            default_namespace: self.default_namespace.clone(),
            ..LoadOptions::default()
        }
    }

    /// Reads every path into one tree.
    pub fn load(&self) -> Tree {
        let options = self.options();
        let mut tree = Tree::default();
        for path in &self.paths {
            tree.add_path(path, &options);
        }
        tracing::debug!(
            files = tree.files.len(),
            documents = tree.documents.len(),
            problems = tree.problems.len(),
            "loaded"
        );
        tree
    }
}

/// Exit codes, the same for every subcommand (README "Exit status", each `--help`). As
/// terraform: any error is 1, whatever failed (invalid manifests, usage, I/O, the cluster), so
/// that 2 can only mean "changes" for `plan --detailed-exitcode` and a script never takes an
/// error for changes or the other way round.
pub mod exit {
    /// Success; for `plan`, also "changes" when `--detailed-exitcode` is not given.
    pub const OK: u8 = 0;
    /// Any error, usage errors included.
    pub const ERROR: u8 = 1;
    /// `plan --detailed-exitcode` with changes (as terraform).
    pub const CHANGES: u8 = 2;
}

/// Parses the command line. Help and `--version` print to stdout and exit 0; any usage error
/// exits [`exit::ERROR`] rather than clap's 2, which `plan --detailed-exitcode` gives "changes".
pub fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|err| {
        // Printing can only fail on a closed stream; nothing is left to tell then.
        let _ = err.print();
        ExitCode::from(if err.use_stderr() {
            exit::ERROR
        } else {
            exit::OK
        })
    })
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Schema(args) => schema::run(args),
        Command::Render(args) => render::run(args),
        Command::Plan(args) => plan::run_plan(args),
        Command::Crds(args) => crds::run(args),
        Command::Status(args) => plan::run_status(args),
        Command::Apply(args) => plan::run_apply(args),
        Command::Agent(args) => agent::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // A closed pipe (`meshops crds | head`) is the reader's choice, not an error.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::from(exit::OK)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}
