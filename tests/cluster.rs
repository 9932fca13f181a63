//! The cluster engine against the API double (tests/support): fresh apply, a no-op re-apply
//! with zero writes, drift from a foreign edit restored, HPA-owned replicas left alone,
//! pruning exactly what was removed, immutable changes recreated, clear errors for a missing
//! CRD or namespace. The request counter gives the cost of each step.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use meshops::cluster::sync::{self, Live, SyncError, SyncOptions};
use meshops::cluster::{Cluster, ClusterError};
use meshops::load::{LoadOptions, Tree};
use meshops::plan::{self, Action, Plan};
use meshops::reconcile::ReconcileError;
use meshops::render::{render, settings_of, Object};
use meshops::validate::{validate, Schemas, ValidateOptions};
use serde_json::{json, Value};
use support::FakeApiServer;

fn desired(path: &Path) -> Vec<Object> {
    let tree = Tree::load(path, &LoadOptions::default());
    let validation = validate(&tree, &Schemas::new(), ValidateOptions::default());
    assert!(validation.is_valid());
    render(
        &validation.checked,
        &settings_of(&validation.checked),
        "staging",
    )
    .unwrap()
}

fn staging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/staging")
}

fn options() -> SyncOptions {
    SyncOptions {
        source: "staging".into(),
        inventory_namespace: "default".into(),
        prune: true,
        allow_empty: false,
        revision: "test".into(),
        take_over: false,
    }
}

async fn plan_against(cluster: &Cluster, desired: &[Object]) -> (Live, Plan) {
    let live = sync::fetch(cluster, desired, &options()).await.unwrap();
    let plan = plan::plan(desired, &live.objects, &live.inventory);
    (live, plan)
}

async fn apply(cluster: &Cluster, desired: &[Object]) -> (Plan, sync::Report) {
    let (live, plan) = plan_against(cluster, desired).await;
    let report = sync::execute(cluster, &plan, desired, &live, &options())
        .await
        .unwrap();
    (plan, report)
}

async fn fresh() -> (FakeApiServer, Cluster) {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let cluster = server.cluster().await;
    (server, cluster)
}

#[tokio::test]
async fn fresh_apply_creates_everything_with_owner_references() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    let (plan, report) = apply(&cluster, &objects).await;
    assert_eq!(plan.count(Action::Create), objects.len());
    assert_eq!(report.applied.len(), objects.len());
    let sts = server.find("StatefulSet", "alerts-function").unwrap();
    let function = server.find("Function", "alerts").unwrap();
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["uid"],
        function["metadata"]["uid"]
    );
    assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        sts["spec"]["replicas"],
        serde_json::Value::Null,
        "the HPA owns replicas"
    );
    assert!(server
        .find("ConfigMap", "meshops-inventory-staging")
        .is_some());
    let requests = cluster.requests().snapshot();
    assert_eq!(
        requests.get("PATCH"),
        Some(&(objects.len() as u64 + 1)),
        "one apply per object plus the inventory settled: {requests:?}"
    );
    assert_eq!(
        requests.get("POST"),
        Some(&1),
        "the inventory created, pending, before the first object: {requests:?}"
    );
    eprintln!(
        "cost of a first apply of examples/staging ({} objects): {requests:?}",
        objects.len()
    );
}

#[tokio::test]
async fn a_reapply_without_changes_costs_lists_only_and_writes_nothing() {
    let (_server, first) = fresh().await;
    let objects = desired(&staging());
    apply(&first, &objects).await;
    let cluster = _server.cluster().await;
    let (live, plan) = plan_against(&cluster, &objects).await;
    assert!(
        !plan.has_changes(),
        "{:?}",
        plan.changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .collect::<Vec<_>>()
    );
    let diffs = sync::diffs(&cluster, &plan, &objects, &live).await.unwrap();
    assert!(diffs.is_empty());
    assert_eq!(cluster.requests().writes(), 0);
    let requests = cluster.requests().snapshot();
    assert_eq!(
        requests.get("PATCH dry-run"),
        None,
        "no dry-run for unchanged objects"
    );
    let kinds_and_namespaces: std::collections::BTreeSet<_> = objects
        .iter()
        .map(|o| (o.kind().to_owned(), o.namespace().to_owned()))
        .collect();
    assert_eq!(
        requests.get("LIST").copied(),
        Some(kinds_and_namespaces.len() as u64),
        "one LIST per kind and namespace"
    );
    assert_eq!(
        cluster.requests().retries(),
        0,
        "nothing failed, nothing retried"
    );
    eprintln!("cost of a no-change plan of examples/staging: {requests:?}");
}

