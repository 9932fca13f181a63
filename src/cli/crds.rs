//! `meshops crds`

use std::io::Write;

use crate::model::crd::crds_yaml;

pub const AFTER_HELP: &str = "\
Prints the CustomResourceDefinitions of compute.functionmesh.io (Function, Source, Sink with
status and scale subresources; FunctionMesh; BackendConfig), generated from the same schemas
`meshops validate` uses. The chart ships the same file in charts/meshops/crds/. The Istio
AuthorizationPolicy CRD comes from Istio itself.

Example:
  meshops crds | kubectl apply --server-side -f -";

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<u8> {
    std::io::stdout().lock().write_all(crds_yaml().as_bytes())?;
    Ok(super::exit::OK)
}
