//! The inventory: what meshops applied for a source, kept in the cluster as the ConfigMap
//! `meshops-inventory-<source>` (like Flux's `status.inventory` or kubectl's ApplySet), so that
//! pruning deletes `inventory − desired` and never "whatever carries our label".
//!
//! It is written twice per pass that writes (DESIGN §4, the ApplySet / Flux order): before the
//! first object, `recorded ∪ desired` with the pass's revision in `data.pending`; after the
//! pass, what the source now owns, with the revision in `data.revision` and no `pending`. A
//! pass killed at any point therefore leaves every object it may have written listed, and the
//! next pass prunes what Git no longer has.
//!
//! The ConfigMap:
//!
//! ```yaml
//! metadata:
//!   labels: {app.kubernetes.io/managed-by: meshops, meshops.io/source: <source>}
//! data:
//!   objects: '[{"apiVersion":"v1","kind":"Service","namespace":"ns","name":"x","fingerprint":"…"}, …]'
//!   revision: <revision of the last pass that completed>   # absent until one did
//!   pending: <revision of a pass that started writing>      # absent when none is unfinished
//! ```
//!
//! Writes are conditional on the `resourceVersion` read (optimistic concurrency), never a
//! forced overwrite: a create is a POST (409 AlreadyExists when someone was first), an update
//! a JSON merge patch carrying `metadata.resourceVersion` (409 Conflict when the ConfigMap
//! changed since). Either is answered by reading the ConfigMap again and rebuilding the write
//! from it, a bounded number of times. A merge patch rather than a server-side apply: the
//! POST makes the manager `meshops` an `Update` owner, and an un-forced apply by the same
//! manager name then conflicts with it (kubernetes#107417); updates never conflict on fields,
//! only on the resourceVersion, which is the one conflict wanted here. RBAC stays
//! `create` + `patch`.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Cluster, ClusterError};
use crate::plan::{InventoryEntry, ObjectRef, FIELD_MANAGER};
use crate::render::{MANAGED_BY, SOURCE_LABEL};

/// Writes of one inventory state before giving up on a ConfigMap that keeps changing under
/// them: each conflict means another writer wrote in between, which two replicas briefly
/// both leading (or a CLI apply beside the agent) does once or twice, not five times.
const WRITE_ATTEMPTS: u32 = 5;

/// Why the inventory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Reading it as empty would forget what to prune (everything it lists would stay
    /// forever), so an unreadable inventory stops the pass instead.
    #[error(
        "the inventory ConfigMap {namespace}/{name} is unreadable: {problem}. meshops does not \
         read it as empty (what it lists would never be pruned): repair data.objects, or delete \
         the ConfigMap to start a new inventory (what it listed is then never pruned)"
    )]
    Corrupt {
        namespace: String,
        name: String,
        problem: String,
    },
    #[error(
        "the inventory ConfigMap {namespace}/{name} changed under each of {attempts} writes: \
         another meshops (a second agent, a CLI apply) is applying source \"{source_name}\" at the \
         same time"
    )]
    Contended {
        namespace: String,
        name: String,
        /// Not `source`: thiserror takes a field of that name for the error's cause.
        source_name: String,
        attempts: u32,
    },
}

impl InventoryError {
    /// Stable category, reused as Event reason and metric label.
    pub fn category(&self) -> &'static str {
        match self {
            InventoryError::Cluster(e) => e.category(),
            InventoryError::Corrupt { .. } => "inventory",
            InventoryError::Contended { .. } => "conflict",
        }
    }
}

/// One object in `data.objects`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
}

/// The inventory as the cluster holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Every object the source may own. An entry without fingerprint was listed before its
    /// object was written (or its fingerprint was unknown).
    pub entries: Vec<InventoryEntry>,
    /// The revision of the last pass that completed; `None` until one did.
    pub revision: Option<String>,
    /// The revision of a pass that started writing and did not complete: it is running, or
    /// it was interrupted (then the next pass finishes the job).
    pub pending: Option<String>,
    /// `metadata.resourceVersion` as read, the precondition of the next write; `None` when
    /// the ConfigMap does not exist (the next write creates it).
    pub resource_version: Option<String>,
}

impl Recorded {
    /// Whether writing `other` over this would change what is recorded (the resourceVersion
    /// aside): entries compared as a set, so the order they were listed in does not count.
    fn records_the_same(&self, other: &Recorded) -> bool {
        by_object(&self.entries) == by_object(&other.entries)
            && self.revision == other.revision
            && self.pending == other.pending
    }
}

