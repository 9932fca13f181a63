//! The committed schemas are exactly what the model generates.

use meshops::model::{schema, Kind};

#[test]
fn schemas_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for kind in Kind::ALL {
        let generated = schema::generate_text(kind);
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

#[test]
fn every_embedded_schema_compiles() {
    let schemas = meshops::validate::Schemas::new();
    for kind in Kind::ALL {
        assert_eq!(schemas.check_compiles(kind), Ok(()), "{kind}");
    }
}
