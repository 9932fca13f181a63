//! JSON Schema validation with the embedded `schemas/`.

use std::collections::HashMap;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::{Finding, Severity};
use crate::model::{schema, Kind};

/// Why the embedded schemas could not be compiled (a build defect, caught by the tests).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("embedded schema for {kind} is not JSON: {source}")]
    Parse {
        kind: Kind,
        source: serde_json::Error,
    },
    #[error("embedded schema for {kind} does not compile: {message}")]
    Compile { kind: Kind, message: String },
}

/// The compiled validators, one per kind. Compile once and reuse: compiling is the expensive
/// part.
pub struct Schemas {
    validators: HashMap<Kind, Validator>,
}

impl Schemas {
    pub fn new() -> Result<Schemas, SchemaError> {
        let mut validators = HashMap::new();
        for kind in Kind::ALL {
            let value: Value = serde_json::from_str(schema::embedded(kind))
                .map_err(|source| SchemaError::Parse { kind, source })?;
            let validator = jsonschema::draft202012::new(&value).map_err(|err| {
                SchemaError::Compile {
                    kind,
                    message: err.to_string(),
                }
            })?;
            validators.insert(kind, validator);
        }
        Ok(Schemas { validators })
    }

    /// Every schema violation of `value`, as findings with the pointer of the offending field.
    pub fn check(&self, kind: Kind, value: &Value) -> Vec<Finding> {
        let Some(validator) = self.validators.get(&kind) else {
            return Vec::new();
        };
        validator.iter_errors(value).map(|e| finding(&e)).collect()
    }
}

fn finding(error: &ValidationError<'_>) -> Finding {
    let at = error.instance_path.as_str().to_owned();
    let field = at.rsplit('/').next().unwrap_or_default();
    let (pointer, message) = match &error.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let key = unexpected.first().cloned().unwrap_or_default();
            let message = if unexpected.len() == 1 {
                format!("unknown field \"{key}\"")
            } else {
                format!("unknown fields {}", quoted(unexpected))
            };
            (format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")), message)
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            (at.clone(), format!("missing required field \"{name}\""))
        }
        ValidationErrorKind::Constant { expected_value } => {
            (at.clone(), format!("\"{field}\" must be {expected_value}"))
        }
        ValidationErrorKind::AnyOf { .. } if is_quantity_like(&error.instance) => (
            at.clone(),
            format!(
                "{} is not a Kubernetes quantity (such as 500m, 1.5, 2Gi)",
                error.instance
            ),
        ),
        _ => (at.clone(), error.to_string()),
    };
    Finding {
        severity: Severity::Error,
        code: "schema",
        pointer,
        message,
        notes: Vec::new(),
    }
}

fn is_quantity_like(instance: &Value) -> bool {
    instance.is_string() || instance.is_number()
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
