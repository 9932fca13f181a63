//! Executing a plan: fetch live state cheaply, dry-run only what changed, apply in order,
//! prune in reverse, record the inventory.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{inventory, Cluster, ClusterError};
use crate::plan::{self, fingerprint, Action, InventoryEntry, ObjectRef, Plan};
use crate::render::{Object, SOURCE_LABEL};

/// Requests in flight at once inside one apply phase.
const CONCURRENCY: usize = 8;
/// Tries of one request that failed transiently (409 without force, 429, 5xx, timeouts).
const ATTEMPTS: u32 = 4;

#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub source: String,
    /// Namespace of the inventory ConfigMap.
    pub inventory_namespace: String,
    pub prune: bool,
    /// Allow pruning everything when the repository renders nothing.
    pub allow_empty: bool,
    /// Commit or content hash recorded with the inventory.
    pub revision: String,
}

/// What the cluster holds for a source.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub objects: BTreeMap<ObjectRef, Value>,
    pub inventory: Vec<InventoryEntry>,
    pub revision: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "the repository renders no objects but the inventory lists {count}; refusing to prune \
         everything (pass --allow-empty if that is really wanted)"
    )]
    EmptyDesired { count: usize },
}

/// Live state with one LIST per kind and namespace (plus the inventory): O(kinds ×
/// namespaces) requests, never one GET per object.
pub async fn fetch(
    cluster: &Cluster,
    desired: &[Object],
    options: &SyncOptions,
) -> Result<Live, SyncError> {
    let (inventory, revision) =
        inventory::read(cluster, &options.inventory_namespace, &options.source).await?;
    let mut scopes: BTreeSet<(String, String, String)> = BTreeSet::new();
    for object in desired {
        scopes.insert((
            object.api_version().to_owned(),
            object.kind().to_owned(),
            object.namespace().to_owned(),
        ));
    }
    for entry in &inventory {
        let o = &entry.object;
        scopes.insert((o.api_version.clone(), o.kind.clone(), o.namespace.clone()));
    }
    let selector = format!("{SOURCE_LABEL}={}", options.source);
    let mut objects = BTreeMap::new();
    for (api_version, kind, namespace) in scopes {
        let resource = cluster.resource(&api_version, &kind).await?;
        let listed = match cluster.list(&resource, &namespace, &selector).await {
            Ok(items) => items,
            // A namespace that does not exist yet holds nothing.
            Err(ClusterError::Api { code: 404, .. })
            | Err(ClusterError::NamespaceMissing { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for mut item in listed {
            // Items of a LIST carry no apiVersion/kind.
            item["apiVersion"] = json!(api_version);
            item["kind"] = json!(kind);
            objects.insert(ObjectRef::of(&item), item);
        }
    }
    Ok(Live {
        objects,
        inventory,
        revision,
    })
}

async fn retrying<T, F, Fut>(mut operation: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match operation().await {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Diffs for the changed objects: a server-side dry-run of each (so defaults and webhooks are
/// accounted for) compared with the live object.
pub async fn diffs(
    cluster: &Cluster,
    plan: &Plan,
    desired: &[Object],
    live: &Live,
) -> Result<BTreeMap<ObjectRef, String>, ClusterError> {
    let by_ref: BTreeMap<ObjectRef, &Value> = desired
        .iter()
        .map(|o| (plan::ObjectRef::of(&o.value), &o.value))
        .collect();
    let mut out = BTreeMap::new();
    for change in &plan.changes {
        let current = live.objects.get(&change.object);
        let text = match change.action {
            Action::Unchanged => continue,
            Action::Delete => plan::diff(current, None),
            Action::Recreate => plan::diff(current, by_ref.get(&change.object).copied()),
            Action::Create | Action::Update => {
                let Some(target) = by_ref.get(&change.object) else {
                    continue;
                };
                match retrying(|| cluster.apply(target, true)).await {
                    Ok(dry_run) => plan::diff(current, Some(&dry_run)),
                    // An immutable change that the hash did not reveal: show what would change.
                    Err(e) if e.is_immutable() => plan::diff(current, Some(target)),
                    Err(e) => return Err(e),
                }
            }
        };
        out.insert(change.object.clone(), text);
    }
    Ok(out)
}

/// The workload's controller: the CR named by its Function Mesh labels.
fn owner_of(value: &Value) -> Option<(String, String)> {
    let labels = &value["metadata"]["labels"];
    let name = labels["compute.functionmesh.io/name"].as_str()?;
    let kind = match labels["compute.functionmesh.io/component"].as_str()? {
        "function" => "Function",
        "source" => "Source",
        "sink" => "Sink",
        _ => return None,
    };
    Some((kind.to_owned(), name.to_owned()))
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub applied: Vec<ObjectRef>,
    pub deleted: Vec<ObjectRef>,
    /// Deletes the server refused; they stay in the inventory.
    pub failed_deletes: Vec<(ObjectRef, String)>,
}

/// Told about every object as it is applied or deleted (a progress bar, log lines).
pub trait Progress: Sync {
    fn done(&self, object: &ObjectRef, action: Action);
}

/// No progress reporting.
pub struct Quiet;

impl Progress for Quiet {
    fn done(&self, _: &ObjectRef, _: Action) {}
}

/// Applies the plan: phase by phase (bounded concurrency inside a phase), recreates as delete
/// + create, workloads owned by their CR, then prunes in reverse and records the inventory.
pub async fn execute(
    cluster: &Cluster,
    plan: &Plan,
    desired: &[Object],
    live: &Live,
    options: &SyncOptions,
) -> Result<Report, SyncError> {
    execute_with(cluster, plan, desired, live, options, &Quiet).await
}

/// [`execute`], reporting each object to `progress`.
pub async fn execute_with(
    cluster: &Cluster,
    plan: &Plan,
    desired: &[Object],
    live: &Live,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Result<Report, SyncError> {
    let deletes = plan.count(Action::Delete);
    if desired.is_empty()
        && !live.inventory.is_empty()
        && !options.allow_empty
        && options.prune
        && deletes > 0
    {
        return Err(SyncError::EmptyDesired {
            count: live.inventory.len(),
        });
    }
    let actions: BTreeMap<&ObjectRef, Action> =
        plan.changes.iter().map(|c| (&c.object, c.action)).collect();
    let mut uids: BTreeMap<(String, String, String), String> = BTreeMap::new();
    let mut fingerprints: BTreeMap<ObjectRef, Option<String>> = BTreeMap::new();
    let mut report = Report::default();
    let phases: BTreeSet<u8> = desired.iter().map(|o| o.phase).collect();
    for phase in phases {
        let mut batch = Vec::new();
        for object in desired.iter().filter(|o| o.phase == phase) {
            let reference = ObjectRef::of(&object.value);
            let action = actions.get(&reference).copied().unwrap_or(Action::Create);
            let mut value = object.value.clone();
            if let Some((kind, name)) = owner_of(&value) {
                if let Some(uid) =
                    uids.get(&(object.namespace().to_owned(), kind.clone(), name.clone()))
                {
                    value["metadata"]["ownerReferences"] = json!([{
                        "apiVersion": crate::model::FUNCTION_MESH_API_VERSION,
                        "kind": kind, "name": name, "uid": uid,
                        "controller": true, "blockOwnerDeletion": true,
                    }]);
                }
            }
            batch.push((reference, action, value));
        }
        let results: Vec<Result<(ObjectRef, Value), ClusterError>> = stream::iter(batch)
            .map(|(reference, action, value)| {
                let current = live.objects.get(&reference).cloned();
                async move {
                    match action {
                        Action::Unchanged => Ok((reference, current.unwrap_or(Value::Null))),
                        Action::Recreate => {
                            retrying(|| cluster.delete(&reference, false)).await?;
                            let created = retrying(|| cluster.apply(&value, false)).await?;
                            Ok((reference, created))
                        }
                        _ => Ok((reference, retrying(|| cluster.apply(&value, false)).await?)),
                    }
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for result in results {
            let (reference, applied) = result?;
            if let Some(uid) = applied["metadata"]["uid"].as_str() {
                uids.insert(
                    (
                        reference.namespace.clone(),
                        reference.kind.clone(),
                        reference.name.clone(),
                    ),
                    uid.to_owned(),
                );
            }
            let action = actions.get(&reference).copied().unwrap_or(Action::Create);
            if action != Action::Unchanged {
                progress.done(&reference, action);
                report.applied.push(reference.clone());
            }
            fingerprints.insert(reference, fingerprint(&applied));
        }
    }
    let mut kept: Vec<InventoryEntry> = Vec::new();
    if options.prune {
        for change in plan.changes.iter().filter(|c| c.action == Action::Delete) {
            match retrying(|| cluster.delete(&change.object, false)).await {
                Ok(()) => {
                    progress.done(&change.object, Action::Delete);
                    report.deleted.push(change.object.clone());
                }
                Err(e) => {
                    report
                        .failed_deletes
                        .push((change.object.clone(), e.to_string()));
                    kept.push(InventoryEntry {
                        object: change.object.clone(),
                        fingerprint: None,
                    });
                }
            }
        }
    }
    // Removed objects that were not pruned stay ours until they are.
    let desired_refs: BTreeSet<ObjectRef> = fingerprints.keys().cloned().collect();
    for entry in &live.inventory {
        let pruned = report.deleted.contains(&entry.object);
        if !desired_refs.contains(&entry.object)
            && !pruned
            && !kept.iter().any(|k| k.object == entry.object)
        {
            kept.push(entry.clone());
        }
    }
    let mut entries: Vec<InventoryEntry> = fingerprints
        .into_iter()
        .map(|(object, fingerprint)| InventoryEntry {
            object,
            fingerprint,
        })
        .collect();
    entries.extend(kept);
    inventory::write(
        cluster,
        &options.inventory_namespace,
        &options.source,
        &entries,
        &options.revision,
    )
    .await?;
    Ok(report)
}

/// Writes status on every Function/Source/Sink meshops runs itself (native mode: the CR is
/// marked unmanaged for the operator), from its StatefulSet.
pub async fn write_status(
    cluster: &Cluster,
    desired: &[Object],
    revision: &str,
) -> Result<usize, ClusterError> {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut written = 0;
    for object in desired {
        let component = match object.kind() {
            "Function" => "function",
            "Source" => "source",
            "Sink" => "sink",
            _ => continue,
        };
        if object.value["metadata"]["annotations"][crate::render::OPERATOR_MANAGED] != "false" {
            continue;
        }
        let cr = ObjectRef::of(&object.value);
        let Some(live_cr) = cluster.get(&cr).await? else {
            continue;
        };
        let statefulset = ObjectRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            namespace: cr.namespace.clone(),
            name: format!("{}-{component}", cr.name),
        };
        let live_sts = cluster.get(&statefulset).await?;
        let status = super::rollout::cr_status(&live_cr, live_sts.as_ref(), revision, &now);
        retrying(|| cluster.apply_status(&status)).await?;
        written += 1;
    }
    Ok(written)
}
