//! serde types for what a meshops repository may hold: the `compute.functionmesh.io/v1alpha1`
//! kinds with every field the operator accepts, plus plain ConfigMaps, Secrets and
//! ServiceAccounts (k8s-openapi's own types).
//!
//! The model is also where the JSON Schemas in `schemas/` come from (see [`schema`]), so the
//! two cannot disagree.

pub mod agent;
pub mod common;
pub mod component;
pub mod crd;
pub mod schema;
pub mod settings;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

pub use agent::AgentConfig;
pub use common::*;
pub use component::{
    CommonFields, ComponentSpec, FunctionSpec, ImagePullPolicy, SinkSpec, SourceSpec,
    VolumeClaimTemplate,
};
pub use settings::{RenderSettings, Settings};

/// API group and version of every Function Mesh kind.
pub const FUNCTION_MESH_API_VERSION: &str = "compute.functionmesh.io/v1alpha1";

/// A Function Mesh custom resource as written in Git. `status` is accepted (exports from
/// `kubectl get -o yaml` carry it) but never used.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    pub status: Option<serde_json::Value>,
}

impl<S> Resource<S> {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or_default()
    }
}

pub type Function = Resource<FunctionSpec>;
pub type Source = Resource<SourceSpec>;
pub type Sink = Resource<SinkSpec>;
pub type FunctionMesh = Resource<FunctionMeshSpec>;
pub type BackendConfig = Resource<BackendConfigSpec>;

/// A FunctionMesh: each entry becomes a child `<mesh>-<entry.name>`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionMeshSpec {
    pub sources: Option<Vec<SourceSpec>>,
    pub sinks: Option<Vec<SinkSpec>>,
    pub functions: Option<Vec<FunctionSpec>>,
}

/// Settings merged into every runner pod of a namespace (or of the cluster, for the global one).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendConfigSpec {
    pub name: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub pod: Option<PodPolicy>,
    pub auto_update: Option<bool>,
}

/// Every kind a repository may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Function,
    Source,
    Sink,
    FunctionMesh,
    BackendConfig,
    ConfigMap,
    Secret,
    ServiceAccount,
    /// `meshops.yaml`, only at the root of a source.
    Settings,
    /// The agent's `--config` file, never in a source.
    AgentConfig,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Function,
        Kind::Source,
        Kind::Sink,
        Kind::FunctionMesh,
        Kind::BackendConfig,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ServiceAccount,
        Kind::Settings,
        Kind::AgentConfig,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Function => "Function",
            Kind::Source => "Source",
            Kind::Sink => "Sink",
            Kind::FunctionMesh => "FunctionMesh",
            Kind::BackendConfig => "BackendConfig",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Settings => "Settings",
            Kind::AgentConfig => "AgentConfig",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::ConfigMap | Kind::Secret | Kind::ServiceAccount => "v1",
            Kind::Settings => settings::SETTINGS_API_VERSION,
            Kind::AgentConfig => agent::AGENT_CONFIG_API_VERSION,
            _ => FUNCTION_MESH_API_VERSION,
        }
    }

    /// Resolves `apiVersion` + `kind` as written in a manifest.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.api_version() == api_version)
    }

    /// Case-insensitive lookup for the command line (`meshops schema function`).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(name))
    }

    /// File name of the kind's schema under `schemas/`.
    pub fn schema_file(self) -> String {
        format!("{}.json", self.as_str().to_ascii_lowercase())
    }

    /// Function, Source and Sink are what the operator runs as StatefulSets.
    pub fn is_component(self) -> bool {
        matches!(self, Kind::Function | Kind::Source | Kind::Sink)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One typed object from the repository.
// Most values are the large CR variants, so boxing them would add indirection and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    Function(Function),
    Source(Source),
    Sink(Sink),
    FunctionMesh(FunctionMesh),
    BackendConfig(BackendConfig),
    ConfigMap(ConfigMap),
    Secret(Secret),
    ServiceAccount(ServiceAccount),
    Settings(Settings),
    AgentConfig(AgentConfig),
}

/// Why a JSON value did not fit the typed model; `path` is where (JSON pointer).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub path: String,
    pub message: String,
}

