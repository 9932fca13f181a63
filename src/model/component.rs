//! `FunctionSpec`, `SourceSpec` and `SinkSpec`: the three runnable components.
//!
//! The operator's three Go structs share most fields but each lacks a few of the others'
//! (reference §1.2–§1.4). serde cannot combine `flatten` with `deny_unknown_fields`, so the
//! shared fields are written once in a macro and each spec lists only what is its own.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, ResourceRequirements, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::common::*;

/// Read access to the fields all three specs share, for validation and rendering.
pub trait ComponentSpec {
    fn common(&self) -> CommonFields<'_>;
}

/// Borrowed view of the shared fields.
#[derive(Clone, Copy, Debug)]
pub struct CommonFields<'a> {
    pub name: Option<&'a str>,
    pub class_name: Option<&'a str>,
    pub replicas: Option<i32>,
    pub min_replicas: Option<i32>,
    pub max_replicas: Option<i32>,
    pub resources: Option<&'a ResourceRequirements>,
    pub secrets_map: Option<&'a BTreeMap<String, SecretRef>>,
    pub processing_guarantee: Option<ProcessingGuarantee>,
    pub log_topic: Option<&'a str>,
    pub pod: Option<&'a PodPolicy>,
    pub pulsar: Option<&'a PulsarMessaging>,
    pub pulsar_package_service: Option<&'a PulsarMessaging>,
    pub java: Option<&'a JavaRuntime>,
    pub python: Option<&'a PythonRuntime>,
    pub golang: Option<&'a GoRuntime>,
    pub generic_runtime: Option<&'a GenericRuntime>,
    pub stateful_config: Option<&'a Stateful>,
}

macro_rules! component_spec {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[skip_serializing_none]
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Name in Pulsar; the webhook defaults it to `metadata.name`.
            pub name: Option<String>,
            pub class_name: Option<String>,
            /// Pulsar tenant (default `public`).
            pub tenant: Option<String>,
            /// Pulsar namespace (default `default`), not the Kubernetes one.
            pub namespace: Option<String>,
            pub cluster_name: Option<String>,
            #[schemars(range(min = 0))]
            pub replicas: Option<i32>,
            #[schemars(range(min = 0))]
            pub min_replicas: Option<i32>,
            /// Setting it enables a HorizontalPodAutoscaler.
            pub max_replicas: Option<i32>,
            pub show_precise_parallelism: Option<bool>,
            pub image: Option<String>,
            pub image_pull_policy: Option<ImagePullPolicy>,
            pub downloader_image: Option<String>,
            pub cleanup_image: Option<String>,
            pub filebeat_image: Option<String>,
            pub image_has_pulsarctl: Option<bool>,
            /// Spelled `imageHasGet` in the CRD (Go field `ImageHasWget`).
            pub image_has_get: Option<bool>,
            pub resources: Option<ResourceRequirements>,
            pub secrets_map: Option<BTreeMap<String, SecretRef>>,
            pub volume_mounts: Option<Vec<VolumeMount>>,
            pub processing_guarantee: Option<ProcessingGuarantee>,
            pub runtime_flags: Option<String>,
            pub cleanup_subscription: Option<bool>,
            pub log_topic: Option<String>,
            pub log_topic_agent: Option<LogTopicAgent>,
            pub pod: Option<PodPolicy>,
            pub pulsar: Option<PulsarMessaging>,
            /// Connection used only to download the package (v0.27.0).
            pub pulsar_package_service: Option<PulsarMessaging>,
            pub java: Option<JavaRuntime>,
            pub python: Option<PythonRuntime>,
            pub golang: Option<GoRuntime>,
            pub generic_runtime: Option<GenericRuntime>,
            pub stateful_config: Option<Stateful>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl ComponentSpec for $name {
            fn common(&self) -> CommonFields<'_> {
                CommonFields {
                    name: self.name.as_deref(),
                    class_name: self.class_name.as_deref(),
                    replicas: self.replicas,
                    min_replicas: self.min_replicas,
                    max_replicas: self.max_replicas,
                    resources: self.resources.as_ref(),
                    secrets_map: self.secrets_map.as_ref(),
                    processing_guarantee: self.processing_guarantee,
                    log_topic: self.log_topic.as_deref(),
                    pod: self.pod.as_ref(),
                    pulsar: self.pulsar.as_ref(),
                    pulsar_package_service: self.pulsar_package_service.as_ref(),
                    java: self.java.as_ref(),
                    python: self.python.as_ref(),
                    golang: self.golang.as_ref(),
                    generic_runtime: self.generic_runtime.as_ref(),
                    stateful_config: self.stateful_config.as_ref(),
                }
            }
        }
    };
}

/// A `corev1.PersistentVolumeClaim` as written in `volumeClaimTemplates`. k8s-openapi's own
/// type always writes apiVersion and kind back, which would make a manifest gain fields on
/// the way through the model; here they stay optional, as in the Go type.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeClaimTemplate {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<PersistentVolumeClaimSpec>,
    pub status: Option<PersistentVolumeClaimStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    Never,
    IfNotPresent,
}

component_spec! {
    /// `FunctionSpec` (`function_types.go`).
    FunctionSpec {
        input: Option<InputConf>,
        output: Option<OutputConf>,
        /// User configuration, kept as-is (becomes `userConfig`).
        func_config: Option<Config>,
        source_config: Option<SourceConnectorSpec>,
        sink_config: Option<SinkConnectorSpec>,
        timeout: Option<i32>,
        auto_ack: Option<bool>,
        max_message_retry: Option<i32>,
        retain_ordering: Option<bool>,
        retain_key_ordering: Option<bool>,
        dead_letter_topic: Option<String>,
        forward_source_message_property: Option<bool>,
        max_pending_async_requests: Option<i32>,
        subscription_name: Option<String>,
        subscription_position: Option<SubscriptionPosition>,
        skip_to_latest: Option<bool>,
        window_config: Option<WindowConfig>,
        volume_claim_templates: Option<Vec<VolumeClaimTemplate>>,
        persistent_volume_claim_retention_policy: Option<StatefulSetPersistentVolumeClaimRetentionPolicy>,
    }
}

component_spec! {
    /// `SourceSpec` (`source_types.go`).
    SourceSpec {
        output: Option<OutputConf>,
        forward_source_message_property: Option<bool>,
        /// Built-in connector name (`--source-type`).
        source_type: Option<String>,
        /// Connector configuration, kept as-is.
        source_config: Option<Config>,
        batch_source_config: Option<BatchSourceConfig>,
    }
}

component_spec! {
    /// `SinkSpec` (`sink_types.go`).
    SinkSpec {
        input: Option<InputConf>,
        /// Built-in connector name (`--sink-type`).
        sink_type: Option<String>,
        /// Connector configuration, kept as-is.
        sink_config: Option<Config>,
        timeout: Option<i32>,
        negative_ack_redelivery_delay_ms: Option<i32>,
        auto_ack: Option<bool>,
        max_message_retry: Option<i32>,
        retain_ordering: Option<bool>,
        retain_key_ordering: Option<bool>,
        dead_letter_topic: Option<String>,
        subscription_name: Option<String>,
        subscription_position: Option<SubscriptionPosition>,
    }
}
