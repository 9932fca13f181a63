//! The kube adapter: discovery, live state by label, server-side apply and dry-run, delete.
//!
//! Every request goes through one client whose service stack counts requests by verb, so the
//! cost of a plan or an apply is measurable (`meshops plan -v` prints it), and retries
//! transient failures and holds the write fence in one place ([`retry`]). The plan itself is
//! pure (`crate::plan`); this module only fetches what it needs and executes it.

pub mod inventory;
pub mod retry;
pub mod rollout;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::Request;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::client::{Body, ClientBuilder};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersion};
use kube::discovery::Scope;
use kube::{Client, Config};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::util::MapRequestLayer;

use crate::plan::{ObjectRef, FIELD_MANAGER};
use retry::{Fence, RetryLayer, RetryOptions};

/// Requests sent, by verb (`GET`, `LIST`, `PATCH`, `PATCH dry-run`, `DELETE`, …), each once
/// however many attempts it took; the attempts sent again are counted apart
/// ([`RequestCounter::retries`]), so the cost of a pass does not depend on the weather.
#[derive(Clone, Debug, Default)]
pub struct RequestCounter {
    by_verb: Arc<Mutex<BTreeMap<String, u64>>>,
    retries: Arc<AtomicU64>,
}

impl RequestCounter {
    fn record<B>(&self, request: &Request<B>) {
        let query = request.uri().query().unwrap_or_default();
        let method = request.method().as_str();
        let path = request.uri().path();
        let verb = match method {
            // Asking RBAC writes nothing.
            "POST" if path.ends_with("accessreviews") => "ACCESS-REVIEW".to_owned(),
            // The agent's leader election and Events are its own bookkeeping, not changes
            // to what a source deploys.
            _ if path.starts_with("/apis/coordination.k8s.io/") => "LEASE".to_owned(),
            _ if path.starts_with("/apis/events.k8s.io/") => "EVENT".to_owned(),
            "GET" if query.contains("labelSelector") || query.contains("watch") => {
                "LIST".to_owned()
            }
            "PATCH" if query.contains("dryRun") => "PATCH dry-run".to_owned(),
            other => other.to_owned(),
        };
        if let Ok(mut counts) = self.by_verb.lock() {
            *counts.entry(verb).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_verb.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Attempts sent again by the retry layer (not in [`RequestCounter::snapshot`]).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Requests that change the cluster (dry-runs excluded).
    pub fn writes(&self) -> u64 {
        self.snapshot()
            .iter()
            .filter(|(verb, _)| matches!(verb.as_str(), "PATCH" | "POST" | "PUT" | "DELETE"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

/// Where requests go: the server URL and the kubeconfig context, named in every error so a
/// user with several clusters knows which one answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub server: String,
    pub context: Option<String>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.context {
            Some(context) => write!(f, "{} (context {context})", self.server),
            None => write!(f, "{}", self.server),
        }
    }
}

/// One request, for messages: `list StatefulSet (apps/v1) in namespace "prod"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub verb: &'static str,
    pub object: ObjectRef,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.object;
        write!(f, "{} {} ({})", self.verb, o.kind, o.api_version)?;
        if !o.name.is_empty() {
            write!(f, " \"{}\"", o.name)?;
        }
        if !o.namespace.is_empty() {
            write!(f, " in namespace \"{}\"", o.namespace)?;
        }
        Ok(())
    }
}

/// Why a cluster operation failed; the message names the server, the request and what to do,
/// each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot load kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot use the kubeconfig's cluster {endpoint}: {message}")]
    Connect { endpoint: Endpoint, message: String },
    #[error("cannot reach the API server {endpoint} to {request}: {cause}")]
    Unreachable {
        endpoint: Endpoint,
        request: Box<Call>,
        cause: String,
    },
    #[error(
        "the API server {endpoint} refused the credentials (HTTP 401 Unauthorized) to {request}; \
         check the kubeconfig user's token or certificate"
    )]
    Unauthorized {
        endpoint: Endpoint,
        request: Box<Call>,
    },
    #[error("not allowed to {request} on {endpoint} (HTTP 403): {message}")]
    Forbidden {
        endpoint: Endpoint,
        request: Box<Call>,
        message: String,
    },
    #[error(
        "the cluster {endpoint} does not serve {kind} ({api_version}): its CustomResourceDefinition is not installed \
         (for the Function Mesh kinds: `meshops crds | kubectl apply --server-side -f -`)"
    )]
    CrdMissing {
        endpoint: Endpoint,
        api_version: String,
        kind: String,
    },
    #[error("namespace \"{namespace}\" does not exist on {endpoint}; create it first (meshops never creates namespaces)")]
    NamespaceMissing {
        endpoint: Endpoint,
        namespace: String,
    },
    /// Encoding the request or reading the answer failed on this side.
    #[error("{request} on {endpoint}: {message} (meshops could not encode the request or read the answer)")]
    Local {
        endpoint: Endpoint,
        request: Box<Call>,
        message: String,
    },
    #[error("{request} on {endpoint}: {message} (HTTP {code})")]
    Api {
        endpoint: Endpoint,
        request: Box<Call>,
        code: u16,
        message: String,
    },
    /// The write fence ([`Cluster::fence`]) is closed: the request was refused before it was
    /// sent (or before it was sent again).
    #[error(
        "stopped before {request} on {endpoint}: this replica is shutting down or lost the \
         leader Lease, and writes nothing more"
    )]
    Fenced {
        endpoint: Endpoint,
        request: Box<Call>,
    },
}