#[tokio::test]
async fn a_foreign_edit_is_drift_and_apply_restores_it() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    apply(&cluster, &objects).await;
    server.edit(
        "StatefulSet",
        "alerts-function",
        "/spec/template/spec/containers/0/image",
        json!("evil:latest"),
        "f:spec",
    );
    let (live, plan) = plan_against(&cluster, &objects).await;
    let drift: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .collect();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].object.name, "alerts-function");
    assert!(drift[0].reason.contains("kubectl-edit"));
    let diffs = sync::diffs(&cluster, &plan, &objects, &live).await.unwrap();
    let diff = &diffs[&drift[0].object];
    assert!(diff.contains("-        image: evil:latest"), "{diff}");
    sync::execute(&cluster, &plan, &objects, &live, &options())
        .await
        .unwrap();
    let restored = server.find("StatefulSet", "alerts-function").unwrap();
    assert_eq!(
        restored["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/iot/alerts:2.0.1"
    );
}

#[tokio::test]
async fn removing_a_function_prunes_exactly_its_objects() {
    let (server, cluster) = fresh().await;
    apply(&cluster, &desired(&staging())).await;
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(staging()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "notifier.yaml" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let without = desired(dir.path());
    let (plan, report) = apply(&cluster, &without).await;
    let mut deleted: Vec<String> = report
        .deleted
        .iter()
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "Function/notifier",
            "Service/notifier-function-headless",
            "StatefulSet/notifier-function"
        ]
    );
    assert_eq!(plan.count(Action::Delete), 3);
    assert!(server.find("StatefulSet", "notifier-function").is_none());
    assert!(server.find("StatefulSet", "alerts-function").is_some());
    let inventory = server
        .find("ConfigMap", "meshops-inventory-staging")
        .unwrap();
    assert!(!inventory["data"]["objects"]
        .as_str()
        .unwrap()
        .contains("notifier"));
}

#[tokio::test]
async fn a_refused_delete_stays_in_the_inventory() {
    let (server, cluster) = fresh().await;
    apply(&cluster, &desired(&staging())).await;
    server
        .0
        .lock()
        .unwrap()
        .refuse_delete
        .insert("notifier".into());
    let remaining: Vec<Object> = desired(&staging())
        .into_iter()
        .filter(|o| o.name() != "notifier")
        .collect();
    let (_, report) = apply(&cluster, &remaining).await;
    assert_eq!(report.failed_deletes.len(), 1);
    assert!(report.failed_deletes[0].1.contains("deletion refused"));
    let inventory = server
        .find("ConfigMap", "meshops-inventory-staging")
        .unwrap();
    assert!(inventory["data"]["objects"]
        .as_str()
        .unwrap()
        .contains("\"name\":\"notifier\""));
}

#[tokio::test]
async fn a_prune_leaves_an_object_created_anew_since_the_plan_alone() {
    let (server, cluster) = fresh().await;
    apply(&cluster, &desired(&staging())).await;
    let remaining: Vec<Object> = desired(&staging())
        .into_iter()
        .filter(|o| !o.name().starts_with("notifier"))
        .collect();
    let (live, plan) = plan_against(&cluster, &remaining).await;
    assert_eq!(plan.count(Action::Delete), 3);
    // Between plan and prune someone deletes the Function and creates one of the same name.
    for object in server.0.lock().unwrap().objects.values_mut() {
        if object["kind"] == "Function" && object["metadata"]["name"] == "notifier" {
            object["metadata"]["uid"] = json!("uid-someone-else");
        }
    }
    let report = sync::execute(&cluster, &plan, &remaining, &live, &options())
        .await
        .unwrap();
    let function = server.find("Function", "notifier").expect("not deleted");
    assert_eq!(function["metadata"]["uid"], "uid-someone-else");
    assert!(server.find("StatefulSet", "notifier-function").is_none());
    assert!(report.failed_deletes.is_empty());
    // The object meshops planned to delete is gone; the new one is not meshops's.
    let inventory = server
        .find("ConfigMap", "meshops-inventory-staging")
        .unwrap();
    assert!(!inventory["data"]["objects"]
        .as_str()
        .unwrap()
        .contains("\"name\":\"notifier\""));
}

