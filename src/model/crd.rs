//! CustomResourceDefinitions for `compute.functionmesh.io`, generated from the same schemas
//! the validator uses (so schema and CRD cannot drift): `meshops crds`, and the files under
//! `charts/meshops/crds/`.
//!
//! A CRD needs a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no `const`, no
//! `additionalProperties` beside `properties`, free-form nodes marked
//! `x-kubernetes-preserve-unknown-fields`, int-or-string nodes marked as such. The closedness
//! of the JSON Schemas becomes the API server's pruning (unknown fields are dropped or, with
//! strict field validation, refused).

use serde_json::{json, Map, Value};

use super::{schema, Kind, FUNCTION_MESH_API_VERSION};

/// The Function Mesh kinds with their plural names.
pub const CRD_KINDS: [(Kind, &str); 5] = [
    (Kind::Function, "functions"),
    (Kind::Source, "sources"),
    (Kind::Sink, "sinks"),
    (Kind::FunctionMesh, "functionmeshes"),
    (Kind::BackendConfig, "backendconfigs"),
];

/// Resolves every `$ref` against `$defs` and rewrites the node into the structural subset.
fn structural(node: &Value, defs: &Map<String, Value>, depth: usize) -> Value {
    let Value::Object(map) = node else {
        // `true` (anything goes) becomes a free-form object.
        return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/$defs/");
        let mut resolved = match defs.get(name) {
            Some(def) if depth < 32 => structural(def, defs, depth + 1),
            _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        };
        // Kubernetes' own types are documented by Kubernetes; inlined everywhere they would
        // make the CRDs larger than etcd accepts (the operator hit this, #132).
        if name.starts_with("io.k8s.") {
            strip_descriptions(&mut resolved);
        }
        for (key, value) in map {
            if key != "$ref" && key != "required" {
                resolved[key] = value.clone();
            }
        }
        return resolved;
    }
    if map.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        let mut out = json!({"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true});
        for key in ["description"] {
            if let Some(v) = map.get(key) {
                out[key] = v.clone();
            }
        }
        return out;
    }
    if let Some(Value::Array(variants)) = map.get("oneOf") {
        if variants.iter().all(|v| v.get("const").is_some()) {
            let values: Vec<Value> = variants
                .iter()
                .filter_map(|v| v.get("const").cloned())
                .collect();
            let mut out = json!({"type": "string", "enum": values});
            if let Some(d) = map.get("description") {
                out["description"] = d.clone();
            }
            return out;
        }
    }
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "$schema" | "$defs" | "title" => {}
            // Formats the API server knows; schemars' others (`uint`, …) would only confuse it.
            "format" => {
                if value
                    .as_str()
                    .is_some_and(|f| ["int32", "int64", "date-time", "byte", "double"].contains(&f))
                {
                    out.insert(key.clone(), value.clone());
                }
            }
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "properties" => {
                let props: Map<String, Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), structural(v, defs, depth + 1)))
                    .collect();
                out.insert(key.clone(), Value::Object(props));
            }
            "additionalProperties" => match value {
                Value::Bool(false) => {}
                Value::Bool(true) => {
                    out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                }
                schema => {
                    out.insert(key.clone(), structural(schema, defs, depth + 1));
                }
            },
            "items" => {
                out.insert(key.clone(), structural(value, defs, depth + 1));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if !out.contains_key("type") && !out.contains_key("x-kubernetes-preserve-unknown-fields") {
        out.insert("type".into(), json!("object"));
        out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    Value::Object(out)
}

fn strip_descriptions(node: &mut Value) {
    match node {
        Value::Object(map) => {
            map.remove("description");
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

/// The CRD of one Function Mesh kind, from its embedded schema.
pub fn crd(kind: Kind, plural: &str) -> Value {
    let schema: Value = serde_json::from_str(schema::embedded(kind)).unwrap_or(Value::Null);
    let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
    let spec = structural(&schema["properties"]["spec"], &defs, 0);
    let open_schema = json!({
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    let mut subresources = json!({"status": {}});
    if kind.is_component() {
        subresources["scale"] = json!({
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        });
    }
    let (group, version) = FUNCTION_MESH_API_VERSION
        .split_once('/')
        .unwrap_or_default();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {
                "kind": kind.as_str(),
                "listKind": format!("{}List", kind.as_str()),
                "plural": plural,
                "singular": kind.as_str().to_ascii_lowercase(),
            },
            "scope": "Namespaced",
            "versions": [{
                "name": version,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": open_schema},
                "subresources": subresources,
            }],
        },
    })
}

/// All five CRDs, as a `---`-separated YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for (kind, plural) in CRD_KINDS {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd(kind, plural)).unwrap_or_default());
    }
    out
}
