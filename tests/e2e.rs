//! End to end against a real kube-apiserver + etcd.
//!
//! The suite starts its own control plane (tests/support/control_plane.rs) from the envtest
//! binaries (`$KUBEBUILDER_ASSETS`, else `/usr/local/kubebuilder/bin`), or runs against the
//! cluster of `MESHOPS_E2E_KUBECONFIG`; with neither it prints one loud `skipped: no cluster`
//! line. An API server alone runs no controllers (no pods, no garbage collector, namespaces
//! never finish deleting), so nothing here waits for one: the rollout step expects the timeout.
//!
//! Each step drives the `meshops` binary the way a user does (or, where the step is about the
//! engine, the library) and asserts what the real server answered.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use meshops::cluster::sync::{self, SyncOptions};
use meshops::cluster::Cluster;
use meshops::load::{LoadOptions, Tree};
use meshops::model::settings::Mode;
use meshops::model::RenderSettings;
use meshops::plan::{self, Action, ObjectRef};
use meshops::render::{render, settings_of, Object};
use meshops::validate::{validate, Schemas, ValidateOptions};
use serde_json::{json, Value};
use support::control_plane::{self, ControlPlane};

/// The cluster under test: one the suite started, or one it was pointed at.
struct Target {
    kubeconfig: PathBuf,
    /// Prefix of every namespace the suite makes (empty on its own control plane).
    prefix: String,
    plane: Option<ControlPlane>,
}

async fn target() -> Option<Target> {
    if let Some(kubeconfig) = std::env::var_os("MESHOPS_E2E_KUBECONFIG") {
        return Some(Target {
            kubeconfig: PathBuf::from(kubeconfig),
            prefix: format!("e2e-{}-", std::process::id()),
            plane: None,
        });
    }
    let assets = control_plane::assets()?;
    let started = Instant::now();
    let plane = ControlPlane::start(&assets)
        .await
        .unwrap_or_else(|e| panic!("starting the control plane from {}: {e}", assets.display()));
    eprintln!(
        "e2e: kube-apiserver + etcd from {} ready at {} in {:.1}s",
        assets.display(),
        plane.server,
        started.elapsed().as_secs_f64()
    );
    Some(Target {
        kubeconfig: plane.kubeconfig.clone(),
        prefix: String::new(),
        plane: Some(plane),
    })
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    fn exits(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "{self}");
        self
    }

    fn prints(&self, text: &str) -> &Run {
        assert!(self.stdout.contains(text), "stdout lacks {text:?}: {self}");
        self
    }

    fn says(&self, text: &str) -> &Run {
        assert!(self.stderr.contains(text), "stderr lacks {text:?}: {self}");
        self
    }
}

/// `meshops ARGS --kubeconfig KUBECONFIG`.
fn meshops(kubeconfig: &Path, args: &[&str]) -> Run {
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    args.extend([std::ffi::OsStr::new("--kubeconfig"), kubeconfig.as_os_str()]);
    meshops_plain(&args)
}

fn meshops_plain<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(args)
        .env_remove("MESHOPS_LOG")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// examples/ copied with every namespace prefixed and the AuthorizationPolicy turned on, so