#[tokio::test]
async fn an_immutable_change_recreates_the_statefulset() {
    let (server, cluster) = fresh().await;
    let mut objects = desired(&staging());
    apply(&cluster, &objects).await;
    let before = server.find("StatefulSet", "alerts-function").unwrap()["metadata"]["uid"].clone();
    let sts = objects
        .iter_mut()
        .find(|o| o.kind() == "StatefulSet" && o.name() == "alerts-function")
        .unwrap();
    sts.value["spec"]["serviceName"] = json!("alerts-function-other");
    sts.value["metadata"]["annotations"]["meshops.io/spec-hash"] = json!("changed");
    let (plan, _) = apply(&cluster, &objects).await;
    let change = plan
        .changes
        .iter()
        .find(|c| c.object.name == "alerts-function" && c.object.kind == "StatefulSet")
        .unwrap();
    assert_eq!(change.action, Action::Recreate);
    assert!(change.reason.contains("/spec/serviceName"));
    let after = server.find("StatefulSet", "alerts-function").unwrap();
    assert_ne!(after["metadata"]["uid"], before, "deleted and created anew");
    assert_eq!(after["spec"]["serviceName"], "alerts-function-other");
}

#[tokio::test]
async fn a_missing_crd_and_a_missing_namespace_are_named() {
    let server = FakeApiServer::new(&["default", "staging"], false);
    let cluster = server.cluster().await;
    let error = sync::fetch(&cluster, &desired(&staging()), &options())
        .await
        .unwrap_err();
    match &error {
        SyncError::Cluster(ClusterError::CrdMissing {
            kind, api_version, ..
        }) => {
            assert_eq!(api_version, "compute.functionmesh.io/v1alpha1");
            assert!(["Function", "BackendConfig", "Source", "Sink"].contains(&kind.as_str()));
        }
        other => panic!("{other}"),
    }
    assert!(error
        .to_string()
        .contains("CustomResourceDefinition is not installed"));

    let server = FakeApiServer::new(&["default"], true);
    let cluster = server.cluster().await;
    let objects = desired(&staging());
    let error = sync::fetch(&cluster, &objects, &options())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("namespace \"staging\" does not exist"),
        "{error}"
    );
    assert_eq!(cluster.requests().writes(), 0, "found before any write");
}

#[tokio::test]
async fn refuses_to_prune_everything_when_the_repository_is_empty() {
    let (_server, cluster) = fresh().await;
    apply(&cluster, &desired(&staging())).await;
    let (live, plan) = plan_against(&cluster, &[]).await;
    let error = sync::execute(&cluster, &plan, &[], &live, &options())
        .await
        .unwrap_err();
    assert!(matches!(error, SyncError::EmptyDesired { .. }), "{error}");
}

#[tokio::test]
async fn status_is_written_on_the_crs_meshops_runs() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    let (plan, _) = apply(&cluster, &objects).await;
    let written = sync::write_status(
        &cluster,
        &objects,
        &plan,
        "abc123",
        "2026-11-21T00:00:00Z",
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        written, 6,
        "alerts, anomaly-scorer, notifier and the three mesh children"
    );
    let function = server.find("Function", "alerts").unwrap();
    let status = &function["status"];
    assert_eq!(status["revision"], "abc123");
    assert_eq!(status["conditions"][0]["type"], "Synced");
    assert_eq!(status["conditions"][1]["type"], "Ready");
    assert!(status["selector"]
        .as_str()
        .unwrap()
        .contains("compute.functionmesh.io/name=alerts"));
}

#[tokio::test]
async fn an_object_without_meshops_labels_is_adopted() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    let config_map = objects
        .iter()
        .find(|o| o.kind() == "ConfigMap")
        .unwrap()
        .clone();
    let mut by_hand = config_map.value.clone();
    by_hand["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    cluster.apply(&by_hand, false).await.unwrap();
    let (live, plan) = plan_against(&cluster, &objects).await;
    let change = plan
        .changes
        .iter()
        .find(|c| c.object.name == config_map.name() && c.object.kind == "ConfigMap")
        .unwrap();
    assert_eq!(change.action, Action::Adopt, "{}", change.reason);
    assert!(plan.summary().contains("1 to adopt"), "{}", plan.summary());
    sync::execute(&cluster, &plan, &objects, &live, &options())
        .await
        .unwrap();
    let adopted = server.find("ConfigMap", config_map.name()).unwrap();
    assert_eq!(
        adopted["metadata"]["labels"]["meshops.io/source"],
        "staging"
    );
    let (_, again) = plan_against(&cluster, &objects).await;
    assert!(!again.has_changes(), "{}", again.summary());
}

