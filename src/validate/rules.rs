//! The operator's admission rules (reference §4, `pkg/webhook/*.go`), applied to every object
//! on every change — the operator checks them on CREATE only, so an edit that breaks one is
//! accepted by the cluster and fails later at runtime.
//!
//! Rules see the spec after the webhook's defaulting would have run (replicas, autoAck…), so
//! they reject exactly what the operator rejects. Deliberate differences are listed in
//! `docs/validation.md`.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube_quantity::ParsedQuantity;

use super::{Finding, Severity};
use crate::model::{
    CommonFields, ComponentSpec, FunctionSpec, InputConf, OutputConf, ProcessingGuarantee,
    SinkSpec, SourceSpec, WindowConfig,
};

/// The operator's limit: `<name>-function` must leave room in 63 characters.
pub const MAX_COMPONENT_NAME: usize = 43;

/// A Function, Source or Sink spec, wherever it is written (top level or inside a mesh).
#[derive(Clone, Copy)]
pub enum Component<'a> {
    Function(&'a FunctionSpec),
    Source(&'a SourceSpec),
    Sink(&'a SinkSpec),
}

impl<'a> Component<'a> {
    pub fn common(self) -> CommonFields<'a> {
        match self {
            Component::Function(s) => s.common(),
            Component::Source(s) => s.common(),
            Component::Sink(s) => s.common(),
        }
    }

    pub fn input(self) -> Option<&'a InputConf> {
        match self {
            Component::Function(s) => s.input.as_ref(),
            Component::Sink(s) => s.input.as_ref(),
            Component::Source(_) => None,
        }
    }

    pub fn output(self) -> Option<&'a OutputConf> {
        match self {
            Component::Function(s) => s.output.as_ref(),
            Component::Source(s) => s.output.as_ref(),
            Component::Sink(_) => None,
        }
    }

    pub fn kind_name(self) -> &'static str {
        match self {
            Component::Function(_) => "Function",
            Component::Source(_) => "Source",
            Component::Sink(_) => "Sink",
        }
    }
}

/// Collects findings for one component whose spec sits at `base` in its document.
struct Checker<'a> {
    base: &'a str,
    findings: &'a mut Vec<Finding>,
}

impl Checker<'_> {
    fn error(&mut self, code: &'static str, field: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            severity: Severity::Error,
            code,
            pointer: format!("{}{field}", self.base),
            message: message.into(),
            notes: Vec::new(),
        });
    }
}

/// Checks one component spec written at `base` (`/spec` or `/spec/functions/0`).
pub fn check_component(component: Component<'_>, base: &str, findings: &mut Vec<Finding>) {
    let mut c = Checker { base, findings };
    let common = component.common();
    check_runtime(component, &common, &mut c);
    check_replicas(&common, &mut c);
    check_autoscaling(component, &common, &mut c);
    if let Some(resources) = common.resources {
        check_resources(resources, &mut c);
    }
    check_processing(component, &common, &mut c);
    check_topics(component, &mut c);
    check_state_and_window(component, &common, &mut c);
    check_pulsar(&common, &mut c);
}

