//! Schema, semantic and graph checks → diagnostics, every problem at once.
//!
//! Order per document: JSON Schema (structure), then the typed model, then the operator's
//! admission rules. A document with schema errors is still judged as far as it can be: the
//! offending fields are taken out, and if the rest still makes a typed manifest, its name and
//! every admission rule not about a removed field are checked too (a rule about a removed
//! field would only echo the schema error). Then the checks across documents: names, topics,
//! references. The result keeps the typed manifests so that later stages need not parse again;
//! a repaired document is never among them.

mod graph;
pub mod report;
pub mod rules;
mod schema;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::load::{Position, Tree};
use crate::model::{self, Manifest};

pub use graph::{is_dns_label, is_dns_subdomain, units, Unit};
pub use rules::Component;
pub use schema::{SchemaError, Schemas};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A problem inside one document, before it is placed in its file.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// Stable rule identifier (`schema`, `name-too-long`, …), for machines and docs.
    pub code: &'static str,
    /// JSON pointer of the field, relative to the document root.
    pub pointer: String,
    pub message: String,
    pub notes: Vec<String>,
}

/// A finding and the document (index into [`Tree::documents`]) it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub document: usize,
    pub finding: Finding,
}

/// A finding placed in its source: what the user sees.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: PathBuf,
    #[serde(flatten)]
    pub position: Option<Position>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// The source line, with Secret values masked.
    #[serde(skip)]
    pub source_line: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A document that passed schema and model checks, in its typed form.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// Index into [`Tree::documents`].
    pub document: usize,
    pub manifest: Manifest,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValidateOptions {
    /// Report warnings as errors.
    pub strict: bool,
}

/// What validation found: the typed manifests and the diagnostics, sorted by file and line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validation {
    pub checked: Vec<Checked>,
    pub diagnostics: Vec<Diagnostic>,
    pub documents: usize,
    pub files: usize,
}

impl Validation {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// Nothing may be applied unless this holds.
    pub fn is_valid(&self) -> bool {
        self.errors() == 0
    }
}

/// Validates everything in `tree`.
pub fn validate(tree: &Tree, schemas: &Schemas, options: ValidateOptions) -> Validation {
    // Each document on its own, in parallel; the results keep the documents' order.
    let mut per_document: Vec<Judged> = tree
        .documents
        .par_iter()
        .enumerate()
        .map(|(index, document)| judge(index, document, schemas))
        .collect();
    let mut located: Vec<Located> = Vec::new();
    for document in &mut per_document {
        located.append(&mut document.findings);
    }
    // The documents that passed, then those with schema errors that still make a manifest
    // once the offending fields are out (with those fields' pointers): one vector, so that
    // `judged[..clean]` are the clean ones. A typed manifest is large (5 KiB), so the clean
    // ones are collected where `per_document` was (std collects a `vec::IntoIter` chain in
    // place) instead of into a second buffer of the same size.
    let mut repaired: Vec<(Checked, Vec<String>)> = Vec::new();
    let mut judged: Vec<Checked> = per_document
        .into_iter()
        .filter_map(|document| match document.manifest {
            Some((manifest, removed)) if removed.is_empty() => Some(manifest),
            Some(repair) => {
                repaired.push(repair);
                None
            }
            None => None,
        })
        .collect();
    let clean = judged.len();
    let mut removed_by_document: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (manifest, removed) in repaired {
        removed_by_document.insert(manifest.document, removed);
        judged.push(manifest);
    }
    let removed_in = |document: usize| {
        removed_by_document
            .get(&document)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let echoes = |l: &Located| {
        removed_in(l.document)
            .iter()
            .any(|r| related(&l.finding.pointer, r))
    };
    let units = graph::units(&judged);
    // The admission rules of each component, in parallel; the findings keep the units' order.
    let unit_findings: Vec<Vec<Located>> = units
        .par_iter()
        .map(|unit| {
            let mut findings = Vec::new();
            rules::check_component(unit.component, &unit.base, &mut findings);
            findings
                .into_iter()
                .map(|finding| Located {
                    document: unit.document,
                    finding,
                })
                .filter(|l| !echoes(l))
                .collect()
        })
        .collect();
    located.extend(unit_findings.into_iter().flatten());
    let describe = |document: usize, pointer: &str| {
        let doc = &tree.documents[document];
        format!(
            "{}:{}",
            tree.file_of(doc).path.display(),
            doc.position(pointer)
        )
    };
    located.extend(
        graph::check_names(&judged, &units, &describe)
            .into_iter()
            .filter(|l| !echoes(l)),
    );
    // Topics and references of a repaired document would be judged on what is left of it.
    // Without repaired documents that is every unit already listed.
    let repaired_units;
    let whole = if clean == judged.len() {
        &units
    } else {
        repaired_units = graph::units(&judged[..clean]);
        &repaired_units
    };
    located.extend(graph::check_topics(whole));
    located.extend(graph::check_references(&judged[..clean], whole));
    drop(units);
    judged.truncate(clean);

    let mut diagnostics: Vec<Diagnostic> = tree
        .problems
        .iter()
        .map(|p| Diagnostic {
            severity: Severity::Error,
            code: p.error.code(),
            message: p.error.to_string(),
            file: p.path.clone(),
            position: p.position,
            pointer: p.pointer.clone(),
            source_line: p
                .file
                .zip(p.position)
                .and_then(|(f, pos)| tree.files[f].line(pos.line))
                .map(str::to_owned),
            notes: Vec::new(),
        })
        .collect();
    diagnostics.extend(located.into_iter().map(|l| place(tree, l)));
    if options.strict {
        for d in &mut diagnostics {
            d.severity = Severity::Error;
        }
    }
    diagnostics.sort_by(|a, b| {
        (&a.file, a.position, a.severity, &a.message)
            .cmp(&(&b.file, b.position, b.severity, &b.message))
    });
    diagnostics.dedup();
    Validation {
        checked: judged,
        diagnostics,
        documents: tree.documents.len(),
        files: tree.files.len(),
    }
}

/// What one document yields on its own: its findings and, when the typed model could be
/// built, the manifest with the pointers of the fields removed to build it.
struct Judged {
    findings: Vec<Located>,
    manifest: Option<(Checked, Vec<String>)>,
}

/// Schema, then the typed model, for one document.
fn judge(index: usize, document: &crate::load::Document, schemas: &Schemas) -> Judged {
    let mut value = document.value.clone();
    model::drop_nulls(&mut value);
    let schema_findings = schemas.check(document.kind, &value);
    let removed: Vec<String> = schema_findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.pointer.clone())
        .collect();
    // Ignored legacy fields are dropped so the typed model (which rejects unknown fields)
    // sees what the operator sees; invalid ones so the rest can still be judged.
    for finding in &schema_findings {
        remove_pointer(&mut value, &finding.pointer);
    }
    let mut findings: Vec<Located> = schema_findings
        .into_iter()
        .map(|finding| Located {
            document: index,
            finding,
        })
        .collect();
    model::floats_as_quantities(&mut value);
    let manifest = match Manifest::from_value(document.kind, value) {
        Ok(manifest) => Some((
            Checked {
                document: index,
                manifest,
            },
            removed,
        )),
        Err(_) if !removed.is_empty() => {
            findings.extend(graph::raw_name_finding(document.kind, &document.value).map(
                |finding| Located {
                    document: index,
                    finding,
                },
            ));
            None
        }
        Err(err) => {
            findings.push(Located {
                document: index,
                finding: Finding {
                    severity: Severity::Error,
                    code: "schema",
                    pointer: err.path,
                    message: err.message,
                    notes: Vec::new(),
                },
            });
            None
        }
    };
    Judged { findings, manifest }
}