pub fn name(source: &str) -> String {
    format!("meshops-inventory-{source}")
}

pub fn reference(namespace: &str, source: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: namespace.into(),
        name: name(source),
    }
}

/// The inventory of `source`, or an empty [`Recorded`] when it was never written.
pub async fn read(
    cluster: &Cluster,
    namespace: &str,
    source: &str,
) -> Result<Recorded, InventoryError> {
    match cluster.get(&reference(namespace, source)).await? {
        Some(config_map) => parse(namespace, source, &config_map),
        None => Ok(Recorded::default()),
    }
}

/// The inventory in `config_map`; anything but the expected shape is an error naming the
/// ConfigMap and what is wrong, never "empty".
pub fn parse(
    namespace: &str,
    source: &str,
    config_map: &Value,
) -> Result<Recorded, InventoryError> {
    let corrupt = |problem: String| InventoryError::Corrupt {
        namespace: namespace.to_owned(),
        name: name(source),
        problem,
    };
    let data = &config_map["data"];
    let Some(text) = data["objects"].as_str() else {
        let labels = &config_map["metadata"]["labels"];
        let ours = labels[MANAGED_BY] == "meshops" || labels[SOURCE_LABEL] == source;
        return Err(corrupt(if ours {
            "data.objects is missing".to_owned()
        } else {
            format!(
                "it has no data.objects and no {MANAGED_BY}: meshops label, so it is not a \
                 meshops inventory (meshops will not write over it)"
            )
        }));
    };
    let parsed: Vec<Entry> = serde_json::from_str(text).map_err(|e| {
        corrupt(format!(
            "data.objects is not a JSON list of {{apiVersion, kind, namespace, name, \
             fingerprint}}: {e}"
        ))
    })?;
    let mut entries = Vec::with_capacity(parsed.len());
    for (i, e) in parsed.into_iter().enumerate() {
        for (field, value) in [
            ("apiVersion", &e.api_version),
            ("kind", &e.kind),
            ("name", &e.name),
        ] {
            if value.is_empty() {
                return Err(corrupt(format!("data.objects[{i}] has an empty {field}")));
            }
        }
        entries.push(InventoryEntry {
            object: ObjectRef {
                api_version: e.api_version,
                kind: e.kind,
                namespace: e.namespace,
                name: e.name,
            },
            fingerprint: e.fingerprint,
        });
    }
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let resource_version = text(&config_map["metadata"]["resourceVersion"]).ok_or_else(|| {
        corrupt("metadata.resourceVersion is missing, so no write could be conditional".into())
    })?;
    Ok(Recorded {
        entries,
        revision: text(&data["revision"]),
        pending: text(&data["pending"]),
        resource_version: Some(resource_version),
    })
}

/// Entries by object; a later duplicate wins.
fn by_object(entries: &[InventoryEntry]) -> BTreeMap<&ObjectRef, Option<&String>> {
    entries
        .iter()
        .map(|e| (&e.object, e.fingerprint.as_ref()))
        .collect()
}

/// `data.objects` for `entries`: sorted and without duplicates, so the same state writes the
/// same bytes.
fn objects_text(entries: &[InventoryEntry]) -> Result<String, serde_json::Error> {
    let mut rows: Vec<Entry> = by_object(entries)
        .into_iter()
        .map(|(o, fingerprint)| Entry {
            api_version: o.api_version.clone(),
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            fingerprint: fingerprint.cloned(),
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.namespace, &a.kind, &a.name, &a.api_version).cmp(&(
            &b.namespace,
            &b.kind,
            &b.name,
            &b.api_version,
        ))
    });
    serde_json::to_string(&rows)
}

/// The inventory ConfigMap recording `record` (its resourceVersion left out): the body of a
/// create, and the base of an update.
pub fn config_map(
    namespace: &str,
    source: &str,
    record: &Recorded,
) -> Result<Value, serde_json::Error> {
    let mut data = serde_json::Map::new();
    data.insert("objects".into(), objects_text(&record.entries)?.into());
    if let Some(revision) = &record.revision {
        data.insert("revision".into(), revision.as_str().into());
    }
    if let Some(pending) = &record.pending {
        data.insert("pending".into(), pending.as_str().into());
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name(source),
            "namespace": namespace,
            "labels": {MANAGED_BY: "meshops", SOURCE_LABEL: source},
        },
        "data": data,
    }))
}