fn check_runtime(component: Component<'_>, common: &CommonFields<'_>, c: &mut Checker<'_>) {
    let runtimes = [
        common.java.is_some(),
        common.python.is_some(),
        common.golang.is_some(),
    ];
    let class_name_missing = common.class_name.is_none_or(str::is_empty);
    match component {
        Component::Function(_) => {
            if !runtimes.contains(&true) && common.generic_runtime.is_none() {
                c.error(
                    "runtime-missing",
                    "",
                    "a Function needs one runtime: java, python, golang or genericRuntime",
                );
            }
            if runtimes.iter().filter(|&&r| r).count() > 1 {
                c.error(
                    "runtime-conflict",
                    "",
                    "only one of java, python and golang may be set",
                );
            }
        }
        Component::Source(_) | Component::Sink(_) => {
            let kind = component.kind_name();
            if common.java.is_none() {
                c.error(
                    "runtime-missing",
                    "",
                    format!("a {kind} needs the java runtime"),
                );
            }
            let (has_config, field) = match component {
                Component::Source(s) => (s.source_config.is_some(), "sourceConfig"),
                Component::Sink(s) => (s.sink_config.is_some(), "sinkConfig"),
                Component::Function(_) => (true, ""),
            };
            if !has_config {
                c.error(
                    "connector-config-missing",
                    "",
                    format!("a {kind} needs {field}"),
                );
            }
        }
    }
    if let Some(java) = common.java {
        if class_name_missing {
            c.error(
                "class-name-missing",
                "/className",
                "className must be set for the java runtime",
            );
        }
        if java.jar.is_empty() {
            c.error("package-missing", "/java/jar", "java.jar must not be empty");
        }
        check_location(java.jar_location.as_deref(), "/java/jarLocation", c);
    }
    if let Some(python) = common.python {
        if class_name_missing {
            c.error(
                "class-name-missing",
                "/className",
                "className must be set for the python runtime",
            );
        }
        if python.py.is_empty() {
            c.error(
                "package-missing",
                "/python/py",
                "python.py must not be empty",
            );
        }
        check_location(python.py_location.as_deref(), "/python/pyLocation", c);
    }
    if let Some(golang) = common.golang {
        if golang.go.is_empty() {
            c.error(
                "package-missing",
                "/golang/go",
                "golang.go must not be empty",
            );
        }
        check_location(golang.go_location.as_deref(), "/golang/goLocation", c);
    }
}

/// `validPackageLocation`: a Pulsar package URL `function|source|sink://tenant/ns/name[@v]`
/// or an http(s) URL.
fn check_location(location: Option<&str>, field: &str, c: &mut Checker<'_>) {
    let Some(location) = location.filter(|l| !l.is_empty()) else {
        return;
    };
    if let Err(reason) = package_location(location) {
        c.error("package-location-invalid", field, reason);
    }
}

pub fn package_location(location: &str) -> Result<(), String> {
    let lower = location.to_ascii_lowercase();
    let is_package = ["function://", "source://", "sink://"]
        .iter()
        .any(|p| lower.starts_with(p));
    if is_package {
        let rest = location
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or_default();
        let path = rest.split_once('@').map_or(rest, |(p, _)| p);
        if rest.matches('@').count() > 1 || path.split('/').count() != 3 || rest.contains("://") {
            return Err(format!(
                "invalid package URL \"{location}\": expected function://, source:// or \
                 sink:// followed by tenant/namespace/name[@version]"
            ));
        }
        return Ok(());
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(());
    }
    Err(format!(
        "invalid package location \"{location}\": use a Pulsar package URL \
         (function://tenant/namespace/name[@version]) or an http(s) URL"
    ))
}

/// Replicas after the webhook's defaulting (and the CRD default `minReplicas: 1`).
pub fn effective_replicas(common: &CommonFields<'_>) -> (i32, i32) {
    match (common.replicas, common.min_replicas) {
        (None, None) => (1, 1),
        (None, Some(min)) => (min, min),
        (Some(replicas), min) => (replicas, min.unwrap_or(1)),
    }
}

fn check_replicas(common: &CommonFields<'_>, c: &mut Checker<'_>) {
    let (replicas, min) = effective_replicas(common);
    if let Some(max) = common.max_replicas {
        if replicas > max {
            c.error(
                "replicas-above-max",
                "/maxReplicas",
                format!("maxReplicas ({max}) must be at least replicas ({replicas})"),
            );
        }
        if replicas == 0 {
            c.error(
                "replicas-zero-with-hpa",
                "/replicas",
                "replicas cannot be 0 when maxReplicas enables autoscaling",
            );
        }
        if min > max {
            c.error(
                "min-replicas-above-max",
                "/minReplicas",
                format!("minReplicas ({min}) must not exceed maxReplicas ({max})"),
            );
        }
    }
    if common.min_replicas.is_some_and(|m| m <= 0) {
        c.error(
            "min-replicas-not-positive",
            "/minReplicas",
            "minReplicas must be at least 1",
        );
    }
    // `replicas: 0` without an HPA is how the operator scales to zero (#589); the webhook only
    // allows it through an update, a repository has to be able to say it directly.
    let scaled_to_zero = replicas == 0 && common.max_replicas.is_none();
    if min > replicas && !scaled_to_zero {
        c.error(
            "min-replicas-above-replicas",
            "/minReplicas",
            format!("minReplicas ({min}) must not exceed replicas ({replicas})"),
        );
    }
}