/// the Istio CRD judges what meshops renders for it.
fn write_examples(dir: &Path, prefix: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    for sub in ["", "staging", "prod"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("namespace: staging", &format!("namespace: {prefix}staging"))
                .replace("namespace: prod", &format!("namespace: {prefix}prod"))
                .replace(
                    "  authorizationPolicy:\n    enabled: false",
                    "  authorizationPolicy:\n    enabled: true",
                );
            std::fs::write(dir.join(sub).join(path.file_name().unwrap()), text).unwrap();
        }
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn render_dir(path: &Path, source: &str) -> Vec<Object> {
    let tree = Tree::load(path, &LoadOptions::default());
    let validation = validate(&tree, &Schemas::new(), ValidateOptions::default());
    assert!(validation.is_valid(), "{:#?}", validation.diagnostics);
    render(
        &validation.checked,
        &settings_of(&validation.checked),
        source,
    )
    .unwrap()
}

/// A Function CR as the server has it.
async fn function(cluster: &Cluster, namespace: &str, name: &str) -> Value {
    let object = reference(
        meshops::model::FUNCTION_MESH_API_VERSION,
        "Function",
        namespace,
        name,
    );
    cluster.get(&object).await.unwrap().unwrap()
}

/// The image of a StatefulSet's runner container.
async fn image_of(statefulsets: &Api<DynamicObject>, name: &str) -> Value {
    let live = statefulsets.get(name).await.unwrap();
    live.data["spec"]["template"]["spec"]["containers"][0]["image"].clone()
}

fn reference(api_version: &str, kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Where `live` lacks or differs from what `desired` sets: a structural CRD schema silently
/// prunes fields it does not declare, and this is how that shows.
fn missing(desired: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (key, value) in d {
                match l.get(key) {
                    Some(found) => missing(value, found, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}: lost")),
                }
            }
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            for (i, (a, b)) in d.iter().zip(l).enumerate() {
                missing(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (d, l) if d == l => {}
        // The API server writes numbers of int-or-string quantities as it likes.
        (d, l) if d.to_string().trim_matches('"') == l.to_string().trim_matches('"') => {}
        (d, l) => out.push(format!("{path}: {d} became {l}")),
    }
}

async fn assert_read_back(cluster: &Cluster, objects: &[Value]) -> usize {
    let mut lost = Vec::new();
    for object in objects {
        let reference = ObjectRef::of(object);
        let live = cluster
            .get(&reference)
            .await
            .unwrap()
            .unwrap_or(Value::Null);
        for field in ["spec", "data", "stringData", "metadata"] {
            if let Some(want) = object.get(field) {
                let mut want = want.clone();
                if field == "stringData" {
                    continue; // Becomes data; the Secret step checks values are never shown.
                }
                if field == "metadata" {
                    want = json!({"labels": want["labels"], "annotations": want["annotations"]});
                    want.as_object_mut().unwrap().retain(|_, v| !v.is_null());
                }
                missing(
                    &want,
                    &live[field],
                    &format!("{reference} {field}"),
                    &mut lost,
                );
            }
        }
    }
    assert!(
        lost.is_empty(),
        "fields lost on the real server:\n{}",
        lost.join("\n")
    );
    objects.len()
}

fn dynamic(cluster: &Cluster, gvk: (&str, &str, &str), namespace: &str) -> Api<DynamicObject> {
    let (group, version, kind) = gvk;
    let resource = kube::core::ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(cluster.client().clone(), namespace, &resource)
}

const STS: (&str, &str, &str) = ("apps", "v1", "StatefulSet");

/// Stops an apply after the first phase that applied something: a SIGKILL between phases.
struct KilledAfterFirstPhase(std::sync::atomic::AtomicBool);

impl sync::Progress for KilledAfterFirstPhase {
    fn done(&self, _: &ObjectRef, _: Action) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// DESIGN §4 against the real server: a pass of source "crash" killed after its first phase
/// (two ConfigMaps written, the Service not), the ConfigMaps then removed from the desired
/// state, and the inventory changed by another writer between the next pass's read and its
/// writes. That pass must see the interrupted one, have its conditional inventory writes
/// refused and merged, prune both ConfigMaps, and leave nothing of the source unlisted.
async fn crash_safe_inventory(cluster: &Cluster, kubeconfig: &Path, namespace: &str) {
    let options = |revision: &str| SyncOptions {
        source: "crash".into(),
        inventory_namespace: "default".into(),
        prune: true,
        allow_empty: false,
        revision: revision.into(),
        take_over: false,
    };
    let object = |kind: &str, name: &str| {
        let mut value = match kind {
            "ConfigMap" => json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": name}}),
            _ => json!({"apiVersion": "v1", "kind": "Service",
                        "spec": {"ports": [{"port": 80}], "selector": {"app": name}}}),
        };
        value["metadata"] = json!({
            "name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "meshops", "meshops.io/source": "crash"},
            "annotations": {"meshops.io/spec-hash": format!("{kind}-{name}")},
        });
        Object {
            phase: if kind == "ConfigMap" { 0 } else { 2 },
            value,
        }
    };
    let everything = vec![
        object("ConfigMap", "crash-a"),
        object("ConfigMap", "crash-b"),
        object("Service", "crash-svc"),
    ];
    let killed = options("killed");
    let live = sync::fetch(cluster, &everything, &killed).await.unwrap();
    let first = plan::plan(&everything, &live.objects, &live.inventory);
    let stop = KilledAfterFirstPhase(Default::default());
    let error = sync::execute_with(cluster, &first, &everything, &live, &killed, &stop)
        .await
        .unwrap_err();
    assert!(matches!(error, sync::SyncError::Stopped), "{error}");
    let config_map = |name: &str| reference("v1", "ConfigMap", namespace, name);
    let service = reference("v1", "Service", namespace, "crash-svc");
    for name in ["crash-a", "crash-b"] {
        assert!(cluster.get(&config_map(name)).await.unwrap().is_some());
    }
    assert!(cluster.get(&service).await.unwrap().is_none());

    // Git drops the ConfigMaps; the restarted pass sees the interrupted one.
    let remaining = vec![object("Service", "crash-svc")];
    let next = options("rev-2");
    let restarted = Cluster::connect(Some(kubeconfig), None).await.unwrap();
    let live = sync::fetch(&restarted, &remaining, &next).await.unwrap();
    assert_eq!(live.pending.as_deref(), Some("killed"));
    assert_eq!(
        live.revision, None,
        "the killed pass is not claimed applied"
    );
    assert_eq!(live.inventory.len(), 3, "{:?}", live.inventory);
    // Another writer, after that read: the pass's writes, conditional, are refused and merged.
    dynamic(cluster, ("", "v1", "ConfigMap"), "default")
        .patch(
            "meshops-inventory-crash",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"touched-by": "someone"}}})),
        )
        .await
        .unwrap();
    let second = plan::plan(&remaining, &live.objects, &live.inventory);
    assert_eq!(second.count(Action::Delete), 2, "{}", second.summary());
    let report = sync::execute(&restarted, &second, &remaining, &live, &next)
        .await
        .unwrap();
    // The pending write refused (409) and made again from a fresh read, the Service's apply,
    // the settled write.
    let requests = restarted.requests().snapshot();
    assert_eq!(requests.get("PATCH"), Some(&4), "{requests:?}");
    let mut deleted: Vec<&str> = report.deleted.iter().map(|o| o.name.as_str()).collect();
    deleted.sort();
    assert_eq!(deleted, ["crash-a", "crash-b"]);
    for name in ["crash-a", "crash-b"] {
        assert!(cluster.get(&config_map(name)).await.unwrap().is_none());
    }
    assert!(cluster.get(&service).await.unwrap().is_some());
    let inventory = cluster
        .get(&reference(
            "v1",
            "ConfigMap",
            "default",
            "meshops-inventory-crash",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inventory["data"]["revision"], "rev-2");
    assert!(inventory["data"].get("pending").is_none(), "{inventory}");
    assert_eq!(
        inventory["metadata"]["annotations"]["touched-by"], "someone",
        "merged, not overwritten"
    );
    let listed: Vec<Value> =
        serde_json::from_str(inventory["data"]["objects"].as_str().unwrap()).unwrap();
    let listed: Vec<&str> = listed.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(listed, ["crash-svc"]);
    // Nothing of the source is left unlisted.
    let selector = "meshops.io/source=crash";
    let mut labelled = Vec::new();
    for kind in ["ConfigMap", "Service"] {
        for item in cluster.list("v1", kind, namespace, selector).await.unwrap() {
            labelled.push(
                item["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    assert_eq!(labelled, ["crash-svc"]);

    // Settled: the same pass again writes nothing.
    let fresh = Cluster::connect(Some(kubeconfig), None).await.unwrap();
    let live = sync::fetch(&fresh, &remaining, &next).await.unwrap();
    assert_eq!(live.pending, None);
    let again = plan::plan(&remaining, &live.objects, &live.inventory);
    assert!(!again.has_changes(), "{}", again.summary());
    sync::execute(&fresh, &again, &remaining, &live, &next)
        .await
        .unwrap();
    assert_eq!(
        fresh.requests().writes(),
        0,
        "{:?}",
        fresh.requests().snapshot()
    );
}

struct Steps {
    started: Instant,
    n: usize,
}

impl Steps {
    fn done(&mut self, what: &str) {
        self.n += 1;
        eprintln!(
            "e2e step {:>2} ok at {:>5.1}s: {what}",
            self.n,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The CRDs: the Function Mesh ones from `meshops crds`, the third-party ones from tests/data;
/// applied (idempotently) and waited for until Established.
async fn install_crds(cluster: &Cluster) {
    let crds = meshops_plain(&["crds"]);
    assert_eq!(crds.code, 0, "{crds}");
    let mut documents: Vec<Value> = serde_yaml::Deserializer::from_str(&crds.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(documents.len(), 5);
    let third_party = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/crds");
    for entry in std::fs::read_dir(third_party).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(path).unwrap();
            documents.push(serde_yaml::from_str(&text).unwrap());
        }
    }
    let mut names = Vec::new();
    for crd in &documents {
        cluster.apply(crd, false).await.unwrap();
        names.push(crd["metadata"]["name"].as_str().unwrap().to_owned());
    }
    control_plane::wait_established(cluster, &names).await;
}

/// The one loud line a run without a cluster prints.
fn skipped(suite: &str) {
    eprintln!(
        "\n=====================================================================\n\
         skipped: no cluster for {suite} (no kube-apiserver/etcd in $KUBEBUILDER_ASSETS or \
         /usr/local/kubebuilder/bin, and MESHOPS_E2E_KUBECONFIG is not set; see docs/DEVELOPERS.md)\n\
         =====================================================================\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_against_a_real_api_server() {
    let Some(target) = target().await else {
        skipped("the CLI e2e suite");
        return;
    };
    let mut steps = Steps {
        started: Instant::now(),
        n: 0,
    };
    let kubeconfig = target.kubeconfig.as_path();
    let prefix = target.prefix.as_str();
    let staging = format!("{prefix}staging");
    let prod = format!("{prefix}prod");
    let cluster = Cluster::connect(Some(kubeconfig), None).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    write_examples(&repo, prefix);
    let repo_arg = repo.to_str().unwrap();
    let source = ["--source", "examples"];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(source.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        meshops(kubeconfig, &args)
    };
    let inventory = reference("v1", "ConfigMap", "default", "meshops-inventory-examples");

    // A missing CRD: a clear error, nothing applied.
    let crds_served = cluster
        .served("compute.functionmesh.io/v1alpha1", "Function")
        .await
        .is_ok();
    if !crds_served {
        let out = run(with(&["apply", repo_arg]));
        out.exits(1);
        out.says("CustomResourceDefinition is not installed");
        out.says("compute.functionmesh.io/v1alpha1");
        assert!(
            cluster.get(&inventory).await.unwrap().is_none(),
            "nothing applied"
        );
        steps.done("missing CRD named, nothing applied");
    }

    install_crds(&cluster).await;
    steps.done("CRDs from `meshops crds` (5) and Istio/VPA/Prometheus (4) applied and Established");

    // A missing namespace: a clear error, nothing applied.
    let out = run(with(&["apply", repo_arg]));
    out.exits(1);
    // Namespaces are looked up in order: prod comes first.
    out.says(&format!("namespace \"{prod}\" does not exist"));
    assert!(
        cluster.get(&inventory).await.unwrap().is_none(),
        "nothing applied"
    );
    for namespace in [&staging, &prod, &format!("{prefix}samples")] {
        let object =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        cluster.apply(&object, false).await.unwrap();
    }
    steps.done("missing namespace named, nothing applied");

    // plan → apply → plan: no changes, zero writes.
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(2);
    let desired = render_dir(&repo, "examples");
    out.prints(&format!("Plan: {} to create, 0 to change", desired.len()));
    let out = run(with(&["apply", repo_arg, "--prune", "--revision", "rev-1"]));
    out.exits(0);
    out.prints(&format!("Applied {} objects", desired.len()));
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(0);
    out.prints("No changes");
    out.says(", 0 writes");
    let out = run(with(&["apply", repo_arg, "--prune", "--revision", "rev-1"]));
    out.exits(0);
    out.says(", 0 writes");
    steps.done(&format!(
        "plan ({} to create) → apply → plan: no changes; re-apply: 0 writes",
        desired.len()
    ));

    // Every object read back with no field lost.
    let values: Vec<Value> = desired.iter().map(|o| o.value.clone()).collect();
    let checked = assert_read_back(&cluster, &values).await;
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/operator");
    let schemas = Schemas::new();
    let mut sample_crs = Vec::new();
    for entry in std::fs::read_dir(&samples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let tree = Tree::load(&path, &LoadOptions::default());
        let validation = validate(&tree, &schemas, ValidateOptions::default());
        if !validation.is_valid() {
            continue;
        }
        // What meshops sends in operator mode: the CRs as the typed model keeps them.
        let settings = RenderSettings {
            mode: Some(Mode::Operator),
            ..Default::default()
        };
        for object in render(&validation.checked, &settings, "samples").unwrap() {
            let mut value = object.value;
            if value["apiVersion"] != meshops::model::FUNCTION_MESH_API_VERSION {
                continue;
            }
            value["metadata"]["namespace"] = json!(format!("{prefix}samples"));
            cluster.apply(&value, false).await.unwrap();
            sample_crs.push(value);
        }
    }
    assert!(sample_crs.len() >= 8, "{} sample CRs", sample_crs.len());
    let sampled = assert_read_back(&cluster, &sample_crs).await;
    steps.done(&format!(
        "{checked} example objects and {sampled} operator-sample CRs read back, no field lost"
    ));

    // CR status written by apply.
    let alerts = function(&cluster, &staging, "alerts").await;
    let status = &alerts["status"];
    assert_eq!(status["revision"], "rev-1", "{alerts:#}");
    assert_eq!(status["conditions"][0]["type"], "Synced");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][1]["type"], "Ready");
    assert_eq!(
        status["conditions"][1]["status"], "False",
        "no controller runs pods here"
    );
    assert!(status["selector"]
        .as_str()
        .unwrap()
        .contains("compute.functionmesh.io/name=alerts"));
    steps.done("CR status written (Synced, Ready=False without pods, selector, revision)");

    // A foreign edit as `kubectl edit` sends it (JSON merge patch) → named → restored.
    let statefulsets = dynamic(&cluster, STS, &staging);
    let image = "registry.example.com/iot/alerts:2.0.1";
    let merge = json!({"spec": {"template": {"spec": {"containers": [{"name": "pulsar-function", "image": "evil:latest"}]}}}});
    statefulsets
        .patch(
            "alerts-function",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(&merge),
        )
        .await
        .unwrap();
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(2);
    out.prints("changed in the cluster by kubectl-edit (");
    out.prints("spec.template.spec.containers");
    out.prints(&format!("+        image: {image}"));
    assert!(
        !out.stdout.contains("-  ownerReferences:"),
        "apply keeps ownerReferences: {out}"
    );
    let out = run(with(&["apply", repo_arg, "--revision", "rev-1"]));
    out.exits(0);
    assert_eq!(image_of(&statefulsets, "alerts-function").await, image);
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(0);
    steps.done("kubectl-edit merge patch: plan names manager and field, apply restores");

    // The same with server-side apply by another manager.
    let theirs = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "alerts-function", "namespace": staging, "labels": {"team": "sre"}},
        "spec": {"template": {"spec": {"containers": [{"name": "pulsar-function", "image": "hotfix:1"}]}}},
    });
    statefulsets
        .patch(
            "alerts-function",
            &PatchParams::apply("sre-hotfix").force(),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(2);
    out.prints("changed in the cluster by sre-hotfix (");
    let out = run(with(&["apply", repo_arg, "--revision", "rev-1"]));
    out.exits(0);
    assert_eq!(image_of(&statefulsets, "alerts-function").await, image);
    steps.done("SSA by another manager: plan names it, apply takes the field back");

    // What an HPA does, through the scale subresource: no diff.
    statefulsets
        .patch_scale(
            "alerts-function",
            &PatchParams {
                field_manager: Some("kube-controller-manager".into()),
                ..Default::default()
            },
            &Patch::Merge(&json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    assert_eq!(out.code, 0, "scale subresource is the HPA's: {out}");
    let out = run(with(&["apply", repo_arg, "--revision", "rev-2"]));
    out.exits(0);
    let live = statefulsets.get("alerts-function").await.unwrap();
    assert_eq!(live.data["spec"]["replicas"], 4, "replicas left to the HPA");
    steps.done("scale subresource change: no diff, replicas kept at 4");

    // Secret values never in plan output.
    let secret = repo.join("staging/alerts-db.yaml");
    edit(&secret, "password: replace-me", "password: n3w-s3cr3t");
    let out = run(with(&["plan", repo_arg, "-o", "markdown"]));
    out.exits(0);
    for value in [
        "replace-me",
        "n3w-s3cr3t",
        "cmVwbGFjZS1tZQ==",
        "bjN3LXMzY3IzdA==",
    ] {
        assert!(
            !out.stdout.contains(value) && !out.stderr.contains(value),
            "{value}: {out}"
        );
    }
    out.prints("****** (changed)");
    edit(&secret, "password: n3w-s3cr3t", "password: replace-me");
    steps.done("Secret change planned with values masked (text and base64)");

    // A FunctionMesh member changed in the repository: the plan shows the change and no
    // ownerReferences line (apply keeps them), and apply keeps them indeed.
    let mesh = repo.join("staging/iot-pipeline.yaml");
    edit(&mesh, "iot/enrich:1.4.2", "iot/enrich:1.4.3");
    edit(
        &mesh,
        "groupId: pulsar-iot-staging",
        "groupId: pulsar-iot-staging-2",
    );
    edit(
        &mesh,
        "indexName: iot-readings-staging",
        "indexName: iot-readings-2",
    );
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(2);
    for member in ["enrich-function", "readings-source", "elastic-sink"] {
        out.prints(&format!(
            "~ apps/v1/StatefulSet {staging}/iot-pipeline-{member} (the repository changed)"
        ));
    }
    out.prints("+        image: registry.example.com/iot/enrich:1.4.3");
    assert!(
        !out.stdout.contains("ownerReferences"),
        "apply keeps the ownerReferences of a mesh member: {out}"
    );
    let out = run(with(&["apply", repo_arg, "--revision", "rev-2-mesh"]));
    out.exits(0);
    let member = statefulsets
        .get("iot-pipeline-enrich-function")
        .await
        .unwrap();
    let owner = &member.metadata.owner_references.unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Function", "iot-pipeline-enrich")
    );
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(0);
    steps.done(
        "FunctionMesh member changed: planned without an ownerReferences line, applied with them",
    );

    // An immutable StatefulSet field: recreate.
    let mut changed = render_dir(&repo, "examples");
    let sts = changed
        .iter_mut()
        .find(|o| {
            o.kind() == "StatefulSet" && o.name() == "notifier-function" && o.namespace() == staging
        })
        .unwrap();
    sts.value["spec"]["serviceName"] = json!("notifier-function-renamed");
    sts.value["metadata"]["annotations"]["meshops.io/spec-hash"] = json!("changed");
    let before = statefulsets.get("notifier-function").await.unwrap();
    let options = SyncOptions {
        source: "examples".into(),
        inventory_namespace: "default".into(),
        prune: true,
        allow_empty: false,
        revision: "rev-3".into(),
        take_over: false,
    };
    let live = sync::fetch(&cluster, &changed, &options).await.unwrap();
    let recreate = plan::plan(&changed, &live.objects, &live.inventory);
    let change = recreate
        .changes
        .iter()
        .find(|c| {
            c.object.kind == "StatefulSet"
                && c.object.name == "notifier-function"
                && c.object.namespace == staging
        })
        .unwrap();
    assert_eq!(change.action, Action::Recreate, "{}", change.reason);
    assert!(change.reason.contains("/spec/serviceName"));
    sync::execute(&cluster, &recreate, &changed, &live, &options)
        .await
        .unwrap();
    let after = statefulsets.get("notifier-function").await.unwrap();
    assert_ne!(
        after.metadata.uid, before.metadata.uid,
        "deleted and created anew"
    );
    assert_eq!(
        after.data["spec"]["serviceName"],
        "notifier-function-renamed"
    );
    let out = run(with(&["apply", repo_arg, "--revision", "rev-4"]));
    out.exits(0);
    // Back to the repository's serviceName.
    out.prints("-/+ apps/v1/StatefulSet");
    steps.done("immutable serviceName change planned and executed as delete + create");

    // Adopt: an object made by hand, without meshops' labels.
    let by_hand = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "alerts-extra", "namespace": staging},
        "data": {"threshold": "5"},
    });
    dynamic(&cluster, ("", "v1", "ConfigMap"), &staging)
        .patch(
            "alerts-extra",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&by_hand),
        )
        .await
        .unwrap();
    std::fs::write(
        repo.join("staging/alerts-extra.yaml"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: alerts-extra\n  namespace: {staging}\ndata:\n  threshold: \"7\"\n"),
    )
    .unwrap();
    let out = run(with(&["plan", repo_arg]));
    out.prints("+~ v1/ConfigMap");
    out.prints("exists without meshops' labels, written by kubectl");
    out.prints("1 to adopt");
    let out = run(with(&["apply", repo_arg, "--revision", "rev-5"]));
    out.exits(0);
    out.says("adopted v1/ConfigMap");
    let adopted = cluster
        .get(&reference("v1", "ConfigMap", &staging, "alerts-extra"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        adopted["metadata"]["labels"]["meshops.io/source"],
        "examples"
    );
    assert_eq!(adopted["data"]["threshold"], "7");
    steps.done("object made by hand: planned as adopt, applied, labelled");

    // Conflict: another source renders the same object.
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(
        repo.join("staging/alerts-extra.yaml"),
        other.join("alerts-extra.yaml"),
    )
    .unwrap();
    let other_arg = other.to_str().unwrap();
    let out = meshops(kubeconfig, &["plan", other_arg, "--source", "other"]);
    out.prints("! v1/ConfigMap");
    out.prints("belongs to source \"examples\"");
    let out = meshops(kubeconfig, &["apply", other_arg, "--source", "other"]);
    out.exits(1);
    out.says("nothing was applied");
    out.says("--take-over");
    let other_inventory = reference("v1", "ConfigMap", "default", "meshops-inventory-other");
    assert!(
        cluster.get(&other_inventory).await.unwrap().is_none(),
        "nothing applied"
    );
    let out = meshops(
        kubeconfig,
        &["apply", other_arg, "--source", "other", "--take-over"],
    );
    out.exits(0);
    let out = run(with(&["plan", repo_arg]));
    out.prints("belongs to source \"other\"");
    std::fs::remove_file(other.join("alerts-extra.yaml")).unwrap();
    let out = meshops(
        kubeconfig,
        &[
            "apply",
            other_arg,
            "--source",
            "other",
            "--prune",
            "--allow-empty",
        ],
    );
    out.exits(0);
    let out = run(with(&["apply", repo_arg, "--revision", "rev-5"]));
    out.exits(0);
    steps.done("object of another source: conflict, apply refuses, --take-over takes it");

    // Prune exactly what was removed; `meshops.io/prune: disabled` is kept.
    let services = dynamic(&cluster, ("", "v1", "Service"), &staging);
    services
        .patch(
            "notifier-function-headless",
            &PatchParams {
                field_manager: Some("sre".into()),
                ..Default::default()
            },
            &Patch::Merge(&json!({"metadata": {"annotations": {"meshops.io/prune": "disabled"}}})),
        )
        .await
        .unwrap();
    std::fs::remove_file(repo.join("staging/notifier.yaml")).unwrap();
    // The plan of an apply without --prune deletes nothing; with --prune it deletes.
    let notifier_line = format!(
        "compute.functionmesh.io/v1alpha1/Function {staging}/notifier (removed from the repository"
    );
    let out = run(with(&["plan", repo_arg, "--detailed-exitcode"]));
    out.exits(0);
    out.prints(&format!(
        "(-) {notifier_line}; would be pruned with --prune)"
    ));
    out.prints("No changes. 3 objects removed from the repository would be pruned with --prune.");
    let out = run(with(&["plan", repo_arg, "--prune", "--detailed-exitcode"]));
    out.exits(2);
    out.prints(&format!("- {notifier_line})"));
    out.prints("0 to recreate, 3 to delete.");
    let out = run(with(&["apply", repo_arg, "--prune", "--revision", "rev-6"]));
    out.exits(0);
    let mut deleted: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("deleted "))
        .collect();
    deleted.sort();
    let policy = format!("security.istio.io/v1/AuthorizationPolicy {staging}/notifier-function");
    let notifier = format!("compute.functionmesh.io/v1alpha1/Function {staging}/notifier");
    let statefulset = format!("apps/v1/StatefulSet {staging}/notifier-function");
    // One replica: the notifier has no PodDisruptionBudget.
    let mut expected = vec![notifier.as_str(), statefulset.as_str(), policy.as_str()];
    expected.sort();
    assert_eq!(deleted, expected, "{out}");
    out.prints("kept: meshops.io/prune: disabled");
    assert!(services
        .get_opt("notifier-function-headless")
        .await
        .unwrap()
        .is_some());
    assert!(statefulsets
        .get_opt("notifier-function")
        .await
        .unwrap()
        .is_none());
    steps.done("notifier removed: exactly its Function, StatefulSet, AuthorizationPolicy pruned; Service with prune: disabled kept");

    crash_safe_inventory(&cluster, kubeconfig, &staging).await;
    steps.done("pass killed after its first phase, its objects dropped from Git, the inventory written by someone else meanwhile: the next pass prunes them (conditional writes merged), nothing orphaned, then 0 writes");

    // A wrong token and an unreachable server: clear errors, no log lines.
    if let Some(plane) = &target.plane {
        let wrong = plane.kubeconfig_with_token("wrong-token", "not-a-token");
        let out = meshops(&wrong, &["plan", repo_arg, "--source", "examples"]);
        out.exits(1);
        assert!(
            out.stderr
                .starts_with("error: the API server https://127.0.0.1:"),
            "{out}"
        );
        out.says("(context e2e) refused the credentials (HTTP 401 Unauthorized)");
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "one line, no log lines: {out}"
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let unreachable = work.path().join("unreachable");
        std::fs::write(
            &unreachable,
            control_plane::kubeconfig(&format!("https://127.0.0.1:{closed}"), &plane.ca_file, "t"),
        )
        .unwrap();
        let out = meshops(&unreachable, &["plan", repo_arg, "--source", "examples"]);
        out.exits(1);
        out.says(&format!(
            "cannot reach the API server https://127.0.0.1:{closed} (context e2e)"
        ));
        assert_eq!(
            out.stderr.matches("onnection refused").count(),
            1,
            "the cause once: {out}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(
            !out.stderr.contains("ERROR") && !out.stderr.contains("WARN"),
            "{out}"
        );
        // The client's warning about skipping TLS verification is for -v only.
        let insecure = work.path().join("insecure");
        let text = std::fs::read_to_string(kubeconfig).unwrap().replace(
            "certificate-authority:",
            "insecure-skip-tls-verify: true\n    x-ca:",
        );
        let text = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("x-ca:"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&insecure, text).unwrap();
        let out = meshops(&insecure, &["plan", repo_arg, "--source", "examples"]);
        out.exits(0);
        assert!(!out.stderr.contains("WARN"), "{out}");
        let out = meshops(&insecure, &["plan", repo_arg, "--source", "examples", "-v"]);
        out.exits(0);
        out.says("WARN");
        steps.done(
            "wrong token → 401 naming server and context; unreachable → cause once; no log lines; TLS-bypass warning only at -v",
        );

        // A user RBAC lets read but not write: plan works, apply refuses before any write.
        let rbac = [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "e2e-read"},
                   "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "e2e-read"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-read"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": control_plane::UNPRIVILEGED_USER}]}),
        ];
        for object in &rbac {
            cluster.apply(object, false).await.unwrap();
        }
        let reader = plane.kubeconfig_with_token("reader", &plane.unprivileged_token);
        edit(
            &repo.join("staging/alerts.yaml"),
            "alerts:2.0.1",
            "alerts:2.0.2",
        );
        // A server-side dry-run needs the same rights as the write it rehearses.
        let out = meshops(&reader, &["plan", repo_arg, "--source", "examples"]);
        out.exits(1);
        out.says("not allowed to dry-run apply ");
        out.says("(HTTP 403): ");
        out.says("User \"e2e-nobody\" cannot patch resource");
        let out = meshops(&reader, &["apply", repo_arg, "--source", "examples"]);
        out.exits(1);
        out.says("nothing was applied: the cluster https://127.0.0.1:");
        out.says(&format!(
            "patch StatefulSet (apps/v1) in namespace \"{staging}\""
        ));
        assert_eq!(
            image_of(&statefulsets, "alerts-function").await,
            image,
            "unchanged"
        );
        let alerts = function(&cluster, &staging, "alerts").await;
        assert_eq!(alerts["spec"]["image"], image, "unchanged");
        steps.done(
            "read-only user: plan's dry-run 403 named; apply refused by RBAC before any write",
        );
    } else {
        edit(
            &repo.join("staging/alerts.yaml"),
            "alerts:2.0.1",
            "alerts:2.0.2",
        );
        eprintln!("e2e: the credential and RBAC steps need the suite's own control plane; not run against MESHOPS_E2E_KUBECONFIG");
    }

    // --wait where no pod will ever run: the timeout names every StatefulSet and why.
    edit(
        &repo.join("staging/anomaly-scorer.yaml"),
        "namespace: ",
        "labels: {rollout: \"2\"}\n  namespace: ",
    );
    let out = run(with(&[
        "apply",
        repo_arg,
        "--wait",
        "--timeout",
        "5s",
        "--revision",
        "rev-7",
    ]));
    out.exits(1);
    out.says("error: not rolled out after 5s: ");
    out.says(&format!("StatefulSet {staging}/alerts-function ("));
    out.says(&format!("StatefulSet {staging}/anomaly-scorer-function ("));
    out.says("controller has not seen generation");
    let alerts = function(&cluster, &staging, "alerts").await;
    assert_eq!(
        alerts["status"]["revision"], "rev-7",
        "status written after the wait too"
    );
    steps.done("apply --wait --timeout 5s: exit 1 naming each StatefulSet not rolled out");

    let total = steps.started.elapsed();
    eprintln!(
        "e2e: {} steps passed in {:.1}s",
        steps.n,
        total.as_secs_f64()
    );
}

