//! Types shared by Function, Source, Sink and BackendConfig
//! (`api/compute/v1alpha1/common.go` in the operator).
//!
//! Every optional Go field is an `Option` here, so a manifest round-trips through the model
//! without gaining or losing a key (`retainOrdering: false` stays written).

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscalerBehavior, MetricSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, LocalObjectReference, PodSecurityContext, Probe, Toleration,
    Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// Free-form configuration that the operator keeps as-is (`funcConfig`, connector configs…).
pub type Config = serde_json::Map<String, serde_json::Value>;

/// How the operator's `ProcessGuarantee` enum is spelled in manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    AtleastOnce,
    AtmostOnce,
    EffectivelyOnce,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionPosition {
    Latest,
    Earliest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogTopicAgent {
    Runtime,
    Sidecar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum CompressionType {
    None,
    Lz4,
    Zlib,
    Zstd,
    Snappy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WindowProcessingGuarantee {
    AtleastOnce,
    AtmostOnce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
    All,
    Panic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RotatePolicy {
    TimedPolicyWithDaily,
    TimedPolicyWithWeekly,
    TimedPolicyWithMonthly,
    #[serde(rename = "SizedPolicyWith10MB")]
    SizedPolicyWith10Mb,
    #[serde(rename = "SizedPolicyWith50MB")]
    SizedPolicyWith50Mb,
    #[serde(rename = "SizedPolicyWith100MB")]
    SizedPolicyWith100Mb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Log4jConfigFileType {
    Xml,
    Yaml,
    Ini,
}

/// `api/compute/v1alpha1/hpa.go`: the six built-in autoscaling rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BuiltinHpaRule {
    AverageUtilizationCPUPercent80,
    AverageUtilizationCPUPercent50,
    AverageUtilizationCPUPercent20,
    AverageUtilizationMemoryPercent80,
    AverageUtilizationMemoryPercent50,
    AverageUtilizationMemoryPercent20,
}

impl BuiltinHpaRule {
    /// Whether the rule scales on CPU (otherwise memory); the webhook allows one of each.
    pub fn is_cpu(self) -> bool {
        matches!(
            self,
            Self::AverageUtilizationCPUPercent80
                | Self::AverageUtilizationCPUPercent50
                | Self::AverageUtilizationCPUPercent20
        )
    }
}

/// The inlined `Messaging` struct: `pulsar` is required by the webhook.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PulsarMessaging {
    /// ConfigMap with `webServiceURL` and `brokerServiceURL`.
    pub pulsar_config: Option<String>,
    /// Legacy Secret with `clientAuthenticationPlugin` and `clientAuthenticationParameters`.
    pub auth_secret: Option<String>,
    /// Legacy Secret with the TLS settings as env.
    pub tls_secret: Option<String>,
    pub tls_config: Option<PulsarTlsConfig>,
    pub auth_config: Option<AuthConfig>,
    pub cleanup_auth_config: Option<AuthConfig>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PulsarTlsConfig {
    pub enabled: Option<bool>,
    pub allow_insecure: Option<bool>,
    pub hostname_verification: Option<bool>,
    pub cert_secret_name: Option<String>,
    pub cert_secret_key: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    pub oauth2_config: Option<OAuth2Config>,
    pub generic_auth: Option<GenericAuth>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2Config {
    pub audience: String,
    pub issuer_url: String,
    pub scope: Option<String>,
    /// Secret holding the OAuth2 private key file.
    pub key_secret_name: String,
    /// Key of that Secret, such as `auth.json`.
    pub key_secret_key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenericAuth {
    pub client_authentication_plugin: String,
    pub client_authentication_parameters: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stateful {
    pub pulsar: Option<PulsarStateStore>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PulsarStateStore {
    pub service_url: String,
    pub java_provider: Option<PulsarStateStoreJavaProvider>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PulsarStateStoreJavaProvider {
    pub class_name: String,
    pub config: Option<Config>,
}

/// Pod-level settings for the runner pods.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodPolicy {
    pub labels: Option<BTreeMap<String, String>>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub affinity: Option<Affinity>,
    pub tolerations: Option<Vec<Toleration>>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub security_context: Option<PodSecurityContext>,
    pub termination_grace_period_seconds: Option<i64>,
    pub volumes: Option<Vec<Volume>>,
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    pub init_containers: Option<Vec<Container>>,
    pub sidecars: Option<Vec<Container>>,
    pub service_account_name: Option<String>,
    pub builtin_autoscaler: Option<Vec<BuiltinHpaRule>>,
    pub auto_scaling_metrics: Option<Vec<MetricSpec>>,
    pub auto_scaling_behavior: Option<HorizontalPodAutoscalerBehavior>,
    pub vpa: Option<VpaSpec>,
    pub env: Option<Vec<EnvVar>>,
    pub liveness: Option<Liveness>,
    pub startup_probe: Option<Probe>,
    pub disable_default_affinity: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Liveness {
    pub period_seconds: Option<i32>,
    pub initial_delay_seconds: Option<i32>,
    pub success_threshold: Option<i32>,
    pub failure_threshold: Option<i32>,
}

/// `pod.vpa`: the VerticalPodAutoscaler v1 policy blocks, copied into the VPA.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VpaSpec {
    pub update_policy: Option<PodUpdatePolicy>,
    pub resource_policy: Option<PodResourcePolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VpaUpdateMode {
    Off,
    Initial,
    Recreate,
    InPlaceOrRecreate,
    Auto,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodUpdatePolicy {
    pub update_mode: Option<VpaUpdateMode>,
    pub min_replicas: Option<i32>,
    pub eviction_requirements: Option<Vec<EvictionRequirement>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EvictionChangeRequirement {
    TargetHigherThanRequests,
    TargetLowerThanRequests,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvictionRequirement {
    pub resources: Vec<String>,
    pub change_requirement: EvictionChangeRequirement,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodResourcePolicy {
    pub container_policies: Option<Vec<ContainerResourcePolicy>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ContainerScalingMode {
    Auto,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ContainerControlledValues {
    RequestsAndLimits,
    RequestsOnly,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerResourcePolicy {
    pub container_name: Option<String>,
    pub mode: Option<ContainerScalingMode>,
    pub min_allowed: Option<BTreeMap<String, Quantity>>,
    pub max_allowed: Option<BTreeMap<String, Quantity>>,
    pub controlled_resources: Option<Vec<String>>,
    pub controlled_values: Option<ContainerControlledValues>,
}

/// The inlined `Runtime` struct; the webhook allows exactly one of java/python/golang.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JavaRuntime {
    pub jar: String,
    pub jar_location: Option<String>,
    pub extra_dependencies_dir: Option<String>,
    pub log: Option<RuntimeLogConfig>,
    pub java_opts: Option<Vec<String>>,
    pub instance_path: Option<String>,
    pub entry_class: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PythonRuntime {
    pub py: String,
    pub py_location: Option<String>,
    pub log: Option<RuntimeLogConfig>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GoRuntime {
    pub go: String,
    pub go_location: Option<String>,
    pub log: Option<RuntimeLogConfig>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenericRuntime {
    pub function_file: String,
    pub language: String,
    pub function_file_location: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeLogConfig {
    pub level: Option<LogLevel>,
    pub rotate_policy: Option<RotatePolicy>,
    pub format: Option<LogFormat>,
    pub log_config: Option<LogConfigRef>,
    #[serde(rename = "javaLog4JConfigFileType")]
    pub java_log4j_config_file_type: Option<Log4jConfigFileType>,
}

/// A key of a ConfigMap holding a complete runtime log configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfigRef {
    pub name: String,
    pub key: String,
}

/// One `secretsMap` entry: `path` is the Secret's name.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub path: Option<String>,
    pub key: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputConf {
    pub type_class_name: Option<String>,
    pub topics: Option<Vec<String>>,
    pub topic_pattern: Option<String>,
    pub custom_serde_sources: Option<BTreeMap<String, String>>,
    pub custom_schema_sources: Option<BTreeMap<String, String>>,
    pub source_specs: Option<BTreeMap<String, ConsumerConfig>>,
}

impl InputConf {
    /// Every topic the input names, in the operator's `collectAllInputTopics` order.
    pub fn all_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = Vec::new();
        topics.extend(self.topics.iter().flatten().map(String::as_str));
        topics.extend(self.topic_pattern.as_deref());
        for map in [&self.custom_serde_sources, &self.custom_schema_sources] {
            topics.extend(map.iter().flat_map(|m| m.keys()).map(String::as_str));
        }
        topics.extend(
            self.source_specs
                .iter()
                .flat_map(|m| m.keys())
                .map(String::as_str),
        );
        topics
    }
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerConfig {
    pub schema_type: Option<String>,
    #[serde(rename = "serdeClassname")]
    pub serde_class_name: Option<String>,
    pub is_regex_pattern: Option<bool>,
    pub schema_properties: Option<BTreeMap<String, String>>,
    pub consumer_properties: Option<BTreeMap<String, String>>,
    pub receiver_queue_size: Option<i32>,
    pub crypto_config: Option<CryptoConfig>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputConf {
    pub type_class_name: Option<String>,
    pub topic: Option<String>,
    pub sink_serde_class_name: Option<String>,
    pub sink_schema_type: Option<String>,
    pub producer_conf: Option<ProducerConfig>,
    pub custom_schema_sinks: Option<BTreeMap<String, String>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProducerConfig {
    pub max_pending_messages: Option<i32>,
    pub max_pending_messages_across_partitions: Option<i32>,
    pub use_thread_local_producers: Option<bool>,
    pub crypto_config: Option<CryptoConfig>,
    pub batch_builder: Option<String>,
    pub compression_type: Option<CompressionType>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CryptoConfig {
    pub crypto_key_reader_class_name: Option<String>,
    pub crypto_key_reader_config: Option<BTreeMap<String, String>>,
    pub encryption_keys: Option<Vec<String>>,
    pub producer_crypto_failure_action: Option<String>,
    pub consumer_crypto_failure_action: Option<String>,
    pub crypto_secrets: Option<Vec<CryptoSecret>>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CryptoSecret {
    pub secret_name: String,
    pub secret_key: String,
    pub as_volume: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowConfig {
    /// Required by the CRD, but the operator overwrites it with `className`; optional here
    /// so the operator's own window samples (which omit it) stay valid.
    pub actual_window_function_class_name: Option<String>,
    pub window_length_count: Option<i32>,
    pub window_length_duration_ms: Option<i64>,
    pub sliding_interval_count: Option<i32>,
    pub sliding_interval_duration_ms: Option<i64>,
    pub late_data_topic: Option<String>,
    pub max_lag_ms: Option<i64>,
    pub watermark_emit_interval_ms: Option<i64>,
    pub timestamp_extractor_class_name: Option<String>,
    pub processing_guarantees: Option<WindowProcessingGuarantee>,
}

/// A Function's override of its source connector (v0.26.0, #823).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConnectorSpec {
    pub archive: Option<String>,
    pub builtin: Option<String>,
    /// Built-in source connector name (v0.27: becomes FunctionDetails `source.builtin`).
    pub source_type: Option<String>,
    pub class_name: Option<String>,
    pub type_class_name: Option<String>,
    pub configs: Option<Config>,
}

/// A Function's override of its sink connector (v0.26.0, #823).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkConnectorSpec {
    pub archive: Option<String>,
    pub builtin: Option<String>,
    pub sink_type: Option<String>,
    pub class_name: Option<String>,
    pub type_class_name: Option<String>,
    pub configs: Option<Config>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchSourceConfig {
    pub discovery_triggerer_class_name: String,
    pub discovery_triggerer_config: Option<Config>,
}
