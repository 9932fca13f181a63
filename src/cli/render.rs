//! `meshops render`

use std::io::Write;

use anyhow::Context;

use super::validate::use_color;
use super::{exit, LoadArgs};
use crate::model::settings::Mode;
use crate::render::{render, settings_of, to_yaml, Object};
use crate::validate::{report, validate, Schemas, ValidateOptions};

pub const AFTER_HELP: &str = "\
Validates first (the same diagnostics as `meshops validate`, on stderr; nothing is printed on
stdout when a manifest is invalid), then prints the objects in apply order as a
`---`-separated YAML stream, like `helm template`. Settings come from meshops.yaml at the root.

Exit status: 0 rendered, 1 invalid manifests, 2 usage or I/O error.

Examples:
  meshops render examples/staging
  meshops render examples/prod --only StatefulSet/alerts-function
  meshops render examples/ --mode operator -o json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Native,
    Operator,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub load: LoadArgs,

    /// What to render: runner workloads too (native) or only the CRs (operator); overrides
    /// meshops.yaml.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    pub output: Output,

    /// Print only the objects with this kind and name (KIND/NAME, repeatable).
    #[arg(long, value_name = "KIND/NAME")]
    pub only: Vec<String>,

    /// Source name for the identity labels (default: the directory's name).
    #[arg(long)]
    pub source: Option<String>,
}

/// Loads, validates and renders: the desired state of a source. `None` when the manifests
/// are invalid (the diagnostics are on stderr).
pub fn desired(
    load: &LoadArgs,
    mode: Option<ModeArg>,
    source: &str,
) -> anyhow::Result<Option<Vec<Object>>> {
    let tree = load.load();
    let schemas = Schemas::new();
    let validation = validate(&tree, &schemas, ValidateOptions::default());
    if !validation.is_valid() {
        let color = use_color() && std::io::IsTerminal::is_terminal(&std::io::stderr());
        eprint!("{}", report::text(&validation, color));
        return Ok(None);
    }
    let mut settings = settings_of(&validation.checked);
    if let Some(mode) = mode {
        settings.mode = Some(match mode {
            ModeArg::Native => Mode::Native,
            ModeArg::Operator => Mode::Operator,
        });
    }
    Ok(Some(render(&validation.checked, &settings, source)?))
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| source_name(&args.load));
    let Some(mut objects) = desired(&args.load, args.mode, &source)? else {
        return Ok(exit::INVALID);
    };
    if !args.only.is_empty() {
        objects.retain(|o| {
            args.only
                .iter()
                .any(|want| want.eq_ignore_ascii_case(&format!("{}/{}", o.kind(), o.name())))
        });
    }
    let text = match args.output {
        Output::Yaml => to_yaml(&objects),
        Output::Json => {
            let values: Vec<_> = objects.iter().map(|o| &o.value).collect();
            serde_json::to_string_pretty(&values)? + "\n"
        }
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the objects")?;
    Ok(exit::OK)
}

/// The directory name of the (first) path, as a label value.
pub fn source_name(load: &LoadArgs) -> String {
    let path = load.paths.first().cloned().unwrap_or_else(|| ".".into());
    let absolute = std::fs::canonicalize(&path).unwrap_or(path);
    let name = absolute
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("default");
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}
