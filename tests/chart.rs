//! The Helm chart (charts/meshops) with the real Helm engine, and the docs generated from the
//! schemas.
//!
//! Helm is Helm v4 as a library, through the Python package `helm-python-sdk`
//! (tests/support/helm.rs). The chart is linted, rendered with the least values and with every
//! option on, checked against what the agent needs (the AgentConfig it renders passes
//! `meshops agent --check`; every file the config names is mounted from the Secret the values
//! name), and installed into a real kube-apiserver + etcd (tests/support/control_plane.rs),
//! where SubjectAccessReviews prove that the RBAC allows every request the agent makes and
//! nothing more, cluster-wide and per namespace. An API server runs no controllers: no pod
//! starts, so the installed objects are asserted, not a running agent.
//!
//! Without the Python package or the control plane binaries the tests that need them print
//! one loud `skipped: …` line naming what is missing.

#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/helm.rs"]
mod helm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use helm::{Helm, Rendered};
use meshops::cluster::Cluster;
use meshops::plan::ObjectRef;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The loud line of a test that could not run, written past the test harness's capture so a
/// plain `cargo test` shows it.
fn skipped(what: &str, missing: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n=====================================================================\n\
         skipped: {what}: {missing}\n\
         (pip install helm-python-sdk; control plane binaries: see docs/DEVELOPERS.md)\n\
         =====================================================================\n"
    );
}

fn helm_or_skip(what: &str) -> Option<Helm> {
    match Helm::start() {
        Ok(helm) => Some(helm),
        Err(missing) => {
            skipped(what, &format!("no Helm engine ({missing})"));
            None
        }
    }
}

const RELEASE_NAMESPACE: &str = "meshops";

// ---------------------------------------------------------------------------------------------
// What the agent does to the cluster, from src/: the expectations the RBAC is checked against.

/// The kinds meshops applies (src/render; a repository holds only these, src/load), as
/// (group, resource, apiVersion, kind).
const APPLIED: &[(&str, &str, &str, &str)] = &[
    ("", "configmaps", "v1", "ConfigMap"),
    ("", "secrets", "v1", "Secret"),
    ("", "serviceaccounts", "v1", "ServiceAccount"),
    ("", "services", "v1", "Service"),
    ("apps", "statefulsets", "apps/v1", "StatefulSet"),
    (
        "autoscaling",
        "horizontalpodautoscalers",
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
    ),
    (
        "autoscaling.k8s.io",
        "verticalpodautoscalers",
        "autoscaling.k8s.io/v1",
        "VerticalPodAutoscaler",
    ),
    (
        "policy",
        "poddisruptionbudgets",
        "policy/v1",
        "PodDisruptionBudget",
    ),
    (
        "security.istio.io",
        "authorizationpolicies",
        "security.istio.io/v1",
        "AuthorizationPolicy",
    ),
    (
        "compute.functionmesh.io",
        "functions",
        "compute.functionmesh.io/v1alpha1",
        "Function",
    ),
    (
        "compute.functionmesh.io",
        "sources",
        "compute.functionmesh.io/v1alpha1",
        "Source",
    ),
    (
        "compute.functionmesh.io",
        "sinks",
        "compute.functionmesh.io/v1alpha1",
        "Sink",
    ),
    (
        "compute.functionmesh.io",
        "functionmeshes",
        "compute.functionmesh.io/v1alpha1",
        "FunctionMesh",
    ),
    (
        "compute.functionmesh.io",
        "backendconfigs",
        "compute.functionmesh.io/v1alpha1",
        "BackendConfig",
    ),
];

/// GET and LIST by label (src/cluster/sync.rs `fetch`), server-side apply (PATCH; an apply
/// that creates also needs `create`), DELETE (prune, recreate).
const APPLY_VERBS: [&str; 5] = ["get", "list", "create", "patch", "delete"];

/// The CRs whose status the agent writes (src/cluster/sync.rs `write_status`, src/agent/drift.rs).
const STATUS: [&str; 3] = ["functions", "sources", "sinks"];

/// One authorization question: may the agent's service account do this?
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: String,
    name: String,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        match self.namespace.as_str() {
            "" => write!(f, " (cluster-wide)"),
            ns => write!(f, " in {ns}"),
        }
    }
}

fn access(verb: &'static str, group: &'static str, resource: &'static str, ns: &str) -> Access {
    Access {
        verb,
        group,
        resource,
        subresource: "",
        namespace: ns.to_owned(),
        name: String::new(),
    }
}

impl Access {
    fn sub(mut self, subresource: &'static str) -> Access {
        self.subresource = subresource;
        self
    }

    fn named(mut self, name: &str) -> Access {
        self.name = name.to_owned();
        self
    }
}

/// Every request the agent makes, for an installation that writes to `targets`, holds its
/// Lease in the release namespace and its inventories where `inventories` says.
fn agent_requests(
    targets: &[&str],
    lease: &str,
    inventories: &[(&str, &str)],
    secrets: bool,
) -> Vec<Access> {
    let mut out = Vec::new();
    for ns in targets {
        for (group, resource, _, _) in APPLIED {
            if *resource == "secrets" && !secrets {
                continue;
            }
            for verb in APPLY_VERBS {
                out.push(access(verb, group, resource, ns));
            }
        }
        for resource in STATUS {
            out.push(access("patch", "compute.functionmesh.io", resource, ns).sub("status"));
        }
        // Drift Events through kube-runtime's Recorder: POST, then PATCH for a series.
        out.push(access("create", "events.k8s.io", "events", ns));
        out.push(access("patch", "events.k8s.io", "events", ns));
        // Following a rollout: the StatefulSet's pods (src/cluster/rollout.rs).
        out.push(access("list", "", "pods", ns));
        // Does the namespace exist? (a GET of the namespace, before the first write)
        out.push(access("get", "", "namespaces", ns).named(ns));
    }
    // kube-lease-manager: GET, POST when missing, PATCH to hold and release.
    out.push(access(
        "create",
        "coordination.k8s.io",
        "leases",
        RELEASE_NAMESPACE,
    ));
    out.push(access("get", "coordination.k8s.io", "leases", RELEASE_NAMESPACE).named(lease));
    out.push(access("update", "coordination.k8s.io", "leases", RELEASE_NAMESPACE).named(lease));
    for (ns, name) in inventories {
        out.push(access("get", "", "configmaps", ns).named(name));
        // The pre-write RBAC check asks without a name (src/cluster/mod.rs `may`).
        out.push(access("create", "", "configmaps", ns));
        out.push(access("patch", "", "configmaps", ns));
    }
    // That pre-write check itself, and discovery: granted to every authenticated user.
    out.push(access(
        "create",
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "",
    ));
    out
}