#[tokio::test]
async fn an_object_of_another_source_is_a_conflict_and_nothing_is_applied() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    let mut theirs = objects
        .iter()
        .find(|o| o.kind() == "Function" && o.name() == "alerts")
        .unwrap()
        .value
        .clone();
    theirs["metadata"]["labels"]["meshops.io/source"] = json!("other");
    cluster.apply(&theirs, false).await.unwrap();
    let writes = cluster.requests().writes();
    let (live, plan) = plan_against(&cluster, &objects).await;
    let change = plan
        .changes
        .iter()
        .find(|c| c.object.name == "alerts" && c.object.kind == "Function")
        .unwrap();
    assert_eq!(change.action, Action::Conflict);
    assert!(change.reason.contains("\"other\""), "{}", change.reason);
    let error = sync::execute(&cluster, &plan, &objects, &live, &options())
        .await
        .unwrap_err();
    assert!(matches!(error, SyncError::Conflict { .. }), "{error}");
    assert!(error.to_string().contains("--take-over"), "{error}");
    assert_eq!(cluster.requests().writes(), writes, "nothing applied");
    assert!(server.find("StatefulSet", "alerts-function").is_none());

    let take_over = SyncOptions {
        take_over: true,
        ..options()
    };
    sync::execute(&cluster, &plan, &objects, &live, &take_over)
        .await
        .unwrap();
    let taken = server.find("Function", "alerts").unwrap();
    assert_eq!(taken["metadata"]["labels"]["meshops.io/source"], "staging");
}

#[tokio::test]
async fn without_the_rbac_to_write_nothing_is_applied() {
    let (server, cluster) = fresh().await;
    server
        .0
        .lock()
        .unwrap()
        .denied
        .insert("patch statefulsets".into());
    let objects = desired(&staging());
    let (live, plan) = plan_against(&cluster, &objects).await;
    let error = sync::execute(&cluster, &plan, &objects, &live, &options())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("does not allow patch StatefulSet (apps/v1) in namespace \"staging\""),
        "{error}"
    );
    assert_eq!(cluster.requests().writes(), 0);
}

/// Stops after the first object it sees applied: the agent's shutdown arriving mid-apply.
struct StopAfterFirst(std::sync::atomic::AtomicBool);

impl sync::Progress for StopAfterFirst {
    fn done(&self, _: &plan::ObjectRef, _: Action) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_shutdown_stops_between_apply_phases() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    let (live, plan) = plan_against(&cluster, &objects).await;
    let first_phase = objects.iter().map(|o| o.phase).min().unwrap();
    let in_first_phase = objects.iter().filter(|o| o.phase == first_phase).count();
    let stop = StopAfterFirst(Default::default());
    let error = sync::execute_with(&cluster, &plan, &objects, &live, &options(), &stop)
        .await
        .unwrap_err();
    assert!(matches!(error, sync::SyncError::Stopped), "{error}");
    // The first phase ran whole; nothing after it but the inventory, written before it and
    // still saying the pass is unfinished.
    let stored = server.0.lock().unwrap().objects.len();
    assert_eq!(stored, in_first_phase + 1);
    assert!(objects.iter().any(|o| o.phase > first_phase));
    let inventory = server
        .find("ConfigMap", "meshops-inventory-staging")
        .unwrap();
    assert_eq!(inventory["data"]["pending"], "test");
    assert!(inventory["data"].get("revision").is_none());
}

const INVENTORY: &str = "configmaps/meshops-inventory-staging";

/// Inventory entries as stored: (kind/name, fingerprint).
fn stored_inventory(server: &FakeApiServer) -> (Value, Vec<(String, Option<String>)>) {
    let config_map = server
        .find("ConfigMap", "meshops-inventory-staging")
        .unwrap();
    let entries: Vec<Value> =
        serde_json::from_str(config_map["data"]["objects"].as_str().unwrap()).unwrap();
    let entries = entries
        .iter()
        .map(|e| {
            (
                format!(
                    "{}/{}",
                    e["kind"].as_str().unwrap(),
                    e["name"].as_str().unwrap()
                ),
                e["fingerprint"].as_str().map(str::to_owned),
            )
        })
        .collect();
    (config_map["data"].clone(), entries)
}