fn check_autoscaling(component: Component<'_>, common: &CommonFields<'_>, c: &mut Checker<'_>) {
    let Some(pod) = common.pod else {
        return;
    };
    if let Some(vpa) = &pod.vpa {
        if common.max_replicas.is_some() {
            c.error(
                "vpa-with-hpa",
                "/pod/vpa",
                "pod.vpa cannot be combined with maxReplicas (HPA and VPA would fight)",
            );
        }
        let policies = vpa
            .resource_policy
            .as_ref()
            .and_then(|p| p.container_policies.as_ref());
        for (i, policy) in policies.into_iter().flatten().enumerate() {
            if policy.container_name.as_deref().is_none_or(str::is_empty) {
                c.error(
                    "vpa-container-name-missing",
                    &format!("/pod/vpa/resourcePolicy/containerPolicies/{i}"),
                    "every VPA container policy needs a containerName",
                );
            }
        }
    }
    if let (Component::Function(_), Some(rules)) = (component, &pod.builtin_autoscaler) {
        let (mut cpu, mut memory) = (false, false);
        for (i, rule) in rules.iter().enumerate() {
            let seen = if rule.is_cpu() { &mut cpu } else { &mut memory };
            if *seen {
                let what = if rule.is_cpu() { "CPU" } else { "memory" };
                c.error(
                    "builtin-autoscaler-duplicate",
                    &format!("/pod/builtinAutoscaler/{i}"),
                    format!("only one {what} rule may be set in builtinAutoscaler"),
                );
            }
            *seen = true;
        }
    }
}

/// `validResourceRequirement`: cpu ≥ 0, memory > 0, storage ≥ 0, requests ≤ limits.
fn check_resources(resources: &ResourceRequirements, c: &mut Checker<'_>) {
    let parse = |list: &Option<std::collections::BTreeMap<String, _>>, name: &str| {
        list.as_ref()
            .and_then(|l| l.get(name))
            .and_then(|q| ParsedQuantity::try_from(q).ok())
    };
    let zero = ParsedQuantity::default();
    for (list, label) in [
        (&resources.requests, "requests"),
        (&resources.limits, "limits"),
    ] {
        for (name, positive) in [("cpu", false), ("memory", true), ("storage", false)] {
            if let Some(q) = parse(list, name) {
                let bad = if positive { q <= zero } else { q < zero };
                if bad {
                    let bound = if positive {
                        "greater than 0"
                    } else {
                        "at least 0"
                    };
                    c.error(
                        "resources-invalid",
                        &format!("/resources/{label}/{name}"),
                        format!("{label}.{name} must be {bound}"),
                    );
                }
            }
        }
    }
    for name in ["cpu", "memory"] {
        if let (Some(request), Some(limit)) = (
            parse(&resources.requests, name),
            parse(&resources.limits, name),
        ) {
            if request > limit {
                c.error(
                    "resources-invalid",
                    &format!("/resources/requests/{name}"),
                    format!("requests.{name} ({request}) exceeds limits.{name} ({limit})"),
                );
            }
        }
    }
}

