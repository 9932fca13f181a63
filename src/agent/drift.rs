//! Drift: what differs between the cluster and the commit applied last, told once per change
//! as a Kubernetes Event on the owning Function/Source/Sink, its `Synced` condition, the
//! `meshops_drift_objects` gauge, the sources API and a log line.
//!
//! [`assess`] decides what to tell (pure, tested with plain values); [`Drift::report`] tells it
//! to the cluster and returns the lines for the gauge and the sources API, which the caller
//! updates last.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::{json, Value};

use crate::cluster::rollout;
use crate::cluster::sync::owning_cr;
use crate::cluster::Cluster;
use crate::plan::{Change, ObjectRef};
use crate::reconcile::Pass;
use crate::render::{sensitive, OPERATOR_MANAGED};

/// Event notes are limited to 1 kB.
const NOTE_BYTES: usize = 1000;

/// What a drift check found, and what of it is news.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// One line per drifted object: `StatefulSet x-function: changed in the cluster by …`.
    pub lines: Vec<String>,
    /// Owning CRs with drift not announced before, and the note to announce.
    pub news: Vec<(ObjectRef, String)>,
    /// Owning CRs that drifted before and no longer do.
    pub recovered: Vec<ObjectRef>,
    /// Every drifted object and its reason, to compare the next check with.
    pub reported: BTreeMap<ObjectRef, String>,
}

/// Compares the plan of the applied commit with what was announced before (`reported`).
/// Objects are attributed to their CR through `values` (live, else desired).
pub fn assess(
    pass: &Pass,
    values: &BTreeMap<ObjectRef, &Value>,
    reported: &BTreeMap<ObjectRef, String>,
) -> Assessment {
    let drifted: Vec<_> = pass
        .plan
        .changes
        .iter()
        .filter(|c| c.action.is_change())
        .collect();
    // Reasons name fields, not values; still, whatever credential the drifted objects carry
    // is scrubbed from what becomes an Event note, a log line and the sources API.
    let hidden: BTreeSet<String> = drifted
        .iter()
        .filter_map(|c| values.get(&c.object))
        .flat_map(|v| sensitive::values(v))
        .collect();
    let line = |c: &&Change| {
        sensitive::scrub(
            &format!("{} {}: {}", c.object.kind, c.object.name, c.reason),
            &hidden,
        )
    };
    let owner = |o: &ObjectRef| values.get(o).and_then(|v| owning_cr(v));
    let mut by_cr: BTreeMap<ObjectRef, Vec<_>> = BTreeMap::new();
    for change in &drifted {
        if let Some(cr) = owner(&change.object) {
            by_cr.entry(cr).or_default().push(change);
        }
    }
    let news = by_cr
        .iter()
        .filter_map(|(cr, changes)| {
            let fresh: Vec<String> = changes
                .iter()
                .filter(|c| reported.get(&c.object) != Some(&c.reason))
                .map(|c| line(c))
                .collect();
            (!fresh.is_empty()).then(|| (cr.clone(), truncate(&fresh.join("; "), NOTE_BYTES)))
        })
        .collect();
    let before: BTreeSet<ObjectRef> = reported.keys().filter_map(owner).collect();
    let recovered = before
        .into_iter()
        .filter(|cr| !by_cr.contains_key(cr))
        .collect();
    Assessment {
        lines: drifted.iter().map(&line).collect(),
        news,
        recovered,
        reported: drifted
            .iter()
            .map(|c| (c.object.clone(), c.reason.clone()))
            .collect(),
    }
}

/// The drift a source has announced so far.
#[derive(Debug, Default)]
pub struct Drift {
    reported: BTreeMap<ObjectRef, String>,
}

