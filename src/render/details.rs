//! `--function_details`: the FunctionDetails protobuf as JSON, with protojson's rules
//! (lowerCamel names, enums by name, int64 as strings, zero values omitted) in one stable
//! encoding (compact, fields in proto order), so the same commit always yields the same bytes.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::spec::{ComponentKind, RunnerSpec};
use crate::model::{
    ConsumerConfig, CryptoConfig, ProcessingGuarantee, ProducerConfig, SubscriptionPosition,
};

const WINDOW_EXECUTOR: &str = "org.apache.pulsar.functions.windowing.WindowFunctionExecutor";
const IDENTITY_FUNCTION: &str = "org.apache.pulsar.functions.api.utils.IdentityFunction";
const BATCH_SOURCE_EXECUTOR: &str = "org.apache.pulsar.functions.source.batch.BatchSourceExecutor";

/// Proto map fields: omitted when empty, unlike sub-messages.
const MAP_FIELDS: &[&str] = &["inputSpecs", "schemaProperties", "consumerProperties"];

/// A JSON object that drops protobuf zero values, as protojson does.
#[derive(Default)]
struct Message(Map<String, Value>);

impl Message {
    fn set(&mut self, key: &str, value: Value) -> &mut Self {
        let zero = match &value {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::String(s) => s.is_empty() || s == "0",
            Value::Number(n) => n.as_f64() == Some(0.0),
            // A set sub-message is written even when empty; an empty map is not.
            Value::Object(m) => m.is_empty() && MAP_FIELDS.contains(&key),
            Value::Array(a) => a.is_empty(),
        };
        if !zero {
            self.0.insert(key.to_owned(), value);
        }
        self
    }

    fn str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        self.set(key, value.map_or(Value::Null, |v| json!(v)))
    }

    fn value(self) -> Value {
        Value::Object(self.0)
    }
}

fn guarantee(g: Option<ProcessingGuarantee>) -> &'static str {
    match g {
        Some(ProcessingGuarantee::AtmostOnce) => "ATMOST_ONCE",
        Some(ProcessingGuarantee::EffectivelyOnce) => "EFFECTIVELY_ONCE",
        Some(ProcessingGuarantee::Manual) => "MANUAL",
        _ => "",
    }
}

/// encoding/json of a `map[string]interface{}` (free-form config): every key sorted, compact.
fn json_string<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(&sorted(serde_json::to_value(value).unwrap_or(Value::Null)))
        .unwrap_or_default()
}

/// encoding/json of a typed value: struct fields in declaration order (serde's order here),
/// map keys sorted (our maps are BTreeMaps).
fn go_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Sorts object keys recursively (Go's encoding/json writes maps that way).
pub fn sorted(mut value: Value) -> Value {
    sort_maps(&mut value);
    value
}

/// [`sorted`] in place: the maps are reordered where they are, nothing is rebuilt.
pub fn sort_maps(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // Most maps come sorted (k8s-openapi writes its fields in order); sorting one
            // rebuilds its index, so only those out of order are sorted.
            if !map.keys().is_sorted() {
                map.sort_keys();
            }
            map.values_mut().for_each(sort_maps);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_maps),
        _ => {}
    }
}

/// `{cpu, ram, disk}` from the resource requests.
fn resources(r: &RunnerSpec) -> Value {
    let requests = r.spec.resources.as_ref().and_then(|x| x.requests.as_ref());
    let quantity = |name: &str| requests.and_then(|q| q.get(name)).and_then(super::quantity);
    let mut m = Message::default();
    if let Some(cpu) = quantity("cpu") {
        m.set("cpu", json!(cpu));
    }
    // Go's Quantity.Value() rounds up to a whole byte.
    if let Some(ram) = quantity("memory") {
        m.set("ram", json!((ram.ceil() as i64).to_string()));
    }
    if let Some(disk) = quantity("ephemeral-storage") {
        m.set("disk", json!((disk.ceil() as i64).to_string()));
    }
    m.value()
}