/// The agent on a real API server, as a pod runs it: a repository over file://, pushes
/// announced by signed webhooks, drift, restarts and a second replica.
#[test]
fn e2e_agent_follows_a_repository() {
    use support::agent::{push_event, AgentProcess, GitRepo};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(target) = rt.block_on(target()) else {
        skipped("the agent e2e suite");
        return;
    };
    let mut steps = Steps {
        started: Instant::now(),
        n: 0,
    };
    let kubeconfig = target.kubeconfig.to_str().unwrap().to_owned();
    let prefix = target.prefix.as_str();
    let namespace = format!("{prefix}agent");
    let lease = format!("{prefix}meshops-e2e");
    let cluster = rt
        .block_on(Cluster::connect(Some(&target.kubeconfig), None))
        .unwrap();
    rt.block_on(install_crds(&cluster));
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    rt.block_on(cluster.apply(&object, false)).unwrap();

    // The repository: examples/staging under deploy/, in the test's namespace.
    let work = tempfile::tempdir().unwrap();
    let repo = GitRepo::with_staging(&work.path().join("repo"), &namespace);
    let first = repo.commit("staging");

    let secret = "e2e webhook secret";
    std::fs::write(work.path().join("secret"), secret).unwrap();
    let github = support::github::FakeGithub::default();
    let github_api = rt.block_on(github.start());
    std::fs::write(work.path().join("github-token"), "ghp_e2e").unwrap();
    let config = work.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: meshops.io/v1alpha1\nkind: AgentConfig\nstateDir: {state}\n\
             webhook: {{secretFile: {secret}}}\n\
             leaderElection: {{namespace: default, leaseName: {lease}, leaseDuration: 4s}}\n\
             github: {{apiUrl: \"{github_api}\", tokenFile: {token}}}\n\
             sources:\n- name: {prefix}e2e\n  url: {url}\n  path: deploy\n  interval: 1h\n  \
             driftInterval: 2s\n  rolloutTimeout: 1s\n  namespaces: [{namespace}, default]\n  \
             github: {{repo: acme/functions}}\n",
            state = work.path().join("state").display(),
            secret = work.path().join("secret").display(),
            token = work.path().join("github-token").display(),
            url = repo.url(),
        ),
    )
    .unwrap();
    let source = format!("{prefix}e2e");
    let start = |identity: &str| {
        AgentProcess::start(
            &config,
            &["--kubeconfig", &kubeconfig, "--identity", identity],
            &work.path().join(format!("{identity}.log")),
        )
    };
    let push = |agent: &AgentProcess, commit: &str, delivery: &str| {
        let body = push_event("acme/functions", &repo.url(), "refs/heads/main", commit);
        let answer = agent.webhook(secret, "push", delivery, &body);
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert_eq!(answer.json()["triggered"], json!([source]));
    };
    let get = |kind: &str, name: &str| {
        let (api_version, kind) = match kind {
            "StatefulSet" => ("apps/v1", kind),
            other => (meshops::model::FUNCTION_MESH_API_VERSION, other),
        };
        rt.block_on(cluster.get(&reference(api_version, kind, &namespace, name)))
            .unwrap()
    };

    // Startup applies the branch's head.
    let agent = start("agent-a");
    agent.wait_for("leadership", Duration::from_secs(20), |a| {
        a.get("/readyz").is_some_and(|r| r.status == 200)
    });
    agent.wait_applied(&source, &first);
    assert!(get("Function", "notifier").is_some());
    assert!(get("StatefulSet", "anomaly-scorer-function").is_some());
    steps.done("agent leads, applies the branch head on startup");

    // A change, pushed and announced: applied.
    repo.edit("deploy/notifier.yaml", "notifier:1.1.0", "notifier:1.2.0");
    let second = repo.commit("notifier 1.2.0");
    let pushed = Instant::now();
    push(&agent, &second, "e2e-1");
    agent.wait_applied(&source, &second);
    let latency = pushed.elapsed();
    let notifier = get("Function", "notifier").unwrap();
    assert_eq!(
        notifier["spec"]["image"],
        "registry.example.com/iot/notifier:1.2.0"
    );
    let sts = get("StatefulSet", "notifier-function").unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/iot/notifier:1.2.0"
    );
    steps.done(&format!(
        "changed function pushed + signed webhook → applied in {:.2}s",
        latency.as_secs_f64()
    ));

    // Its sync status: pending while applying and rolling out, then a failure naming the
    // StatefulSet that did not roll out (an API server alone runs no pods).
    let sync_context = format!("meshops/sync/{source}");
    agent.wait_for("the sync status", Duration::from_secs(20), |_| {
        github.statuses_on(&second, &sync_context).len() >= 3
    });
    let sync = github.statuses_on(&second, &sync_context);
    assert_eq!(sync[0].0, "pending", "{sync:?}");
    assert!(
        sync[0]
            .1
            .starts_with("applying: Plan: 0 to create, 2 to change"),
        "{sync:?}"
    );
    assert_eq!(
        sync[1],
        (
            "pending".into(),
            "applied; rolling out 1 StatefulSet(s)".into()
        )
    );
    assert_eq!(sync[2].0, "failure", "{sync:?}");
    assert!(
        sync[2].1.contains("not rolled out after 1s") && sync[2].1.contains("notifier-function"),
        "{sync:?}"
    );
    steps.done("sync status on the pushed commit: pending → pending (rolling out) → failure naming the StatefulSet");

    // A file deleted: its Function and workloads pruned.
    repo.remove("deploy/anomaly-scorer.yaml");
    let third = repo.commit("drop the anomaly scorer");
    push(&agent, &third, "e2e-2");
    agent.wait_applied(&source, &third);
    assert!(get("Function", "anomaly-scorer").is_none());
    assert!(get("StatefulSet", "anomaly-scorer-function").is_none());
    steps.done("deleted file → Function and StatefulSet pruned");

    // A pull request from a branch of the repository itself: planned against the real API
    // server, commented, nothing applied.
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.edit("deploy/notifier.yaml", "  replicas: 1", "  replicas: 3");
    let pr_head = repo.commit("three notifier replicas");
    repo.git(&["update-ref", "refs/pull/9/head", &pr_head]);
    repo.git(&["checkout", "-q", "main"]);
    let event = json!({"action": "synchronize", "number": 9,
        "pull_request": {"head": {"sha": pr_head, "repo": {"full_name": "acme/functions"}},
                         "base": {"ref": "main"}},
        "repository": {"full_name": "acme/functions"}})
    .to_string();
    let answer = agent.webhook(secret, "pull_request", "e2e-pr", event.as_bytes());
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        answer.json()["planning"].as_array().map(Vec::len),
        Some(1),
        "{}",
        answer.body
    );
    agent.wait_for("the plan comment", Duration::from_secs(30), |_| {
        !github.comments(9).is_empty()
    });
    let comment = github.comments(9).remove(0);
    assert!(
        comment.contains("| Function | 0 | 1 | 0 | 0 |"),
        "{comment}"
    );
    assert!(comment.contains("replicas: 3"), "{comment}");
    assert_eq!(
        github.statuses_on(&pr_head, &format!("meshops/plan/{source}"))[0].0,
        "success"
    );
    assert_eq!(
        get("Function", "notifier").unwrap()["spec"]["replicas"],
        1,
        "nothing applied"
    );
    steps.done("pull request webhook → plan comment with the diff against the real API server, nothing applied");

    // An invalid commit: nothing applied, the error in the sources API.
    repo.edit("deploy/notifier.yaml", "  replicas: 1", "  replicaz: 3");
    let invalid = repo.commit("a typo");
    push(&agent, &invalid, "e2e-3");
    agent.wait_for("the invalid commit seen", Duration::from_secs(30), |a| {
        let s = a.source(&source);
        s["lastSeenCommit"] == invalid.as_str() && s["result"] == "invalid"
    });
    let status = agent.source(&source);
    assert_eq!(status["lastAppliedCommit"], third.as_str());
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("deploy/notifier.yaml:") && error.contains("replicaz"),
        "{error}"
    );
    assert_eq!(get("Function", "notifier").unwrap()["spec"]["replicas"], 1);
    steps.done("invalid commit: nothing applied, file:line of the error in /api/v1/sources");

    // A foreign edit: a DriftDetected Event on the Function, the gauge, Synced=False.
    let statefulsets = dynamic(&cluster, STS, &namespace);
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "pulsar-function", "image": "registry.example.com/iot/notifier:hotfix"}]}}}});
    rt.block_on(statefulsets.patch(
        "notifier-function",
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        },
        &Patch::Strategic(&patch),
    ))
    .unwrap();
    let gauge = format!("meshops_drift_objects{{source=\"{source}\"}}");
    agent.wait_for("the drift gauge", Duration::from_secs(20), |a| {
        a.metric(&gauge) >= 1.0
    });
    // That drift check ran with the invalid commit still the head: its errors stay.
    let status = agent.source(&source);
    assert_eq!(status["lastSeenCommit"], invalid.as_str(), "{status}");
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("replicaz")),
        "{status}"
    );
    let events = dynamic(&cluster, ("events.k8s.io", "v1", "Event"), &namespace);
    let drift_events = rt
        .block_on(events.list(&Default::default()))
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.data["reason"] == "DriftDetected")
        .collect::<Vec<_>>();
    assert_eq!(drift_events.len(), 1, "{drift_events:#?}");
    let event = &drift_events[0].data;
    assert_eq!(event["regarding"]["kind"], "Function");
    assert_eq!(event["regarding"]["name"], "notifier");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("kubectl-edit") && note.contains("image"),
        "{note}"
    );
    let synced = &get("Function", "notifier").unwrap()["status"]["conditions"][0];
    assert_eq!(synced["reason"], "Drifted", "{synced}");
    assert_eq!(synced["status"], "False");
    assert_eq!(
        get("StatefulSet", "notifier-function").unwrap()["spec"]["template"]["spec"]["containers"]
            [0]["image"],
        "registry.example.com/iot/notifier:hotfix",
        "selfHeal is off: reported, not reverted"
    );
    let drift_context = format!("meshops/drift/{source}");
    agent.wait_for("the drift status", Duration::from_secs(20), |_| {
        github
            .statuses_on(&third, &drift_context)
            .iter()
            .any(|(state, _)| state == "failure")
    });
    let drift = github.statuses_on(&third, &drift_context);
    assert!(
        drift.iter().any(|(state, d)| state == "failure"
            && d.contains("notifier-function image by kubectl-edit")),
        "{drift:?}"
    );
    steps.done("foreign edit → DriftDetected Event naming kubectl-edit, gauge 1, Synced=False, drift status failure");

    // The typo fixed: applied, drift gone, gauge back to zero.
    repo.edit("deploy/notifier.yaml", "  replicaz: 3", "  replicas: 1");
    let fixed = repo.commit("fix the typo");
    push(&agent, &fixed, "e2e-4");
    agent.wait_applied(&source, &fixed);
    agent.wait_for("the drift gauge at zero", Duration::from_secs(20), |a| {
        a.metric(&gauge) == 0.0
    });
    assert_eq!(
        get("StatefulSet", "notifier-function").unwrap()["spec"]["template"]["spec"]["containers"]
            [0]["image"],
        "registry.example.com/iot/notifier:1.2.0"
    );
    // The status is written once the rollout wait (1 s here) is over.
    agent.wait_for("Synced=True", Duration::from_secs(20), |_| {
        get("Function", "notifier").unwrap()["status"]["conditions"][0]["status"] == "True"
    });
    steps.done("fixed commit applied: drift reverted, gauge 0, Synced=True");

    // A restart writes nothing.
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    let agent = start("agent-a");
    agent.wait_for(
        "the first pass after the restart",
        Duration::from_secs(30),
        |a| {
            let s = a.source(&source);
            s["lastPassAt"].is_string() && s["lastAppliedCommit"] == fixed.as_str()
        },
    );
    assert_eq!(agent.source(&source)["result"], "unchanged");
    for verb in ["PATCH", "POST", "PUT", "DELETE"] {
        assert_eq!(
            agent.metric(&format!("meshops_api_requests_total{{verb=\"{verb}\"}}")),
            0.0,
            "{verb} after a restart:\n{}",
            agent.get("/metrics").unwrap().body
        );
    }
    steps.done("restart: first pass unchanged, zero writes");

    // Two replicas: one leads; stop it and the other takes over.
    let standby = start("agent-b");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(agent.get("/readyz").unwrap().status, 200);
    assert_eq!(standby.get("/readyz").unwrap().status, 503);
    let stopped = Instant::now();
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    standby.wait_for("the standby to lead", Duration::from_secs(15), |a| {
        a.get("/readyz").is_some_and(|r| r.status == 200)
    });
    let released = stopped.elapsed();
    steps.done(&format!(
        "two replicas: one ready; SIGTERM the leader → the other leads after {:.1}s (lease released)",
        released.as_secs_f64()
    ));

    // A leader that dies without releasing: taken over once the lease runs out.
    let third_replica = start("agent-c");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(third_replica.get("/readyz").unwrap().status, 503);
    let killed = Instant::now();
    drop(standby);
    third_replica.wait_for("the third replica to lead", Duration::from_secs(20), |a| {
        a.get("/readyz").is_some_and(|r| r.status == 200)
    });
    steps.done(&format!(
        "SIGKILL the leader → another leads after {:.1}s (lease duration 4s)",
        killed.elapsed().as_secs_f64()
    ));
    let status = third_replica.terminate();
    assert!(status.success(), "{status:?}");
    eprintln!(
        "e2e agent: {} steps passed in {:.1}s",
        steps.n,
        steps.started.elapsed().as_secs_f64()
    );
}
