//! One view of Function, Source and Sink for rendering, with the webhook's defaults applied.
//!
//! The three specs share most fields; rendering treats them as a FunctionSpec (the superset)
//! plus the few fields only Sources and Sinks have, so the workload code is written once.

use serde_json::{Map, Value};

use crate::model::{
    BatchSourceConfig, Config, FunctionSpec, LogTopicAgent, ProcessingGuarantee, ProducerConfig,
};
use crate::validate::Component;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ComponentKind {
    Function,
    Source,
    Sink,
}

impl ComponentKind {
    /// `function`, `source` or `sink`: the component label and the workload name suffix.
    pub fn component(self) -> &'static str {
        match self {
            ComponentKind::Function => "function",
            ComponentKind::Source => "source",
            ComponentKind::Sink => "sink",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            ComponentKind::Function => "Function",
            ComponentKind::Source => "Source",
            ComponentKind::Sink => "Sink",
        }
    }
}

/// A component ready to render: its CR name and namespace and its defaulted spec.
#[derive(Clone, Debug)]
pub struct RunnerSpec {
    pub kind: ComponentKind,
    /// `metadata.name` of the CR (`<mesh>-<entry>` for mesh children).
    pub cr_name: String,
    pub namespace: String,
    pub spec: FunctionSpec,
    /// Source only: connector configuration (`sourceConfig`).
    pub source_config: Option<Config>,
    pub source_type: Option<String>,
    pub batch_source_config: Option<BatchSourceConfig>,
    /// Sink only: connector configuration (`sinkConfig`).
    pub sink_config: Option<Config>,
    pub sink_type: Option<String>,
    pub negative_ack_redelivery_delay_ms: Option<i32>,
}

/// Keys of Source/Sink specs that FunctionSpec spells differently or lacks.
const OWN_KEYS: &[&str] = &[
    "sourceConfig",
    "sourceType",
    "batchSourceConfig",
    "sinkConfig",
    "sinkType",
    "negativeAckRedeliveryDelayMs",
];