impl ClusterError {
    /// Stable category, reused as Event reason and metric label.
    pub fn category(&self) -> &'static str {
        match self {
            ClusterError::Kubeconfig(_) | ClusterError::Connect { .. } => "config",
            ClusterError::Unreachable { .. } => "unreachable",
            ClusterError::Unauthorized { .. } => "unauthorized",
            ClusterError::Forbidden { .. } => "forbidden",
            ClusterError::CrdMissing { .. } => "crd-missing",
            ClusterError::NamespaceMissing { .. } => "namespace-missing",
            ClusterError::Api { code: 409, .. } => "conflict",
            ClusterError::Api { code: 422, .. } => "invalid",
            ClusterError::Api { .. } | ClusterError::Local { .. } => "api",
            ClusterError::Fenced { .. } => "stopped",
        }
    }

    /// Worth another try later (a next poll, a next pass): the retry layer spent its budget on
    /// throttling, server errors or transport failures. A 409 is not: meshops forces its
    /// applies, so a conflict comes from a precondition (a uid, a resourceVersion) that a
    /// second copy of the same request fails again.
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Api { code, .. } => *code == 429 || *code >= 500,
            ClusterError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// The API server refused a change to an immutable field (fixture 12).
    pub fn is_immutable(&self) -> bool {
        matches!(self, ClusterError::Api { code: 422, message, .. } if message.contains("Forbidden") || message.contains("immutable"))
    }
}

/// The innermost cause of an error chain: a transport error's `Display` repeats its sources
/// ("client error (Connect): tcp connect error: Connection refused"), the user needs the last.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A kind the cluster serves, as discovery reports it.
#[derive(Clone, Debug)]
pub struct Served {
    pub resource: ApiResource,
    /// Namespaced or cluster-scoped: the URL of every request depends on it.
    pub namespaced: bool,
}

/// A connection to one cluster, with a discovery cache. Clones share the connection, the
/// cache, the counters and the write fence (the agent's leader election holds one).
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    endpoint: Endpoint,
    requests: RequestCounter,
    /// Shared with the client's retry layer, so every clone of the client obeys it.
    fence: Fence,
    served: Arc<Mutex<HashMap<String, Vec<Served>>>>,
}