fn kind_and_name(objects: &[Object]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect()
}

#[tokio::test]
async fn the_inventory_is_marked_pending_before_the_first_write_and_settled_after_the_last() {
    let (server, cluster) = fresh().await;
    let mut objects = desired(&staging());
    apply(&cluster, &objects).await;
    let writes = std::mem::take(&mut server.0.lock().unwrap().writes);
    assert_eq!(
        writes.first().unwrap(),
        &format!("POST {INVENTORY}"),
        "{writes:?}"
    );
    assert_eq!(
        writes.last().unwrap(),
        &format!("PATCH {INVENTORY}"),
        "{writes:?}"
    );
    assert_eq!(writes.len(), objects.len() + 2, "{writes:?}");
    let (data, entries) = stored_inventory(&server);
    assert_eq!(data["revision"], "test");
    assert!(data.get("pending").is_none(), "{data}");
    assert_eq!(entries.len(), objects.len());
    assert!(entries.iter().all(|(_, f)| f.is_some()), "{entries:?}");

    // An update: pending, the one object, settled — each conditional on the last.
    let sts = objects
        .iter_mut()
        .find(|o| o.kind() == "StatefulSet" && o.name() == "alerts-function")
        .unwrap();
    sts.value["spec"]["template"]["metadata"]["annotations"]["x"] = json!("y");
    sts.value["metadata"]["annotations"]["meshops.io/spec-hash"] = json!("changed");
    let next = SyncOptions {
        revision: "next".into(),
        ..options()
    };
    let live = sync::fetch(&cluster, &objects, &next).await.unwrap();
    let plan = plan::plan(&objects, &live.objects, &live.inventory);
    sync::execute(&cluster, &plan, &objects, &live, &next)
        .await
        .unwrap();
    let writes = std::mem::take(&mut server.0.lock().unwrap().writes);
    assert_eq!(
        writes,
        [
            format!("PATCH {INVENTORY}"),
            "PATCH statefulsets/alerts-function".to_owned(),
            format!("PATCH {INVENTORY}")
        ]
    );
    let (data, entries) = stored_inventory(&server);
    assert_eq!(data["revision"], "next");
    assert!(data.get("pending").is_none(), "{data}");
    assert!(entries.iter().all(|(_, f)| f.is_some()), "{entries:?}");
}

#[tokio::test]
async fn a_pass_that_changes_nothing_writes_nothing_not_even_the_inventory() {
    let (server, first) = fresh().await;
    let objects = desired(&staging());
    apply(&first, &objects).await;
    server.0.lock().unwrap().writes.clear();
    let cluster = server.cluster().await;
    let (live, plan) = plan_against(&cluster, &objects).await;
    assert!(!plan.has_changes());
    assert_eq!(live.pending, None);
    sync::execute(&cluster, &plan, &objects, &live, &options())
        .await
        .unwrap();
    assert_eq!(cluster.requests().writes(), 0);
    assert!(server.0.lock().unwrap().writes.is_empty());

    // A new revision that renders the same: only the revision is recorded, nothing pending.
    let next = SyncOptions {
        revision: "next".into(),
        ..options()
    };
    let live = sync::fetch(&cluster, &objects, &next).await.unwrap();
    sync::execute(&cluster, &plan, &objects, &live, &next)
        .await
        .unwrap();
    assert_eq!(
        server.0.lock().unwrap().writes,
        [format!("PATCH {INVENTORY}")]
    );
    assert_eq!(stored_inventory(&server).0["revision"], "next");
}

/// Another writer's pending union, as it would land in the inventory meanwhile.
fn theirs(state: &mut support::State) {
    state.rewrite("ConfigMap", "meshops-inventory-staging", |config_map| {
        let mut entries: Vec<Value> =
            serde_json::from_str(config_map["data"]["objects"].as_str().unwrap()).unwrap();
        entries.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "staging", "name": "theirs"}));
        config_map["data"]["objects"] = json!(serde_json::to_string(&entries).unwrap());
        config_map["data"]["pending"] = json!("their-revision");
    });
}