/// Places a finding in its file, masking Secret values and auth parameters: neither the message nor the source
/// line of a finding under a Secret's `data`/`stringData` may show the value.
fn place(tree: &Tree, located: Located) -> Diagnostic {
    let document = &tree.documents[located.document];
    let file = tree.file_of(document);
    let position = document.position(&located.finding.pointer);
    let mut message = located.finding.message;
    let mut source_line = file.line(position.line).map(str::to_owned);
    let secret_value = document.kind == model::Kind::Secret
        && (located.finding.pointer.starts_with("/data/")
            || located.finding.pointer.starts_with("/stringData/"));
    // Generic auth parameters are a credential written in the open (often a token).
    let auth_params = located
        .finding
        .pointer
        .ends_with("/clientAuthenticationParameters");
    if auth_params {
        message = "invalid clientAuthenticationParameters (value hidden)".to_owned();
        source_line = source_line.map(|line| mask_value(&line));
    }
    if secret_value {
        let key = located
            .finding
            .pointer
            .rsplit('/')
            .next()
            .unwrap_or_default();
        message = format!("invalid value for Secret key \"{key}\" (value hidden)");
        source_line = source_line.map(|line| mask_value(&line));
    }
    Diagnostic {
        severity: located.finding.severity,
        code: located.finding.code,
        message,
        file: file.path.clone(),
        position: Some(position),
        pointer: Some(located.finding.pointer),
        source_line,
        notes: located.finding.notes,
    }
}

/// One pointer is the other or contains it: a finding there is about the same field.
fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer || (inner.starts_with(outer) && inner[outer.len()..].starts_with('/'))
    };
    within(a, b) || within(b, a)
}

fn remove_pointer(value: &mut serde_json::Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    if let Some(map) = value
        .pointer_mut(parent)
        .and_then(serde_json::Value::as_object_mut)
    {
        map.remove(&key);
    }
}

/// `  password: hunter2` → `  password: ******`.
fn mask_value(line: &str) -> String {
    match line.find(':') {
        Some(i) if line[i + 1..].trim().is_empty() => line.to_owned(),
        Some(i) => format!("{}: ******", &line[..i]),
        None => "******".to_owned(),
    }
}