fn crypto(c: &CryptoConfig) -> Value {
    let mut m = Message::default();
    m.str(
        "cryptoKeyReaderClassName",
        c.crypto_key_reader_class_name.as_deref(),
    )
    .str(
        "cryptoKeyReaderConfig",
        c.crypto_key_reader_config
            .as_ref()
            .map(json_string)
            .as_deref(),
    )
    .set(
        "producerEncryptionKeyName",
        json!(c.encryption_keys.clone().unwrap_or_default()),
    )
    .str(
        "producerCryptoFailureAction",
        c.producer_crypto_failure_action.as_deref(),
    )
    .str(
        "consumerCryptoFailureAction",
        c.consumer_crypto_failure_action.as_deref(),
    );
    m.value()
}

fn consumer(c: &ConsumerConfig) -> Value {
    let mut m = Message::default();
    m.str("schemaType", c.schema_type.as_deref())
        .str("serdeClassName", c.serde_class_name.as_deref())
        .set("isRegexPattern", json!(c.is_regex_pattern.unwrap_or(false)));
    if let Some(size) = c.receiver_queue_size {
        m.0.insert("receiverQueueSize".into(), json!({"value": size}));
    }
    m.set(
        "schemaProperties",
        json!(c.schema_properties.clone().unwrap_or_default()),
    )
    .set(
        "consumerProperties",
        json!(c.consumer_properties.clone().unwrap_or_default()),
    );
    if let Some(c) = &c.crypto_config {
        m.set("cryptoSpec", crypto(c));
    }
    m.value()
}

fn producer(p: &ProducerConfig) -> Value {
    let mut m = Message::default();
    m.set(
        "maxPendingMessages",
        json!(p.max_pending_messages.unwrap_or(0)),
    )
    .set(
        "maxPendingMessagesAcrossPartitions",
        json!(p.max_pending_messages_across_partitions.unwrap_or(0)),
    )
    .set(
        "useThreadLocalProducers",
        json!(p.use_thread_local_producers.unwrap_or(false)),
    );
    if let Some(c) = &p.crypto_config {
        m.set("cryptoSpec", crypto(c));
    }
    m.str("batchBuilder", p.batch_builder.as_deref());
    if let Some(t) = p.compression_type {
        m.set(
            "compressionType",
            serde_json::to_value(t).unwrap_or(Value::Null),
        );
    }
    m.value()
}

/// `inputSpecs`: topics, the pattern, custom serde and schema sources and sourceSpecs, later
/// entries overwriting earlier ones (the operator's order).
fn input_specs(r: &RunnerSpec) -> Value {
    let mut specs: BTreeMap<String, Value> = BTreeMap::new();
    let Some(input) = &r.spec.input else {
        return json!({});
    };
    for topic in input.topics.iter().flatten() {
        specs.insert(topic.clone(), json!({}));
    }
    if let Some(pattern) = &input.topic_pattern {
        specs.insert(pattern.clone(), json!({"isRegexPattern": true}));
    }
    for (topic, serde) in input.custom_serde_sources.iter().flatten() {
        specs.insert(topic.clone(), json!({"serdeClassName": serde}));
    }
    for (topic, schema) in input.custom_schema_sources.iter().flatten() {
        specs.insert(topic.clone(), json!({"schemaType": schema}));
    }
    for (topic, spec) in input.source_specs.iter().flatten() {
        specs.insert(topic.clone(), consumer(spec));
    }
    Value::Object(specs.into_iter().collect())
}

fn subscription_type(r: &RunnerSpec) -> &'static str {
    let s = &r.spec;
    if s.retain_ordering == Some(true)
        || s.processing_guarantee == Some(ProcessingGuarantee::EffectivelyOnce)
    {
        "FAILOVER"
    } else if s.retain_key_ordering == Some(true) {
        "KEY_SHARED"
    } else {
        ""
    }
}