/// The merge patch that replaces the recorded state with `record`, only if the ConfigMap is
/// still at `resource_version`: a key this record lacks (`pending` after a pass, `revision`
/// before any completed) is removed with `null`.
fn update_patch(
    namespace: &str,
    source: &str,
    record: &Recorded,
    resource_version: &str,
) -> Result<Value, serde_json::Error> {
    let mut patch = config_map(namespace, source, record)?;
    patch["metadata"]["resourceVersion"] = resource_version.into();
    for key in ["revision", "pending"] {
        if patch["data"].get(key).is_none() {
            patch["data"][key] = Value::Null;
        }
    }
    Ok(patch)
}

/// What the inventory records before the first write of a pass: everything recorded so far
/// plus every desired object, so that whatever the pass writes before it is killed is
/// listed. The objects the pass applies (`applied`) lose their fingerprint: their managed
/// field set changes with the apply, and a stale fingerprint would read as drift after a
/// crash; without one, the next plan goes by the spec-hash alone.
pub fn pending_entries(
    recorded: &[InventoryEntry],
    desired: &[ObjectRef],
    applied: &BTreeSet<ObjectRef>,
) -> Vec<InventoryEntry> {
    let mut out: BTreeMap<ObjectRef, Option<String>> = recorded
        .iter()
        .map(|e| (e.object.clone(), e.fingerprint.clone()))
        .collect();
    for object in desired {
        out.entry(object.clone()).or_default();
    }
    for (object, fingerprint) in out.iter_mut() {
        if applied.contains(object) {
            *fingerprint = None;
        }
    }
    into_entries(out)
}

/// What the inventory records after a pass, merged into what the ConfigMap holds `now`.
///
/// `ours` is what the pass decided the source owns (the desired objects with their
/// fingerprints, plus removed objects that were not pruned); `before` is the inventory the
/// pass was planned from. The rule: every entry of `ours`, with our fingerprint; and every
/// entry of `now` that is not exactly as it was in `before`. An entry identical to the one
/// planned from, and left out of `ours`, was dropped on purpose (pruned, let go, or found gone
/// from the cluster); one that another writer added or re-recorded meanwhile (its pending
/// union, its own pass) may be an object it wrote, and only that writer may drop it — keeping
/// it costs at most a prune later, dropping it could orphan an object.
pub fn settled_entries(
    ours: &[InventoryEntry],
    before: &[InventoryEntry],
    now: &[InventoryEntry],
) -> Vec<InventoryEntry> {
    let before = by_object(before);
    let mut out: BTreeMap<ObjectRef, Option<String>> = BTreeMap::new();
    for entry in now {
        let unchanged = before.get(&entry.object) == Some(&entry.fingerprint.as_ref());
        if !unchanged {
            out.insert(entry.object.clone(), entry.fingerprint.clone());
        }
    }
    for entry in ours {
        out.insert(entry.object.clone(), entry.fingerprint.clone());
    }
    into_entries(out)
}

fn into_entries(map: BTreeMap<ObjectRef, Option<String>>) -> Vec<InventoryEntry> {
    map.into_iter()
        .map(|(object, fingerprint)| InventoryEntry {
            object,
            fingerprint,
        })
        .collect()
}