fn without_notifier() -> Vec<Object> {
    desired(&staging())
        .into_iter()
        .filter(|o| !o.name().starts_with("notifier"))
        .collect()
}

#[tokio::test]
async fn a_conflict_on_the_pending_write_reads_again_and_merges() {
    let (server, cluster) = fresh().await;
    apply(&cluster, &desired(&staging())).await;
    let remaining = without_notifier();
    let (live, plan) = plan_against(&cluster, &remaining).await;
    {
        let mut state = server.0.lock().unwrap();
        state.writes.clear();
        state.interfere = Some(("meshops-inventory-staging".into(), Box::new(theirs)));
    }
    let report = sync::execute(&cluster, &plan, &remaining, &live, &options())
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 3);
    let writes = server.0.lock().unwrap().writes.clone();
    let inventory_writes: Vec<usize> = writes
        .iter()
        .enumerate()
        .filter(|(_, w)| w.ends_with(INVENTORY))
        .map(|(i, _)| i)
        .collect();
    // Refused (409), written again after a read, then settled after the deletes.
    assert_eq!(inventory_writes, [0, 1, writes.len() - 1], "{writes:?}");
    let (data, entries) = stored_inventory(&server);
    let names: BTreeSet<String> = entries.into_iter().map(|(n, _)| n).collect();
    let mut expected = kind_and_name(&remaining);
    // What the other writer listed stays: only that writer may drop it.
    expected.insert("ConfigMap/theirs".into());
    assert_eq!(names, expected);
    assert_eq!(data["revision"], "test");
    // Our pending marker replaced theirs, and our completed pass cleared it.
    assert!(data.get("pending").is_none(), "{data}");
}

/// Lets another writer in once the first object is applied: after the pending write.
struct InterfereAfterFirst(FakeApiServer, std::sync::atomic::AtomicBool);

impl sync::Progress for InterfereAfterFirst {
    fn done(&self, _: &plan::ObjectRef, _: Action) {
        if !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.0 .0.lock().unwrap().interfere =
                Some(("meshops-inventory-staging".into(), Box::new(theirs)));
        }
    }
}

#[tokio::test]
async fn a_conflict_on_the_final_write_keeps_what_the_other_writer_added() {
    let (server, cluster) = fresh().await;
    apply(&cluster, &desired(&staging())).await;
    let mut remaining = without_notifier();
    let sts = remaining
        .iter_mut()
        .find(|o| o.kind() == "StatefulSet")
        .unwrap();
    sts.value["metadata"]["annotations"]["meshops.io/spec-hash"] = json!("changed");
    let (live, plan) = plan_against(&cluster, &remaining).await;
    server.0.lock().unwrap().writes.clear();
    let progress = InterfereAfterFirst(server.clone(), Default::default());
    sync::execute_with(&cluster, &plan, &remaining, &live, &options(), &progress)
        .await
        .unwrap();
    let writes = server.0.lock().unwrap().writes.clone();
    let inventory_writes = writes.iter().filter(|w| w.ends_with(INVENTORY)).count();
    assert_eq!(inventory_writes, 3, "pending, refused, settled: {writes:?}");
    let (data, entries) = stored_inventory(&server);
    let names: BTreeSet<String> = entries.iter().map(|(n, _)| n.clone()).collect();
    let mut expected = kind_and_name(&remaining);
    expected.insert("ConfigMap/theirs".into());
    assert_eq!(names, expected, "notifier's objects pruned and dropped");
    assert!(
        entries
            .iter()
            .filter(|(n, _)| n != "ConfigMap/theirs")
            .all(|(_, f)| f.is_some()),
        "{entries:?}"
    );
    assert_eq!(data["revision"], "test");
    // The other pass is unfinished as far as anyone knows: its marker stays.
    assert_eq!(data["pending"], "their-revision");
}

