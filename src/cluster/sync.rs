//! Executing a plan: fetch live state cheaply, dry-run only what changed, apply in order,
//! prune in reverse, record the inventory.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::inventory::{self, InventoryError};
use super::{Cluster, ClusterError};
use crate::plan::{self, fingerprint, Action, InventoryEntry, ObjectRef, Plan};
use crate::render::{Object, SOURCE_LABEL};

/// Requests in flight at once inside one apply phase. The server is the bottleneck of a first
/// apply; enough requests in flight hide the round trip to it: with 5 ms between client and
/// server, 16 → 32 made a first apply of 1,501 objects 18 % faster (`cargo bench --bench
/// cluster`). The API server's priority and fairness queues such a burst instead of failing it.
const CONCURRENCY: usize = 32;

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
    /// Apply objects that belong to another source (taking them over) instead of refusing.
    pub take_over: bool,
}

/// What the cluster holds for a source.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub objects: BTreeMap<ObjectRef, Value>,
    pub inventory: Vec<InventoryEntry>,
    /// The revision of the last pass that completed. Never that of a pass that was
    /// interrupted: the cluster may hold only part of it.
    pub revision: Option<String>,
    /// The revision of a pass that started writing and did not complete (killed, stopped,
    /// failed): the cluster holds part of it, and the next pass must run even when `revision`
    /// is the commit wanted.
    pub pending: Option<String>,
    /// `metadata.resourceVersion` of the inventory ConfigMap as read, the precondition of its
    /// next write; `None` when it does not exist.
    pub inventory_version: Option<String>,
}

impl Live {
    /// The inventory as read, the start of this pass's inventory writes.
    fn recorded(&self) -> inventory::Recorded {
        inventory::Recorded {
            entries: self.inventory.clone(),
            revision: self.revision.clone(),
            pending: self.pending.clone(),
            resource_version: self.inventory_version.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The inventory is unreadable or kept changing under its writes (a request that failed
    /// is [`SyncError::Cluster`]).
    #[error(transparent)]
    Inventory(InventoryError),
    #[error(
        "the repository renders no objects but the inventory lists {count}; refusing to prune \
         everything (pass --allow-empty if that is really wanted)"
    )]
    EmptyDesired { count: usize },
    #[error(
        "nothing was applied: {} another source ({}); pass --take-over to take them",
        match conflicts.len() { 1 => "1 object belongs to".to_owned(), n => format!("{n} objects belong to") },
        conflicts.iter().map(|(o, owner)| format!("{o} of \"{owner}\"")).collect::<Vec<_>>().join(", ")
    )]
    Conflict { conflicts: Vec<(ObjectRef, String)> },
    #[error(
        "nothing was applied: the cluster {endpoint} does not allow {}",
        denied.join(", ")
    )]
    Forbidden {
        endpoint: super::Endpoint,
        denied: Vec<String>,
    },
    #[error("stopped between apply phases (shutting down); the next pass finishes the apply")]
    Stopped,
}

impl From<InventoryError> for SyncError {
    /// A request that failed is a cluster error like any other; only what is wrong with the
    /// inventory itself is an inventory error.
    fn from(error: InventoryError) -> SyncError {
        match error {
            InventoryError::Cluster(e) => SyncError::Cluster(e),
            other => SyncError::Inventory(other),
        }
    }
}

