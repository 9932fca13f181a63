//! The committed schemas are exactly what the model generates.

use meshops::model::{schema, Kind};

#[test]
fn schemas_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for kind in Kind::ALL {
        // Pretty JSON with a trailing newline: the form committed under schemas/.
        let generated = serde_json::to_string_pretty(&schema::generate(kind)).unwrap() + "\n";
        let path = dir.join(kind.schema_file());
        if update {
            std::fs::write(&path, &generated).unwrap();
        } else if schema::embedded(kind) != generated {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "schemas differ from the model: {stale:?}; run UPDATE_SCHEMAS=1 cargo test --test schemas"
    );
}

/// Schemas compile on first use; one that did not would turn every document of its kind
/// into an "internal error" finding.
#[test]
fn every_embedded_schema_compiles() {
    let schemas = meshops::validate::Schemas::new();
    for kind in Kind::ALL {
        let findings = schemas.check(kind, &serde_json::json!({}));
        assert!(
            findings
                .iter()
                .all(|f| !f.message.starts_with("internal error")),
            "{kind}: {findings:?}"
        );
        assert!(
            !findings.is_empty(),
            "{kind}: an empty object is never valid"
        );
    }
}
