//! An in-process kube-apiserver double that answers the way the recorded exchanges in
//! tests/data/kube-apiserver do: discovery lists, LIST by label selector, server-side apply
//! (201 on create, 200 on update, nothing persisted on dry-run, a `meshops` managedFields
//! entry), 404 `namespaces "x" not found` as a Status, the plain-text `404 page not found` of a
//! CRD that is not installed, 422 on an immutable StatefulSet change, DELETE (with a uid
//! precondition: 409 when another object holds the name); POST (409 AlreadyExists) and JSON
//! merge patches with a resourceVersion precondition (409 Conflict), as the inventory is
//! written. It logs every write in order and can let another writer in just before one.
#![allow(dead_code)]

pub mod agent;
pub mod control_plane;
pub mod fault_proxy;
pub mod git_servers;
pub mod github;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

/// (group/version, plural, kind) the double serves, with the CRDs optional.
const BUILTIN: &[(&str, &str, &str)] = &[
    ("v1", "namespaces", "Namespace"),
    ("v1", "pods", "Pod"),
    ("v1", "configmaps", "ConfigMap"),
    ("v1", "secrets", "Secret"),
    ("v1", "serviceaccounts", "ServiceAccount"),
    ("v1", "services", "Service"),
    ("apps/v1", "statefulsets", "StatefulSet"),
    (
        "autoscaling/v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
    ),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
];
const FUNCTION_MESH: &[(&str, &str, &str)] = &[
    ("compute.functionmesh.io/v1alpha1", "functions", "Function"),
    ("compute.functionmesh.io/v1alpha1", "sources", "Source"),
    ("compute.functionmesh.io/v1alpha1", "sinks", "Sink"),
    (
        "compute.functionmesh.io/v1alpha1",
        "functionmeshes",
        "FunctionMesh",
    ),
    (
        "compute.functionmesh.io/v1alpha1",
        "backendconfigs",
        "BackendConfig",
    ),
    (
        "autoscaling.k8s.io/v1",
        "verticalpodautoscalers",
        "VerticalPodAutoscaler",
    ),
    (
        "security.istio.io/v1",
        "authorizationpolicies",
        "AuthorizationPolicy",
    ),
];

#[derive(Default)]
pub struct State {
    pub namespaces: BTreeSet<String>,
    pub crds_installed: bool,
    /// (group/version, plural, namespace, name) → object
    pub objects: BTreeMap<(String, String, String, String), Value>,
    next_version: u64,
    /// Refused deletes, by object name.
    pub refuse_delete: BTreeSet<String>,
    /// What RBAC denies, as "verb plural" (`patch statefulsets`).
    pub denied: BTreeSet<String>,
    /// Every write request as it arrived, in order: `POST configmaps/x`, `PATCH
    /// statefulsets/y`, `DELETE functions/z` (dry-runs and status writes left out).
    pub writes: Vec<String>,
    /// Another writer, run once just before the next write request to the object of that
    /// name is handled (so that request meets what it did).
    pub interfere: Option<(String, Interference)>,
}

/// What another writer does to the double's state.
pub type Interference = Box<dyn FnOnce(&mut State) + Send>;

impl State {
    /// A stored object, by kind and name.
    pub fn object_mut(&mut self, kind: &str, name: &str) -> Option<&mut Value> {
        self.objects
            .values_mut()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// Changes a stored object as another writer's update would: a new resourceVersion.
    pub fn rewrite(&mut self, kind: &str, name: &str, change: impl FnOnce(&mut Value)) {
        self.next_version += 1;
        let version = self.next_version.to_string();
        let object = self.object_mut(kind, name).unwrap();
        change(object);
        object["metadata"]["resourceVersion"] = json!(version);
    }

    /// Stores a new object (namespaced, of a built-in kind) as another writer's create would.
    pub fn put(&mut self, mut value: Value) {
        self.next_version += 1;
        value["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
        let plural = BUILTIN
            .iter()
            .chain(FUNCTION_MESH)
            .find(|(gv, _, kind)| value["apiVersion"] == *gv && value["kind"] == *kind)
            .map(|(_, plural, _)| plural.to_string())
            .unwrap();
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        let key = (
            text(&value["apiVersion"]),
            plural,
            text(&value["metadata"]["namespace"]),
            text(&value["metadata"]["name"]),
        );
        self.objects.insert(key, value);
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[derive(Clone, Default)]
pub struct FakeApiServer(pub Arc<Mutex<State>>);

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

fn not_served() -> Response<Body> {
    Response::builder()
        .status(404)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(b"404 page not found\n".to_vec()))
        .unwrap()
}

/// A `fieldsV1` for every key the applied object sets, as the server records it.
fn fields(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (format!("f:{k}"), fields(v)))
                .collect(),
        ),
        _ => json!({}),
    }
}