/// What the agent never does, so must not be allowed to.
fn never_needed(other_ns: &str) -> Vec<Access> {
    let ns = RELEASE_NAMESPACE;
    vec![
        access("get", "", "pods", other_ns),
        access("watch", "", "pods", other_ns),
        access("delete", "", "pods", other_ns),
        access("get", "", "pods", other_ns).sub("log"),
        access("create", "", "pods", other_ns).sub("exec"),
        access("create", "", "serviceaccounts", other_ns).sub("token"),
        access("list", "", "nodes", ""),
        access("list", "", "namespaces", ""),
        access("create", "", "namespaces", ""),
        access("delete", "", "namespaces", "").named(other_ns),
        access("create", "", "events", other_ns),
        access("create", "apps", "deployments", other_ns),
        access("update", "compute.functionmesh.io", "functions", other_ns),
        access("watch", "compute.functionmesh.io", "functions", other_ns),
        access(
            "deletecollection",
            "compute.functionmesh.io",
            "functions",
            other_ns,
        ),
        access("update", "compute.functionmesh.io", "functions", other_ns).sub("status"),
        access("create", "rbac.authorization.k8s.io", "clusterroles", ""),
        access("bind", "rbac.authorization.k8s.io", "clusterroles", ""),
        access("escalate", "rbac.authorization.k8s.io", "roles", other_ns),
        access(
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            other_ns,
        ),
        access(
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
        ),
        access(
            "patch",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
        )
        .named("functions.compute.functionmesh.io"),
        access(
            "create",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
        ),
        access("impersonate", "", "users", ""),
        access("create", "coordination.k8s.io", "leases", "kube-system"),
        access("patch", "coordination.k8s.io", "leases", other_ns).named("meshops"),
        access("patch", "coordination.k8s.io", "leases", ns).named("kube-controller-manager"),
        access("delete", "coordination.k8s.io", "leases", ns).named("meshops"),
        access("list", "coordination.k8s.io", "leases", ns),
    ]
}

/// The ClusterRole's rules as (group, resource, verb) triples.
fn rule_triples(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "{rule}"
        );
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// The cluster-wide grant exactly: the applied kinds, CR status, Events, pods LIST,
/// namespaces GET.
fn expected_cluster_rules(secrets: bool, finalizers: bool) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let mut add = |g: &str, r: &str, v: &str| {
        out.insert((g.to_owned(), r.to_owned(), v.to_owned()));
    };
    for (group, resource, _, _) in APPLIED {
        if *resource == "secrets" && !secrets {
            continue;
        }
        for verb in APPLY_VERBS {
            add(group, resource, verb);
        }
    }
    for resource in STATUS {
        add(
            "compute.functionmesh.io",
            &format!("{resource}/status"),
            "patch",
        );
        if finalizers {
            add(
                "compute.functionmesh.io",
                &format!("{resource}/finalizers"),
                "update",
            );
        }
    }
    add("events.k8s.io", "events", "create");
    add("events.k8s.io", "events", "patch");
    add("", "pods", "list");
    add("", "namespaces", "get");
    out
}

// ---------------------------------------------------------------------------------------------
// Values.

fn minimal() -> Value {
    json!({"sources": [{"name": "prod", "url": "https://github.com/acme/functions.git", "namespaces": ["prod"]}]})
}

/// Every option on.
fn everything() -> Value {
    json!({
        "replicaCount": 3,
        "sources": [
            {"name": "prod", "url": "https://github.com/acme/functions.git", "ref": "main",
             "path": "clusters/prod", "interval": "30s", "namespaces": ["prod"], "prune": true,
             "selfHeal": false, "driftInterval": "10m", "mode": "native", "timeout": "2m",
             "rolloutTimeout": "3m", "github": {"repo": "acme/functions"},
             "pullRequests": {"forks": false, "maxQueued": 3},
             "credentials": {"token": {"secretName": "git-token", "key": "pat"}}},
            {"name": "staging", "url": "git@github.com:acme/functions.git", "ref": {"tag": "staging"},
             "path": "clusters/staging", "namespaces": ["staging", RELEASE_NAMESPACE], "selfHeal": true,
             "mode": "operator", "credentials": {"ssh": {"secretName": "git-ssh"}}},
            {"name": "shared", "url": "https://git.example.com/shared.git",
             "ref": {"commit": "0123456789abcdef0123456789abcdef01234567"},
             "namespaces": ["prod"], "inventoryNamespace": "prod", "prune": false},
        ],
        "webhook": {"secretName": "meshops-webhook"},
        "github": {"apiUrl": "https://github.example.com/api/v3", "targetUrl": "https://grafana.example.com/d/meshops",
                   "app": {"appId": 123, "installationId": 456, "privateKey": {"secretName": "meshops-github-app"}}},
        "leaderElection": {"leaseName": "meshops-leader", "leaseDuration": "30s"},
        "stateDir": {"path": "/var/cache/meshops",
                     "persistence": {"enabled": true, "storageClassName": "standard", "size": "5Gi",
                                     "accessModes": ["ReadWriteMany"]}},
        "rbac": {"secrets": false, "ownerReferencesPermissionEnforcement": true},
        "serviceAccount": {"annotations": {"example.com/role": "meshops"}},
        "image": {"repository": "registry.example.com/meshops",
                  "digest": format!("sha256:{}", "a".repeat(64)), "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "logLevel": "meshops=debug",
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"}],
        "podAnnotations": {"example.com/team": "streaming"},
        "podLabels": {"team": "streaming"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gitops", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "ingress": {"enabled": true, "className": "nginx", "host": "meshops.example.com",
                    "annotations": {"example.com/tls": "on"},
                    "tls": [{"secretName": "meshops-tls", "hosts": ["meshops.example.com"]}]},
        "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
                    "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"},
                                       "noSuccessfulSync": {"intervals": 4}}},
    })
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut base
    } else {
        base.pointer_mut(parent)
            .unwrap_or_else(|| panic!("{parent}"))
    };
    target[key] = value;
    base
}

