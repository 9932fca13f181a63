//! The JSON Schemas in `schemas/`, derived from the model.
//!
//! `schemas/*.json` are generated from these types (schemars, plus k8s-openapi's schemas for the
//! core types) and committed; the binary embeds the committed files and validates with them.
//! The test `schemas_are_current` regenerates them and fails on any difference, so a field
//! added to the model but not to the schemas (or the other way round) breaks the build's tests.
//! Run `UPDATE_SCHEMAS=1 cargo test --test schemas` after changing the model.

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::{AgentConfig, BackendConfig, Function, FunctionMesh, Kind, Settings, Sink, Source};

/// The Kubernetes grammar for quantities (`100m`, `1.5Gi`, `1e3`), as in the apiextensions
/// validation of CRDs. A bare YAML number (`cpu: 0.5`) is a quantity too.
const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

const QUANTITY_DEF: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING_DEF: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const OBJECT_META_DEF: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The schema text embedded in the binary for `kind` (what `meshops schema KIND` prints).
pub fn embedded(kind: Kind) -> &'static str {
    match kind {
        Kind::Function => include_str!("../../schemas/function.json"),
        Kind::Source => include_str!("../../schemas/source.json"),
        Kind::Sink => include_str!("../../schemas/sink.json"),
        Kind::FunctionMesh => include_str!("../../schemas/functionmesh.json"),
        Kind::BackendConfig => include_str!("../../schemas/backendconfig.json"),
        Kind::ConfigMap => include_str!("../../schemas/configmap.json"),
        Kind::Secret => include_str!("../../schemas/secret.json"),
        Kind::ServiceAccount => include_str!("../../schemas/serviceaccount.json"),
        Kind::Settings => include_str!("../../schemas/settings.json"),
        Kind::AgentConfig => include_str!("../../schemas/agentconfig.json"),
    }
}

/// Generates the schema of `kind` from the model.
pub fn generate(kind: Kind) -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let schema = match kind {
        Kind::Function => generator.into_root_schema_for::<Function>(),
        Kind::Source => generator.into_root_schema_for::<Source>(),
        Kind::Sink => generator.into_root_schema_for::<Sink>(),
        Kind::FunctionMesh => generator.into_root_schema_for::<FunctionMesh>(),
        Kind::BackendConfig => generator.into_root_schema_for::<BackendConfig>(),
        Kind::ConfigMap => generator.into_root_schema_for::<ConfigMap>(),
        Kind::Secret => generator.into_root_schema_for::<Secret>(),
        Kind::ServiceAccount => generator.into_root_schema_for::<ServiceAccount>(),
        Kind::Settings => generator.into_root_schema_for::<Settings>(),
        Kind::AgentConfig => generator.into_root_schema_for::<AgentConfig>(),
    };
    let mut value = schema.to_value();
    close_objects(&mut value);
    drop_null_alternatives(&mut value);
    if let Some(defs) = value.get_mut("$defs").and_then(Value::as_object_mut) {
        if let Some(quantity) = defs.get_mut(QUANTITY_DEF) {
            quantity["anyOf"] = json!([
                {"type": "string", "pattern": QUANTITY_PATTERN},
                {"type": "number"}
            ]);
        }
        if let Some(int_or_string) = defs.get_mut(INT_OR_STRING_DEF) {
            int_or_string["anyOf"] = json!([{"type": "integer"}, {"type": "string"}]);
        }
    }
    pin_root(&mut value, kind);
    value
}

/// The operator's types and the Kubernetes core types are closed: an unknown key is a typo
/// the API server would drop (or reject), so every object schema that lists properties and
/// says nothing else about extra keys gets `additionalProperties: false`. Free-form fields are
/// maps (`additionalProperties` already set) and stay open.
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, child) in map.iter_mut() {
                // Property names are data, not schemas: only recurse into schema positions.
                if key == "properties" || key == "$defs" || key == "patternProperties" {
                    if let Value::Object(children) = child {
                        children.values_mut().for_each(close_objects);
                    }
                } else {
                    close_objects(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The loader drops null-valued keys before validation (as the API server prunes nulls of
/// non-nullable CRD fields), so the `null` alternatives schemars adds for `Option` only make
/// error messages worse ("not valid under any of the schemas listed in anyOf").
fn drop_null_alternatives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(branches)) = map.get("anyOf") {
                let non_null: Vec<Value> = branches
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                    .cloned()
                    .collect();
                if non_null.len() == 1 && branches.len() == 2 {
                    map.remove("anyOf");
                    if let Some(Value::Object(only)) = non_null.into_iter().next() {
                        for (key, entry) in only {
                            map.entry(key).or_insert(entry);
                        }
                    }
                }
            }
            map.values_mut().for_each(drop_null_alternatives);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_alternatives),
        _ => {}
    }
}

/// Fixes apiVersion and kind to the kind's constants and requires the parts every manifest
/// needs, including `metadata.name`.
fn pin_root(value: &mut Value, kind: Kind) {
    let Some(root) = value.as_object_mut() else {
        return;
    };
    let mut pinned = Map::new();
    pinned.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    pinned.insert("title".into(), json!(kind.as_str()));
    pinned.insert(
        "description".into(),
        json!(format!(
            "{} {} as accepted by meshops (generated from the meshops model).",
            kind.api_version(),
            kind.as_str()
        )),
    );
    for (key, entry) in std::mem::take(root) {
        if !matches!(key.as_str(), "$schema" | "title" | "description") {
            pinned.insert(key, entry);
        }
    }
    *root = pinned;
    if let Some(properties) = root.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert("apiVersion".into(), json!({"const": kind.api_version()}));
        properties.insert("kind".into(), json!({"const": kind.as_str()}));
        if !matches!(kind, Kind::Settings | Kind::AgentConfig) {
            properties.insert(
                "metadata".into(),
                json!({"$ref": format!("#/$defs/{OBJECT_META_DEF}"), "required": ["name"]}),
            );
        }
    }
    let required = match kind {
        Kind::ConfigMap | Kind::Secret | Kind::ServiceAccount => {
            vec!["apiVersion", "kind", "metadata"]
        }
        Kind::Settings => vec!["apiVersion", "kind", "spec"],
        Kind::AgentConfig => vec!["apiVersion", "kind", "sources"],
        _ => vec!["apiVersion", "kind", "metadata", "spec"],
    };
    root.insert("required".into(), json!(required));
}
