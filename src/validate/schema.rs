//! JSON Schema validation with the embedded `schemas/`.

use std::collections::HashMap;
use std::sync::OnceLock;

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

/// A kind's compiled validator and every property name its schema knows (for "did you mean"
/// hints).
struct Compiled {
    validator: Validator,
    fields: Vec<String>,
}

/// The validators, one per kind, each compiled the first time a document of its kind is
/// checked: compiling is the expensive part (the component schemas carry the whole Kubernetes
/// pod spec), so a repository of Functions never pays for the Sink or BackendConfig schemas.
/// Thread-safe; compile once per process and reuse.
#[derive(Default)]
pub struct Schemas {
    compiled: HashMap<Kind, OnceLock<Result<Compiled, String>>>,
}

impl Schemas {
    pub fn new() -> Schemas {
        Schemas {
            compiled: Kind::ALL
                .into_iter()
                .map(|k| (k, OnceLock::new()))
                .collect(),
        }
    }

    fn compile(kind: Kind) -> Result<Compiled, SchemaError> {
        let value: Value = serde_json::from_str(schema::embedded(kind))
            .map_err(|source| SchemaError::Parse { kind, source })?;
        let validator =
            jsonschema::draft202012::new(&value).map_err(|err| SchemaError::Compile {
                kind,
                message: err.to_string(),
            })?;
        let mut fields = Vec::new();
        collect_property_names(&value, &mut fields);
        fields.sort();
        fields.dedup();
        Ok(Compiled { validator, fields })
    }

    fn compiled(&self, kind: Kind) -> Result<&Compiled, &str> {
        let Some(cell) = self.compiled.get(&kind) else {
            return Err("no embedded schema");
        };
        cell.get_or_init(|| Schemas::compile(kind).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Every schema violation of `value`, as findings with the pointer of the offending field.
    pub fn check(&self, kind: Kind, value: &Value) -> Vec<Finding> {
        let compiled = match self.compiled(kind) {
            Ok(compiled) => compiled,
            // A build defect, never the user's: say so rather than pass the document.
            Err(message) => {
                return vec![Finding {
                    severity: Severity::Error,
                    code: "schema",
                    pointer: String::new(),
                    message: format!("internal error: {message}"),
                    notes: Vec::new(),
                }]
            }
        };
        // Most documents are valid: `is_valid` answers that without building the error
        // iterators (several times cheaper); only an invalid document is walked for errors.
        if compiled.validator.is_valid(value) {
            return Vec::new();
        }
        let mut findings = Vec::new();
        for error in compiled.validator.iter_errors(value) {
            match &error.kind() {
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    let at = error.instance_path().as_str();
                    findings.extend(
                        unexpected
                            .iter()
                            .map(|key| unknown_field(at, key, &compiled.fields)),
                    );
                }
                _ => findings.push(finding(&error)),
            }
        }
        findings
    }
}

/// Fields that older operator releases read on Function and Sink specs (the operator's own
/// samples still carry them). v0.27 ignores them, so they are worth a warning, not a failure.
const LEGACY_FIELDS: &[&str] = &["sourceType", "sinkType"];

fn is_component_spec(pointer: &str) -> bool {
    let Some(rest) = pointer.strip_prefix("/spec") else {
        return false;
    };
    rest.is_empty()
        || ["/functions/", "/sources/", "/sinks/"].iter().any(|list| {
            rest.strip_prefix(list)
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn unknown_field(at: &str, key: &str, known: &[String]) -> Finding {
    let pointer = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
    if LEGACY_FIELDS.contains(&key) && is_component_spec(at) {
        return Finding {
            severity: Severity::Warning,
            code: "legacy-field",
            pointer,
            message: format!(
                "field \"{key}\" was removed from the Function Mesh API and is ignored; delete it"
            ),
            notes: Vec::new(),
        };
    }
    let mut notes = Vec::new();
    if let Some(suggestion) = closest(key, known) {
        notes.push(format!("did you mean \"{suggestion}\"?"));
    }
    Finding {
        severity: Severity::Error,
        code: "unknown-field",
        pointer,
        message: format!("unknown field \"{key}\""),
        notes,
    }
}

/// The known field most like `key`: same letters in another case, or a small edit away.
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    if let Some(same) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
        return Some(same);
    }
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), k))
        .filter(|(distance, k)| *distance <= 2.min(k.len() / 3).max(1))
        .min()
        .map(|(_, k)| k.as_str())
}

fn collect_property_names(schema: &Value, names: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                names.extend(properties.keys().cloned());
            }
            map.values().for_each(|v| collect_property_names(v, names));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_property_names(v, names)),
        _ => {}
    }
}

fn finding(error: &ValidationError<'_>) -> Finding {
    let at = error.instance_path().as_str().to_owned();
    let field = at.rsplit('/').next().unwrap_or_default();
    let (pointer, message) = match &error.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            (at.clone(), format!("missing required field \"{name}\""))
        }
        ValidationErrorKind::Constant { expected_value } => {
            (at.clone(), format!("\"{field}\" must be {expected_value}"))
        }
        ValidationErrorKind::AnyOf { .. } if is_quantity_like(error.instance()) => (
            at.clone(),
            format!(
                "{} is not a Kubernetes quantity (such as 500m, 1.5, 2Gi)",
                error.instance()
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