fn check_processing(component: Component<'_>, common: &CommonFields<'_>, c: &mut Checker<'_>) {
    let effectively_once =
        common.processing_guarantee == Some(ProcessingGuarantee::EffectivelyOnce);
    let (timeout, retries, dlq, retain, retain_key) = match component {
        Component::Function(s) => (
            s.timeout,
            s.max_message_retry,
            s.dead_letter_topic.as_deref(),
            s.retain_ordering,
            s.retain_key_ordering,
        ),
        Component::Sink(s) => (
            s.timeout,
            s.max_message_retry,
            s.dead_letter_topic.as_deref(),
            s.retain_ordering,
            s.retain_key_ordering,
        ),
        Component::Source(_) => return,
    };
    let retries_set = retries.is_some();
    let retries = retries.unwrap_or(0);
    if effectively_once && timeout.is_some_and(|t| t != 0) {
        c.error(
            "timeout-with-effectively-once",
            "/timeout",
            "a message timeout can only be set with atleast_once or atmost_once processing",
        );
    }
    if effectively_once && retries > 0 {
        c.error(
            "retry-with-effectively-once",
            "/maxMessageRetry",
            "maxMessageRetry is not compatible with effectively_once processing",
        );
    }
    if retries <= 0 && dlq.is_some_and(|d| !d.is_empty()) {
        // Point at the field the user wrote: maxMessageRetry when it is there (as 0), else
        // deadLetterTopic, whose companion is missing.
        let pointer = if retries_set {
            "/maxMessageRetry"
        } else {
            "/deadLetterTopic"
        };
        c.error(
            "dead-letter-without-retry",
            pointer,
            "deadLetterTopic is set but maxMessageRetry is not positive (retries are infinite)",
        );
    }
    if let Component::Function(_) = component {
        let retain = retain.unwrap_or(false);
        let retain_key = retain_key.unwrap_or(false);
        if retain_key && effectively_once {
            c.error(
                "key-ordering-with-effectively-once",
                "/retainKeyOrdering",
                "retainKeyOrdering cannot be set with effectively_once processing",
            );
        }
        if retain && retain_key {
            c.error(
                "ordering-conflict",
                "/retainKeyOrdering",
                "only one of retainOrdering and retainKeyOrdering may be set",
            );
        }
    }
}

fn check_topics(component: Component<'_>, c: &mut Checker<'_>) {
    let (skip_input, skip_output) = match component {
        Component::Function(s) => (s.source_config.is_some(), s.sink_config.is_some()),
        Component::Source(_) => (true, false),
        Component::Sink(_) => (false, true),
    };
    let mut inputs: Vec<&str> = Vec::new();
    let empty = InputConf::default();
    if !skip_input {
        let input = component.input().unwrap_or(&empty);
        inputs = input.all_topics();
        if inputs.is_empty() {
            c.error("input-missing", "/input", "no input topic is set (topics, topicPattern, customSerdeSources, customSchemaSources or sourceSpecs)");
        }
        for (topic, field) in input_topic_fields(input) {
            if let Err(reason) = topic_name(topic) {
                c.error(
                    "topic-invalid",
                    &field,
                    format!("input topic \"{topic}\" is invalid: {reason}"),
                );
            }
        }
        for (topic, spec) in input.source_specs.iter().flatten() {
            let field = format!("/input/sourceSpecs/{}", escape(topic));
            if spec.receiver_queue_size.is_some_and(|n| n < 0) {
                c.error(
                    "receiver-queue-negative",
                    &format!("{field}/receiverQueueSize"),
                    "receiverQueueSize must be at least 0",
                );
            }
            if let Some(crypto) = &spec.crypto_config {
                if crypto
                    .crypto_key_reader_class_name
                    .as_deref()
                    .is_none_or(str::is_empty)
                {
                    c.error(
                        "crypto-class-missing",
                        &format!("{field}/cryptoConfig"),
                        "cryptoConfig needs cryptoKeyReaderClassName",
                    );
                }
            }
        }
    }
    if !skip_output {
        if let Some(output) = component.output() {
            if let Some(topic) = output.topic.as_deref().filter(|t| !t.is_empty()) {
                if let Err(reason) = topic_name(topic) {
                    c.error(
                        "topic-invalid",
                        "/output/topic",
                        format!("output topic \"{topic}\" is invalid: {reason}"),
                    );
                }
                if inputs.contains(&topic) {
                    c.error("output-is-input", "/output/topic", format!("output topic \"{topic}\" is also an input topic (a topic must be one or the other)"));
                }
                if let Some(crypto) = output
                    .producer_conf
                    .as_ref()
                    .and_then(|p| p.crypto_config.as_ref())
                {
                    let field = "/output/producerConf/cryptoConfig";
                    if crypto
                        .crypto_key_reader_class_name
                        .as_deref()
                        .is_none_or(str::is_empty)
                    {
                        c.error(
                            "crypto-class-missing",
                            field,
                            "producer cryptoConfig needs cryptoKeyReaderClassName",
                        );
                    }
                    if crypto.encryption_keys.as_ref().is_none_or(Vec::is_empty) {
                        c.error(
                            "encryption-keys-missing",
                            field,
                            "producer cryptoConfig needs at least one encryption key",
                        );
                    }
                }
            }
        }
    }
    let (log_topic, dlq) = match component {
        Component::Function(s) => (s.log_topic.as_deref(), s.dead_letter_topic.as_deref()),
        Component::Sink(s) => (None, s.dead_letter_topic.as_deref()),
        Component::Source(_) => (None, None),
    };
    for (topic, field, what) in [
        (log_topic, "/logTopic", "log"),
        (dlq, "/deadLetterTopic", "dead-letter"),
    ] {
        if let Some(topic) = topic.filter(|t| !t.is_empty()) {
            if let Err(reason) = topic_name(topic) {
                c.error(
                    "topic-invalid",
                    field,
                    format!("{what} topic \"{topic}\" is invalid: {reason}"),
                );
            }
        }
    }
}