fn source_spec(r: &RunnerSpec) -> Value {
    let s = &r.spec;
    let mut m = Message::default();
    match r.kind {
        ComponentKind::Source => {
            let mut configs = r.source_config.clone().unwrap_or_default();
            let mut class_name = s.class_name.clone();
            if let Some(batch) = &r.batch_source_config {
                configs.insert("__BATCHSOURCECONFIGS__".into(), json!(go_json(batch)));
                configs.insert(
                    "__BATCHSOURCECLASSNAME__".into(),
                    json!(class_name.clone().unwrap_or_default()),
                );
                class_name = Some(BATCH_SOURCE_EXECUTOR.into());
            }
            m.str("className", class_name.as_deref())
                .str("configs", Some(&json_string(&configs)))
                .str(
                    "typeClassName",
                    s.output.as_ref().and_then(|o| o.type_class_name.as_deref()),
                );
            if let Some(builtin) = &r.source_type {
                m.str("builtin", Some(builtin));
            }
        }
        ComponentKind::Function | ComponentKind::Sink => {
            let input = s.input.as_ref();
            let timeout = s.timeout.unwrap_or(0);
            m.str(
                "typeClassName",
                input.and_then(|i| i.type_class_name.as_deref()),
            )
            .set("subscriptionType", json!(subscription_type(r)))
            .set("inputSpecs", input_specs(r))
            .set("timeoutMs", json!(i64::from(timeout).to_string()))
            .str("subscriptionName", s.subscription_name.as_deref())
            .set(
                "cleanupSubscription",
                json!(s.cleanup_subscription.unwrap_or(false)),
            );
            let position = match s.subscription_position {
                Some(SubscriptionPosition::Latest) => "",
                _ => "EARLIEST",
            };
            m.set("subscriptionPosition", json!(position));
            let nack = match r.kind {
                ComponentKind::Sink => r.negative_ack_redelivery_delay_ms.unwrap_or(0),
                _ => timeout,
            };
            m.set(
                "negativeAckRedeliveryDelayMs",
                json!(i64::from(nack).to_string()),
            )
            .set("skipToLatest", json!(s.skip_to_latest.unwrap_or(false)));
            if let Some(connector) = &s.source_config {
                let builtin = connector
                    .builtin
                    .as_deref()
                    .or(connector.source_type.as_deref());
                m.str("className", connector.class_name.as_deref())
                    .str("builtin", builtin)
                    .str("typeClassName", connector.type_class_name.as_deref());
                if let Some(configs) = &connector.configs {
                    m.str("configs", Some(&json_string(configs)));
                }
            }
        }
    }
    m.value()
}

fn sink_spec(r: &RunnerSpec) -> Value {
    let s = &r.spec;
    let mut m = Message::default();
    match r.kind {
        ComponentKind::Sink => {
            let mut configs = r.sink_config.clone().unwrap_or_default();
            if let Some(sink_type) = &r.sink_type {
                configs.insert("sinkType".into(), json!(sink_type));
            }
            m.str("className", s.class_name.as_deref())
                .str("configs", Some(&json_string(&configs)))
                .str(
                    "typeClassName",
                    s.input.as_ref().and_then(|i| i.type_class_name.as_deref()),
                );
        }
        ComponentKind::Function | ComponentKind::Source => {
            let output = s.output.clone().unwrap_or_default();
            m.str("typeClassName", output.type_class_name.as_deref())
                .str("topic", output.topic.as_deref());
            match (&output.producer_conf, r.kind) {
                (Some(p), _) => {
                    m.set("producerSpec", producer(p));
                }
                (None, ComponentKind::Source) => {
                    m.0.insert("producerSpec".into(), json!({}));
                }
                _ => {}
            }
            m.str("serDeClassName", output.sink_serde_class_name.as_deref())
                .str("schemaType", output.sink_schema_type.as_deref())
                .set(
                    "forwardSourceMessageProperty",
                    json!(s.forward_source_message_property.unwrap_or(true)),
                );
            let custom = output
                .topic
                .as_ref()
                .and_then(|t| output.custom_schema_sinks.as_ref()?.get(t))
                .and_then(|text| serde_json::from_str::<ConsumerConfig>(text).ok());
            if let Some(custom) = custom {
                m.set(
                    "schemaProperties",
                    json!(custom.schema_properties.unwrap_or_default()),
                )
                .set(
                    "consumerProperties",
                    json!(custom.consumer_properties.unwrap_or_default()),
                );
            }
            if let Some(connector) = &s.sink_config {
                m.str("className", connector.class_name.as_deref())
                    .str("builtin", connector.builtin.as_deref())
                    .str("typeClassName", connector.type_class_name.as_deref());
                let mut configs = connector.configs.clone().unwrap_or_default();
                if let Some(sink_type) = &connector.sink_type {
                    configs.insert("sinkType".into(), json!(sink_type));
                }
                if !configs.is_empty() {
                    m.str("configs", Some(&json_string(&configs)));
                }
            }
        }
    }
    m.value()
}

