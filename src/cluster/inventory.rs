//! The inventory: what meshops applied for a source, kept in the cluster as the ConfigMap
//! `meshops-inventory-<source>` (like Flux's `status.inventory` or kubectl's ApplySet), so that
//! pruning deletes `inventory − desired` and never "whatever carries our label".

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Cluster, ClusterError};
use crate::plan::{InventoryEntry, ObjectRef};
use crate::render::{MANAGED_BY, SOURCE_LABEL};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
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

/// The recorded entries and revision, or nothing when the source was never applied.
pub async fn read(
    cluster: &Cluster,
    namespace: &str,
    source: &str,
) -> Result<(Vec<InventoryEntry>, Option<String>), ClusterError> {
    let Some(config_map) = cluster.get(&reference(namespace, source)).await? else {
        return Ok((Vec::new(), None));
    };
    let entries: Vec<Entry> = config_map["data"]["objects"]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let revision = config_map["data"]["revision"].as_str().map(str::to_owned);
    let entries = entries
        .into_iter()
        .map(|e| InventoryEntry {
            object: ObjectRef {
                api_version: e.api_version,
                kind: e.kind,
                namespace: e.namespace,
                name: e.name,
            },
            fingerprint: e.fingerprint,
        })
        .collect();
    Ok((entries, revision))
}

/// The inventory ConfigMap for `entries` (sorted, so the same state writes the same bytes).
pub fn config_map(
    namespace: &str,
    source: &str,
    entries: &[InventoryEntry],
    revision: &str,
) -> Value {
    let mut entries: Vec<Entry> = entries
        .iter()
        .map(|e| Entry {
            api_version: e.object.api_version.clone(),
            kind: e.object.kind.clone(),
            namespace: e.object.namespace.clone(),
            name: e.object.name.clone(),
            fingerprint: e.fingerprint.clone(),
        })
        .collect();
    entries.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name(source),
            "namespace": namespace,
            "labels": {MANAGED_BY: "meshops", SOURCE_LABEL: source},
        },
        "data": {
            "objects": serde_json::to_string(&entries).unwrap_or_default(),
            "revision": revision,
        },
    })
}

pub async fn write(
    cluster: &Cluster,
    namespace: &str,
    source: &str,
    entries: &[InventoryEntry],
    revision: &str,
) -> Result<(), ClusterError> {
    cluster
        .apply(&config_map(namespace, source, entries, revision), false)
        .await
        .map(|_| ())
}
