//! `meshops validate`

use std::io::{IsTerminal, Write};

use anyhow::Context;

use super::{exit, LoadArgs};
use crate::validate::{report, validate, Schemas, ValidateOptions};

pub const AFTER_HELP: &str = "\
Exit status:
  0  every document is valid (warnings allowed unless --strict)
  1  any error: at least one invalid document, a usage error, or a path or file that could
     not be read (2 is never an error: it means \"changes\" for plan --detailed-exitcode)

Examples:
  meshops validate examples/
  meshops validate --strict --format json prod/ staging/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let tree = args.load.load();
    let schemas = Schemas::new();
    let validation = validate(
        &tree,
        &schemas,
        ValidateOptions {
            strict: args.strict,
        },
    );
    let text = match args.format {
        Format::Text => report::text(&validation, use_color()),
        Format::Json => report::json(&validation) + "\n",
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the report")?;
    // An unreadable path is reported as a diagnostic, so it fails validation like any error.
    Ok(if validation.is_valid() {
        exit::OK
    } else {
        exit::ERROR
    })
}

/// Color only on a terminal, and never when `NO_COLOR` is set (no-color.org).
pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