impl Cluster {
    /// Connects with the kubeconfig (optionally a context of it) or, inside a pod, the
    /// service account; requests are retried as [`RetryOptions::default`] says.
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        context: Option<&str>,
    ) -> Result<Cluster, ClusterError> {
        Cluster::connect_with(kubeconfig, context, RetryOptions::default()).await
    }

    /// [`Cluster::connect`] with other retry delays and attempt timeout (tests shorten them).
    pub async fn connect_with(
        kubeconfig: Option<&std::path::Path>,
        context: Option<&str>,
        retries: RetryOptions,
    ) -> Result<Cluster, ClusterError> {
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..Default::default()
        };
        let (mut config, context) = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| ClusterError::Kubeconfig(format!("{}: {e}", path.display())))?;
                let current = context
                    .map(str::to_owned)
                    .or_else(|| file.current_context.clone());
                let config = Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| ClusterError::Kubeconfig(format!("{}: {e}", path.display())))?;
                (config, current)
            }
            None => {
                let current = match context {
                    Some(c) => Some(c.to_owned()),
                    None => Kubeconfig::read().ok().and_then(|k| k.current_context),
                };
                let config = if context.is_some() {
                    Config::from_kubeconfig(&options)
                        .await
                        .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?
                } else {
                    Config::infer()
                        .await
                        .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?
                };
                (config, current)
            }
        };
        let endpoint = Endpoint {
            server: config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_owned(),
            context,
        };
        // kube's own retry (429, 503 and 504, 15 tries, an uncapped Retry-After, delays up
        // to 1,000 s, no transport errors) would retry inside ours: ours replaces it.
        config.default_retry = false;
        let requests = RequestCounter::default();
        let counter = requests.clone();
        let count = MapRequestLayer::new(move |request: Request<Body>| {
            counter.record(&request);
            request
        });
        let fence = Fence::default();
        let retry = RetryLayer::new(retries, fence.clone(), requests.retries.clone());
        let builder = ClientBuilder::try_from(config).map_err(|e| ClusterError::Connect {
            endpoint: endpoint.clone(),
            message: root_cause(&e),
        })?;
        // The counter is outside the retry layer: it sees each request once.
        let client = builder.with_layer(&retry).with_layer(&count).build();
        Ok(Cluster {
            client,
            endpoint,
            requests,
            fence,
            served: Arc::default(),
        })
    }

    /// Installs the write fence, replacing any previous one, for this cluster and every clone
    /// of its client: once `token` is cancelled, every request that can change the cluster
    /// fails at once with [`ClusterError::Fenced`] without being sent, and nothing is retried
    /// any more. Reads, access reviews, the leader Lease and Events pass (see
    /// [`retry::changes_cluster`]). The agent cancels it on shutdown or when it loses the
    /// Lease, so a replica that is no longer the leader writes nothing; without a fence (the
    /// CLI) nothing is refused.
    pub fn fence(&self, token: CancellationToken) {
        self.fence.install(token);
    }

    /// The underlying client, for what the engine does not wrap (tests simulate other writers).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn requests(&self) -> &RequestCounter {
        &self.requests
    }

    /// Turns a client error into one that names the server, the request and the cause once.
    fn error(&self, verb: &'static str, object: &ObjectRef, error: kube::Error) -> ClusterError {
        let endpoint = self.endpoint.clone();
        let request = Box::new(Call {
            verb,
            object: object.clone(),
        });
        match error {
            kube::Error::Api(status) => match status.code {
                401 => ClusterError::Unauthorized { endpoint, request },
                403 => ClusterError::Forbidden {
                    endpoint,
                    request,
                    message: status.message,
                },
                404 if status.message.contains("namespaces")
                    && status.message.contains("not found") =>
                {
                    ClusterError::NamespaceMissing {
                        endpoint,
                        namespace: object.namespace.clone(),
                    }
                }
                // A plain-text 404 comes from an API path nobody serves (fixture 22).
                404 if status.reason == "Failed to parse error data" => ClusterError::CrdMissing {
                    endpoint,
                    api_version: object.api_version.clone(),
                    kind: object.kind.clone(),
                },
                code => ClusterError::Api {
                    endpoint,
                    request,
                    code,
                    message: status.message,
                },
            },
            kube::Error::Service(error)
                if matches!(
                    error.downcast_ref::<retry::RequestError>(),
                    Some(retry::RequestError::Fenced)
                ) =>
            {
                ClusterError::Fenced { endpoint, request }
            }
            other => ClusterError::Unreachable {
                endpoint,
                request,
                cause: root_cause(&other),
            },
        }
    }

    /// The kind `apiVersion` + `kind` as the cluster serves it, one discovery request per
    /// group-version.
    pub async fn served(&self, api_version: &str, kind: &str) -> Result<Served, ClusterError> {
        let missing = || ClusterError::CrdMissing {
            endpoint: self.endpoint.clone(),
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        };
        let cached = self
            .served
            .lock()
            .ok()
            .and_then(|c| c.get(api_version).cloned());
        let served = match cached {
            Some(served) => served,
            None => {
                let gv: GroupVersion = api_version.parse().map_err(|_| missing())?;
                let group = match kube::discovery::pinned_group(&self.client, &gv).await {
                    Ok(group) => group,
                    Err(kube::Error::Api(status)) if status.code == 404 => return Err(missing()),
                    Err(e) => {
                        let object = ObjectRef {
                            api_version: api_version.into(),
                            kind: kind.into(),
                            namespace: String::new(),
                            name: String::new(),
                        };
                        return Err(self.error("discover", &object, e));
                    }
                };
                let served: Vec<Served> = group
                    .versioned_resources(&gv.version)
                    .into_iter()
                    .map(|(resource, capabilities)| Served {
                        resource,
                        namespaced: capabilities.scope == Scope::Namespaced,
                    })
                    .collect();
                if let Ok(mut cache) = self.served.lock() {
                    cache.insert(api_version.to_owned(), served.clone());
                }
                served
            }
        };
        served
            .into_iter()
            .find(|s| s.resource.kind == kind)
            .ok_or_else(missing)
    }

    /// The typed handle for one kind in one namespace; cluster-scoped kinds ignore it.
    async fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Api<DynamicObject>, ClusterError> {
        let served = self.served(api_version, kind).await?;
        Ok(if served.namespaced {
            Api::namespaced_with(self.client.clone(), namespace, &served.resource)
        } else {
            Api::all_with(self.client.clone(), &served.resource)
        })
    }

    /// Every object of a kind in a namespace carrying `selector`: one LIST.
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        let object = ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: String::new(),
        };
        let list = self
            .api(api_version, kind, namespace)
            .await?
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| self.error("list", &object, e))?;
        // Each item is moved into its JSON form, not copied: at 1,000 functions a copy of
        // every LIST beside the decoded one was a large part of an agent pass's peak.
        Ok(list
            .items
            .into_iter()
            .filter_map(|o| {
                let mut item = serde_json::Map::new();
                // Items of a LIST carry no apiVersion/kind.
                item.insert("apiVersion".into(), Value::from(api_version));
                item.insert("kind".into(), Value::from(kind));
                item.insert("metadata".into(), serde_json::to_value(o.metadata).ok()?);
                if let Value::Object(fields) = o.data {
                    item.extend(fields);
                }
                Some(Value::Object(item))
            })
            .collect())
    }

    /// An error of this side (encoding a request or decoding an answer), not the server's.
    fn local(&self, verb: &'static str, object: &ObjectRef, message: String) -> ClusterError {
        ClusterError::Local {
            endpoint: self.endpoint.clone(),
            request: Box::new(Call {
                verb,
                object: object.clone(),
            }),
            message,
        }
    }

    fn decode(
        &self,
        verb: &'static str,
        object: &ObjectRef,
        value: DynamicObject,
    ) -> Result<Value, ClusterError> {
        serde_json::to_value(value).map_err(|e| self.local(verb, object, e.to_string()))
    }

    /// Server-side apply with manager `meshops` and force; `dry_run` persists nothing.
    pub async fn apply(&self, value: &Value, dry_run: bool) -> Result<Value, ClusterError> {
        let object = ObjectRef::of(value);
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = dry_run;
        let verb = if dry_run { "dry-run apply" } else { "apply" };
        let applied = self
            .api(&object.api_version, &object.kind, &object.namespace)
            .await?
            .patch(&object.name, &params, &Patch::Apply(value))
            .await
            .map_err(|e| self.error(verb, &object, e))?;
        self.decode(verb, &object, applied)
    }

    /// Server-side apply to the status subresource (fixture 29: its own managedFields entry).
    pub async fn apply_status(&self, value: &Value) -> Result<Value, ClusterError> {
        let object = ObjectRef::of(value);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = self
            .api(&object.api_version, &object.kind, &object.namespace)
            .await?
            .patch_status(&object.name, &params, &Patch::Apply(value))
            .await
            .map_err(|e| self.error("apply status of", &object, e))?;
        self.decode("apply status of", &object, applied)
    }

    /// Deletes an object; `foreground` waits for its dependents, background does not.
    ///
    /// With `uid` (the object as the plan saw it) the server deletes only that object: a
    /// delete sent again by the retry layer, or one that comes after someone re-created the
    /// object, must not delete the new one. So a 409 (the precondition failed: another object
    /// carries the name now) is left alone and counts as done, as a 404 (already gone) does.
    pub async fn delete(
        &self,
        object: &ObjectRef,
        uid: Option<&str>,
        foreground: bool,
    ) -> Result<(), ClusterError> {
        let params = DeleteParams {
            propagation_policy: Some(if foreground {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            }),
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self
            .api(&object.api_version, &object.kind, &object.namespace)
            .await?
            .delete(&object.name, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && uid.is_some() => {
                tracing::info!(%object, message = %status.message, "not deleted: the object was replaced since the plan");
                Ok(())
            }
            Err(e) => Err(self.error("delete", object, e)),
        }
    }

    /// One object, or `None` when it does not exist.
    pub async fn get(&self, object: &ObjectRef) -> Result<Option<Value>, ClusterError> {
        let found = self
            .api(&object.api_version, &object.kind, &object.namespace)
            .await?
            .get_opt(&object.name)
            .await
            .map_err(|e| self.error("get", object, e))?;
        Ok(found
            .and_then(|o| serde_json::to_value(o).ok())
            .map(|mut v| {
                v["apiVersion"] = Value::from(object.api_version.as_str());
                v["kind"] = Value::from(object.kind.as_str());
                v
            }))
    }

    /// Asks the API server whether the current user may `verb` the resource of `kind` in
    /// `namespace` (a SelfSubjectAccessReview: RBAC answers before anything is written).
    pub async fn may(
        &self,
        verb: &str,
        api_version: &str,
        kind: &str,
        subresource: Option<&str>,
        namespace: &str,
    ) -> Result<bool, ClusterError> {
        let served = self.served(api_version, kind).await?;
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "verb": verb,
                "group": served.resource.group,
                "resource": served.resource.plural,
                "subresource": subresource.unwrap_or_default(),
                "namespace": if served.namespaced { namespace } else { "" },
            }},
        });
        let object = ObjectRef {
            api_version: "authorization.k8s.io/v1".into(),
            kind: "SelfSubjectAccessReview".into(),
            namespace: String::new(),
            name: String::new(),
        };
        let body = serde_json::to_vec(&review)
            .map_err(|e| self.local("create", &object, e.to_string()))?;
        let request = Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| self.local("create", &object, e.to_string()))?;
        let answer: Value = self
            .client
            .request(request)
            .await
            .map_err(|e| self.error("create", &object, e))?;
        Ok(answer["status"]["allowed"] == true)
    }
}
