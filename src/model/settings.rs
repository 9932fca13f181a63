//! `meshops.yaml`: how a source is rendered. It sits at the root of the repository path and is
//! validated like every manifest (schema `schemas/settings.json`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{BackendConfigSpec, ImagePullPolicy};

/// File name of the settings document at the root of a source.
pub const SETTINGS_FILE: &str = "meshops.yaml";
pub const SETTINGS_API_VERSION: &str = "meshops.io/v1alpha1";

/// What meshops applies for the Function Mesh kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// meshops is the operator: the CRs (marked unmanaged) plus the runner workloads.
    #[default]
    Native,
    /// The Function Mesh operator runs the workloads; meshops applies only the CRs.
    Operator,
}

/// Render settings; every field has the operator's default when unset.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenderSettings {
    pub mode: Option<Mode>,
    pub runner_images: Option<RunnerImages>,
    /// Labels added to every runner pod (the operator's `resourceLabels`).
    pub resource_labels: Option<BTreeMap<String, String>>,
    /// Annotations added to every runner pod (the operator's `resourceAnnotations`).
    pub resource_annotations: Option<BTreeMap<String, String>>,
    pub runner_image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Pull policy of the runner containers (default `IfNotPresent`).
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Download packages in a `downloader` init container (`--enable-init-containers`).
    pub init_container_download: Option<bool>,
    /// Add the default pod anti-affinity (`--add-default-affinity`, default true).
    pub default_affinity: Option<bool>,
    /// `runAsNonRoot` of the default pod security context (operator env `RUN_AS_NON_ROOT`).
    pub run_as_non_root: Option<bool>,
    pub pod_disruption_budget: Option<PdbSettings>,
    pub authorization_policy: Option<AuthorizationPolicySettings>,
    /// The cluster-wide BackendConfig (`--global-backend-config`); a namespace's
    /// `backend-config` overrides it.
    pub global_backend_config: Option<BackendConfigSpec>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerImages {
    pub java: Option<String>,
    pub python: Option<String>,
    pub go: Option<String>,
    /// By `genericRuntime.language`: nodejs, python, executable, wasm.
    pub generic_runtime: Option<BTreeMap<String, String>>,
}

/// A PodDisruptionBudget (policy/v1) per workload that can run more than one replica.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PdbSettings {
    /// Default true.
    pub enabled: Option<bool>,
    /// Default 1.
    pub max_unavailable: Option<IntOrString>,
}

/// An Istio AuthorizationPolicy (security.istio.io/v1) per workload: only the listed
/// principals or namespaces reach the function port (9093), only the scrapers the metrics
/// port (9094). Off unless enabled (clusters without Istio have no such CRD).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySettings {
    pub enabled: Option<bool>,
    /// Istio principals allowed on 9093, e.g. `cluster.local/ns/pulsar/sa/pulsar-broker`.
    pub broker_principals: Option<Vec<String>>,
    pub broker_namespaces: Option<Vec<String>>,
    /// Principals allowed on 9094, e.g. the Prometheus service account.
    pub metrics_principals: Option<Vec<String>>,
    pub metrics_namespaces: Option<Vec<String>>,
}

/// The `meshops.yaml` document.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    pub api_version: String,
    pub kind: String,
    pub spec: RenderSettings,
}