fn matches(labels: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        labels[key].as_str() == Some(value)
    })
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
    })
}

impl FakeApiServer {
    /// Serves the double over HTTP on 127.0.0.1 (for the CLI, which connects through a
    /// kubeconfig); returns the URL.
    pub async fn listen(&self) -> String {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let server = server.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let response = server
                                    .handle(Request::from_parts(parts, Body::from(bytes.to_vec())))
                                    .await;
                                let (parts, body) = response.into_parts();
                                let bytes = body.collect_bytes().await.unwrap_or_default();
                                Ok::<_, Infallible>(Response::from_parts(
                                    parts,
                                    http_body_util::Full::new(bytes),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        url
    }

    /// A kubeconfig pointing at `url`, without credentials.
    pub fn kubeconfig(url: &str, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n"
            ),
        )
        .unwrap();
        path
    }

    pub fn new(namespaces: &[&str], crds_installed: bool) -> FakeApiServer {
        let state = State {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            crds_installed,
            ..Default::default()
        };
        FakeApiServer(Arc::new(Mutex::new(state)))
    }

    /// A [`Cluster`] connected to the double the way the CLI connects: over HTTP on
    /// 127.0.0.1, through a kubeconfig.
    pub async fn cluster(&self) -> meshops::cluster::Cluster {
        let url = self.listen().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = FakeApiServer::kubeconfig(&url, dir.path());
        meshops::cluster::Cluster::connect(Some(&kubeconfig), None)
            .await
            .unwrap()
    }

    /// A live object, by kind and name.
    pub fn find(&self, kind: &str, name: &str) -> Option<Value> {
        self.0
            .lock()
            .unwrap()
            .objects
            .values()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
    }

