//! Reading `meshops agent --config FILE`: loaded and validated as a manifest is (schema
//! errors with file:line:col), then the checks the schema cannot make.

use std::path::Path;

use crate::load::{LoadOptions, Purpose, Tree};
use crate::model::agent::{self, AgentConfig};
use crate::model::Manifest;
use crate::validate::{self, Diagnostic, Schemas, Severity, ValidateOptions, Validation};

/// The config, or every diagnostic about it.
pub fn load(path: &Path) -> Result<AgentConfig, Box<Validation>> {
    let options = LoadOptions {
        purpose: Purpose::AgentConfig,
        ..LoadOptions::default()
    };
    let tree = Tree::load(path, &options);
    let mut validation = validate::validate(&tree, &Schemas::new(), ValidateOptions::default());
    let configs: Vec<&AgentConfig> = validation
        .checked
        .iter()
        .filter_map(|c| match &c.manifest {
            Manifest::AgentConfig(config) => Some(config),
            _ => None,
        })
        .collect();
    let error = |message: String, pointer: &str, document: Option<usize>| {
        let doc = document.and_then(|d| tree.documents.get(d));
        Diagnostic {
            severity: Severity::Error,
            code: "agent-config",
            message,
            file: path.to_path_buf(),
            position: doc.map(|d| d.position(pointer)),
            pointer: Some(pointer.to_owned()),
            source_line: None,
            notes: Vec::new(),
        }
    };
    let mut found = Vec::new();
    if validation.is_valid() && configs.len() != 1 {
        found.push(error(
            format!(
                "the file holds {} AgentConfig documents; it must hold exactly one",
                configs.len()
            ),
            "",
            None,
        ));
    }
    if let (Some(config), Some(checked)) = (configs.first(), validation.checked.first()) {
        for (index, name) in config.duplicate_sources() {
            found.push(error(
                format!("source \"{name}\" is defined twice; each source is its own inventory"),
                &format!("/sources/{index}/name"),
                Some(checked.document),
            ));
        }
        if let Some(github) = &config.github {
            let ways = [
                github.token_file.is_some(),
                github.token_env.is_some(),
                github.app.is_some(),
            ];
            if ways.iter().filter(|w| **w).count() != 1 {
                found.push(error(
                    "github needs exactly one of tokenFile, tokenEnv or app".to_owned(),
                    "/github",
                    Some(checked.document),
                ));
            }
            if let Some(text) = &github.request_timeout {
                if agent::duration(text).is_none_or(|d| d.is_zero()) {
                    found.push(error(
                        format!("requestTimeout \"{text}\" is not a positive duration"),
                        "/github/requestTimeout",
                        Some(checked.document),
                    ));
                }
            }
        }
        for (index, source) in config.sources.iter().enumerate() {
            if let Some(text) = &source.rollout_timeout {
                if agent::duration(text).is_none() {
                    found.push(error(
                        format!("rolloutTimeout \"{text}\" is not a duration"),
                        &format!("/sources/{index}/rolloutTimeout"),
                        Some(checked.document),
                    ));
                }
            }
            for (field, value) in [
                ("interval", &source.interval),
                ("driftInterval", &source.drift_interval),
                ("timeout", &source.timeout),
            ] {
                if let Some(text) = value {
                    if agent::duration(text).is_none_or(|d| d.is_zero()) {
                        found.push(error(
                            format!("{field} \"{text}\" is not a positive duration"),
                            &format!("/sources/{index}/{field}"),
                            Some(checked.document),
                        ));
                    }
                }
            }
        }
    }
    if !found.is_empty() {
        validation.diagnostics.extend(found);
    }
    if !validation.is_valid() {
        return Err(Box::new(validation));
    }
    match validation.checked.into_iter().next().map(|c| c.manifest) {
        Some(Manifest::AgentConfig(config)) => Ok(config),
        _ => Err(Box::default()),
    }
}
