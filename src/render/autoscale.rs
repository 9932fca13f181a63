//! HorizontalPodAutoscaler (autoscaling/v2) and VerticalPodAutoscaler, as the operator builds
//! them (reference §2.11, §2.12, §3) — except that both target the StatefulSet directly. In
//! native mode nothing copies the CR's `spec.replicas` to the StatefulSet, so an HPA on the
//! CR's scale subresource would scale nothing.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::spec::RunnerSpec;
use super::workload::workload_labels;
use crate::model::BuiltinHpaRule;

/// `limit / request` of a resource, or 1 when either is unset or zero (v0.24.0 #795).
fn factor(r: &RunnerSpec, resource: &str) -> f64 {
    let resources = r.spec.resources.as_ref();
    let get = |list: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >| {
        list.and_then(|l| l.get(resource))
            .and_then(super::quantity)
            .unwrap_or(0.0)
    };
    let request = get(resources.and_then(|x| x.requests.as_ref()));
    let limit = get(resources.and_then(|x| x.limits.as_ref()));
    if request == 0.0 || limit == 0.0 {
        1.0
    } else {
        limit / request
    }
}

fn utilization(resource: &str, percent: f64) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent as i32),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

fn rule_percent(rule: BuiltinHpaRule) -> f64 {
    match rule {
        BuiltinHpaRule::AverageUtilizationCPUPercent80
        | BuiltinHpaRule::AverageUtilizationMemoryPercent80 => 80.0,
        BuiltinHpaRule::AverageUtilizationCPUPercent50
        | BuiltinHpaRule::AverageUtilizationMemoryPercent50 => 50.0,
        BuiltinHpaRule::AverageUtilizationCPUPercent20
        | BuiltinHpaRule::AverageUtilizationMemoryPercent20 => 20.0,
    }
}

/// The HPA when `maxReplicas` is set.
pub fn hpa(r: &RunnerSpec) -> Option<HorizontalPodAutoscaler> {
    let s = &r.spec;
    let max = s.max_replicas?;
    let min = s.min_replicas.unwrap_or(1);
    let pod = s.pod.clone().unwrap_or_default();
    let builtin = pod.builtin_autoscaler.clone().unwrap_or_default();
    let custom = pod
        .auto_scaling_metrics
        .as_ref()
        .is_some_and(|m| !m.is_empty())
        || pod.auto_scaling_behavior.is_some();
    let (metrics, behavior) = if !builtin.is_empty() && max > min {
        let (mut cpu, mut memory) = (false, false);
        let mut metrics = Vec::new();
        for rule in builtin {
            let seen = if rule.is_cpu() { &mut cpu } else { &mut memory };
            if *seen {
                continue;
            }
            *seen = true;
            let resource = if rule.is_cpu() { "cpu" } else { "memory" };
            metrics.push(utilization(
                resource,
                rule_percent(rule) * factor(r, resource),
            ));
        }
        (Some(metrics), None)
    } else if !custom && max > min {
        (
            Some(vec![utilization("cpu", 80.0 * factor(r, "cpu"))]),
            None,
        )
    } else {
        (
            pod.auto_scaling_metrics.clone(),
            pod.auto_scaling_behavior.clone(),
        )
    };
    Some(HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(r.workload_name()),
            namespace: Some(r.namespace.clone()),
            labels: Some(workload_labels(r)),
            ..Default::default()
        },
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "StatefulSet".into(),
                name: r.workload_name(),
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics,
            behavior,
        },
        status: None,
    })
}

/// The VPA when `pod.vpa` is set (autoscaling.k8s.io/v1 has no k8s-openapi type).
pub fn vpa(r: &RunnerSpec) -> Option<Value> {
    let vpa = r.spec.pod.as_ref()?.vpa.as_ref()?;
    let mut spec = json!({
        "targetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": r.workload_name()},
    });
    if let Some(update) = &vpa.update_policy {
        spec["updatePolicy"] = serde_json::to_value(update).unwrap_or(Value::Null);
    }
    if let Some(resource) = &vpa.resource_policy {
        spec["resourcePolicy"] = serde_json::to_value(resource).unwrap_or(Value::Null);
    }
    Some(json!({
        "apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler",
        "metadata": {"name": r.workload_name(), "namespace": r.namespace, "labels": workload_labels(r)},
        "spec": spec,
    }))
}