/// Each input topic with the pointer of the field that names it.
fn input_topic_fields(input: &InputConf) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    for (i, topic) in input.topics.iter().flatten().enumerate() {
        out.push((topic.as_str(), format!("/input/topics/{i}")));
    }
    if let Some(pattern) = &input.topic_pattern {
        out.push((pattern.as_str(), "/input/topicPattern".to_owned()));
    }
    for (map, name) in [
        (&input.custom_serde_sources, "customSerdeSources"),
        (&input.custom_schema_sources, "customSchemaSources"),
    ] {
        for topic in map.iter().flat_map(|m| m.keys()) {
            out.push((topic.as_str(), format!("/input/{name}/{}", escape(topic))));
        }
    }
    for topic in input.source_specs.iter().flat_map(|m| m.keys()) {
        out.push((
            topic.as_str(),
            format!("/input/sourceSpecs/{}", escape(topic)),
        ));
    }
    out
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The fully qualified form of a Pulsar topic name, or why it is not one
/// (pulsar-client-go `GetTopicName`).
pub fn topic_name(topic: &str) -> Result<String, String> {
    let full = if topic.contains("://") {
        topic.to_owned()
    } else {
        match topic.split('/').count() {
            1 => format!("persistent://public/default/{topic}"),
            3 | 4 => format!("persistent://{topic}"),
            _ => return Err(
                "a short name is topic, tenant/namespace/topic or tenant/cluster/namespace/topic"
                    .into(),
            ),
        }
    };
    let (domain, rest) = full.split_once("://").unwrap_or_default();
    if domain != "persistent" && domain != "non-persistent" {
        return Err(format!(
            "domain \"{domain}\" is neither persistent nor non-persistent"
        ));
    }
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    let valid = match parts.len() {
        3 => parts.iter().all(|p| !p.is_empty()),
        4 => parts.iter().all(|p| !p.is_empty()),
        _ => false,
    };
    if !valid {
        return Err("expected <domain>://<tenant>/<namespace>/<topic>".into());
    }
    Ok(full)
}

fn check_state_and_window(
    component: Component<'_>,
    common: &CommonFields<'_>,
    c: &mut Checker<'_>,
) {
    if let Some(pulsar) = common.stateful_config.and_then(|s| s.pulsar.as_ref()) {
        if common.golang.is_some() && common.java.is_none() && common.python.is_none() {
            c.error(
                "stateful-golang",
                "/statefulConfig",
                "Go functions do not support statefulConfig",
            );
        }
        if pulsar.service_url.is_empty() {
            c.error(
                "stateful-service-url-missing",
                "/statefulConfig/pulsar/serviceUrl",
                "statefulConfig.pulsar.serviceUrl must not be empty",
            );
        }
    }
    if let Component::Function(spec) = component {
        if let Some(window) = &spec.window_config {
            check_window(window, c);
        }
    }
}