/// Live state with one LIST per kind and namespace (plus the inventory): O(kinds ×
/// namespaces) requests, never one GET per object. Objects that the LIST by source label does
/// not return (new ones, or ones another source or a person holds) are looked up — a GET for
/// a lone one, an unlabelled LIST of the scope for several — so the plan can tell create from
/// adopt and conflict.
pub async fn fetch(
    cluster: &Cluster,
    desired: &[Object],
    options: &SyncOptions,
) -> Result<Live, SyncError> {
    let recorded = inventory::read(cluster, &options.inventory_namespace, &options.source).await?;
    let inventory = recorded.entries;
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
    // The LISTs run concurrently: at 1,000 functions, one after another they were half of
    // an agent's push-to-applied time. The futures are made up front (see `preflight`).
    let lists: Vec<_> = scopes
        .iter()
        .map(|(api_version, kind, namespace)| cluster.list(api_version, kind, namespace, &selector))
        .collect();
    let listed: Vec<Result<Vec<Value>, ClusterError>> =
        stream::iter(lists).buffered(CONCURRENCY).collect().await;
    let mut objects = BTreeMap::new();
    for result in listed {
        let items = match result {
            Ok(items) => items,
            // A namespace that does not exist yet holds nothing.
            Err(ClusterError::Api { code: 404, .. })
            | Err(ClusterError::NamespaceMissing { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for item in items {
            objects.insert(ObjectRef::of(&item), item);
        }
    }
    let unlisted: BTreeSet<ObjectRef> = desired
        .iter()
        .map(|o| ObjectRef::of(&o.value))
        .chain(inventory.iter().map(|e| e.object.clone()))
        .filter(|r| !objects.contains_key(r))
        .collect();
    // One GET for a lone missing object; one LIST without the label for a scope with more
    // (a first apply), so the cost stays per scope, not per object.
    // Owned keys and items: futures that borrow from the stream's items are not `Send` for
    // every lifetime, and the agent runs this on a multi-threaded runtime.
    let mut by_scope: BTreeMap<(String, String, String), Vec<ObjectRef>> = BTreeMap::new();
    for r in &unlisted {
        by_scope
            .entry((r.api_version.clone(), r.kind.clone(), r.namespace.clone()))
            .or_default()
            .push(r.clone());
    }
    let lookups: Vec<Result<Vec<Value>, ClusterError>> = stream::iter(by_scope)
        .map(|((api_version, kind, namespace), wanted)| async move {
            if let [one] = wanted.as_slice() {
                return Ok(cluster.get(one).await?.into_iter().collect());
            }
            let names: BTreeSet<String> = wanted.into_iter().map(|r| r.name).collect();
            let all = match cluster.list(&api_version, &kind, &namespace, "").await {
                Ok(items) => items,
                Err(ClusterError::NamespaceMissing { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            Ok(all
                .into_iter()
                .filter(|o| names.contains(o["metadata"]["name"].as_str().unwrap_or_default()))
                .collect())
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    for found in lookups {
        for item in found? {
            objects.insert(ObjectRef::of(&item), item);
        }
    }
    // A namespace where nothing was found may not exist: ask once, before anything is
    // written. Without the right to read namespaces the apply itself will tell.
    let seen: BTreeSet<&str> = objects.keys().map(|r| r.namespace.as_str()).collect();
    let unseen: BTreeSet<&str> = unlisted
        .iter()
        .map(|r| r.namespace.as_str())
        .filter(|n| !n.is_empty() && !seen.contains(n))
        .collect();
    for namespace in unseen {
        let reference = ObjectRef {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: String::new(),
            name: namespace.to_owned(),
        };
        match cluster.get(&reference).await {
            Ok(Some(_)) | Err(ClusterError::Forbidden { .. }) => {}
            Ok(None) => {
                return Err(ClusterError::NamespaceMissing {
                    endpoint: cluster.endpoint().clone(),
                    namespace: namespace.to_owned(),
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Live {
        objects,
        inventory,
        revision: recorded.revision,
        pending: recorded.pending,
        inventory_version: recorded.resource_version,
    })
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
    // The dry-run sends what apply sends, ownerReferences included, or every diff would show
    // them removed.
    let owners: Owners = live
        .objects
        .values()
        .filter_map(|v| Some((owner_key(v)?, v["metadata"]["uid"].as_str()?.to_owned())))
        .collect();
    let mut out = BTreeMap::new();
    for change in &plan.changes {
        let current = live.objects.get(&change.object);
        let text = match change.action {
            // Nothing an apply of this plan would write (a prunable object stays).
            Action::Unchanged | Action::Keep | Action::Prunable => continue,
            Action::Delete => plan::diff(current, None),
            Action::Recreate => {
                let target = by_ref.get(&change.object).map(|v| with_owner(v, &owners));
                plan::diff(current, target.as_ref())
            }
            Action::Create | Action::Adopt | Action::Update | Action::Conflict => {
                let Some(target) = by_ref.get(&change.object) else {
                    continue;
                };
                let target = &with_owner(target, &owners);
                match cluster.apply(target, true).await {
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

/// The uid of a live object: a delete of what the plan saw names it, so that it never deletes
/// an object someone created in its place since.
fn uid(live: &Value) -> Option<String> {
    live["metadata"]["uid"].as_str().map(str::to_owned)
}

/// (namespace, kind, name) of a Function, Source or Sink → its uid.
type Owners = BTreeMap<(String, String, String), String>;

/// The key of a Function/Source/Sink in [`Owners`].
fn owner_key(value: &Value) -> Option<(String, String, String)> {
    let kind = value["kind"].as_str()?;
    let component = matches!(kind, "Function" | "Source" | "Sink")
        && value["apiVersion"] == crate::model::FUNCTION_MESH_API_VERSION;
    if !component {
        return None;
    }
    Some((
        value["metadata"]["namespace"].as_str()?.to_owned(),
        kind.to_owned(),
        value["metadata"]["name"].as_str()?.to_owned(),
    ))
}

/// Notes the uid of a Function, Source or Sink, so that its workloads get their ownerReference.
fn record_owner(owners: &mut Owners, value: &Value) {
    if let (Some(key), Some(uid)) = (owner_key(value), value["metadata"]["uid"].as_str()) {
        owners.insert(key, uid.to_owned());
    }
}

/// The workload's controller: the CR named by its Function Mesh labels.
fn owner_of(value: &Value) -> Option<(String, String, String)> {
    let labels = &value["metadata"]["labels"];
    let name = labels["compute.functionmesh.io/name"].as_str()?;
    let kind = match labels["compute.functionmesh.io/component"].as_str()? {
        "function" => "Function",
        "source" => "Source",
        "sink" => "Sink",
        _ => return None,
    };
    let namespace = value["metadata"]["namespace"].as_str()?;
    Some((namespace.to_owned(), kind.to_owned(), name.to_owned()))
}

/// The Function, Source or Sink an object belongs to: itself, or the CR its Function Mesh
/// labels name (where a drift Event about it is shown).
pub fn owning_cr(value: &Value) -> Option<ObjectRef> {
    let (namespace, kind, name) = owner_key(value).or_else(|| owner_of(value))?;
    Some(ObjectRef {
        api_version: crate::model::FUNCTION_MESH_API_VERSION.into(),
        kind,
        namespace,
        name,
    })
}

/// The object with a controller ownerReference to its CR when the CR's uid is known, so that
/// deleting a Function deletes its workloads.
fn with_owner(value: &Value, owners: &Owners) -> Value {
    let mut value = value.clone();
    // A CR is never its own owner.
    if let Some(key) = owner_of(&value).filter(|_| owner_key(&value).is_none()) {
        if let Some(uid) = owners.get(&key) {
            value["metadata"]["ownerReferences"] = json!([{
                "apiVersion": crate::model::FUNCTION_MESH_API_VERSION,
                "kind": key.1, "name": key.2, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }]);
        }
    }
    value
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub applied: Vec<ObjectRef>,
    pub deleted: Vec<ObjectRef>,
    /// Deletes the server refused; they stay in the inventory.
    pub failed_deletes: Vec<(ObjectRef, String)>,
    /// The Functions, Sources, Sinks and StatefulSets as the server answered the apply, cut
    /// to what their status is made from (so writing it needs no GET).
    pub observed: BTreeMap<ObjectRef, Value>,
}

/// What [`super::rollout::cr_status`] reads of a CR or a StatefulSet.
fn status_view(value: &Value) -> Option<Value> {
    let meta = &value["metadata"];
    match value["kind"].as_str()? {
        "Function" | "Source" | "Sink" => Some(json!({
            "apiVersion": value["apiVersion"], "kind": value["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "generation": meta["generation"]},
        })),
        "StatefulSet" => Some(json!({
            "metadata": {"generation": meta["generation"]},
            "spec": {"replicas": value["spec"]["replicas"], "selector": value["spec"]["selector"]},
            "status": value["status"],
        })),
        _ => None,
    }
}

/// Told about every object as it is applied or deleted (a progress bar, log lines).
pub trait Progress: Sync {
    fn done(&self, object: &ObjectRef, action: Action);

    /// Asked before each apply phase: true stops the apply there (the agent's shutdown), so a
    /// phase is never cut in half.
    fn stopped(&self) -> bool {
        false
    }
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

/// The RBAC checks an execution needs, as (verb, apiVersion, kind, subresource, namespace).
type Permission = (&'static str, String, String, Option<&'static str>, String);

fn permissions(plan: &Plan, live: &Live, options: &SyncOptions) -> BTreeSet<Permission> {
    let mut needed = BTreeSet::new();
    let mut add = |verb: &'static str, o: &ObjectRef, subresource: Option<&'static str>| {
        needed.insert((
            verb,
            o.api_version.clone(),
            o.kind.clone(),
            subresource,
            o.namespace.clone(),
        ));
    };
    for change in &plan.changes {
        let o = &change.object;
        let verbs: &[&'static str] = match change.action {
            Action::Create => &["create", "patch"],
            Action::Adopt | Action::Update | Action::Conflict => &["patch"],
            Action::Recreate => &["delete", "create", "patch"],
            Action::Delete if options.prune => &["delete"],
            Action::Delete | Action::Unchanged | Action::Keep | Action::Prunable => &[],
        };
        for verb in verbs {
            add(verb, o, None);
        }
        if change.action.writes() && matches!(o.kind.as_str(), "Function" | "Source" | "Sink") {
            add("patch", o, Some("status"));
        }
    }
    let inventory = inventory::reference(&options.inventory_namespace, &options.source);
    add("patch", &inventory, None);
    if live.inventory_version.is_none() {
        add("create", &inventory, None);
    }
    needed
}

/// Asks RBAC about every verb the execution needs before anything is written, so that a user
/// without the rights gets one clear error and a cluster left as it was.
async fn preflight(
    cluster: &Cluster,
    plan: &Plan,
    live: &Live,
    options: &SyncOptions,
) -> Result<(), SyncError> {
    let needed: Vec<Permission> = permissions(plan, live, options).into_iter().collect();
    // The futures are made up front: a stream mapping through a closure over borrowed tuples
    // is not `Send` for every lifetime, and the agent runs this on a multi-threaded runtime.
    let checks: Vec<_> = needed
        .iter()
        .map(|(verb, api_version, kind, subresource, namespace)| {
            cluster.may(verb, api_version, kind, *subresource, namespace)
        })
        .collect();
    let answers: Vec<Result<bool, ClusterError>> =
        stream::iter(checks).buffered(CONCURRENCY).collect().await;
    let mut denied = Vec::new();
    for ((verb, api_version, kind, subresource, namespace), allowed) in needed.iter().zip(answers) {
        if !allowed? {
            let what = match subresource {
                Some(sub) => format!("{kind}/{sub}"),
                None => kind.clone(),
            };
            let place = if namespace.is_empty() {
                String::new()
            } else {
                format!(" in namespace \"{namespace}\"")
            };
            denied.push(format!("{verb} {what} ({api_version}){place}"));
        }
    }
    if denied.is_empty() {
        Ok(())
    } else {
        Err(SyncError::Forbidden {
            endpoint: cluster.endpoint().clone(),
            denied,
        })
    }
}

/// Refuses a prune of everything: the repository renders nothing while the inventory lists
/// objects, and `allow_empty` is not set (an empty checkout is likelier than an intent).
/// Checked by the apply before any write, and by a plan with prune, so that the plan fails
/// as its apply would instead of showing deletes that never happen.
pub fn check_prune(
    plan: &Plan,
    desired: &[Object],
    live: &Live,
    options: &SyncOptions,
) -> Result<(), SyncError> {
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
    Ok(())
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
    check_prune(plan, desired, live, options)?;
    let conflicts: Vec<(ObjectRef, String)> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Conflict)
        .map(|c| {
            let owner = live.objects.get(&c.object).and_then(|v| {
                v["metadata"]["labels"][SOURCE_LABEL]
                    .as_str()
                    .map(str::to_owned)
            });
            (c.object.clone(), owner.unwrap_or_default())
        })
        .collect();
    if !conflicts.is_empty() && !options.take_over {
        return Err(SyncError::Conflict { conflicts });
    }
    preflight(cluster, plan, live, options).await?;
    let actions: BTreeMap<&ObjectRef, Action> =
        plan.changes.iter().map(|c| (&c.object, c.action)).collect();
    let recorded = record_pending(cluster, desired, live, options, &actions, progress).await?;
    let mut owners: Owners = BTreeMap::new();
    let mut fingerprints: BTreeMap<ObjectRef, Option<String>> = BTreeMap::new();
    let mut report = Report::default();
    let phases: BTreeSet<u8> = desired.iter().map(|o| o.phase).collect();
    for phase in phases {
        if progress.stopped() {
            return Err(SyncError::Stopped);
        }
        let started = std::time::Instant::now();
        // Unchanged objects are settled from their live value without a request or a copy:
        // on an agent's push nearly every object is unchanged, and copying each of them
        // took 0.3 s of a one-Function push at 1,000 functions.
        let mut batch: Vec<(ObjectRef, Action, Value, Option<String>)> = Vec::new();
        for object in desired.iter().filter(|o| o.phase == phase) {
            let reference = ObjectRef::of(&object.value);
            let action = actions.get(&reference).copied().unwrap_or(Action::Create);
            match (action, live.objects.get(&reference)) {
                (Action::Unchanged, Some(current)) => {
                    record_owner(&mut owners, current);
                    fingerprints.insert(reference, fingerprint(current));
                }
                (_, current) => {
                    // Only a recreate deletes: the uid names the object it replaces.
                    let uid = current.filter(|_| action == Action::Recreate).and_then(uid);
                    batch.push((reference, action, with_owner(&object.value, &owners), uid));
                }
            }
        }
        let results: Vec<Result<(ObjectRef, Action, Value), ClusterError>> = stream::iter(batch)
            .map(|(reference, action, value, uid)| async move {
                let applied = match action {
                    Action::Recreate => {
                        cluster.delete(&reference, uid.as_deref(), false).await?;
                        cluster.apply(&value, false).await?
                    }
                    _ => cluster.apply(&value, false).await?,
                };
                Ok((reference, action, applied))
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        tracing::debug!(phase, objects = results.len(), elapsed = ?started.elapsed(), "applied phase");
        for result in results {
            let (reference, action, applied) = result?;
            record_owner(&mut owners, &applied);
            progress.done(&reference, action);
            report.applied.push(reference.clone());
            if let Some(view) = status_view(&applied) {
                report.observed.insert(reference.clone(), view);
            }
            fingerprints.insert(reference, fingerprint(&applied));
        }
    }
    let mut kept: Vec<InventoryEntry> = Vec::new();
    if options.prune {
        for change in plan.changes.iter().filter(|c| c.action == Action::Delete) {
            let uid = live.objects.get(&change.object).and_then(uid);
            match cluster.delete(&change.object, uid.as_deref(), false).await {
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
    // Removed objects that were not pruned stay ours until they are; one kept by its
    // `meshops.io/prune: disabled` annotation (or released, never written by meshops) is let
    // go, and so is one that is no longer in the cluster (deleted by someone, or listed by an
    // interrupted pass that never created it): there is nothing left to prune.
    let desired_refs: BTreeSet<ObjectRef> = fingerprints.keys().cloned().collect();
    for entry in &live.inventory {
        let pruned = report.deleted.contains(&entry.object);
        let let_go = actions.get(&entry.object) == Some(&Action::Keep);
        let gone = !live.objects.contains_key(&entry.object);
        if desired_refs.contains(&entry.object) || pruned || let_go || gone {
            continue;
        }
        match kept.iter_mut().find(|k| k.object == entry.object) {
            // A refused delete keeps the fingerprint recorded for it.
            Some(refused) => refused.fingerprint = entry.fingerprint.clone(),
            None => kept.push(entry.clone()),
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
    record_settled(cluster, live, options, recorded, &entries).await?;
    Ok(report)
}

/// Before the first write of a pass: records `inventory ∪ desired` with the pass's revision
/// pending (DESIGN §4), so that a pass killed anywhere after this leaves every object it may
/// have written listed, and the next pass prunes what Git no longer has. Skipped when the pass
/// writes nothing (nothing a kill could leave unlisted: a no-op pass writes nothing at all),
/// and when the inventory already records exactly that (the re-run of an interrupted pass).
/// Returns the inventory as it now is.
async fn record_pending(
    cluster: &Cluster,
    desired: &[Object],
    live: &Live,
    options: &SyncOptions,
    actions: &BTreeMap<&ObjectRef, Action>,
    progress: &dyn Progress,
) -> Result<inventory::Recorded, SyncError> {
    let desired_refs: Vec<ObjectRef> = desired.iter().map(|o| ObjectRef::of(&o.value)).collect();
    // What the phases send a request for: everything but the unchanged objects they settle
    // from their live value.
    let applied: BTreeSet<ObjectRef> = desired_refs
        .iter()
        .filter(|r| {
            let unchanged = actions.get(r) == Some(&Action::Unchanged);
            !(unchanged && live.objects.contains_key(*r))
        })
        .cloned()
        .collect();
    let prunes = options.prune && actions.values().any(|a| *a == Action::Delete);
    if applied.is_empty() && !prunes {
        return Ok(live.recorded());
    }
    // A shutdown that arrived before anything was written leaves nothing pending.
    if progress.stopped() {
        return Err(SyncError::Stopped);
    }
    let revision = &options.revision;
    Ok(inventory::write(
        cluster,
        &options.inventory_namespace,
        &options.source,
        live.recorded(),
        |current| inventory::Recorded {
            entries: inventory::pending_entries(&current.entries, &desired_refs, &applied),
            revision: current.revision.clone(),
            pending: Some(revision.clone()),
            resource_version: None,
        },
    )
    .await?)
}

/// After the pass: records what the source owns now (`entries`), its revision, nothing
/// pending — merged, when another writer wrote the inventory meanwhile, by the rule of
/// [`inventory::settled_entries`]. A pending revision that another writer set meanwhile
/// stays: that pass is running, or was interrupted, and only a pass after it may clear it.
/// Skipped when the inventory already records exactly that (a pass that changed nothing).
async fn record_settled(
    cluster: &Cluster,
    live: &Live,
    options: &SyncOptions,
    recorded: inventory::Recorded,
    entries: &[InventoryEntry],
) -> Result<(), SyncError> {
    let revision = &options.revision;
    inventory::write(
        cluster,
        &options.inventory_namespace,
        &options.source,
        recorded,
        |current| inventory::Recorded {
            entries: inventory::settled_entries(entries, &live.inventory, &current.entries),
            revision: Some(revision.clone()),
            pending: current
                .pending
                .clone()
                .filter(|p| p != revision && Some(p) != live.pending.as_ref()),
            resource_version: None,
        },
    )
    .await?;
    Ok(())
}

/// The StatefulSets whose rollout an apply of `plan` waits for: every written StatefulSet and
/// the workload of every written Function, Source and Sink (in operator mode the operator
/// makes it).
pub fn rollouts(plan: &Plan) -> Vec<ObjectRef> {
    let mut out = BTreeSet::new();
    for change in plan.changes.iter().filter(|c| c.action.writes()) {
        let o = &change.object;
        let component = match o.kind.as_str() {
            "StatefulSet" if change.action != Action::Delete => {
                out.insert(o.clone());
                continue;
            }
            "Function" => "function",
            "Source" => "source",
            "Sink" => "sink",
            _ => continue,
        };
        if change.action != Action::Delete {
            out.insert(ObjectRef {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                namespace: o.namespace.clone(),
                name: format!("{}-{component}", o.name),
            });
        }
    }
    out.into_iter().collect()
}

/// Writes status on the Functions, Sources and Sinks meshops runs itself (native mode: the
/// CR is marked unmanaged for the operator) whose CR or workload this apply wrote, from the
/// StatefulSet as it is now: taken from `observed` (what the apply answered) when it is there,
/// read otherwise (after a rollout wait). Bounded concurrency, as the apply.
pub async fn write_status(
    cluster: &Cluster,
    desired: &[Object],
    plan: &Plan,
    revision: &str,
    now: &str,
    observed: &BTreeMap<ObjectRef, Value>,
) -> Result<usize, ClusterError> {
    let touched: BTreeSet<ObjectRef> = rollouts(plan).into_iter().collect();
    let mut work = Vec::new();
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
        let statefulset = ObjectRef {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            namespace: cr.namespace.clone(),
            name: format!("{}-{component}", cr.name),
        };
        if touched.contains(&statefulset) {
            work.push((cr, statefulset));
        }
    }
    let known = |reference: &ObjectRef| observed.get(reference).cloned();
    let results: Vec<Result<bool, ClusterError>> = stream::iter(work)
        .map(|(cr, statefulset)| async move {
            let live_cr = match known(&cr) {
                Some(value) => value,
                None => match cluster.get(&cr).await? {
                    Some(value) => value,
                    None => return Ok(false),
                },
            };
            let live_sts = match known(&statefulset) {
                Some(value) => Some(value),
                None => cluster.get(&statefulset).await?,
            };
            let status = super::rollout::cr_status(&live_cr, live_sts.as_ref(), revision, now);
            cluster.apply_status(&status).await?;
            Ok(true)
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut written = 0;
    for result in results {
        if result? {
            written += 1;
        }
    }
    Ok(written)
}