// ---------------------------------------------------------------------------------------------
// Reading rendered objects.

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The AgentConfig the chart renders, as text.
fn agent_yaml(rendered: &Rendered) -> String {
    let config_map = rendered.one("ConfigMap");
    config_map["data"]["agent.yaml"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `meshops agent --config FILE --check` on the rendered AgentConfig. The top-level `github:`
/// block is checked here only once schemas/agentconfig.json knows it (it is being added);
/// until then it is taken out first and asserted by the caller.
fn check_agent_config(text: &str) {
    let mut config: Value = serde_yaml::from_str(text).unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/agentconfig.json")).unwrap(),
    )
    .unwrap();
    if schema["properties"].get("github").is_none() {
        config.as_object_mut().unwrap().remove("github");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, serde_yaml::to_string(&config).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(["agent", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshops agent --check refused the chart's AgentConfig:\n{text}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file the AgentConfig names, with the (Secret, key) mounted there.
fn mounted_secrets(deployment: &Value, config: &Value) -> BTreeMap<String, (String, String)> {
    let mut files: Vec<String> = Vec::new();
    let mut push = |v: &Value| {
        if let Some(path) = v.as_str() {
            files.push(path.to_owned());
        }
    };
    push(&config["webhook"]["secretFile"]);
    push(&config["github"]["tokenFile"]);
    push(&config["github"]["app"]["privateKeyFile"]);
    for source in config["sources"].as_array().unwrap() {
        for key in ["tokenFile", "sshKeyFile", "knownHostsFile"] {
            push(&source["credentials"][key]);
        }
    }
    let pod = &deployment["spec"]["template"]["spec"];
    let mounts = container(deployment)["volumeMounts"].as_array().unwrap();
    let mut out = BTreeMap::new();
    for file in files {
        let (dir, base) = file.rsplit_once('/').unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{file}: nothing is mounted at {dir}"));
        assert_eq!(mount["readOnly"], true, "{mount}");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let secret = &volume["secret"];
        assert_eq!(secret["defaultMode"], 0o440, "{volume}");
        let item = secret["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["path"] == base)
            .unwrap_or_else(|| panic!("{file}: the Secret volume has no item {base}: {volume}"));
        out.insert(
            file.clone(),
            (
                secret["secretName"].as_str().unwrap().to_owned(),
                item["key"].as_str().unwrap().to_owned(),
            ),
        );
    }
    out
}

fn alert<'a>(rule: &'a Value, name: &str) -> Vec<&'a Value> {
    rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["alert"] == name)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests that need no Helm.

/// The chart ships exactly the CRDs `meshops crds` prints (tests/crds.rs regenerates them with
/// UPDATE_SCHEMAS=1).
#[test]
fn the_chart_carries_what_meshops_crds_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshops"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(repo().join("charts/meshops/crds/function-mesh.yaml")).unwrap();
    assert!(
        committed == String::from_utf8(out.stdout).unwrap(),
        "charts/meshops/crds/function-mesh.yaml differs from `meshops crds`; run \
         UPDATE_SCHEMAS=1 cargo test --test crds"
    );
    let crds = std::fs::read_dir(repo().join("charts/meshops/crds")).unwrap();
    assert_eq!(
        crds.count(),
        1,
        "charts/meshops/crds holds one generated file"
    );
}

/// The RBAC's list of kinds covers whatever meshops renders from the bundled examples and the
/// kinds a repository may hold.
#[test]
fn the_rbac_covers_every_kind_meshops_renders() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(["render", "-o", "json"])
        .arg(repo().join("examples"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut kinds: BTreeSet<(String, String)> = objects
        .iter()
        .map(|o| {
            (
                o["apiVersion"].as_str().unwrap().to_owned(),
                o["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Rendered only when a manifest asks (VPA, Istio) or held as they are (FunctionMesh).
    for (api_version, kind) in [
        ("autoscaling.k8s.io/v1", "VerticalPodAutoscaler"),
        ("security.istio.io/v1", "AuthorizationPolicy"),
        ("compute.functionmesh.io/v1alpha1", "FunctionMesh"),
    ] {
        kinds.insert((api_version.to_owned(), kind.to_owned()));
    }
    let covered: BTreeSet<(String, String)> = APPLIED
        .iter()
        .map(|(_, _, api_version, kind)| (api_version.to_string(), kind.to_string()))
        .collect();
    assert_eq!(kinds, covered);
}

/// The image the Dockerfile builds is the one the chart runs: same version, same user, the
/// `meshops` entrypoint the chart passes `agent …` to.
#[test]
fn the_chart_runs_the_image_the_dockerfile_builds() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("charts/meshops/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("charts/meshops/values.yaml")).unwrap(),
    )
    .unwrap();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        last_stage.starts_with("gcr.io/distroless/static-debian12:nonroot"),
        "{last_stage}"
    );
    // distroless's nonroot user is 65532, the chart's runAsUser.
    assert!(last_stage.contains("\nUSER 65532:65532\n"));
    assert!(last_stage.contains("\nENTRYPOINT [\"/usr/local/bin/meshops\"]\n"));
    assert!(last_stage.contains("\nCMD [\"agent\"]\n"));
    let repository = values["image"]["repository"].as_str().unwrap();
    assert!(
        dockerfile.contains(&format!("-t {repository}:{}", env!("CARGO_PKG_VERSION"))),
        "the Dockerfile's build line tags {repository}"
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target"), "{ignore}");
}

// ---------------------------------------------------------------------------------------------
// The manifest reference, generated from schemas/.

/// Markdown table cell text.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn anchor(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// `io.k8s.api.core.v1.Container` → `Container` (core/v1).
fn kubernetes_type(reference: &str) -> String {
    let parts: Vec<&str> = reference.split('.').collect();
    let name = parts[parts.len() - 1];
    let version = parts
        .get(parts.len().wrapping_sub(2))
        .copied()
        .unwrap_or("");
    if version.starts_with('v') && version[1..].starts_with(|c: char| c.is_ascii_digit()) {
        format!("`{name}` ({}/{version})", parts[parts.len() - 3])
    } else {
        format!("`{name}`")
    }
}

fn type_of(node: &Value) -> String {
    if node == &Value::Bool(true) {
        return "any".into();
    }
    if let Some(reference) = node["$ref"].as_str() {
        let name = reference.trim_start_matches("#/$defs/");
        return if name.starts_with("io.k8s.") {
            kubernetes_type(name)
        } else {
            format!("[{name}](#{})", anchor(name))
        };
    }
    if let Some(constant) = node.get("const") {
        return format!(
            "`{}`",
            constant
                .as_str()
                .map_or(constant.to_string(), str::to_owned)
        );
    }
    if let Some(values) = node["enum"].as_array() {
        let listed: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect();
        return format!("one of {}", listed.join(", "));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = node[key].as_array() {
            let types: Vec<String> = options.iter().map(type_of).collect();
            return types.join(" or ");
        }
    }
    if node["x-kubernetes-int-or-string"] == true {
        return "integer or string".into();
    }
    let base = match &node["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => String::new(),
    };
    match base.as_str() {
        "array" => format!("list of {}", type_of(&node["items"])),
        "object" if node["additionalProperties"].is_object() => {
            format!("map of {}", type_of(&node["additionalProperties"]))
        }
        "object" if node["additionalProperties"] == true || node.get("properties").is_none() => {
            "object".into()
        }
        _ => match node["format"].as_str() {
            Some(format) => format!("{base} ({format})"),
            None if base.is_empty() => "any".into(),
            None => base,
        },
    }
}

/// Description plus the constraints the schema states.
fn notes_of(node: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(text) = node["description"].as_str() {
        parts.push(text.to_owned());
    }
    for option in node["oneOf"].as_array().into_iter().flatten() {
        if let (Some(value), Some(text)) =
            (option["const"].as_str(), option["description"].as_str())
        {
            parts.push(format!("`{value}`: {text}"));
        }
    }
    for (key, label) in [
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("default", "default"),
    ] {
        if let Some(value) = node.get(key) {
            parts.push(format!("{label} {value}"));
        }
    }
    if let Some(pattern) = node["pattern"].as_str() {
        parts.push(format!("pattern `{pattern}`"));
    }
    cell(&parts.join("; "))
}

/// One row per property (nested anonymous objects flattened into `a.b`).
fn rows(node: &Value, prefix: &str, out: &mut Vec<String>) {
    let required: BTreeSet<&str> = node["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (name, property) in node["properties"].as_object().into_iter().flatten() {
        let path = format!("{prefix}{name}");
        let mark = if required.contains(name.as_str()) {
            "yes"
        } else {
            ""
        };
        out.push(format!(
            "| `{path}` | {} | {mark} | {} |",
            cell(&type_of(property)),
            notes_of(property)
        ));
        let anonymous = property.get("$ref").is_none()
            && property["type"] == "object"
            && property.get("properties").is_some();
        if anonymous {
            rows(property, &format!("{path}."), out);
        }
    }
}

fn table(node: &Value) -> String {
    let mut lines = vec![
        "| field | type | required | description |".to_owned(),
        "| --- | --- | --- | --- |".to_owned(),
    ];
    rows(node, "", &mut lines);
    lines.join("\n")
}

/// docs/reference.md from schemas/*.json: one section per kind, one per meshops type.
fn reference() -> String {
    let kinds = [
        ("Function", "function.json", "a Pulsar Function"),
        ("Source", "source.json", "a Pulsar IO source connector"),
        ("Sink", "sink.json", "a Pulsar IO sink connector"),
        (
            "FunctionMesh",
            "functionmesh.json",
            "Functions, Sources and Sinks deployed together (children `<mesh>-<name>`)",
        ),
        (
            "BackendConfig",
            "backendconfig.json",
            "defaults for the components of a namespace (`backend-config`)",
        ),
        (
            "Settings",
            "settings.json",
            "`meshops.yaml` at a source's root: render settings",
        ),
        (
            "ConfigMap",
            "configmap.json",
            "applied as it is (the Pulsar connection, for instance)",
        ),
        ("Secret", "secret.json", "applied as it is; values masked in every diff"),
        ("ServiceAccount", "serviceaccount.json", "applied as it is"),
        (
            "AgentConfig",
            "agentconfig.json",
            "the agent's configuration file, never part of a source ([agent-config.md](agent-config.md))",
        ),
    ];
    let mut out = String::from(
        "# Manifest reference\n\n\
         <!-- Generated from schemas/*.json by tests/chart.rs. Do not edit: run\n     \
         UPDATE_DOCS=1 cargo test --test chart -->\n\n\
         Every kind a meshops repository holds, field by field, as the JSON Schemas in\n\
         [`schemas/`](../schemas/) state it (`meshops schema KIND` prints one; editors use them\n\
         through `yaml-language-server`, see [editor-setup.md](editor-setup.md)). Unknown fields\n\
         are errors. Kubernetes types such as `ObjectMeta` or `Container` are the Kubernetes\n\
         API's own (the [Kubernetes API reference](https://kubernetes.io/docs/reference/kubernetes-api/)).\n\
         What the fields do when rendered: [rendering.md](rendering.md); the rules beyond the\n\
         schema: [validation.md](validation.md).\n\n\
         | kind | apiVersion | what |\n| --- | --- | --- |\n",
    );
    let mut schemas = Vec::new();
    for (kind, file, what) in kinds {
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("schemas").join(file)).unwrap(),
        )
        .unwrap();
        let api_version = schema["properties"]["apiVersion"]["const"]
            .as_str()
            .unwrap()
            .to_owned();
        out.push_str(&format!(
            "| [{kind}](#{}) | `{api_version}` | {what} |\n",
            anchor(kind)
        ));
        schemas.push((kind, file, api_version, schema));
    }
    let mut types: BTreeMap<String, Value> = BTreeMap::new();
    for (kind, file, api_version, schema) in &schemas {
        out.push_str(&format!(
            "\n## {kind}\n\n`apiVersion: {api_version}`, `kind: {kind}` — [`schemas/{file}`](../schemas/{file})\n\n{}\n",
            table(schema)
        ));
        for (name, definition) in schema["$defs"].as_object().into_iter().flatten() {
            if name.starts_with("io.k8s.") {
                continue;
            }
            if let Some(seen) = types.get(name) {
                assert_eq!(seen, definition, "$defs/{name} differs between schemas");
            }
            types.insert(name.clone(), definition.clone());
        }
    }
    out.push_str("\n## Types\n");
    for (name, definition) in &types {
        out.push_str(&format!("\n### {name}\n\n"));
        let notes = notes_of(definition);
        if definition.get("properties").is_some() {
            if let Some(text) = definition["description"].as_str() {
                out.push_str(&format!("{}\n\n", cell(text)));
            }
            out.push_str(&table(definition));
            out.push('\n');
        } else {
            out.push_str(&type_of(definition));
            if !notes.is_empty() {
                out.push_str(&format!(". {notes}"));
            }
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_manifest_reference_is_current() {
    let path = repo().join("docs/reference.md");
    let generated = reference();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/reference.md differs from schemas/; run UPDATE_DOCS=1 cargo test --test chart"
    );
}

/// docs/agent-config.md names every field of the AgentConfig schema.
#[test]
fn the_agent_config_doc_names_every_field() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/agentconfig.json")).unwrap(),
    )
    .unwrap();
    let doc = std::fs::read_to_string(repo().join("docs/agent-config.md")).unwrap();
    let mut fields = BTreeSet::new();
    let mut stack = vec![&schema];
    while let Some(node) = stack.pop() {
        for (name, property) in node["properties"].as_object().into_iter().flatten() {
            fields.insert(name.clone());
            stack.push(property);
        }
        for definition in node["$defs"].as_object().into_iter().flatten() {
            stack.push(definition.1);
        }
    }
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/agent-config.md does not name {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rendering with Helm.

#[test]
fn the_chart_lints_and_renders() {
    let Some(mut helm) = helm_or_skip("the chart's lint and render tests") else {
        return;
    };
    eprintln!("chart: Helm {} (helm-python-sdk)", helm.version);

    // Lint, strict, with the least values (the chart's ci/ file) and with every option on.
    let ci: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("charts/meshops/ci/minimal-values.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(ci, minimal());
    for values in [minimal(), everything()] {
        let report = helm.lint(&values);
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap() >= 2)
            .collect();
        assert!(serious.is_empty(), "{serious:#?}");
        assert_eq!(report["errors"], json!([]), "{report}");
    }

    // The chart's defaults alone name no repository: install stops with what to set.
    let error = helm
        .render(&json!({}), RELEASE_NAMESPACE)
        .err()
        .expect("renders without sources");
    assert!(
        error.contains("sources: at least one source is required"),
        "{error}"
    );

    // Defaults plus one source.
    let rendered = helm.render(&minimal(), RELEASE_NAMESPACE).unwrap();
    assert_eq!(
        rendered.kinds(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "no Ingress, ServiceMonitor, PrometheusRule, PVC or Secret unless asked for"
    );
    let deployment = rendered.one("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let agent = container(deployment);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(pod["serviceAccountName"], "meshops");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &agent["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert!(security["capabilities"].get("add").is_none());
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(agent["image"], "ghcr.io/meshops/meshops:0.1.0");
    assert!(agent["resources"]["requests"]["cpu"].is_string());
    assert!(agent["resources"]["requests"]["memory"].is_string());
    assert!(agent["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        agent["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        agent["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    assert_eq!(agent["ports"][0]["containerPort"], 8080);
    assert_eq!(
        agent["args"],
        json!([
            "agent",
            "--config=/etc/meshops/config/agent.yaml",
            "--listen=0.0.0.0:8080"
        ])
    );
    let env: BTreeMap<&str, &Value> = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                &e["valueFrom"]["fieldRef"]["fieldPath"],
            )
        })
        .collect();
    assert_eq!(env["POD_NAME"], "metadata.name");
    assert_eq!(env["POD_NAMESPACE"], "metadata.namespace");
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"].is_string()
    );

    // The config: the state dir is a writable emptyDir (the root filesystem is read-only), the
    // file the agent reads is the ConfigMap's, leader election in the release namespace.
    let text = agent_yaml(&rendered);
    let config: Value = serde_yaml::from_str(&text).unwrap();
    let mount_of = |path: &str| {
        agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))["name"]
            .clone()
    };
    let volume = |name: &Value| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| &v["name"] == name)
            .unwrap()
            .clone()
    };
    assert!(volume(&mount_of(config["stateDir"].as_str().unwrap()))["emptyDir"].is_object());
    assert!(volume(&mount_of("/tmp"))["emptyDir"].is_object());
    assert_eq!(
        volume(&mount_of("/etc/meshops/config"))["configMap"]["name"],
        rendered.one("ConfigMap")["metadata"]["name"]
    );
    assert_eq!(
        config["leaderElection"],
        json!({"enabled": true, "namespace": RELEASE_NAMESPACE, "leaseName": "meshops", "leaseDuration": "15s"})
    );
    assert!(config.get("webhook").is_none() && config.get("github").is_none());
    // The source's allow-list leaves the release namespace out: its inventory goes to prod.
    assert_eq!(config["sources"][0]["inventoryNamespace"], "prod");
    check_agent_config(&text);

    // RBAC: the applied kinds cluster-wide, the Lease in the release namespace only.
    let cluster_role = rendered.one("ClusterRole");
    assert_eq!(
        rule_triples(&cluster_role["rules"]),
        expected_cluster_rules(true, false)
    );
    let binding = rendered.one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], cluster_role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "meshops", "namespace": RELEASE_NAMESPACE}])
    );
    let lease_role = rendered.one("Role");
    assert_eq!(lease_role["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(
        lease_role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["meshops"], "verbs": ["get", "update"]},
        ])
    );
    let service = rendered.one("Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert!(rendered.notes().contains("/api/v1/sources"));
    assert!(rendered
        .notes()
        .contains("meshops crds | kubectl apply --server-side"));

    // Every option on.
    let rendered = helm.render(&everything(), RELEASE_NAMESPACE).unwrap();
    assert_eq!(
        rendered.kinds(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Ingress",
            "PersistentVolumeClaim",
            "PrometheusRule",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    let deployment = rendered.one("Deployment");
    let agent = container(deployment);
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        agent["image"],
        format!("registry.example.com/meshops@sha256:{}", "a".repeat(64))
    );
    let text = agent_yaml(&rendered);
    let config: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        config["github"],
        json!({"apiUrl": "https://github.example.com/api/v3",
               "app": {"appId": 123, "installationId": 456, "privateKeyFile": "/etc/meshops/github/app.pem"},
               "targetUrl": "https://grafana.example.com/d/meshops"})
    );
    assert_eq!(
        config["webhook"],
        json!({"secretFile": "/etc/meshops/webhook/secret"})
    );
    assert_eq!(config["stateDir"], "/var/cache/meshops");
    assert_eq!(
        config["sources"][0],
        json!({"name": "prod", "url": "https://github.com/acme/functions.git", "ref": "main",
               "path": "clusters/prod", "interval": "30s", "namespaces": ["prod"], "prune": true,
               "selfHeal": false, "driftInterval": "10m", "mode": "native", "timeout": "2m",
               "rolloutTimeout": "3m", "github": {"repo": "acme/functions"}, "inventoryNamespace": "prod",
               "pullRequests": {"forks": false, "maxQueued": 3},
               "credentials": {"tokenFile": "/etc/meshops/git/prod/token"}})
    );
    assert_eq!(config["sources"][1]["ref"], json!({"tag": "staging"}));
    assert_eq!(
        config["sources"][1]["inventoryNamespace"],
        RELEASE_NAMESPACE
    );
    assert_eq!(
        config["sources"][2]["ref"],
        json!({"commit": "0123456789abcdef0123456789abcdef01234567"})
    );
    assert_eq!(config["sources"][2]["prune"], false);
    check_agent_config(&text);
    // Every secret by reference: no Secret rendered, each file the config names mounted
    // read-only from the Secret and key the values name.
    assert!(rendered.all("Secret").is_empty());
    assert_eq!(
        mounted_secrets(deployment, &config),
        BTreeMap::from([
            (
                "/etc/meshops/webhook/secret".to_owned(),
                ("meshops-webhook".to_owned(), "secret".to_owned())
            ),
            (
                "/etc/meshops/github/app.pem".to_owned(),
                (
                    "meshops-github-app".to_owned(),
                    "private-key.pem".to_owned()
                )
            ),
            (
                "/etc/meshops/git/prod/token".to_owned(),
                ("git-token".to_owned(), "pat".to_owned())
            ),
            (
                "/etc/meshops/git/staging/identity".to_owned(),
                ("git-ssh".to_owned(), "ssh-privatekey".to_owned())
            ),
            (
                "/etc/meshops/git/staging/known_hosts".to_owned(),
                ("git-ssh".to_owned(), "known_hosts".to_owned())
            ),
        ])
    );
    let pvc = rendered.one("PersistentVolumeClaim");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    let state = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert_eq!(
        state["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    let env: Vec<&Value> = agent["env"].as_array().unwrap().iter().collect();
    assert!(env.contains(&&json!({"name": "MESHOPS_LOG", "value": "meshops=debug"})));
    assert!(
        env.contains(&&json!({"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"}))
    );
    // RBAC: no Secrets, finalizers for OwnerReferencesPermissionEnforcement.
    assert_eq!(
        rule_triples(&rendered.one("ClusterRole")["rules"]),
        expected_cluster_rules(false, true)
    );
    // The Ingress exposes the webhook and nothing else.
    let ingress = rendered.one("Ingress");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        ingress["spec"]["rules"],
        json!([{"host": "meshops.example.com", "http": {"paths": [{
            "path": "/webhooks/github", "pathType": "Exact",
            "backend": {"service": {"name": "meshops", "port": {"name": "http"}}}}]}}])
    );
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "meshops-tls");
    let monitor = rendered.one("ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        rendered.one("Service")["spec"]["selector"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    // The alerts of docs/operations.md.
    let rule = rendered.one("PrometheusRule");
    let failing = alert(rule, "MeshopsSyncFailing");
    assert_eq!(failing.len(), 1);
    assert!(failing[0]["expr"].as_str().unwrap().contains(
        r#"increase(meshops_reconcile_total{job="meshops", result!~"applied|unchanged|drifted|healed|stopped"}[15m])"#
    ));
    let drift = alert(rule, "MeshopsDrift");
    assert_eq!(drift.len(), 1);
    assert!(drift[0]["expr"]
        .as_str()
        .unwrap()
        .contains(r#"max by (namespace, source) (meshops_drift_objects{job="meshops"}) > 0"#));
    assert_eq!(drift[0]["for"], "15m");
    // One per source: 4 intervals of 30s (prod) and of the default 1m (staging, shared).
    let stale = alert(rule, "MeshopsNoSuccessfulSync");
    assert_eq!(stale.len(), 3);
    for (rule, source, seconds) in [
        (stale[0], "prod", 120),
        (stale[1], "staging", 240),
        (stale[2], "shared", 240),
    ] {
        let expr = rule["expr"].as_str().unwrap();
        assert!(expr.contains(&format!(
            r#"time() - max by (namespace, source) (meshops_last_applied_timestamp_seconds{{job="meshops", source="{source}"}}) > {seconds}"#
        )), "{expr}");
        assert!(expr.contains(&format!(
            r#"increase(meshops_reconcile_total{{job="meshops", source="{source}", result=~"applied|unchanged|drifted|healed"}}[{seconds}s])"#
        )), "{expr}");
        assert!(expr.contains(&format!(
            r#"or
    0 * max by (namespace, source) (meshops_last_applied_timestamp_seconds{{job="meshops", source="{source}"}})
  ) == 0"#
        )), "{expr}");
        assert_eq!(rule["labels"]["severity"], "critical");
    }
    assert!(rendered
        .notes()
        .contains("https://meshops.example.com/webhooks/github"));

    // A GitHub token instead of an App.
    let token = with(
        everything(),
        "/github",
        json!({"token": {"secretName": "meshops-github"}}),
    );
    let rendered = helm.render(&token, RELEASE_NAMESPACE).unwrap();
    let config: Value = serde_yaml::from_str(&agent_yaml(&rendered)).unwrap();
    assert_eq!(
        config["github"],
        json!({"apiUrl": "https://api.github.com", "tokenFile": "/etc/meshops/github/token"})
    );
    assert_eq!(
        mounted_secrets(rendered.one("Deployment"), &config)["/etc/meshops/github/token"],
        ("meshops-github".to_owned(), "token".to_owned())
    );

    // Namespaced RBAC: a Role + RoleBinding per namespace the sources list, the inventory of a
    // source without an allow-list in the release namespace, nothing cluster-wide.
    let namespaced = json!({
        "rbac": {"scope": "namespaces"},
        "sources": [
            {"name": "prod", "url": "https://github.com/acme/functions.git", "namespaces": ["prod", "staging"]},
            {"name": "any", "url": "https://github.com/acme/any.git"},
        ],
    });
    let rendered = helm.render(&namespaced, RELEASE_NAMESPACE).unwrap();
    assert!(
        rendered.all("ClusterRole").is_empty() && rendered.all("ClusterRoleBinding").is_empty()
    );
    let roles: BTreeSet<(String, String)> = rendered
        .all("Role")
        .iter()
        .map(|r| {
            (
                r["metadata"]["namespace"].as_str().unwrap().to_owned(),
                r["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("prod", "meshops"),
        ("staging", "meshops"),
        (RELEASE_NAMESPACE, "meshops-inventory"),
        (RELEASE_NAMESPACE, "meshops-leader-election"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(roles, expected);
    assert_eq!(rendered.all("RoleBinding").len(), 4);
    let inventory_role = rendered
        .all("Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "meshops-inventory")
        .unwrap();
    assert_eq!(
        inventory_role["rules"][0]["resourceNames"],
        json!(["meshops-inventory-any"])
    );

    // Bad values fail before anything is installed, naming the value.
    let source = |patch: Value| {
        let mut source = json!({"name": "prod", "url": "https://github.com/acme/functions.git"});
        source
            .as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        json!({"sources": [source]})
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "an unknown value",
            json!({"sources": minimal()["sources"], "replicas": 2}),
            "'replicas' not allowed",
        ),
        (
            "a source name that is no DNS label",
            source(json!({"name": "Prod"})),
            "/sources/0/name': 'Prod' does not match",
        ),
        (
            "a source without url",
            json!({"sources": [{"name": "prod"}]}),
            "missing property 'url'",
        ),
        (
            "a duration in words",
            source(json!({"interval": "1 minute"})),
            "/sources/0/interval",
        ),
        (
            "an unknown source field",
            source(json!({"branch": "main"})),
            "'branch' not allowed",
        ),
        (
            "a token given as a value",
            source(json!({"credentials": {"tokenFile": "/x"}})),
            "'tokenFile' not allowed",
        ),
        (
            "token and ssh at once",
            source(
                json!({"credentials": {"token": {"secretName": "a"}, "ssh": {"secretName": "b"}}}),
            ),
            "/sources/0/credentials': maxProperties",
        ),
        (
            "a short commit",
            source(json!({"ref": {"commit": "abc123"}})),
            "/sources/0/ref/commit",
        ),
        (
            "an unknown mode",
            source(json!({"mode": "hybrid"})),
            "/sources/0/mode",
        ),
        (
            "an unknown RBAC scope",
            with(minimal(), "/rbac", json!({"scope": "everything"})),
            "/rbac/scope",
        ),
        (
            "no replica",
            with(minimal(), "/replicaCount", json!(0)),
            "/replicaCount",
        ),
        (
            "a GitHub App without ids",
            with(
                minimal(),
                "/github",
                json!({"app": {"privateKey": {"secretName": "app"}}}),
            ),
            "/github/app': missing properties 'appId', 'installationId'",
        ),
        (
            "a tag for a digest",
            with(
                minimal(),
                "/image",
                json!({"repository": "x", "digest": "latest"}),
            ),
            "/image/digest",
        ),
        (
            "a bad lease duration",
            with(minimal(), "/leaderElection", json!({"leaseDuration": "15"})),
            "/leaderElection/leaseDuration",
        ),
        (
            "the same source twice",
            json!({"sources": [minimal()["sources"][0], minimal()["sources"][0]]}),
            "\"prod\" is defined twice",
        ),
        (
            "two replicas without leader election",
            with(minimal(), "/leaderElection", json!({"enabled": false})),
            "needs replicaCount: 1",
        ),
        (
            "a GitHub token and an App",
            with(
                minimal(),
                "/github",
                json!({"token": {"secretName": "t"}, "app": {"appId": 1, "installationId": 2, "privateKey": {"secretName": "k"}}}),
            ),
            "not both",
        ),
        (
            "namespaced RBAC without namespaces",
            json!({"rbac": {"scope": "namespaces"}, "sources": [{"name": "prod", "url": "https://x/y.git"}]}),
            "rbac.scope: namespaces needs",
        ),
        (
            "one ReadWriteOnce claim for two replicas",
            with(
                minimal(),
                "/stateDir",
                json!({"persistence": {"enabled": true}}),
            ),
            "it needs accessModes [ReadWriteMany]",
        ),
        (
            "no ServiceAccount to use",
            with(minimal(), "/serviceAccount", json!({"create": false})),
            "serviceAccount.name",
        ),
    ];
    for (what, values, expected) in cases {
        match helm.render(&values, RELEASE_NAMESPACE) {
            Ok(_) => panic!("{what}: rendered"),
            Err(error) => assert!(error.contains(expected), "{what}: {error}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Installing into a real API server.

/// Asks the API server (as admin) whether the agent's service account may do `what`.
async fn allowed(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    what: &Access,
) -> bool {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{namespace}:{service_account}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "resourceAttributes": {
                "verb": what.verb, "group": what.group, "resource": what.resource,
                "subresource": what.subresource, "namespace": what.namespace, "name": what.name,
            },
        },
    });
    let request = http::Request::post("/apis/authorization.k8s.io/v1/subjectaccessreviews")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&review).unwrap())
        .unwrap();
    let answer: Value = client.request(request).await.unwrap();
    answer["status"]["allowed"] == true
}

/// Every `should` allowed and every `should_not` denied, all failures listed at once.
async fn assert_access(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    should: &[Access],
    should_not: &[Access],
) {
    let mut wrong = Vec::new();
    for what in should {
        if !allowed(client, namespace, service_account, what).await {
            wrong.push(format!("denied but needed: {what}"));
        }
    }
    for what in should_not {
        if allowed(client, namespace, service_account, what).await {
            wrong.push(format!("allowed but never needed: {what}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

async fn list(client: &kube::Client, path: &str) -> Vec<Value> {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    let answer: Value = client.request(request).await.unwrap();
    answer["items"].as_array().unwrap().clone()
}

/// (kind, namespace/name) of every RBAC binding that names the service account.
async fn bindings_of(client: &kube::Client, namespace: &str, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (kind, path) in [
        (
            "ClusterRoleBinding",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        ),
        (
            "RoleBinding",
            "/apis/rbac.authorization.k8s.io/v1/rolebindings",
        ),
    ] {
        for binding in list(client, path).await {
            let names_it = binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == name
                        && s["namespace"] == namespace
                });
            if names_it {
                let meta = &binding["metadata"];
                let ns = meta["namespace"].as_str().unwrap_or_default();
                out.insert(format!("{kind} {ns}/{}", meta["name"].as_str().unwrap()));
            }
        }
    }
    out
}

async fn get(
    cluster: &Cluster,
    api_version: &str,
    kind: &str,
    ns: &str,
    name: &str,
) -> Option<Value> {
    cluster
        .get(&ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_into_a_real_api_server() {
    let what = "the chart's install test against a real API server";
    let Some(assets) = control_plane::assets() else {
        skipped(what, "no cluster (no kube-apiserver/etcd in $KUBEBUILDER_ASSETS or /usr/local/kubebuilder/bin)");
        return;
    };
    let Some(mut helm) = helm_or_skip(what) else {
        return;
    };
    let started = std::time::Instant::now();
    let plane = control_plane::ControlPlane::start(&assets)
        .await
        .unwrap_or_else(|e| panic!("starting the control plane from {}: {e}", assets.display()));
    eprintln!(
        "chart: kube-apiserver + etcd ready at {} in {:.1}s; Helm {}",
        plane.server,
        started.elapsed().as_secs_f64(),
        helm.version
    );
    let kubeconfig = plane.kubeconfig.clone();
    let cluster = Cluster::connect(Some(&kubeconfig), None).await.unwrap();
    let client = cluster.client().clone();

    // The prometheus-operator CRDs the ServiceMonitor and PrometheusRule need, as their
    // project publishes them (tests/data/crds); the namespaces the agent writes to.
    let mut third_party = Vec::new();
    for file in [
        "prometheus-operator-servicemonitors.monitoring.coreos.com.yaml",
        "prometheus-operator-prometheusrules.monitoring.coreos.com.yaml",
    ] {
        let crd: Value = serde_yaml::from_str(
            &std::fs::read_to_string(repo().join("tests/data/crds").join(file)).unwrap(),
        )
        .unwrap();
        cluster.apply(&crd, false).await.unwrap();
        third_party.push(crd["metadata"]["name"].as_str().unwrap().to_owned());
    }
    control_plane::wait_established(&cluster, &third_party).await;
    for ns in ["prod", "staging"] {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        cluster.apply(&namespace, false).await.unwrap();
    }

    // Cluster-wide, every option on.
    let values = everything();
    let manifest = helm
        .install(
            "install",
            &kubeconfig,
            "meshops",
            RELEASE_NAMESPACE,
            &values,
        )
        .unwrap();
    let kinds: BTreeSet<&str> = manifest
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains("ServiceMonitor") && kinds.contains("PrometheusRule"));
    // Helm installed the Function Mesh CRDs from the chart's crds/ directory.
    let crds: Vec<String> = helm::documents(
        &std::fs::read_to_string(repo().join("charts/meshops/crds/function-mesh.yaml")).unwrap(),
    )
    .iter()
    .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(crds.len(), 5);
    control_plane::wait_established(&cluster, &crds).await;
    // Every object of the release is in the cluster, as rendered.
    for object in &manifest {
        let meta = &object["metadata"];
        let live = get(
            &cluster,
            object["apiVersion"].as_str().unwrap(),
            object["kind"].as_str().unwrap(),
            meta["namespace"].as_str().unwrap_or_default(),
            meta["name"].as_str().unwrap(),
        )
        .await;
        assert!(
            live.is_some(),
            "not installed: {} {}",
            object["kind"],
            meta["name"]
        );
    }
    let deployment = get(
        &cluster,
        "apps/v1",
        "Deployment",
        RELEASE_NAMESPACE,
        "meshops",
    )
    .await
    .unwrap();
    let agent = container(&deployment);
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        agent["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    let rule = get(
        &cluster,
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        RELEASE_NAMESPACE,
        "meshops",
    )
    .await
    .unwrap();
    assert_eq!(alert(&rule, "MeshopsNoSuccessfulSync").len(), 3);

    // RBAC, asked of the API server: every request the agent makes is allowed, nothing else.
    let lease = "meshops-leader";
    let inventories = [
        ("prod", "meshops-inventory-prod"),
        (RELEASE_NAMESPACE, "meshops-inventory-staging"),
        ("prod", "meshops-inventory-shared"),
    ];
    let should = agent_requests(
        &["prod", "staging", "kube-public"],
        lease,
        &inventories,
        false,
    );
    let mut should_not = never_needed("prod");
    should_not.push(access("get", "", "secrets", "prod"));
    should_not.push(access("list", "", "secrets", "staging"));
    assert_access(&client, RELEASE_NAMESPACE, "meshops", &should, &should_not).await;
    // The only grants: one ClusterRole with exactly the agent's rules, the Lease Role.
    let cluster_role = get(
        &cluster,
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "",
        "meshops-meshops",
    )
    .await
    .unwrap();
    assert_eq!(
        rule_triples(&cluster_role["rules"]),
        expected_cluster_rules(false, true)
    );
    assert_eq!(
        bindings_of(&client, RELEASE_NAMESPACE, "meshops").await,
        BTreeSet::from([
            "ClusterRoleBinding /meshops-meshops".to_owned(),
            "RoleBinding meshops/meshops-leader-election".to_owned(),
        ])
    );

    // An upgrade that adds a source: the AgentConfig changes and so does the pod template's
    // checksum, so the agent restarts with it.
    let before =
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone();
    let mut more = everything();
    more["sources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "url": "https://github.com/acme/extra.git", "namespaces": ["prod"]}));
    helm.install("upgrade", &kubeconfig, "meshops", RELEASE_NAMESPACE, &more)
        .unwrap();
    let config_map = get(&cluster, "v1", "ConfigMap", RELEASE_NAMESPACE, "meshops")
        .await
        .unwrap();
    let config: Value =
        serde_yaml::from_str(config_map["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config["sources"][3]["name"], "extra");
    let deployment = get(
        &cluster,
        "apps/v1",
        "Deployment",
        RELEASE_NAMESPACE,
        "meshops",
    )
    .await
    .unwrap();
    assert_ne!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        before
    );

    // Namespaced: a second release that may write to staging only.
    let namespaced_ns = "meshops-staging";
    let values = json!({
        "fullnameOverride": "agent",
        "rbac": {"scope": "namespaces"},
        "sources": [
            {"name": "staging", "url": "https://github.com/acme/functions.git", "namespaces": ["staging"]},
            {"name": "loose", "url": "https://github.com/acme/loose.git"},
        ],
    });
    helm.install("install", &kubeconfig, "agent", namespaced_ns, &values)
        .unwrap();
    let namespaced = |n: &str| {
        let mut request = agent_requests(
            &["staging"],
            "agent",
            &[
                ("staging", "meshops-inventory-staging"),
                (n, "meshops-inventory-loose"),
            ],
            true,
        );
        // The Lease of this release lives in its own namespace.
        for r in request.iter_mut() {
            if r.group == "coordination.k8s.io" {
                r.namespace = n.to_owned();
            }
        }
        request
    };
    let mut should_not = never_needed("prod");
    should_not.extend([
        access("patch", "compute.functionmesh.io", "functions", "prod"),
        access("get", "", "configmaps", "prod"),
        access("create", "events.k8s.io", "events", "prod"),
        access("get", "", "namespaces", "prod").named("prod"),
        access("list", "compute.functionmesh.io", "functions", ""),
        access("get", "", "namespaces", ""),
        access("get", "", "configmaps", namespaced_ns).named("agent"),
        access("delete", "", "configmaps", namespaced_ns),
        access("patch", "coordination.k8s.io", "leases", namespaced_ns).named("meshops-leader"),
    ]);
    assert_access(
        &client,
        namespaced_ns,
        "agent",
        &namespaced(namespaced_ns),
        &should_not,
    )
    .await;
    assert_eq!(
        bindings_of(&client, namespaced_ns, "agent").await,
        BTreeSet::from([
            "RoleBinding meshops-staging/agent-inventory".to_owned(),
            "RoleBinding meshops-staging/agent-leader-election".to_owned(),
            "RoleBinding staging/agent".to_owned(),
        ]),
        "nothing cluster-wide"
    );

    // Uninstalling removes the release's cluster-wide grant and keeps the CRDs (Helm never
    // deletes what crds/ installed).
    helm.uninstall(&kubeconfig, "meshops", RELEASE_NAMESPACE);
    assert!(get(
        &cluster,
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "",
        "meshops-meshops"
    )
    .await
    .is_none());
    assert!(get(
        &cluster,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        &crds[0]
    )
    .await
    .is_some());
    eprintln!(
        "chart: installed, upgraded, checked {} + {} access reviews, uninstalled in {:.1}s",
        should.len(),
        namespaced(namespaced_ns).len(),
        started.elapsed().as_secs_f64()
    );
}