fn check_window(w: &WindowConfig, c: &mut Checker<'_>) {
    let field = "/windowConfig";
    match (w.window_length_count, w.window_length_duration_ms) {
        (None, None) => c.error(
            "window-length-missing",
            field,
            "windowConfig needs windowLengthCount or windowLengthDurationMs",
        ),
        (Some(_), Some(_)) => c.error(
            "window-length-conflict",
            field,
            "set only one of windowLengthCount and windowLengthDurationMs",
        ),
        _ => {}
    }
    let positives = [
        (
            w.window_length_count.map(i64::from),
            "windowLengthCount",
            "window length",
        ),
        (
            w.window_length_duration_ms,
            "windowLengthDurationMs",
            "window length",
        ),
        (
            w.sliding_interval_count.map(i64::from),
            "slidingIntervalCount",
            "sliding interval",
        ),
        (
            w.sliding_interval_duration_ms,
            "slidingIntervalDurationMs",
            "sliding interval",
        ),
    ];
    for (value, name, what) in positives {
        if value.is_some_and(|v| v <= 0) {
            c.error(
                "window-not-positive",
                &format!("{field}/{name}"),
                format!("{what} must be positive"),
            );
        }
    }
    if w.timestamp_extractor_class_name.is_some() {
        for (value, name, what) in [
            (w.max_lag_ms, "maxLagMs", "lag duration"),
            (
                w.watermark_emit_interval_ms,
                "watermarkEmitIntervalMs",
                "watermark interval",
            ),
        ] {
            if value.is_some_and(|v| v <= 0) {
                c.error(
                    "window-not-positive",
                    &format!("{field}/{name}"),
                    format!("{what} must be positive"),
                );
            }
        }
    }
}

fn check_pulsar(common: &CommonFields<'_>, c: &mut Checker<'_>) {
    if common
        .pulsar
        .and_then(|p| p.pulsar_config.as_deref())
        .is_none_or(str::is_empty)
    {
        c.error(
            "pulsar-config-missing",
            "/pulsar",
            "pulsar.pulsarConfig must name the ConfigMap with the Pulsar service URLs",
        );
    }
    if let Some(package) = common.pulsar_package_service {
        if package.pulsar_config.as_deref().is_none_or(str::is_empty) {
            c.error(
                "pulsar-config-missing",
                "/pulsarPackageService",
                "pulsarPackageService.pulsarConfig must be set",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_topic_names_like_the_pulsar_client() {
        assert_eq!(topic_name("t").unwrap(), "persistent://public/default/t");
        assert_eq!(topic_name("a/b/t").unwrap(), "persistent://a/b/t");
        assert_eq!(
            topic_name("non-persistent://a/b/t").unwrap(),
            "non-persistent://a/b/t"
        );
        assert!(topic_name("a/t").is_err());
        assert!(topic_name("http://a/b/t").is_err());
        assert!(topic_name("persistent://a//t").is_err());
    }

    #[test]
    fn accepts_package_urls_and_http_only() {
        assert!(package_location("function://public/default/f@1").is_ok());
        assert!(package_location("sink://public/default/es").is_ok());
        assert!(package_location("https://example.com/f.jar").is_ok());
        assert!(package_location("function://public/f").is_err());
        assert!(package_location("public/default/f").is_err());
        assert!(package_location("function://a/b/c@1@2").is_err());
    }

    #[test]
    fn applies_the_webhook_replica_defaults() {
        let spec = FunctionSpec::default();
        assert_eq!(effective_replicas(&spec.common()), (1, 1));
        let spec = FunctionSpec {
            min_replicas: Some(2),
            ..Default::default()
        };
        assert_eq!(effective_replicas(&spec.common()), (2, 2));
        let spec = FunctionSpec {
            replicas: Some(3),
            ..Default::default()
        };
        assert_eq!(effective_replicas(&spec.common()), (3, 1));
    }
}
