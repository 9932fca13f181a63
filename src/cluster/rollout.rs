//! Rollout: following StatefulSets until their pods run the new revision, and the status
//! meshops writes on the CRs it manages.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Cluster, ClusterError};
use crate::plan::ObjectRef;

/// Pod waiting reasons that will not fix themselves: fail fast instead of waiting out the
/// timeout.
const FATAL_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    Done,
    /// Still rolling out, with what is missing.
    Progressing(String),
    /// A pod is stuck: its name and the container's waiting reason.
    Failed {
        pod: String,
        reason: String,
    },
}

/// Where a StatefulSet's rollout stands (pure): the controller saw the latest generation, every
/// replica is updated and ready, and the current revision is the update revision.
pub fn assess(statefulset: &Value, pods: &[Value]) -> Rollout {
    for pod in pods {
        let statuses = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                pod["status"]["initContainerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            );
        for container in statuses {
            if let Some(reason) = container["state"]["waiting"]["reason"].as_str() {
                if FATAL_REASONS.contains(&reason) {
                    return Rollout::Failed {
                        pod: pod["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        reason: reason.to_owned(),
                    };
                }
            }
        }
    }
    let generation = statefulset["metadata"]["generation"].as_i64().unwrap_or(0);
    let status = &statefulset["status"];
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    if observed < generation {
        return Rollout::Progressing(format!(
            "controller has not seen generation {generation} yet"
        ));
    }
    let wanted = statefulset["spec"]["replicas"]
        .as_i64()
        .or_else(|| status["replicas"].as_i64())
        .unwrap_or(1);
    let updated = status["updatedReplicas"].as_i64().unwrap_or(0);
    let ready = status["readyReplicas"].as_i64().unwrap_or(0);
    if updated < wanted {
        return Rollout::Progressing(format!("{updated}/{wanted} replicas updated"));
    }
    if ready < wanted {
        return Rollout::Progressing(format!("{ready}/{wanted} replicas ready"));
    }
    if status["currentRevision"] != status["updateRevision"] {
        return Rollout::Progressing("current revision is not the update revision yet".into());
    }
    Rollout::Done
}

/// The label selector string of an object's `spec.selector.matchLabels`.
pub fn selector(statefulset: &Value) -> String {
    statefulset["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("rollout failed: {object}: pod {pod} is in {reason}")]
    PodFailed {
        object: ObjectRef,
        pod: String,
        reason: String,
    },
    #[error(
        "not rolled out after {}: {}",
        humantime::format_duration(*timeout),
        pending.iter().map(|(o, why)| format!("StatefulSet {}/{} ({why})", o.namespace, o.name)).collect::<Vec<_>>().join("; ")
    )]
    Timeout {
        timeout: Duration,
        /// Every StatefulSet not ready, with what it is missing.
        pending: Vec<(ObjectRef, String)>,
    },
}

/// Where one StatefulSet stands now: its object and its pods, two requests.
pub async fn check(cluster: &Cluster, object: &ObjectRef) -> Result<Rollout, ClusterError> {
    let Some(live) = cluster.get(object).await? else {
        return Ok(Rollout::Progressing("not created yet".into()));
    };
    let pods = cluster
        .list("v1", "Pod", &object.namespace, &selector(&live))
        .await?;
    Ok(assess(&live, &pods))
}

/// Where one StatefulSet stands, where a check that failed transiently (after the retry
/// layer spent its budget: the API server restarting, a network blip) is one more poll
/// without news, not the end of a rollout that may be going well.
async fn poll(cluster: &Cluster, object: &ObjectRef) -> Result<Rollout, ClusterError> {
    match check(cluster, object).await {
        Err(error) if error.is_transient() => {
            tracing::warn!(%object, %error, "rollout check failed; trying again at the next poll");
            Ok(Rollout::Progressing(format!("last check failed: {error}")))
        }
        other => other,
    }
}

/// Follows the StatefulSets until all are rolled out, a pod fails (at once, naming it), or
/// `timeout` passes (naming every StatefulSet that is not ready and why). A check that fails
/// transiently is tried again at the next poll; one that fails otherwise (forbidden, fenced)
/// ends the wait.
pub async fn wait(
    cluster: &Cluster,
    statefulsets: &[ObjectRef],
    timeout: Duration,
) -> Result<(), RolloutError> {
    const POLL: Duration = Duration::from_secs(2);
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<ObjectRef> = statefulsets.to_vec();
    loop {
        let mut still = Vec::new();
        for object in pending {
            match poll(cluster, &object).await? {
                Rollout::Done => {}
                Rollout::Failed { pod, reason } => {
                    return Err(RolloutError::PodFailed {
                        object,
                        pod,
                        reason,
                    })
                }
                Rollout::Progressing(progress) => {
                    tracing::info!(%object, %progress, "waiting");
                    still.push((object, progress));
                }
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RolloutError::Timeout {
                timeout,
                pending: still,
            });
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
        pending = still.into_iter().map(|(o, _)| o).collect();
    }
}

/// The status meshops writes on a Function/Source/Sink in native mode: standard conditions
/// (`Synced`, `Ready`), observedGeneration, replicas and selector (for the scale subresource)
/// and the revision applied.
pub fn cr_status(cr: &Value, statefulset: Option<&Value>, revision: &str, now: &str) -> Value {
    let (ready, message, replicas, selector_text) = match statefulset {
        Some(sts) => {
            let state = assess(sts, &[]);
            let replicas = sts["status"]["replicas"].as_i64().unwrap_or(0);
            let message = match &state {
                Rollout::Done => "all replicas ready".to_owned(),
                Rollout::Progressing(p) => p.clone(),
                Rollout::Failed { pod, reason } => format!("pod {pod} is in {reason}"),
            };
            (state == Rollout::Done, message, replicas, selector(sts))
        }
        None => (false, "no StatefulSet".to_owned(), 0, String::new()),
    };
    let condition = |kind: &str, status: bool, reason: &str, message: &str| {
        json!({"type": kind, "status": if status { "True" } else { "False" }, "reason": reason, "message": message,
               "lastTransitionTime": now, "observedGeneration": cr["metadata"]["generation"]})
    };
    json!({
        "apiVersion": cr["apiVersion"],
        "kind": cr["kind"],
        "metadata": {"name": cr["metadata"]["name"], "namespace": cr["metadata"]["namespace"]},
        "status": {
            "conditions": [
                condition("Synced", true, "Applied", &format!("applied {revision}")),
                condition("Ready", ready, if ready { "RolledOut" } else { "Progressing" }, &message),
            ],
            "observedGeneration": cr["metadata"]["generation"],
            "replicas": replicas,
            "selector": selector_text,
            "revision": revision,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(generation: i64, observed: i64, ready: i64, same_revision: bool) -> Value {
        json!({
            "metadata": {"generation": generation},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "1", "b": "2"}}},
            "status": {"observedGeneration": observed, "replicas": 2, "updatedReplicas": 2, "readyReplicas": ready,
                       "currentRevision": "r1", "updateRevision": if same_revision { "r1" } else { "r2" }},
        })
    }

    #[test]
    fn a_rollout_is_done_only_when_every_condition_holds() {
        assert_eq!(assess(&sts(2, 2, 2, true), &[]), Rollout::Done);
        assert!(
            matches!(assess(&sts(3, 2, 2, true), &[]), Rollout::Progressing(p) if p.contains("generation 3"))
        );
        assert!(
            matches!(assess(&sts(2, 2, 1, true), &[]), Rollout::Progressing(p) if p == "1/2 replicas ready")
        );
        assert!(matches!(
            assess(&sts(2, 2, 2, false), &[]),
            Rollout::Progressing(_)
        ));
    }

    #[test]
    fn a_crashing_pod_fails_fast_with_its_name_and_reason() {
        let pod = json!({"metadata": {"name": "fn-function-0"}, "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(
            assess(&sts(2, 1, 0, false), &[pod]),
            Rollout::Failed {
                pod: "fn-function-0".into(),
                reason: "CrashLoopBackOff".into()
            }
        );
        let pulling = json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        assert!(matches!(
            assess(&sts(2, 2, 0, true), &[pulling]),
            Rollout::Progressing(_)
        ));
    }

    #[test]
    fn status_carries_conditions_replicas_and_selector() {
        let cr = json!({"apiVersion": "compute.functionmesh.io/v1alpha1", "kind": "Function", "metadata": {"name": "fn", "namespace": "ns", "generation": 4}});
        let status = cr_status(
            &cr,
            Some(&sts(2, 2, 2, true)),
            "abc123",
            "2026-11-21T00:00:00Z",
        );
        assert_eq!(status["status"]["selector"], "a=1,b=2");
        assert_eq!(status["status"]["replicas"], 2);
        assert_eq!(status["status"]["observedGeneration"], 4);
        assert_eq!(status["status"]["conditions"][0]["type"], "Synced");
        assert_eq!(status["status"]["conditions"][1]["status"], "True");
        assert_eq!(status["status"]["revision"], "abc123");
    }
}