impl Drift {
    /// Tells what `pass` (a plan of the applied commit) shows: a log line when anything
    /// drifted, an Event and `Synced=False` per CR with news, `Synced=True` again per CR
    /// that recovered. Returns one line per drifted object: whoever shows them (the gauge,
    /// the sources API) does so after this, so a reader who sees the drift there finds its
    /// Event and condition already written. `now` stamps the conditions.
    pub async fn report(
        &mut self,
        cluster: &Cluster,
        recorder: &Recorder,
        pass: &Pass,
        source: &str,
        commit: &str,
        now: &str,
    ) -> Vec<String> {
        let mut values: BTreeMap<ObjectRef, &Value> = pass
            .desired
            .iter()
            .map(|d| (ObjectRef::of(&d.value), &d.value))
            .collect();
        values.extend(pass.live.objects.iter().map(|(k, v)| (k.clone(), v)));
        let assessment = assess(pass, &values, &self.reported);
        if !assessment.lines.is_empty() {
            tracing::warn!(
                source,
                commit,
                objects = assessment.lines.len(),
                drift = ?assessment.lines,
                "drift detected"
            );
        }
        let target = Target {
            cluster,
            pass,
            commit,
            now,
        };
        for (cr, note) in &assessment.news {
            event(recorder, pass, cr, note).await;
            target.set_synced(cr, Some(note)).await;
        }
        for cr in &assessment.recovered {
            target.set_synced(cr, None).await;
        }
        self.reported = assessment.reported;
        assessment.lines
    }

    /// Forgets what was announced: the commit was applied again.
    pub fn clear(&mut self) {
        self.reported.clear();
    }
}

async fn event(recorder: &Recorder, pass: &Pass, cr: &ObjectRef, note: &str) {
    // An Event must name an object that exists; a deleted CR is in the log line only.
    let Some(uid) = pass
        .live
        .objects
        .get(cr)
        .and_then(|v| v["metadata"]["uid"].as_str())
    else {
        return;
    };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(cr.api_version.clone()),
        kind: Some(cr.kind.clone()),
        name: Some(cr.name.clone()),
        namespace: Some(cr.namespace.clone()),
        uid: Some(uid.to_owned()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "DriftDetected".into(),
        note: Some(note.to_owned()),
        action: "Compare".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &reference).await {
        tracing::warn!(%cr, error = %err, "could not record the drift Event");
    }
}

/// Writes the CR's status with `Synced=False, reason Drifted` (or back to `Applied` when
/// `drift` is `None`), for the CRs meshops runs itself; the operator owns the others'.
struct Target<'a> {
    cluster: &'a Cluster,
    pass: &'a Pass,
    commit: &'a str,
    now: &'a str,
}

