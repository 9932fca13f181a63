//! `meshops schema`

use std::io::Write;

use anyhow::{bail, Context};

use super::exit;
use crate::model::{schema, Kind};

pub const AFTER_HELP: &str = "\
Kinds: Function, Source, Sink, FunctionMesh, BackendConfig, ConfigMap, Secret, ServiceAccount,
Settings (meshops.yaml)
(case-insensitive).

Editors that speak the YAML language server pick a schema up from a comment on the first line
of a manifest:
  # yaml-language-server: $schema=../schemas/function.json

Examples:
  meshops schema function > function.schema.json
  meshops schema --list";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kind whose schema to print.
    #[arg(value_name = "KIND", required_unless_present = "list")]
    pub kind: Option<String>,

    /// List the kinds and their schema file names instead.
    #[arg(long)]
    pub list: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout().lock();
    if args.list {
        for kind in Kind::ALL {
            writeln!(
                stdout,
                "{:<16} {:<36} schemas/{}",
                kind.as_str(),
                kind.api_version(),
                kind.schema_file()
            )?;
        }
        return Ok(exit::OK);
    }
    let name = args.kind.unwrap_or_default();
    let Some(kind) = Kind::from_name(&name) else {
        bail!("unknown kind \"{name}\"; run `meshops schema --list` for the kinds");
    };
    stdout
        .write_all(schema::embedded(kind).as_bytes())
        .context("writing the schema")?;
    Ok(exit::OK)
}