    /// A foreign writer (like `kubectl edit`) changing an object and taking a field from us.
    pub fn edit(&self, kind: &str, name: &str, pointer: &str, value: Value, taken_field: &str) {
        let mut state = self.0.lock().unwrap();
        let object = state
            .objects
            .values_mut()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap();
        *object.pointer_mut(pointer).unwrap() = value;
        let managed = object["metadata"]["managedFields"].as_array_mut().unwrap();
        let ours = managed
            .iter_mut()
            .find(|m| m["manager"] == "meshops")
            .unwrap();
        let mut path: Vec<String> = pointer
            .trim_start_matches('/')
            .split('/')
            .map(|p| format!("f:{p}"))
            .collect();
        let last = path.pop().unwrap();
        let mut node = &mut ours["fieldsV1"];
        for segment in &path {
            node = &mut node[segment.as_str()];
        }
        node.as_object_mut().map(|m| m.remove(&last));
        managed.push(json!({"manager": "kubectl-edit", "operation": "Update", "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {taken_field: {}}}));
    }

    fn served(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        let crds = self.0.lock().unwrap().crds_installed;
        BUILTIN
            .iter()
            .chain(if crds { FUNCTION_MESH } else { &[] })
            .copied()
            .collect()
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let body = body.collect_bytes().await.unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (parts.method.as_str(), segments.as_slice()) {
            // RBAC allows everything except what a test denies.
            ("POST", ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]) => {
                let mut review: Value = serde_json::from_slice(&body).unwrap();
                let attributes = &review["spec"]["resourceAttributes"];
                let asked = format!(
                    "{} {}",
                    attributes["verb"].as_str().unwrap(),
                    attributes["resource"].as_str().unwrap()
                );
                let allowed = !self.0.lock().unwrap().denied.contains(&asked);
                review["status"] = json!({"allowed": allowed});
                return json_response(201, &review);
            }
            ("GET", ["api", "v1", "namespaces", name]) => {
                return if self.0.lock().unwrap().namespaces.contains(*name) {
                    json_response(
                        200,
                        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
                    )
                } else {
                    status(404, "NotFound", &format!("namespaces \"{name}\" not found"))
                };
            }
            _ => {}
        }
        // /api/v1/... or /apis/<group>/<version>/...
        let (gv, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => ("v1".to_owned(), rest.to_vec()),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest.to_vec()),
            _ => return not_served(),
        };
        let served: Vec<_> = self
            .served()
            .into_iter()
            .filter(|(g, _, _)| *g == gv)
            .collect();
        if served.is_empty() {
            return not_served();
        }
        if rest.is_empty() {
            let resources: Vec<Value> = served
                .iter()
                .map(|(_, plural, kind)| json!({"name": plural, "singularName": kind.to_lowercase(), "namespaced": *kind != "Namespace", "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}))
                .collect();
            return json_response(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            );
        }
        let ["namespaces", namespace, plural, name @ ..] = rest.as_slice() else {
            return not_served();
        };
        let Some(&(_, _, kind)) = served.iter().find(|(_, p, _)| p == plural) else {
            return not_served();
        };
        let mut state = self.0.lock().unwrap();
        let method = parts.method.as_str();
        let dry_run = query(&parts.uri, "dryRun").is_some();
        if !matches!(method, "GET") && !dry_run && name.get(1) != Some(&"status") {
            let written = match name.first() {
                Some(name) => name.to_string(),
                None => serde_json::from_slice::<Value>(&body).unwrap_or_default()["metadata"]
                    ["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
            state.writes.push(format!("{method} {plural}/{written}"));
            if state.interfere.as_ref().is_some_and(|(n, _)| *n == written) {
                if let Some((_, interference)) = state.interfere.take() {
                    interference(&mut state);
                }
            }
        }
        let key = |name: &str| {
            (
                gv.clone(),
                plural.to_string(),
                namespace.to_string(),
                name.to_owned(),
            )
        };
        if let ("PATCH", [name, "status"]) = (parts.method.as_str(), name) {
            let applied: Value = serde_json::from_slice(&body).unwrap();
            return match state.objects.get_mut(&key(name)) {
                Some(object) => {
                    object["status"] = applied["status"].clone();
                    json_response(200, object)
                }
                None => status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
            };
        }
        match (parts.method.as_str(), name) {
            ("GET", []) => {
                let selector = query(&parts.uri, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|((g, p, ns, _), o)| {
                        *g == gv
                            && p == plural
                            && ns == namespace
                            && matches(&o["metadata"]["labels"], &selector)
                    })
                    .map(|(_, o)| {
                        let mut item = o.clone();
                        let map = item.as_object_mut().unwrap();
                        map.remove("apiVersion");
                        map.remove("kind");
                        item
                    })
                    .collect();
                json_response(
                    200,
                    &json!({"kind": format!("{kind}List"), "apiVersion": gv, "metadata": {"resourceVersion": state.next_version.to_string()}, "items": items}),
                )
            }
            ("GET", [name]) => match state.objects.get(&key(name)) {
                Some(o) => json_response(200, o),
                None => status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
            },
            ("POST", []) => {
                if !state.namespaces.contains(*namespace) {
                    return status(
                        404,
                        "NotFound",
                        &format!("namespaces \"{namespace}\" not found"),
                    );
                }
                let mut object: Value = serde_json::from_slice(&body).unwrap();
                let name = object["metadata"]["name"].as_str().unwrap().to_owned();
                if state.objects.contains_key(&key(&name)) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{plural} \"{name}\" already exists"),
                    );
                }
                state.next_version += 1;
                let manager = query(&parts.uri, "fieldManager").unwrap_or_default();
                let meta = object["metadata"].as_object_mut().unwrap();
                meta.insert(
                    "uid".into(),
                    json!(format!("uid-{name}-{}", state.next_version)),
                );
                meta.insert("creationTimestamp".into(), json!("2026-11-21T12:00:00Z"));
                meta.insert(
                    "resourceVersion".into(),
                    json!(state.next_version.to_string()),
                );
                meta.insert("managedFields".into(), json!([{"manager": manager, "operation": "Update", "apiVersion": gv, "fieldsType": "FieldsV1", "fieldsV1": {}}]));
                state.objects.insert(key(&name), object.clone());
                json_response(201, &object)
            }
            // A JSON merge patch; a resourceVersion in it is a precondition.
            ("PATCH", [name])
                if parts
                    .headers
                    .get("content-type")
                    .is_some_and(|t| t.as_bytes().starts_with(b"application/merge-patch+json")) =>
            {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let Some(live) = state.objects.get(&key(name)) else {
                    return status(404, "NotFound", &format!("{plural} \"{name}\" not found"));
                };
                let wanted = &patch["metadata"]["resourceVersion"];
                if wanted.is_string() && *wanted != live["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", &format!("Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"));
                }
                let mut object = live.clone();
                merge_patch(&mut object, &patch);
                state.next_version += 1;
                object["metadata"]["resourceVersion"] = json!(state.next_version.to_string());
                state.objects.insert(key(name), object.clone());
                json_response(200, &object)
            }
            ("PATCH", [name]) => {
                if !state.namespaces.contains(*namespace) {
                    return status(
                        404,
                        "NotFound",
                        &format!("namespaces \"{namespace}\" not found"),
                    );
                }
                let applied: Value = serde_json::from_slice(&body).unwrap();
                let existing = state.objects.get(&key(name)).cloned();
                if let (Some(live), "StatefulSet") = (&existing, kind) {
                    if live["spec"]["selector"] != applied["spec"]["selector"]
                        || live["spec"]["serviceName"] != applied["spec"]["serviceName"]
                    {
                        return status(422, "Invalid", &format!("StatefulSet.apps \"{name}\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
                    }
                }
                let mut object = applied.clone();
                let (code, uid, created) = match &existing {
                    Some(live) => (
                        200,
                        live["metadata"]["uid"].clone(),
                        live["metadata"]["creationTimestamp"].clone(),
                    ),
                    None => (
                        201,
                        json!(format!("uid-{name}-{}", state.next_version)),
                        json!("2026-11-21T12:00:00Z"),
                    ),
                };
                let changed = existing.as_ref().is_none_or(|live| {
                    let mut a = live.clone();
                    let mut b = object.clone();
                    for v in [&mut a, &mut b] {
                        let meta = v["metadata"].as_object_mut().unwrap();
                        for k in [
                            "managedFields",
                            "resourceVersion",
                            "uid",
                            "creationTimestamp",
                        ] {
                            meta.remove(k);
                        }
                    }
                    a != b
                });
                if changed && !dry_run {
                    state.next_version += 1;
                }
                let version = if changed {
                    state.next_version
                } else {
                    existing
                        .as_ref()
                        .and_then(|l| l["metadata"]["resourceVersion"].as_str()?.parse().ok())
                        .unwrap_or(state.next_version)
                };
                let meta = object["metadata"].as_object_mut().unwrap();
                meta.insert("uid".into(), uid);
                meta.insert("creationTimestamp".into(), created);
                meta.insert("resourceVersion".into(), json!(version.to_string()));
                let mut applied_fields = fields(&applied);
                applied_fields
                    .as_object_mut()
                    .unwrap()
                    .retain(|k, _| k != "f:apiVersion" && k != "f:kind");
                meta.insert("managedFields".into(), json!([{"manager": "meshops", "operation": "Apply", "apiVersion": gv, "fieldsType": "FieldsV1", "fieldsV1": applied_fields}]));
                if !dry_run {
                    state.objects.insert(key(name), object.clone());
                }
                json_response(code, &object)
            }
            ("DELETE", [name]) => {
                if state.refuse_delete.contains(*name) {
                    return status(
                        403,
                        "Forbidden",
                        &format!("{plural} \"{name}\" is forbidden: deletion refused"),
                    );
                }
                // A uid precondition deletes only the object it names, as the API server does.
                let options: Value = serde_json::from_slice(&body).unwrap_or_default();
                let wanted = options["preconditions"]["uid"].as_str();
                let live_uid = state
                    .objects
                    .get(&key(name))
                    .map(|o| o["metadata"]["uid"].clone());
                if let (Some(wanted), Some(uid)) = (wanted, &live_uid) {
                    if uid != wanted {
                        return status(409, "Conflict", &format!("Operation cannot be fulfilled on {plural} \"{name}\": Precondition failed: UID in precondition: {wanted}, UID in object meta: {}", uid.as_str().unwrap_or_default()));
                    }
                }
                match state.objects.remove(&key(name)) {
                    Some(o) => json_response(200, &o),
                    None => status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
                }
            }
            _ => status(405, "MethodNotAllowed", "not supported by the double"),
        }
    }
}