impl Manifest {
    /// Converts a schema-valid JSON document into its typed form.
    pub fn from_value(kind: Kind, value: serde_json::Value) -> Result<Manifest, ModelError> {
        fn typed<T: serde::de::DeserializeOwned>(
            value: serde_json::Value,
        ) -> Result<T, ModelError> {
            serde_path_to_error::deserialize(value).map_err(|err| ModelError {
                path: pointer_of(err.path()),
                message: err.inner().to_string(),
            })
        }
        Ok(match kind {
            Kind::Function => Manifest::Function(typed(value)?),
            Kind::Source => Manifest::Source(typed(value)?),
            Kind::Sink => Manifest::Sink(typed(value)?),
            Kind::FunctionMesh => Manifest::FunctionMesh(typed(value)?),
            Kind::BackendConfig => Manifest::BackendConfig(typed(value)?),
            Kind::ConfigMap => Manifest::ConfigMap(typed(value)?),
            Kind::Secret => Manifest::Secret(typed(value)?),
            Kind::ServiceAccount => Manifest::ServiceAccount(typed(value)?),
            Kind::Settings => Manifest::Settings(typed(value)?),
            Kind::AgentConfig => Manifest::AgentConfig(typed(value)?),
        })
    }

    pub fn to_value(&self) -> serde_json::Value {
        let value = match self {
            Manifest::Function(o) => serde_json::to_value(o),
            Manifest::Source(o) => serde_json::to_value(o),
            Manifest::Sink(o) => serde_json::to_value(o),
            Manifest::FunctionMesh(o) => serde_json::to_value(o),
            Manifest::BackendConfig(o) => serde_json::to_value(o),
            Manifest::ConfigMap(o) => serde_json::to_value(o),
            Manifest::Secret(o) => serde_json::to_value(o),
            Manifest::ServiceAccount(o) => serde_json::to_value(o),
            Manifest::Settings(o) => serde_json::to_value(o),
            Manifest::AgentConfig(o) => serde_json::to_value(o),
        };
        // Serializing plain data structs with string keys cannot fail.
        value.unwrap_or(serde_json::Value::Null)
    }

    pub fn kind(&self) -> Kind {
        match self {
            Manifest::Function(_) => Kind::Function,
            Manifest::Source(_) => Kind::Source,
            Manifest::Sink(_) => Kind::Sink,
            Manifest::FunctionMesh(_) => Kind::FunctionMesh,
            Manifest::BackendConfig(_) => Kind::BackendConfig,
            Manifest::ConfigMap(_) => Kind::ConfigMap,
            Manifest::Secret(_) => Kind::Secret,
            Manifest::ServiceAccount(_) => Kind::ServiceAccount,
            Manifest::Settings(_) => Kind::Settings,
            Manifest::AgentConfig(_) => Kind::AgentConfig,
        }
    }

    /// The object's metadata; the settings and agent config documents have none.
    pub fn metadata(&self) -> Option<&ObjectMeta> {
        Some(match self {
            Manifest::Settings(_) | Manifest::AgentConfig(_) => return None,
            Manifest::Function(o) => &o.metadata,
            Manifest::Source(o) => &o.metadata,
            Manifest::Sink(o) => &o.metadata,
            Manifest::FunctionMesh(o) => &o.metadata,
            Manifest::BackendConfig(o) => &o.metadata,
            Manifest::ConfigMap(o) => &o.metadata,
            Manifest::Secret(o) => &o.metadata,
            Manifest::ServiceAccount(o) => &o.metadata,
        })
    }

    pub fn name(&self) -> &str {
        self.metadata()
            .and_then(|m| m.name.as_deref())
            .unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.metadata()
            .and_then(|m| m.namespace.as_deref())
            .unwrap_or_default()
    }
}

/// Renders serde_path_to_error's path (`spec.pod.volumes[0].name`) as a JSON pointer.
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

/// Keys whose values the operator keeps verbatim (`x-kubernetes-preserve-unknown-fields`):
/// normalisation must not touch what is inside them.
const FREE_FORM_KEYS: &[&str] = &[
    "funcConfig",
    "sourceConfig",
    "sinkConfig",
    "configs",
    "discoveryTriggererConfig",
    "config",
    "status",
];

/// Drops `key: null` entries outside free-form fields, as the API server prunes nulls of
/// non-nullable fields: `annotations:` with nothing after it means "no annotations".
pub fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for (key, child) in map.iter_mut() {
                if !FREE_FORM_KEYS.contains(&key.as_str()) {
                    drop_nulls(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Turns non-integer numbers outside free-form fields into strings. The model has no float
/// fields, so after schema validation the only place a float can be is a quantity
/// (`cpu: 0.5`), which k8s-openapi reads only as a string — and Kubernetes stores as one.
pub fn floats_as_quantities(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if !FREE_FORM_KEYS.contains(&key.as_str()) {
                    floats_as_quantities(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(floats_as_quantities),
        serde_json::Value::Number(n) if n.is_f64() => {
            *value = serde_json::Value::String(n.to_string())
        }
        _ => {}
    }
}
