//! `meshops render`

use std::io::Write;

use anyhow::Context;

use super::validate::use_color;
use super::{exit, LoadArgs};
use crate::model::settings::Mode;
use crate::model::RenderSettings;
use crate::reconcile;
use crate::render::{render_each, yaml_document, Object};
use crate::validate::{report, Checked, Validation};

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

/// Loads and validates: the typed manifests and the render settings, or `None` when the
/// manifests are invalid (the diagnostics are on stderr). The loaded files are dropped here,
/// before anything is rendered.
fn validated(
    load: &LoadArgs,
    mode: Option<ModeArg>,
) -> anyhow::Result<Option<(Vec<Checked>, RenderSettings)>> {
    match reconcile::validated(&load.load(), mode.map(Mode::from)) {
        Ok(valid) => Ok(Some(valid)),
        Err(validation) => {
            print_diagnostics(&validation);
            Ok(None)
        }
    }
}

/// The diagnostics on stderr, coloured on a terminal.
pub fn print_diagnostics(validation: &Validation) {
    let color = use_color() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    eprint!("{}", report::text(validation, color));
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Mode {
        match mode {
            ModeArg::Native => Mode::Native,
            ModeArg::Operator => Mode::Operator,
        }
    }
}

/// Loads, validates and renders: the desired state of a source. `None` when the manifests
/// are invalid (the diagnostics are on stderr).
pub fn desired(
    load: &LoadArgs,
    mode: Option<ModeArg>,
    source: &str,
) -> anyhow::Result<Option<Vec<Object>>> {
    match reconcile::desired(&load.load(), mode.map(Mode::from), source) {
        Ok(desired) => Ok(Some(desired)),
        Err(reconcile::ReconcileError::Invalid(validation)) => {
            print_diagnostics(&validation);
            Ok(None)
        }
        Err(other) => Err(other.into()),
    }
}

/// One object as printed: a YAML document, or an element of the pretty JSON array (indented
/// as `serde_json::to_string_pretty` indents the elements of an array).
fn text(object: Object, output: Output) -> String {
    match output {
        Output::Yaml => yaml_document(object),
        // Indented one level, as an element of the array around it: a string's line breaks
        // are escaped in JSON, so every raw '\n' starts a line of the document.
        Output::Json => {
            let pretty = serde_json::to_string_pretty(&object.value).unwrap_or_default();
            format!("  {}", pretty.replace('\n', "\n  "))
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| source_name(&args.load));
    let Some((checked, settings)) = validated(&args.load, args.mode)? else {
        return Ok(exit::ERROR);
    };
    let wanted = |object: &Object| {
        args.only.is_empty()
            || args.only.iter().any(|want| {
                want.eq_ignore_ascii_case(&format!("{}/{}", object.kind(), object.name()))
            })
    };
    // Each object becomes text on the thread that rendered it and is dropped there.
    let texts: Vec<Option<String>> = render_each(&checked, &settings, &source, |object| {
        wanted(&object).then(|| text(object, args.output))
    })?;
    drop(checked);
    let texts = texts.into_iter().flatten();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match args.output {
        Output::Yaml => {
            for text in texts {
                stdout.write_all(text.as_bytes())?;
            }
        }
        Output::Json => {
            let texts: Vec<String> = texts.collect();
            if texts.is_empty() {
                stdout.write_all(b"[]\n")?;
            } else {
                write!(stdout, "[\n{}\n]\n", texts.join(",\n"))?;
            }
        }
    }
    stdout.flush().context("writing the objects")?;
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