fn as_function_spec(value: Value) -> (FunctionSpec, Map<String, Value>) {
    let mut map = match value {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let mut own = Map::new();
    for key in OWN_KEYS {
        if let Some(v) = map.remove(*key) {
            own.insert((*key).to_owned(), v);
        }
    }
    // Every remaining key of a Source or Sink spec is a FunctionSpec field with the same type
    // (`source_and_sink_fields_map_onto_function_spec_unchanged` proves it from the schemas).
    let spec = serde_json::from_value(Value::Object(map)).unwrap_or_default();
    (spec, own)
}

impl RunnerSpec {
    pub fn new(component: Component<'_>, cr_name: &str, namespace: &str) -> RunnerSpec {
        // A Function's spec is used as it is; a Source's or Sink's goes through JSON.
        let (kind, (spec, mut own)) = match component {
            Component::Function(s) => (ComponentKind::Function, (s.clone(), Map::new())),
            Component::Source(s) => (ComponentKind::Source, as_function_spec(to_value(s))),
            Component::Sink(s) => (ComponentKind::Sink, as_function_spec(to_value(s))),
        };
        let mut runner = RunnerSpec {
            kind,
            cr_name: cr_name.to_owned(),
            namespace: namespace.to_owned(),
            spec,
            source_config: None,
            source_type: None,
            batch_source_config: None,
            sink_config: None,
            sink_type: None,
            negative_ack_redelivery_delay_ms: None,
        };
        if kind == ComponentKind::Source {
            runner.source_config = get(&mut own, "sourceConfig");
            runner.source_type = get(&mut own, "sourceType");
            runner.batch_source_config = get(&mut own, "batchSourceConfig");
        }
        if kind == ComponentKind::Sink {
            runner.sink_config = get(&mut own, "sinkConfig");
            runner.sink_type = get(&mut own, "sinkType");
            runner.negative_ack_redelivery_delay_ms = get(&mut own, "negativeAckRedeliveryDelayMs");
        }
        runner.apply_webhook_defaults();
        runner
    }

    /// The mutating webhook's defaults (reference §4), so the workload is what the operator
    /// would build from the admitted object.
    fn apply_webhook_defaults(&mut self) {
        let kind = self.kind;
        let s = &mut self.spec;
        match (s.replicas, s.min_replicas) {
            (None, None) => {
                s.replicas = Some(1);
                s.min_replicas = Some(1);
            }
            (None, Some(min)) => s.replicas = Some(min),
            (Some(_), None) => s.min_replicas = Some(1),
            _ => {}
        }
        if kind != ComponentKind::Source && s.auto_ack.is_none() {
            s.auto_ack = Some(true);
        }
        s.processing_guarantee
            .get_or_insert(ProcessingGuarantee::AtleastOnce);
        if s.name.as_deref().is_none_or(str::is_empty) {
            s.name = Some(self.cr_name.clone());
        }
        default_str(&mut s.cluster_name, "kubernetes");
        default_str(&mut s.tenant, "public");
        default_str(&mut s.namespace, "default");
        if kind == ComponentKind::Function {
            s.max_pending_async_requests.get_or_insert(1000);
        }
        if kind != ComponentKind::Sink {
            s.forward_source_message_property.get_or_insert(true);
            let output = s.output.get_or_insert_with(Default::default);
            default_str(&mut output.type_class_name, "[B");
            if kind == ComponentKind::Source && output.producer_conf.is_none() {
                output.producer_conf = Some(ProducerConfig {
                    max_pending_messages: Some(1000),
                    max_pending_messages_across_partitions: Some(1000),
                    use_thread_local_producers: Some(true),
                    ..Default::default()
                });
            }
        }
        if kind != ComponentKind::Source {
            let input = s.input.get_or_insert_with(Default::default);
            default_str(&mut input.type_class_name, "[B");
        }
        if s.log_topic.as_deref().is_some_and(|t| !t.is_empty()) && s.log_topic_agent.is_none() {
            s.log_topic_agent = Some(match kind {
                ComponentKind::Function => LogTopicAgent::Runtime,
                _ => LogTopicAgent::Sidecar,
            });
        }
        if let Some(window) = &mut s.window_config {
            if window.window_length_duration_ms.is_some()
                && window.sliding_interval_duration_ms.is_none()
            {
                window.sliding_interval_duration_ms = window.window_length_duration_ms;
            }
            if window.window_length_count.is_some() && window.sliding_interval_count.is_none() {
                window.sliding_interval_count = window.window_length_count;
                window.max_lag_ms.get_or_insert(0);
                window.watermark_emit_interval_ms.get_or_insert(1000);
            }
        }
    }

    /// `<cr>-function|source|sink`: the StatefulSet, HPA and VPA name.
    pub fn workload_name(&self) -> String {
        format!("{}-{}", self.cr_name, self.kind.component())
    }

    pub fn pulsar_name(&self) -> &str {
        self.spec.name.as_deref().unwrap_or(&self.cr_name)
    }

    pub fn log_topic_agent(&self) -> Option<LogTopicAgent> {
        self.spec
            .log_topic
            .as_deref()
            .filter(|t| !t.is_empty())
            .and(self.spec.log_topic_agent)
    }

    /// The filebeat sidecar ships logs instead of the runtime.
    pub fn sidecar_logs(&self) -> bool {
        self.log_topic_agent() == Some(LogTopicAgent::Sidecar)
    }
}

fn get<T: serde::de::DeserializeOwned>(own: &mut Map<String, Value>, key: &str) -> Option<T> {
    own.remove(key).and_then(|v| serde_json::from_value(v).ok())
}

fn default_str(field: &mut Option<String>, value: &str) {
    if field.as_deref().is_none_or(str::is_empty) {
        *field = Some(value.to_owned());
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{schema, Kind};

    /// Rendering reads Source and Sink specs as FunctionSpecs; that is only lossless if every
    /// field they share with FunctionSpec has the same schema there.
    #[test]
    fn source_and_sink_fields_map_onto_function_spec_unchanged() {
        let function = schema::generate(Kind::Function);
        let function_fields = &function["$defs"]["FunctionSpec"]["properties"];
        for (kind, def) in [(Kind::Source, "SourceSpec"), (Kind::Sink, "SinkSpec")] {
            let generated = schema::generate(kind);
            for (field, field_schema) in generated["$defs"][def]["properties"].as_object().unwrap()
            {
                if OWN_KEYS.contains(&field.as_str()) {
                    continue;
                }
                assert_eq!(
                    &function_fields[field], field_schema,
                    "{def}.{field} differs from FunctionSpec.{field}"
                );
            }
        }
    }

    #[test]
    fn webhook_defaults_are_applied() {
        let source = crate::model::SourceSpec {
            image: Some("img".into()),
            replicas: Some(3),
            log_topic: Some("persistent://public/default/logs".into()),
            ..Default::default()
        };
        let r = RunnerSpec::new(Component::Source(&source), "src", "ns");
        assert_eq!(r.spec.image.as_deref(), Some("img"));
        assert_eq!((r.spec.replicas, r.spec.min_replicas), (Some(3), Some(1)));
        assert_eq!(r.spec.name.as_deref(), Some("src"));
        assert_eq!(r.spec.tenant.as_deref(), Some("public"));
        assert_eq!(r.spec.cluster_name.as_deref(), Some("kubernetes"));
        assert!(
            r.sidecar_logs(),
            "Sources ship logs through the sidecar by default"
        );
        let producer = r.spec.output.unwrap().producer_conf.unwrap();
        assert_eq!(producer.max_pending_messages, Some(1000));
        assert_eq!(r.spec.auto_ack, None, "Sources have no autoAck");
    }
}
