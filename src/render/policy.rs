//! What the operator never made: a PodDisruptionBudget per workload that can run more than one
//! replica, and an Istio AuthorizationPolicy that admits only the configured callers.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::spec::RunnerSpec;
use super::workload::workload_labels;
use crate::model::settings::AuthorizationPolicySettings;
use crate::model::RenderSettings;

/// A PDB (policy/v1) with `maxUnavailable` (default 1) when more than one pod can run.
pub fn pdb(r: &RunnerSpec, settings: &RenderSettings) -> Option<PodDisruptionBudget> {
    let config = settings.pod_disruption_budget.clone().unwrap_or_default();
    if config.enabled == Some(false) {
        return None;
    }
    let most = r
        .spec
        .max_replicas
        .unwrap_or(0)
        .max(r.spec.replicas.unwrap_or(1));
    if most <= 1 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(r.workload_name()),
            namespace: Some(r.namespace.clone()),
            labels: Some(workload_labels(r)),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(config.max_unavailable.unwrap_or(IntOrString::Int(1))),
            selector: Some(LabelSelector {
                match_labels: Some(workload_labels(r)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

fn rule(
    principals: &Option<Vec<String>>,
    namespaces: &Option<Vec<String>>,
    port: &str,
) -> Option<Value> {
    let principals = principals.clone().unwrap_or_default();
    let namespaces = namespaces.clone().unwrap_or_default();
    if principals.is_empty() && namespaces.is_empty() {
        return None;
    }
    let mut source = serde_json::Map::new();
    if !principals.is_empty() {
        source.insert("principals".into(), json!(principals));
    }
    if !namespaces.is_empty() {
        source.insert("namespaces".into(), json!(namespaces));
    }
    Some(json!({"from": [{"source": source}], "to": [{"operation": {"ports": [port]}}]}))
}

/// An ALLOW AuthorizationPolicy (security.istio.io/v1) selecting the workload's pods: the
/// brokers may call the function port 9093, the scrapers the metrics port 9094, nobody else
/// either. A port with no configured callers is closed.
pub fn authorization_policy(r: &RunnerSpec, settings: &RenderSettings) -> Option<Value> {
    let config: AuthorizationPolicySettings =
        settings.authorization_policy.clone().unwrap_or_default();
    if config.enabled != Some(true) {
        return None;
    }
    let rules: Vec<Value> = [
        rule(&config.broker_principals, &config.broker_namespaces, "9093"),
        rule(
            &config.metrics_principals,
            &config.metrics_namespaces,
            "9094",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    Some(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": r.workload_name(), "namespace": r.namespace, "labels": workload_labels(r)},
        "spec": {
            "selector": {"matchLabels": workload_labels(r)},
            "action": "ALLOW",
            "rules": rules,
        },
    }))
}
