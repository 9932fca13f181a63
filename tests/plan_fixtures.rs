//! The plan against real kube-apiserver answers (tests/data/kube-apiserver, recorded from
//! Kubernetes v1.36.2): no-op re-applies are unchanged without a dry-run, a foreign edit and
//! a label removal are drift, and a dry-run diff shows only what really changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshops::plan::{diff, fingerprint, plan, Action, InventoryEntry, ObjectRef};
use meshops::render::Object;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kube-apiserver")
        .join(format!("{name}.response.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_managed_fields_fingerprint_sees_foreign_edits_and_nothing_else() {
    let created = fingerprint(&fixture("04-ssa-statefulset-create")).unwrap();
    assert_eq!(
        fingerprint(&fixture("05-ssa-statefulset-reapply-noop")).unwrap(),
        created,
        "a no-op apply"
    );
    assert_ne!(
        fingerprint(&fixture("09-get-statefulset-after-foreign-edit")).unwrap(),
        created,
        "kubectl edit took f:image"
    );
    assert_eq!(
        fingerprint(&fixture("11-ssa-statefulset-force-takes-back")).unwrap(),
        created,
        "force took it back"
    );
    assert_ne!(
        fingerprint(&fixture("16-foreign-label-removal")).unwrap(),
        created,
        "a label of ours was removed"
    );
}

fn desired_from(live: &Value) -> Vec<Object> {
    let mut value = live.clone();
    value["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    vec![Object { phase: 3, value }]
}

#[test]
fn drift_is_found_without_a_dry_run() {
    let applied = fixture("05-ssa-statefulset-reapply-noop");
    let desired = desired_from(&applied);
    let reference = ObjectRef::of(&applied);
    let inventory = vec![InventoryEntry {
        object: reference.clone(),
        fingerprint: fingerprint(&applied),
    }];

    let in_sync = plan(
        &desired,
        &BTreeMap::from([(reference.clone(), applied.clone())]),
        &inventory,
    );
    assert_eq!(in_sync.changes[0].action, Action::Unchanged);
    assert_eq!(
        in_sync.summary(),
        "No changes. The cluster matches the repository."
    );

    let edited = fixture("09-get-statefulset-after-foreign-edit");
    let drifted = plan(
        &desired,
        &BTreeMap::from([(reference.clone(), edited)]),
        &inventory,
    );
    assert_eq!(drifted.changes[0].action, Action::Update);
    assert!(
        drifted.changes[0].reason.contains("kubectl-edit"),
        "{}",
        drifted.changes[0].reason
    );

    let relabelled = fixture("16-foreign-label-removal");
    let drifted = plan(
        &desired,
        &BTreeMap::from([(reference, relabelled)]),
        &inventory,
    );
    assert_eq!(drifted.changes[0].action, Action::Update);
}

#[test]
fn a_dry_run_diff_shows_only_the_real_change() {
    let live = fixture("05-ssa-statefulset-reapply-noop");
    let dry_run = fixture("06-ssa-statefulset-dryrun-image-change");
    let text = diff(Some(&live), Some(&dry_run));
    let changed: Vec<&str> = text
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(
        changed,
        [
            "-        image: streamnative/pulsar-functions-java-runner:3.2.2.1",
            "+        image: streamnative/pulsar-functions-java-runner:3.3.0.1",
        ],
        "{text}"
    );
}

#[test]
fn names_the_fields_a_foreign_writer_took() {
    let fields = meshops::plan::foreign_fields(&fixture("09-get-statefulset-after-foreign-edit"));
    assert_eq!(
        fields,
        ["spec.template.spec.containers[name=pulsar-function].image"]
    );
    assert!(meshops::plan::foreign_fields(&fixture("05-ssa-statefulset-reapply-noop")).is_empty());
}
