//! The Function Mesh operator's own published manifests (tests/data/operator/).
//!
//! Every sample must load, type and round-trip. Samples that follow the v0.27.2 admission
//! rules validate with no error; the few stored revisions that break them (a capitalised field
//! name, bare `tenant/namespace/name` package locations the webhook refuses on create) must
//! be rejected with exactly those findings, each at its file, line and field.

use std::path::Path;

use meshops::load::{LoadOptions, Tree};
use meshops::model::{self, Manifest};
use meshops::validate::{validate, Schemas, Severity, ValidateOptions};

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/operator")
}

/// (file, code, line, pointer) of every error a stored sample must produce.
const EXPECTED_ERRORS: &[(&str, &str, u32, &str)] = &[
    (
        "sample-function.yaml",
        "unknown-field",
        9,
        "/spec/MaxPendingAsyncRequests",
    ),
    // Hidden behind the schema error until documents with schema errors were judged further.
    (
        "sample-function.yaml",
        "package-location-invalid",
        60,
        "/spec/java/jarLocation",
    ),
    (
        "sample-function-crypto.yaml",
        "package-location-invalid",
        55,
        "/spec/java/jarLocation",
    ),
    (
        "sample-function-stateful.yaml",
        "package-location-invalid",
        31,
        "/spec/java/jarLocation",
    ),
    (
        "sample-functionmesh.yaml",
        "package-location-invalid",
        23,
        "/spec/functions/0/java/jarLocation",
    ),
    (
        "sample-functionmesh.yaml",
        "package-location-invalid",
        51,
        "/spec/functions/1/java/jarLocation",
    ),
    (
        "sample-go-function.yaml",
        "package-location-invalid",
        35,
        "/spec/golang/goLocation",
    ),
    (
        "sample-py-function.yaml",
        "package-location-invalid",
        36,
        "/spec/python/pyLocation",
    ),
];

#[test]
fn operator_samples_validate_except_their_known_defects() {
    let schemas = Schemas::new();
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 16);
    let mut seen: Vec<&(&str, &str, u32, &str)> = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let tree = Tree::load(path, &LoadOptions::default());
        assert!(tree.problems.is_empty(), "{name}: {:?}", tree.problems);
        let result = validate(&tree, &schemas, ValidateOptions::default());
        for d in result
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
        {
            let found = (
                name,
                d.code,
                d.position.unwrap().line,
                d.pointer.as_deref().unwrap(),
            );
            let expected = EXPECTED_ERRORS.iter().find(|e| **e == found);
            assert!(
                expected.is_some(),
                "{name}: unexpected error {found:?}: {}",
                d.message
            );
            seen.extend(expected);
        }
    }
    seen.sort();
    let mut expected: Vec<_> = EXPECTED_ERRORS.iter().collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn legacy_fields_in_samples_are_warnings_that_name_the_field() {
    let schemas = Schemas::new();
    let tree = Tree::load(&dir().join("sample-sink.yaml"), &LoadOptions::default());
    let result = validate(&tree, &schemas, ValidateOptions::default());
    assert!(result.is_valid());
    let legacy: Vec<_> = result
        .diagnostics
        .iter()
        .filter(|d| d.code == "legacy-field")
        .collect();
    assert_eq!(legacy.len(), 1);
    assert_eq!(legacy[0].pointer.as_deref(), Some("/spec/sourceType"));
    assert_eq!(legacy[0].position.unwrap().line, 8);
    let strict = validate(&tree, &schemas, ValidateOptions { strict: true });
    assert!(
        !strict.is_valid(),
        "--strict turns the warning into an error"
    );
}

/// Every typed document serializes back to the JSON it was read from (after the two
/// normalisations the API server also applies: nulls dropped, numeric quantities as strings).
#[test]
fn every_sample_and_example_round_trips_through_the_model() {
    let schemas = Schemas::new();
    let roots = [
        dir(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
    ];
    let mut checked = 0;
    for root in roots {
        let tree = Tree::load(&root, &LoadOptions::default());
        let result = validate(&tree, &schemas, ValidateOptions::default());
        for c in &result.checked {
            let doc = &tree.documents[c.document];
            let mut expected = doc.value.clone();
            model::drop_nulls(&mut expected);
            model::floats_as_quantities(&mut expected);
            // Legacy fields are reported and dropped before typing (their files hold one CR).
            let file = &tree.file_of(doc).path;
            for d in result
                .diagnostics
                .iter()
                .filter(|d| d.code == "legacy-field" && &d.file == file)
            {
                let (parent, key) = d.pointer.as_deref().unwrap().rsplit_once('/').unwrap();
                if let Some(map) = expected.pointer_mut(parent).and_then(|v| v.as_object_mut()) {
                    map.remove(key);
                }
            }
            // Secrets' stringData/data and other k8s-openapi types keep every field too.
            let typed = Manifest::from_value(doc.kind, expected.clone()).unwrap();
            let actual = typed.to_value();
            assert!(
                same_value(&actual, &expected),
                "{} #{}:\n{actual:#}\n!=\n{expected:#}",
                tree.file_of(doc).path.display(),
                doc.index
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "round-tripped only {checked} documents");
}

/// Equal, except that a quantity written as a bare integer (`cpu: 1`) comes back as the
/// string Kubernetes stores (`"1"`).
fn same_value(actual: &serde_json::Value, expected: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            a.len() == e.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| same_value(av, v)))
        }
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(x, y)| same_value(x, y))
        }
        (Value::String(a), Value::Number(e)) => *a == e.to_string(),
        _ => actual == expected,
    }
}