impl Target<'_> {
    async fn set_synced(&self, cr: &ObjectRef, drift: Option<&str>) {
        let Target {
            cluster,
            pass,
            commit,
            now,
        } = *self;
        let Some(live_cr) = pass.live.objects.get(cr) else {
            return;
        };
        let native = pass.desired.iter().any(|d| {
            &ObjectRef::of(&d.value) == cr
                && d.value["metadata"]["annotations"][OPERATOR_MANAGED] == "false"
        });
        if !native {
            return;
        }
        let statefulset = ObjectRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            namespace: cr.namespace.clone(),
            name: format!("{}-{}", cr.name, cr.kind.to_ascii_lowercase()),
        };
        let mut status =
            rollout::cr_status(live_cr, pass.live.objects.get(&statefulset), commit, now);
        if let Some(message) = drift {
            status["status"]["conditions"][0] = json!({
                "type": "Synced", "status": "False", "reason": "Drifted", "message": message,
                "lastTransitionTime": now, "observedGeneration": live_cr["metadata"]["generation"],
            });
        }
        if let Err(err) = cluster.apply_status(&status).await {
            tracing::warn!(%cr, error = %err, "could not write the CR status");
        }
    }
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::sync::{Live, SyncOptions};
    use crate::plan::Action;
    use crate::plan::Plan;

    fn object(kind: &str, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: if kind == "StatefulSet" {
                "apps/v1".into()
            } else {
                crate::model::FUNCTION_MESH_API_VERSION.into()
            },
            kind: kind.into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn pass(changes: &[(ObjectRef, Action, &str)]) -> Pass {
        Pass {
            desired: Vec::new(),
            live: Live::default(),
            plan: Plan {
                changes: changes
                    .iter()
                    .map(|(object, action, reason)| Change {
                        object: object.clone(),
                        action: *action,
                        reason: (*reason).into(),
                    })
                    .collect(),
            },
            options: SyncOptions {
                source: "s".into(),
                inventory_namespace: "default".into(),
                prune: true,
                allow_empty: false,
                revision: "c".into(),
                take_over: false,
            },
        }
    }

    fn values() -> Vec<(ObjectRef, Value)> {
        let labels = |name: &str| json!({"compute.functionmesh.io/name": name, "compute.functionmesh.io/component": "function"});
        vec![
            (
                object("Function", "f"),
                json!({"apiVersion": crate::model::FUNCTION_MESH_API_VERSION, "kind": "Function",
                       "metadata": {"name": "f", "namespace": "ns"}}),
            ),
            (
                object("StatefulSet", "f-function"),
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                       "metadata": {"name": "f-function", "namespace": "ns", "labels": labels("f")}}),
            ),
        ]
    }

    #[test]
    fn drift_is_news_once_and_recovery_is_told() {
        let owned = values();
        let values: BTreeMap<ObjectRef, &Value> =
            owned.iter().map(|(k, v)| (k.clone(), v)).collect();
        let sts = object("StatefulSet", "f-function");
        let edited = "changed in the cluster by kubectl-edit (spec.replicas)";
        let first = pass(&[
            (object("Function", "f"), Action::Unchanged, "unchanged"),
            (sts.clone(), Action::Update, edited),
        ]);
        let seen = assess(&first, &values, &BTreeMap::new());
        assert_eq!(seen.lines, [format!("StatefulSet f-function: {edited}")]);
        assert_eq!(
            seen.news,
            [(
                object("Function", "f"),
                format!("StatefulSet f-function: {edited}")
            )]
        );
        assert!(seen.recovered.is_empty());

        // The same drift again: still counted, not announced again.
        let again = assess(&first, &values, &seen.reported);
        assert_eq!(again.lines.len(), 1);
        assert!(again.news.is_empty());

        // Another field taken: news again.
        let more = pass(&[(
            sts.clone(),
            Action::Update,
            "changed by kubectl-scale (spec.replicas, spec.template)",
        )]);
        assert_eq!(assess(&more, &values, &seen.reported).news.len(), 1);

        // Back in line: the CR recovered, nothing left to report.
        let clean = pass(&[(sts, Action::Unchanged, "unchanged")]);
        let recovered = assess(&clean, &values, &seen.reported);
        assert!(recovered.lines.is_empty());
        assert_eq!(recovered.recovered, [object("Function", "f")]);
        assert!(recovered.reported.is_empty());
    }

    #[test]
    fn a_credential_the_drifted_object_carries_never_reaches_a_note() {
        let mut owned = values();
        owned[1].1["spec"] = json!({"template": {"spec": {"containers": [{"env": [
            {"name": "clientAuthenticationParameters", "value": "token:MESHOPS-MARKER-7f3a"}]}]}}});
        let values: BTreeMap<ObjectRef, &Value> =
            owned.iter().map(|(k, v)| (k.clone(), v)).collect();
        let leaky = pass(&[(
            object("StatefulSet", "f-function"),
            Action::Update,
            "changed in the cluster by x (env[value=token:MESHOPS-MARKER-7f3a])",
        )]);
        let seen = assess(&leaky, &values, &BTreeMap::new());
        let told = format!("{:?} {:?}", seen.lines, seen.news);
        assert!(!told.contains("MESHOPS-MARKER"), "{told}");
        assert!(told.contains("env[value=******]"), "{told}");
    }

    #[test]
    fn kept_objects_are_not_drift_and_notes_are_bounded() {
        let owned = values();
        let values: BTreeMap<ObjectRef, &Value> =
            owned.iter().map(|(k, v)| (k.clone(), v)).collect();
        let kept = pass(&[(object("Function", "f"), Action::Keep, "prune disabled")]);
        assert_eq!(
            assess(&kept, &values, &BTreeMap::new()),
            Assessment::default()
        );
        let long = "é".repeat(2000);
        let noisy = pass(&[(object("StatefulSet", "f-function"), Action::Update, &long)]);
        let note = &assess(&noisy, &values, &BTreeMap::new()).news[0].1;
        assert!(
            note.len() <= NOTE_BYTES && note.ends_with("..."),
            "{}",
            note.len()
        );
    }
}
