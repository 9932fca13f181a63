//! The CRDs are generated from the schemas, are structural, and the chart carries the current
//! ones.

use meshops::model::crd::{crd, crds_yaml, CRD_KINDS};
use serde_json::Value;

/// Kubernetes' structural-schema rules that matter here: every node has a type (or is
/// int-or-string or preserve-unknown), no `$ref`, `const`, `oneOf`, no `additionalProperties`
/// beside `properties`.
fn assert_structural(node: &Value, path: &str) {
    let Some(map) = node.as_object() else {
        panic!("{path}: not an object")
    };
    for forbidden in ["$ref", "const", "oneOf", "$defs", "$schema"] {
        assert!(!map.contains_key(forbidden), "{path}: {forbidden}");
    }
    let typed = map.contains_key("type")
        || map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    assert!(typed, "{path}: no type");
    assert!(
        !(map.contains_key("properties") && map.contains_key("additionalProperties")),
        "{path}: properties and additionalProperties"
    );
    for (key, child) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        assert_structural(child, &format!("{path}.{key}"));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get(key).filter(|c| c.is_object()) {
            assert_structural(child, &format!("{path}[{key}]"));
        }
    }
}

#[test]
fn crds_are_structural_and_have_the_subresources() {
    for (kind, plural) in CRD_KINDS {
        let crd = crd(kind, plural);
        assert_eq!(
            crd["metadata"]["name"],
            format!("{plural}.compute.functionmesh.io")
        );
        let version = &crd["spec"]["versions"][0];
        assert_structural(&version["schema"]["openAPIV3Schema"], kind.as_str());
        assert!(version["subresources"]["status"].is_object());
        assert_eq!(
            version["subresources"]["scale"].is_object(),
            kind.is_component(),
            "{kind}"
        );
    }
    let function = crd(CRD_KINDS[0].0, CRD_KINDS[0].1);
    let spec = &function["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["funcConfig"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert_eq!(
        spec["properties"]["processingGuarantee"]["enum"][0],
        "atleast_once"
    );
    assert_eq!(spec["properties"]["replicas"]["minimum"], 0);
}

#[test]
fn the_chart_carries_the_current_crds() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("charts/meshops/crds/function-mesh.yaml");
    let generated = crds_yaml();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "charts/meshops/crds is stale; run `UPDATE_SCHEMAS=1 cargo test --test crds` (or `meshops crds`)");
}