#[tokio::test]
async fn a_create_that_lost_the_race_reads_the_winner_and_merges() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    let (live, plan) = plan_against(&cluster, &objects).await;
    assert_eq!(live.inventory_version, None);
    let winner = |state: &mut support::State| {
        let record = meshops::cluster::inventory::Recorded {
            entries: vec![meshops::plan::InventoryEntry {
                object: plan::ObjectRef {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: "staging".into(),
                    name: "theirs".into(),
                },
                fingerprint: None,
            }],
            pending: Some("their-revision".into()),
            ..Default::default()
        };
        state.put(meshops::cluster::inventory::config_map("default", "staging", &record).unwrap());
    };
    server.0.lock().unwrap().interfere =
        Some(("meshops-inventory-staging".into(), Box::new(winner)));
    sync::execute(&cluster, &plan, &objects, &live, &options())
        .await
        .unwrap();
    let writes = server.0.lock().unwrap().writes.clone();
    assert_eq!(writes[0], format!("POST {INVENTORY}"));
    assert_eq!(writes[1], format!("PATCH {INVENTORY}"), "{writes:?}");
    let (_, entries) = stored_inventory(&server);
    let names: BTreeSet<String> = entries.into_iter().map(|(n, _)| n).collect();
    let mut expected = kind_and_name(&objects);
    expected.insert("ConfigMap/theirs".into());
    assert_eq!(names, expected);
}

/// Another writer that writes the inventory before every one of our writes.
fn always(state: &mut support::State) {
    theirs(state);
    state.interfere = Some(("meshops-inventory-staging".into(), Box::new(always)));
}

#[tokio::test]
async fn an_inventory_that_keeps_changing_stops_the_pass_before_any_object_is_written() {
    let (server, cluster) = fresh().await;
    apply(&cluster, &desired(&staging())).await;
    let remaining = without_notifier();
    let (live, plan) = plan_against(&cluster, &remaining).await;
    {
        let mut state = server.0.lock().unwrap();
        state.writes.clear();
        state.interfere = Some(("meshops-inventory-staging".into(), Box::new(always)));
    }
    let error = sync::execute(&cluster, &plan, &remaining, &live, &options())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("default/meshops-inventory-staging changed under each of 5 writes"),
        "{error}"
    );
    assert_eq!(ReconcileError::from(error).category(), "conflict");
    let writes = server.0.lock().unwrap().writes.clone();
    assert_eq!(writes, vec![format!("PATCH {INVENTORY}"); 5]);
    assert!(
        server.find("Function", "notifier").is_some(),
        "nothing pruned"
    );
}

#[tokio::test]
async fn an_unreadable_inventory_is_an_error_and_nothing_is_written() {
    for (data, problem) in [
        (
            json!({"objects": "[{\"kind\": ", "revision": "r"}),
            "data.objects is not a JSON list",
        ),
        (json!({"revision": "r"}), "data.objects is missing"),
    ] {
        let (server, cluster) = fresh().await;
        server.0.lock().unwrap().put(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "meshops-inventory-staging", "namespace": "default",
                         "labels": {"app.kubernetes.io/managed-by": "meshops", "meshops.io/source": "staging"}},
            "data": data,
        }));
        let objects = desired(&staging());
        let error = sync::fetch(&cluster, &objects, &options())
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, SyncError::Inventory(_)), "{text}");
        assert!(
            text.contains("inventory ConfigMap default/meshops-inventory-staging is unreadable"),
            "{text}"
        );
        assert!(text.contains(problem), "{text}");
        assert_eq!(ReconcileError::from(error).category(), "inventory");
        assert_eq!(cluster.requests().writes(), 0);
        assert!(server.0.lock().unwrap().writes.is_empty());
    }
}