fn user_config(r: &RunnerSpec) -> String {
    let s = &r.spec;
    match r.kind {
        ComponentKind::Source => json_string(&r.source_config.clone().unwrap_or_default()),
        ComponentKind::Sink => json_string(&r.sink_config.clone().unwrap_or_default()),
        ComponentKind::Function => {
            let mut config = s.func_config.clone().unwrap_or_default();
            if let Some(window) = &s.window_config {
                let mut window = window.clone();
                window.actual_window_function_class_name = s.class_name.clone();
                config.insert(
                    "__WINDOWCONFIGS__".into(),
                    serde_json::to_value(window).unwrap_or(Value::Null),
                );
            }
            if config.is_empty() {
                String::new()
            } else {
                json_string(&config)
            }
        }
    }
}

/// The retry block: only with retries or a dead-letter topic.
fn retry_details(r: &RunnerSpec) -> Option<Value> {
    let s = &r.spec;
    let retries = s.max_message_retry.unwrap_or(0);
    let dlq = s
        .dead_letter_topic
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| {
            let subscription = s.subscription_name.as_deref().unwrap_or_default();
            (retries > 0 && (subscription.is_empty() || subscription.contains('\\'))).then(|| {
                format!(
                    "{}-{}-{}-DLQ",
                    s.tenant.as_deref().unwrap_or_default(),
                    s.namespace.as_deref().unwrap_or_default(),
                    r.pulsar_name()
                )
            })
        });
    if retries <= 0 && dlq.is_none() {
        return None;
    }
    let mut m = Message::default();
    m.set("maxMessageRetries", json!(retries))
        .str("deadLetterTopic", dlq.as_deref());
    Some(m.value())
}

/// FunctionDetails for one component, as a JSON value.
pub fn function_details(r: &RunnerSpec) -> Value {
    let s = &r.spec;
    let mut m = Message::default();
    let class_name = match r.kind {
        ComponentKind::Function if s.window_config.is_some() => Some(WINDOW_EXECUTOR.to_owned()),
        ComponentKind::Function => s.class_name.clone(),
        _ => Some(IDENTITY_FUNCTION.to_owned()),
    };
    let log_topic = if r.sidecar_logs() {
        None
    } else {
        s.log_topic.as_deref()
    };
    let runtime = match (s.python.is_some(), s.golang.is_some()) {
        (true, _) => "PYTHON",
        (_, true) => "GO",
        _ => "",
    };
    let parallelism = if s.show_precise_parallelism == Some(true) {
        s.replicas.unwrap_or(1)
    } else {
        1
    };
    m.str("tenant", s.tenant.as_deref())
        .str("namespace", s.namespace.as_deref())
        .str("name", Some(r.pulsar_name()))
        .str("className", class_name.as_deref())
        .str("logTopic", log_topic)
        .set(
            "processingGuarantees",
            json!(guarantee(s.processing_guarantee)),
        )
        .str("userConfig", Some(&user_config(r)));
    if let Some(secrets) = &s.secrets_map {
        m.str("secretsMap", Some(&go_json(secrets)));
    }
    m.set("runtime", json!(runtime))
        .set(
            "autoAck",
            json!(s.auto_ack.unwrap_or(true) || r.kind == ComponentKind::Source),
        )
        .set("parallelism", json!(parallelism))
        .set("source", source_spec(r))
        .set("sink", sink_spec(r))
        .set("resources", resources(r));
    if let Some(retry) = retry_details(r) {
        m.set("retryDetails", retry);
    }
    m.str("runtimeFlags", s.runtime_flags.as_deref())
        .set("componentType", json!(r.kind.kind().to_ascii_uppercase()))
        .set("retainOrdering", json!(s.retain_ordering.unwrap_or(false)))
        .set(
            "retainKeyOrdering",
            json!(s.retain_key_ordering.unwrap_or(false)),
        );
    m.value()
}