/// Writes what `next` makes of the inventory, starting from `current` (as last read or
/// written): nothing when it would record the same; otherwise a create or a conditional
/// update, and on a conflict (someone else wrote the ConfigMap, or created or deleted it) a
/// fresh read and `next` again, at most [`WRITE_ATTEMPTS`] times. `next` must therefore be
/// a merge of what it is given, never a blind overwrite. Returns the inventory as written,
/// with its new resourceVersion.
pub async fn write(
    cluster: &Cluster,
    namespace: &str,
    source: &str,
    mut current: Recorded,
    next: impl Fn(&Recorded) -> Recorded,
) -> Result<Recorded, InventoryError> {
    let reference = reference(namespace, source);
    let mut attempt = 1;
    loop {
        let wanted = next(&current);
        if wanted.records_the_same(&current) {
            return Ok(current);
        }
        let written = match &current.resource_version {
            None => create(cluster, &reference, namespace, source, &wanted).await,
            Some(version) => update(cluster, &reference, namespace, source, &wanted, version).await,
        };
        match written {
            Ok(resource_version) => {
                return Ok(Recorded {
                    resource_version: Some(resource_version),
                    ..wanted
                })
            }
            // 409: created, or changed, since it was read; 404: deleted since.
            Err(ClusterError::Api {
                code: 404 | 409, ..
            }) if attempt < WRITE_ATTEMPTS => {
                tracing::info!(
                    inventory = %reference,
                    attempt,
                    "the inventory changed since it was read; reading it again"
                );
                current = read(cluster, namespace, source).await?;
                attempt += 1;
            }
            Err(ClusterError::Api {
                code: 404 | 409, ..
            }) => {
                return Err(InventoryError::Contended {
                    namespace: namespace.to_owned(),
                    name: reference.name,
                    source_name: source.to_owned(),
                    attempts: attempt,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// POST: fails with 409 AlreadyExists when the ConfigMap exists. Returns the resourceVersion.
async fn create(
    cluster: &Cluster,
    reference: &ObjectRef,
    namespace: &str,
    source: &str,
    record: &Recorded,
) -> Result<String, ClusterError> {
    let verb = "create";
    let body = config_map(namespace, source, record)
        .and_then(serde_json::from_value::<DynamicObject>)
        .map_err(|e| cluster.local(verb, reference, e.to_string()))?;
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    let created = cluster
        .api("v1", "ConfigMap", namespace)
        .await?
        .create(&params, &body)
        .await
        .map_err(|e| cluster.error(verb, reference, e))?;
    resource_version_of(cluster, verb, reference, created)
}

/// A merge patch conditional on `resource_version`: fails with 409 Conflict when the
/// ConfigMap changed since, 404 when it was deleted. Returns the new resourceVersion.
async fn update(
    cluster: &Cluster,
    reference: &ObjectRef,
    namespace: &str,
    source: &str,
    record: &Recorded,
    resource_version: &str,
) -> Result<String, ClusterError> {
    let verb = "update";
    let patch = update_patch(namespace, source, record, resource_version)
        .map_err(|e| cluster.local(verb, reference, e.to_string()))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let updated = cluster
        .api("v1", "ConfigMap", namespace)
        .await?
        .patch(&reference.name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.error(verb, reference, e))?;
    resource_version_of(cluster, verb, reference, updated)
}

fn resource_version_of(
    cluster: &Cluster,
    verb: &'static str,
    reference: &ObjectRef,
    object: DynamicObject,
) -> Result<String, ClusterError> {
    object.metadata.resource_version.ok_or_else(|| {
        cluster.local(
            verb,
            reference,
            "the answer carries no metadata.resourceVersion".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn entry(kind: &str, name: &str, fingerprint: Option<&str>) -> InventoryEntry {
        InventoryEntry {
            object: object(kind, name),
            fingerprint: fingerprint.map(str::to_owned),
        }
    }

    fn stored(data: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "meshops-inventory-s", "namespace": "meshops", "resourceVersion": "42",
                         "labels": {MANAGED_BY: "meshops", SOURCE_LABEL: "s"}},
            "data": data,
        })
    }

    #[test]
    fn a_written_inventory_reads_back_the_same() {
        let record = Recorded {
            entries: vec![
                entry("Service", "b", Some("f1")),
                entry("ConfigMap", "a", None),
            ],
            revision: Some("r1".into()),
            pending: Some("r2".into()),
            resource_version: None,
        };
        let mut value = config_map("meshops", "s", &record).unwrap();
        assert_eq!(value["data"]["pending"], "r2");
        value["metadata"]["resourceVersion"] = json!("7");
        let read = parse("meshops", "s", &value).unwrap();
        assert!(read.records_the_same(&record), "{read:?}");
        assert_eq!(read.resource_version.as_deref(), Some("7"));
        // Sorted: the same state writes the same bytes whatever the order it came in.
        let names: Vec<&str> = read
            .entries
            .iter()
            .map(|e| e.object.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn an_update_removes_the_keys_its_record_lacks_and_is_conditional() {
        let record = Recorded {
            entries: vec![entry("Service", "b", Some("f1"))],
            revision: Some("r2".into()),
            ..Default::default()
        };
        let patch = update_patch("meshops", "s", &record, "42").unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["data"]["revision"], "r2");
        assert!(patch["data"]["pending"].is_null());
        assert!(patch["data"].as_object().unwrap().contains_key("pending"));
    }

    #[test]
    fn an_inventory_from_before_the_pending_marker_reads_as_completed() {
        let old = stored(json!({
            // A field a later version may add is no reason to stop.
            "objects": r#"[{"apiVersion":"v1","kind":"Service","namespace":"ns","name":"x","fingerprint":"f","uid":"u"}]"#,
            "revision": "abc",
        }));
        let read = parse("meshops", "s", &old).unwrap();
        assert_eq!(read.revision.as_deref(), Some("abc"));
        assert_eq!(read.pending, None);
        assert_eq!(read.entries, [entry("Service", "x", Some("f"))]);
    }

    #[test]
    fn an_unreadable_inventory_is_an_error_naming_the_config_map_never_empty() {
        let cases = [
            (
                stored(json!({"objects": "not json", "revision": "r"})),
                "data.objects is not a JSON list",
            ),
            (
                stored(json!({"objects": r#"{"a": 1}"#})),
                "data.objects is not a JSON list",
            ),
            (
                stored(json!({"objects": r#"[{"kind":"Service","name":"x"}]"#})),
                "missing field `apiVersion`",
            ),
            (
                stored(
                    json!({"objects": r#"[{"apiVersion":"v1","kind":"","namespace":"ns","name":"x"}]"#}),
                ),
                "data.objects[0] has an empty kind",
            ),
            (stored(json!({"revision": "r"})), "data.objects is missing"),
        ];
        for (value, problem) in cases {
            let error = parse("meshops", "s", &value).unwrap_err();
            let text = error.to_string();
            assert!(matches!(error, InventoryError::Corrupt { .. }), "{text}");
            assert!(text.contains("meshops/meshops-inventory-s"), "{text}");
            assert!(text.contains(problem), "{problem}: {text}");
            assert_eq!(error.category(), "inventory");
        }
        let foreign = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "meshops-inventory-s", "namespace": "meshops", "resourceVersion": "1"},
            "data": {"colour": "blue"}});
        let text = parse("meshops", "s", &foreign).unwrap_err().to_string();
        assert!(text.contains("not a meshops inventory"), "{text}");
    }

    #[test]
    fn the_pending_record_is_the_union_and_forgets_what_the_pass_rewrites() {
        let recorded = [
            entry("Service", "kept", Some("f-kept")),
            entry("Service", "updated", Some("f-old")),
            entry("Service", "removed", Some("f-removed")),
        ];
        let desired = [
            object("Service", "kept"),
            object("Service", "updated"),
            object("Service", "new"),
        ];
        let applied: BTreeSet<ObjectRef> =
            [object("Service", "updated"), object("Service", "new")].into();
        let pending = pending_entries(&recorded, &desired, &applied);
        let got: Vec<(&str, Option<&str>)> = pending
            .iter()
            .map(|e| (e.object.name.as_str(), e.fingerprint.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("kept", Some("f-kept")),
                ("new", None),
                ("removed", Some("f-removed")),
                ("updated", None)
            ]
        );
    }

    #[test]
    fn the_settled_record_keeps_what_a_concurrent_writer_added_and_drops_what_we_dropped() {
        let before = [
            entry("Service", "desired", Some("f0")),
            entry("Service", "pruned", Some("f-pruned")),
            entry("Service", "re-recorded", Some("f-old")),
        ];
        let ours = [entry("Service", "desired", Some("f1"))];
        // Meanwhile another writer listed a new object and re-recorded one we dropped.
        let now = [
            entry("Service", "desired", None),
            entry("Service", "pruned", Some("f-pruned")),
            entry("Service", "re-recorded", Some("f-new")),
            entry("Service", "theirs", None),
        ];
        let settled = settled_entries(&ours, &before, &now);
        let got: Vec<(&str, Option<&str>)> = settled
            .iter()
            .map(|e| (e.object.name.as_str(), e.fingerprint.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("desired", Some("f1")),
                ("re-recorded", Some("f-new")),
                ("theirs", None)
            ]
        );
        // Without a concurrent writer `now` is our own pending record: exactly `ours` remains.
        let pending = pending_entries(&before, &[object("Service", "desired")], &BTreeSet::new());
        assert_eq!(settled_entries(&ours, &before, &pending), ours);
    }

    #[test]
    fn records_compare_as_sets() {
        let a = Recorded {
            entries: vec![
                entry("Service", "a", None),
                entry("Service", "b", Some("f")),
            ],
            revision: Some("r".into()),
            pending: None,
            resource_version: Some("1".into()),
        };
        let mut b = a.clone();
        b.entries.reverse();
        b.resource_version = Some("2".into());
        assert!(a.records_the_same(&b));
        b.pending = Some("r2".into());
        assert!(!a.records_the_same(&b));
    }
}
