//! End-to-end against a real cluster: runs when MESHOPS_E2E_KUBECONFIG names a kubeconfig,
//! prints "skipped: no cluster" otherwise. Works on a bare kube-apiserver (no controllers, no
//! nodes) as on kind/k3d: nothing here waits for a controller.
//!
//! Covers: CRDs from `meshops crds`; fresh apply of examples/staging (in a namespace of its
//! own); a re-apply that is a no-op with zero writes; a foreign edit seen as drift and
//! restored; HPA-owned replicas never touched; removing a function prunes exactly its objects;
//! an immutable change recreates; a missing CRD gives the clear error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};
use meshops::cluster::sync::{self, SyncOptions};
use meshops::cluster::{Cluster, ClusterError};
use meshops::load::{LoadOptions, Tree};
use meshops::model::crd::{crd, CRD_KINDS};
use meshops::plan::{self, Action, ObjectRef};
use meshops::render::{render, settings_of, Object};
use meshops::validate::{validate, Schemas, ValidateOptions};
use serde_json::json;

/// examples/staging moved into `namespace`, rendered.
fn desired(namespace: &str, without: Option<&str>) -> Vec<Object> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/staging");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if Some(name.as_str()) == without {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("namespace: staging", &format!("namespace: {namespace}"));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    render_dir(dir.path())
}

fn render_dir(path: &Path) -> Vec<Object> {
    let tree = Tree::load(path, &LoadOptions::default());
    let validation = validate(&tree, &Schemas::new().unwrap(), ValidateOptions::default());
    assert!(validation.is_valid(), "{:#?}", validation.diagnostics);
    render(
        &validation.checked,
        &settings_of(&validation.checked),
        "e2e",
    )
    .unwrap()
}

fn options(namespace: &str) -> SyncOptions {
    SyncOptions {
        source: "e2e".into(),
        inventory_namespace: namespace.into(),
        prune: true,
        allow_empty: false,
        revision: "e2e".into(),
    }
}

async fn apply(cluster: &Cluster, desired: &[Object], namespace: &str) -> plan::Plan {
    let live = sync::fetch(cluster, desired, &options(namespace))
        .await
        .unwrap();
    let plan = plan::plan(desired, &live.objects, &live.inventory);
    sync::execute(cluster, &plan, desired, &live, &options(namespace))
        .await
        .unwrap();
    plan
}

#[tokio::test]
async fn e2e_against_a_real_api_server() {
    let Some(kubeconfig) = std::env::var_os("MESHOPS_E2E_KUBECONFIG") else {
        eprintln!(
            "skipped: no cluster (set MESHOPS_E2E_KUBECONFIG to a kubeconfig to run the e2e suite)"
        );
        return;
    };
    let cluster = Cluster::connect(Some(Path::new(&kubeconfig)), None)
        .await
        .unwrap();
    let namespace = format!("meshops-e2e-{}", std::process::id());

    // A kind whose CRD is not installed gives the clear error (skipped where VPA exists).
    match cluster
        .resource("autoscaling.k8s.io/v1", "VerticalPodAutoscaler")
        .await
    {
        Err(ClusterError::CrdMissing { kind, .. }) => assert_eq!(kind, "VerticalPodAutoscaler"),
        Ok(_) => eprintln!("note: VPA is installed here; the missing-CRD check was skipped"),
        Err(other) => panic!("{other}"),
    }

    for (kind, plural) in CRD_KINDS {
        cluster.apply(&crd(kind, plural), false).await.unwrap();
    }
    for _ in 0..60 {
        if cluster
            .resource("compute.functionmesh.io/v1alpha1", "BackendConfig")
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster
        .apply(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            false,
        )
        .await
        .unwrap();

    // Fresh apply.
    let objects = desired(&namespace, None);
    let first = apply(&cluster, &objects, &namespace).await;
    assert_eq!(first.count(Action::Create), objects.len());

    // Re-apply: no changes, zero writes.
    let before = cluster.requests().writes();
    let live = sync::fetch(&cluster, &objects, &options(&namespace))
        .await
        .unwrap();
    let again = plan::plan(&objects, &live.objects, &live.inventory);
    assert!(
        !again.has_changes(),
        "{:?}",
        again
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .collect::<Vec<_>>()
    );
    assert_eq!(cluster.requests().writes(), before);

    // A foreign edit is drift; apply restores it.
    let statefulsets: Api<StatefulSet> = Api::namespaced(cluster.client().clone(), &namespace);
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "pulsar-function", "image": "evil:latest"}]}}}});
    statefulsets
        .patch(
            "alerts-function",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Strategic(&edit),
        )
        .await
        .unwrap();
    let live = sync::fetch(&cluster, &objects, &options(&namespace))
        .await
        .unwrap();
    let drift = plan::plan(&objects, &live.objects, &live.inventory);
    let change = drift
        .changes
        .iter()
        .find(|c| c.object.name == "alerts-function" && c.object.kind == "StatefulSet")
        .unwrap();
    assert_eq!(change.action, Action::Update, "{}", change.reason);
    sync::execute(&cluster, &drift, &objects, &live, &options(&namespace))
        .await
        .unwrap();
    let restored = statefulsets.get("alerts-function").await.unwrap();
    assert_eq!(
        restored.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("registry.example.com/iot/alerts:2.0.1")
    );

    // HPA-owned replicas are never touched.
    let scale = json!({"spec": {"replicas": 3}});
    statefulsets
        .patch_scale(
            "alerts-function",
            &PatchParams {
                field_manager: Some("kube-controller-manager".into()),
                ..Default::default()
            },
            &Patch::Merge(&scale),
        )
        .await
        .unwrap();
    apply(&cluster, &objects, &namespace).await;
    assert_eq!(
        statefulsets
            .get("alerts-function")
            .await
            .unwrap()
            .spec
            .replicas,
        Some(3)
    );

    // Removing a function prunes exactly its objects.
    let without = desired(&namespace, Some("notifier.yaml"));
    let pruned = apply(&cluster, &without, &namespace).await;
    let mut deleted: Vec<String> = pruned
        .changes
        .iter()
        .filter(|c| c.action == Action::Delete)
        .map(|c| format!("{}/{}", c.object.kind, c.object.name))
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
    let gone = ObjectRef {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        namespace: namespace.clone(),
        name: "notifier-function".into(),
    };
    let still = cluster.get(&gone).await.unwrap();
    assert!(still.is_none() || still.unwrap()["metadata"]["deletionTimestamp"].is_string());

    // An immutable change recreates.
    let mut changed = without.clone();
    let sts = changed
        .iter_mut()
        .find(|o| o.kind() == "StatefulSet" && o.name() == "alerts-function")
        .unwrap();
    sts.value["spec"]["serviceName"] = json!("alerts-function-renamed");
    sts.value["metadata"]["annotations"]["meshops.io/spec-hash"] = json!("changed");
    let recreate = apply(&cluster, &changed, &namespace).await;
    assert!(recreate
        .changes
        .iter()
        .any(|c| c.action == Action::Recreate && c.object.name == "alerts-function"));

    let namespace_ref = ObjectRef {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: String::new(),
        name: namespace,
    };
    cluster.delete(&namespace_ref, false).await.unwrap();
}