/// The Go runtime's instance configuration (`-instance-conf`), pulsar-function-go's `Conf`.
pub fn go_function_conf(r: &RunnerSpec, function_id: &str) -> Value {
    let s = &r.spec;
    let input = s.input.clone().unwrap_or_default();
    let first_topic = input
        .topics
        .as_ref()
        .and_then(|t| t.first())
        .cloned()
        .unwrap_or_default();
    let source_spec = input
        .source_specs
        .as_ref()
        .and_then(|m| m.get(&first_topic));
    let output = s.output.clone().unwrap_or_default();
    let requests = s
        .resources
        .as_ref()
        .and_then(|x| x.requests.clone())
        .unwrap_or_default();
    let bytes = |name: &str| -> Option<f64> { requests.get(name).and_then(super::quantity) };
    let guarantee = match s.processing_guarantee {
        Some(ProcessingGuarantee::AtmostOnce) => 1,
        Some(ProcessingGuarantee::EffectivelyOnce) => 2,
        Some(ProcessingGuarantee::Manual) => 3,
        _ => 0,
    };
    let subscription_type = match subscription_type(r) {
        "FAILOVER" => 1,
        "KEY_SHARED" => 2,
        _ => 0,
    };
    json!({
        "pulsarServiceURL": "${brokerServiceURL}",
        "instanceID": 0,
        "funcID": function_id,
        "funcVersion": "0",
        "maxBufTuples": 100,
        "port": 9093,
        "clusterName": s.cluster_name.clone().unwrap_or_default(),
        "killAfterIdleMs": 0,
        "tenant": s.tenant.clone().unwrap_or_default(),
        "nameSpace": s.namespace.clone().unwrap_or_default(),
        "name": r.pulsar_name(),
        "logTopic": if r.sidecar_logs() { String::new() } else { s.log_topic.clone().unwrap_or_default() },
        "processingGuarantees": guarantee,
        "secretsMap": s.secrets_map.as_ref().map(go_json).unwrap_or_default(),
        "runtime": 2,
        "autoAck": s.auto_ack.unwrap_or(true),
        "parallelism": 1,
        "subscriptionType": subscription_type,
        "timeoutMs": s.timeout.unwrap_or(0),
        "subscriptionName": s.subscription_name.clone().unwrap_or_default(),
        "cleanupSubscription": s.cleanup_subscription.unwrap_or(false),
        "sourceSpecsTopic": first_topic,
        "sourceSchemaType": source_spec.and_then(|c| c.schema_type.clone()).unwrap_or_default(),
        "isRegexPatternSubscription": source_spec.and_then(|c| c.is_regex_pattern).unwrap_or(false),
        "receiverQueueSize": source_spec.and_then(|c| c.receiver_queue_size).unwrap_or(0),
        "sinkSpecsTopic": output.topic.clone().unwrap_or_default(),
        "sinkSchemaType": output.sink_schema_type.clone().unwrap_or_default(),
        "cpu": bytes("cpu").unwrap_or(0.0),
        "ram": bytes("memory").map_or(0, |b| b.ceil() as i64),
        "disk": bytes("ephemeral-storage").map_or(0, |b| b.ceil() as i64),
        "maxMessageRetries": s.max_message_retry.unwrap_or(0),
        "deadLetterTopic": s.dead_letter_topic.clone().unwrap_or_default(),
        "expectedHealthCheckInterval": -1,
        "userConfig": user_config(r),
        "metricsPort": 9094,
    })
}
