//! Validated manifests + render settings → the ordered Kubernetes objects to apply.
//!
//! Pure and deterministic: the same commit gives byte-identical objects whatever the order of
//! files on disk (objects are sorted; maps are sorted; no UIDs or timestamps). In native mode
//! every Function, Source and Sink (mesh children included) becomes its CR, marked unmanaged
//! for the operator, plus the workloads the operator would create; in operator mode only the
//! CRs and the plain objects are rendered.

mod autoscale;
mod command;
mod details;
mod policy;
pub mod sensitive;
mod spec;
mod workload;
mod yaml;

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub use command::{log4j_xml, log4j_yaml, python_ini, shell_quote};
pub use details::{function_details, sort_maps, sorted};
pub use spec::{ComponentKind, RunnerSpec};
pub use workload::sanitize_volume_name;

use crate::model::settings::Mode;
use crate::model::{BackendConfigSpec, Kind, Manifest, RenderSettings};
use crate::validate::{units, Checked};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const SOURCE_LABEL: &str = "meshops.io/source";
pub const SPEC_HASH: &str = "meshops.io/spec-hash";
pub const OPERATOR_MANAGED: &str = "compute.functionmesh.io/managed";
/// Set on mesh children so that their origin stays visible in the cluster.
pub const MESH_ANNOTATION: &str = "meshops.io/function-mesh";
/// The namespaced BackendConfig the operator reads (`--namespaced-backend-config`).
pub const NAMESPACED_BACKEND_CONFIG: &str = "backend-config";

/// One object to apply. `value` is its full JSON, identity labels and spec hash included.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub phase: u8,
    pub value: Value,
}

impl Object {
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("{kind} \"{name}\" in namespace \"{namespace}\": the name is {len} characters, over Kubernetes' 63")]
    NameTooLong {
        kind: String,
        namespace: String,
        name: String,
        len: usize,
    },
    #[error("{kind} \"{name}\" in namespace \"{namespace}\": label {key}={value:?} is not a valid label value")]
    InvalidLabel {
        kind: String,
        namespace: String,
        name: String,
        key: String,
        value: String,
    },
}

/// Apply phases (DESIGN §4): plain objects, CRs, Services, StatefulSets, the rest.
fn phase(kind: &str) -> u8 {
    match kind {
        "ServiceAccount" | "ConfigMap" | "Secret" => 0,
        "Function" | "Source" | "Sink" | "FunctionMesh" | "BackendConfig" => 1,
        "Service" => 2,
        "StatefulSet" => 3,
        _ => 4,
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A k8s-openapi object as JSON with its apiVersion and kind.
fn typed<T: Serialize + k8s_openapi::Resource>(object: &T) -> Value {
    let mut value = to_value(object);
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), json!(T::API_VERSION));
        map.insert("kind".into(), json!(T::KIND));
    }
    value
}

/// The CR as written in Git, without server-owned metadata and status.
fn clean_cr(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "managedFields",
                "selfLink",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                meta.remove(key);
            }
        }
    }
    value
}

fn annotate(value: &mut Value, key: &str, text: &str) {
    let meta = &mut value["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][key] = json!(text);
}

/// The function id: `${SHARD_ID}-<id>`, the id a stable hash of namespace/name (render is
/// pure, so there is no UID to use).
pub fn function_id(namespace: &str, name: &str) -> String {
    let digest = format!(
        "{:x}",
        Sha256::digest(format!("{namespace}/{name}").as_bytes())
    );
    format!(
        "${{SHARD_ID}}-{}-{}-{}-{}-{}",
        &digest[0..8],
        &digest[8..12],
        &digest[12..16],
        &digest[16..20],
        &digest[20..32]
    )
}

/// sha256 of the canonical JSON (sorted keys, compact) of `value` without its own
/// `meshops.io/spec-hash` annotation (and without the annotations map if that leaves it
/// empty), so a live object's annotation can be checked against the object itself.
pub fn spec_hash(value: &Value) -> String {
    let mut value = value.clone();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        let empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
            Some(annotations) => {
                annotations.remove(SPEC_HASH);
                annotations.is_empty()
            }
            None => false,
        };
        if empty {
            meta.remove("annotations");
        }
    }
    sort_maps(&mut value);
    canonical_hash(&value)
}