/// Labelled objects of the source in the double, as kind/name.
fn labelled(server: &FakeApiServer) -> BTreeSet<String> {
    server
        .0
        .lock()
        .unwrap()
        .objects
        .values()
        .filter(|o| o["metadata"]["labels"]["meshops.io/source"] == "staging")
        .filter(|o| o["metadata"]["name"] != "meshops-inventory-staging")
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn a_pass_killed_after_its_first_phase_leaves_nothing_orphaned() {
    let (server, cluster) = fresh().await;
    let objects = desired(&staging());
    let killed = SyncOptions {
        revision: "killed".into(),
        ..options()
    };
    let live = sync::fetch(&cluster, &objects, &killed).await.unwrap();
    let plan = plan::plan(&objects, &live.objects, &live.inventory);
    let stop = StopAfterFirst(Default::default());
    let error = sync::execute_with(&cluster, &plan, &objects, &live, &killed, &stop)
        .await
        .unwrap_err();
    assert!(matches!(error, SyncError::Stopped), "{error}");
    let first_phase = objects.iter().map(|o| o.phase).min().unwrap();
    let (written, later): (Vec<Object>, Vec<Object>) =
        objects.into_iter().partition(|o| o.phase == first_phase);
    assert_eq!(labelled(&server), kind_and_name(&written));

    // The restart sees an unfinished pass, not a cluster at "killed".
    let live = sync::fetch(&cluster, &later, &options()).await.unwrap();
    assert_eq!(live.pending.as_deref(), Some("killed"));
    assert_eq!(live.revision, None);

    // Git dropped what the killed pass wrote, and the notifier it never got to.
    let remaining: Vec<Object> = later
        .into_iter()
        .filter(|o| !o.name().starts_with("notifier"))
        .collect();
    let (plan, report) = apply(&cluster, &remaining).await;
    assert!(
        report.failed_deletes.is_empty(),
        "{:?}",
        report.failed_deletes
    );
    let deleted: BTreeSet<String> = report
        .deleted
        .iter()
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect();
    assert_eq!(deleted, kind_and_name(&written));
    assert_eq!(plan.count(Action::Delete), written.len());
    // Nothing orphaned: the source's objects are exactly what Git has, and so is the inventory.
    assert_eq!(labelled(&server), kind_and_name(&remaining));
    let (data, entries) = stored_inventory(&server);
    let listed: BTreeSet<String> = entries.into_iter().map(|(n, _)| n).collect();
    assert_eq!(listed, kind_and_name(&remaining));
    assert_eq!(data["revision"], "test");
    assert!(data.get("pending").is_none(), "{data}");
}

#[tokio::test]
async fn the_pass_after_an_interrupted_update_completes_it_without_spurious_changes() {
    let (server, cluster) = fresh().await;
    let mut objects = desired(&staging());
    apply(&cluster, &objects).await;
    let first_phase = objects.iter().map(|o| o.phase).min().unwrap();
    // One change in the first phase, one in a later one.
    let early = objects
        .iter_mut()
        .find(|o| o.phase == first_phase && o.kind() == "ConfigMap")
        .unwrap();
    early.value["data"]["added"] = json!("1");
    early.value["metadata"]["annotations"]["meshops.io/spec-hash"] = json!("changed");
    let early_name = format!("ConfigMap/{}", early.name());
    let late = objects
        .iter_mut()
        .find(|o| o.kind() == "StatefulSet")
        .unwrap();
    late.value["spec"]["template"]["metadata"]["annotations"]["x"] = json!("y");
    late.value["metadata"]["annotations"]["meshops.io/spec-hash"] = json!("changed");
    let late_name = format!("StatefulSet/{}", late.name());
    let v2 = SyncOptions {
        revision: "v2".into(),
        ..options()
    };
    let live = sync::fetch(&cluster, &objects, &v2).await.unwrap();
    let plan = plan::plan(&objects, &live.objects, &live.inventory);
    let stop = StopAfterFirst(Default::default());
    let error = sync::execute_with(&cluster, &plan, &objects, &live, &v2, &stop)
        .await
        .unwrap_err();
    assert!(matches!(error, SyncError::Stopped), "{error}");
    let (data, entries) = stored_inventory(&server);
    assert_eq!(data["pending"], "v2");
    assert_eq!(data["revision"], "test", "the last completed pass");
    let fingerprint = |name: &str| entries.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(fingerprint(&early_name), None, "rewritten: forgotten");
    assert_eq!(fingerprint(&late_name), None);

    // The next pass: the early object is in sync (not "changed in the cluster"), the late
    // one still to update.
    let live = sync::fetch(&cluster, &objects, &v2).await.unwrap();
    assert_eq!(live.pending.as_deref(), Some("v2"));
    let plan = plan::plan(&objects, &live.objects, &live.inventory);
    let changed: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .map(|c| format!("{:?} {}/{}", c.action, c.object.kind, c.object.name))
        .collect();
    assert_eq!(changed, [format!("Update {late_name}")]);
    sync::execute(&cluster, &plan, &objects, &live, &v2)
        .await
        .unwrap();
    let (data, entries) = stored_inventory(&server);
    assert_eq!(data["revision"], "v2");
    assert!(data.get("pending").is_none(), "{data}");
    assert!(entries.iter().all(|(_, f)| f.is_some()), "{entries:?}");
    let live = sync::fetch(&cluster, &objects, &v2).await.unwrap();
    let plan = plan::plan(&objects, &live.objects, &live.inventory);
    assert!(!plan.has_changes(), "{}", plan.summary());
}