/// sha256 of the compact JSON of `value`. The text is written into a buffer kept by the
/// thread and hashed in one call: serde_json writes in pieces of a few bytes, and feeding
/// those to the hasher one by one cost more than the copy.
fn canonical_hash(value: &Value) -> String {
    thread_local! {
        static TEXT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let digest = TEXT.with_borrow_mut(|text| {
        text.clear();
        // Writing into a Vec cannot fail, and a Value always serializes.
        let _ = serde_json::to_writer(&mut *text, value);
        Sha256::digest(text.as_slice())
    });
    format!("{digest:x}")
}

/// A quantity as a number (cores, bytes). kube_quantity's integer conversions truncate
/// `1.1G` to `1G`, so the value goes through f64, exact for every realistic size.
pub(crate) fn quantity(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<f64> {
    kube_quantity::ParsedQuantity::try_from(q)
        .ok()?
        .to_bytes_f64()
}

/// Adds the identity labels and the spec hash (DESIGN §4), and sorts every map so the output
/// reads the same whichever way the object was built. The hash is taken from the sorted value
/// before the annotation exists, which is what [`spec_hash`] recomputes from a live object.
fn identify(mut value: Value, source: &str) -> Value {
    let meta = &mut value["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][MANAGED_BY] = json!("meshops");
    meta["labels"][SOURCE_LABEL] = json!(source);
    sort_maps(&mut value);
    let hash = canonical_hash(&value);
    annotate(&mut value, SPEC_HASH, &hash);
    sort_maps(&mut value["metadata"]);
    value
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric())
}

/// Every name ≤ 63 characters and every label value valid — checked, not assumed.
fn check(object: &Object) -> Result<(), RenderError> {
    let (kind, namespace, name) = (object.kind(), object.namespace(), object.name());
    if name.len() > 63 {
        return Err(RenderError::NameTooLong {
            len: name.len(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    let label_maps = [
        &object.value["metadata"]["labels"],
        &object.value["spec"]["template"]["metadata"]["labels"],
    ];
    for labels in label_maps {
        for (key, value) in labels.as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            if !is_label_value(text) {
                return Err(RenderError::InvalidLabel {
                    kind: kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    key: key.clone(),
                    value: text.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Merges the global and the namespace's BackendConfig (namespaced values win).
fn backend_config(
    global: Option<&BackendConfigSpec>,
    namespaced: Option<&BackendConfigSpec>,
) -> BackendConfigSpec {
    let mut env = BTreeMap::new();
    for spec in [global, namespaced].into_iter().flatten() {
        env.extend(spec.env.clone().unwrap_or_default());
    }
    let mut pod = Map::new();
    for spec in [global, namespaced].into_iter().flatten() {
        if let Value::Object(fields) = to_value(&spec.pod) {
            pod.extend(fields);
        }
    }
    BackendConfigSpec {
        env: (!env.is_empty()).then_some(env),
        pod: serde_json::from_value(Value::Object(pod)).ok(),
        ..Default::default()
    }
}

/// Renders the validated manifests of one source.
pub fn render(
    checked: &[Checked],
    settings: &RenderSettings,
    source: &str,
) -> Result<Vec<Object>, RenderError> {
    render_each(checked, settings, source, |object| object)
}

/// Renders like [`render`] and hands each finished object to `finish` on the thread that
/// rendered it, returning what `finish` made in apply order. `meshops render` turns each
/// object into its YAML text there, so the objects never all exist at once: output is
/// written in parallel and memory stays flat however large the repository.
pub fn render_each<T: Send>(
    checked: &[Checked],
    settings: &RenderSettings,
    source: &str,
    finish: impl Fn(Object) -> T + Sync,
) -> Result<Vec<T>, RenderError> {
    let mode = settings.mode.unwrap_or_default();
    let backend_configs: BTreeMap<&str, &BackendConfigSpec> = checked
        .iter()
        .filter_map(|c| match &c.manifest {
            Manifest::BackendConfig(o) if o.name() == NAMESPACED_BACKEND_CONFIG => {
                Some((o.namespace(), &o.spec))
            }
            _ => None,
        })
        .collect();
    type Key = (u8, String, String, String);
    let done = |value: Value| -> Result<(Key, T), RenderError> {
        let value = identify(value, source);
        let object = Object {
            phase: phase(value["kind"].as_str().unwrap_or_default()),
            value,
        };
        check(&object)?;
        let key = (
            object.phase,
            object.namespace().to_owned(),
            object.kind().to_owned(),
            object.name().to_owned(),
        );
        Ok((key, finish(object)))
    };
    // The manifests applied as they are (CRs, ConfigMaps, Secrets, ServiceAccounts) …
    let manifests = checked.par_iter().filter_map(|c| {
        let value = match &c.manifest {
            Manifest::Settings(_) | Manifest::AgentConfig(_) => return None,
            Manifest::ConfigMap(o) => typed(o),
            Manifest::Secret(o) => typed(o),
            Manifest::ServiceAccount(o) => typed(o),
            Manifest::BackendConfig(_) => clean_cr(c.manifest.to_value()),
            Manifest::FunctionMesh(_) if mode == Mode::Native => return None,
            manifest => {
                let mut value = clean_cr(manifest.to_value());
                if mode == Mode::Native {
                    annotate(&mut value, OPERATOR_MANAGED, "false");
                }
                value
            }
        };
        Some(done(value))
    });
    // … and in native mode each component's workloads, finished as soon as they are made.
    let units = if mode == Mode::Native {
        units(checked)
    } else {
        Vec::new()
    };
    let workloads = units.par_iter().flat_map_iter(|unit| {
        let runner = RunnerSpec::new(unit.component, &unit.name, unit.namespace);
        let mut out = Vec::new();
        if unit.base != "/spec" {
            out.push(mesh_child(checked, unit, &runner));
        }
        let backend = backend_config(
            settings.global_backend_config.as_ref(),
            backend_configs.get(unit.namespace).copied(),
        );
        out.extend(workloads(&runner, settings, &backend));
        out.into_iter().map(&done)
    });
    let mut rendered: Vec<(Key, T)> = manifests
        .chain(workloads)
        .collect::<Result<_, RenderError>>()?;
    rendered.par_sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rendered.into_iter().map(|(_, t)| t).collect())
}

/// A FunctionMesh entry as its own CR `<mesh>-<entry>`, spec copied verbatim (§2.16).
fn mesh_child(checked: &[Checked], unit: &crate::validate::Unit<'_>, runner: &RunnerSpec) -> Value {
    let mesh_name = checked
        .iter()
        .find(|c| c.document == unit.document && c.manifest.kind() == Kind::FunctionMesh)
        .map(|c| c.manifest.name().to_owned())
        .unwrap_or_default();
    let spec = match unit.component {
        crate::validate::Component::Function(s) => to_value(s),
        crate::validate::Component::Source(s) => to_value(s),
        crate::validate::Component::Sink(s) => to_value(s),
    };
    json!({
        "apiVersion": crate::model::FUNCTION_MESH_API_VERSION,
        "kind": runner.kind.kind(),
        "metadata": {
            "name": runner.cr_name,
            "namespace": runner.namespace,
            "annotations": {OPERATOR_MANAGED: "false", MESH_ANNOTATION: mesh_name},
        },
        "spec": spec,
    })
}

/// The workloads of one component in native mode.
fn workloads(r: &RunnerSpec, settings: &RenderSettings, backend: &BackendConfigSpec) -> Vec<Value> {
    let id = function_id(&r.namespace, &r.cr_name);
    let details = serde_json::to_string(&details::function_details(r)).unwrap_or_default();
    let hpa = autoscale::hpa(r);
    let mut out = vec![
        typed(&workload::service(r)),
        typed(&workload::stateful_set(
            r,
            settings,
            backend,
            &id,
            &details,
            hpa.is_some(),
        )),
    ];
    out.extend(hpa.as_ref().map(typed));
    out.extend(autoscale::vpa(r));
    out.extend(policy::pdb(r, settings).as_ref().map(typed));
    out.extend(policy::authorization_policy(r, settings));
    out
}

/// The settings document of the source, or the defaults.
pub fn settings_of(checked: &[Checked]) -> RenderSettings {
    checked
        .iter()
        .find_map(|c| match &c.manifest {
            Manifest::Settings(s) => Some(s.spec.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// One object as a document of a `---`-separated YAML stream, like `helm template` prints.
///
/// Written by [`yaml::write_document`], byte for byte what yaml-rust2's emitter wrote before
/// (several times faster than libyaml's, which was most of `meshops render`'s time once).
/// Neither quotes every YAML 1.1 number (`1_000`, `0b101`, `0X1F`) that Kubernetes' YAML
/// reader still honours, so a document holding such a string is written as JSON, which is
/// YAML in which every string is quoted.
pub fn yaml_document(object: Object) -> String {
    thread_local! {
        /// Grown once per thread, so each document is one allocation of its exact size.
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        yaml::write_document(&object.value, scratch);
        scratch.as_str().to_owned()
    })
}
