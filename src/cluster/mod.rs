//! The kube adapter: discovery, live state by label, server-side apply and dry-run, delete.
//!
//! Every request goes through one client whose service stack counts requests by verb, so the
//! cost of a plan or an apply is measurable (`meshops plan -v` prints it). The plan itself is
//! pure (`crate::plan`); this module only fetches what it needs and executes it.

pub mod inventory;
pub mod rollout;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use http::Request;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy,
};
use kube::client::{Body, ClientBuilder};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersion};
use kube::discovery::ApiCapabilities;
use kube::{Client, Config};
use serde_json::Value;
use tower::util::MapRequestLayer;

use crate::plan::{ObjectRef, FIELD_MANAGER};

/// Requests sent, by verb (`GET`, `LIST`, `PATCH`, `PATCH dry-run`, `DELETE`, …).
#[derive(Clone, Debug, Default)]
pub struct RequestCounter(Arc<Mutex<BTreeMap<String, u64>>>);

impl RequestCounter {
    fn record<B>(&self, request: &Request<B>) {
        let query = request.uri().query().unwrap_or_default();
        let method = request.method().as_str();
        let verb = match method {
            "GET" if query.contains("labelSelector") || query.contains("watch") => {
                "LIST".to_owned()
            }
            "PATCH" if query.contains("dryRun") => "PATCH dry-run".to_owned(),
            other => other.to_owned(),
        };
        if let Ok(mut counts) = self.0.lock() {
            *counts.entry(verb).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
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

/// Why a cluster operation failed; the message names the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot load kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot connect to the cluster: {0}")]
    Connect(String),
    #[error(
        "the cluster does not serve {kind} ({api_version}): its CustomResourceDefinition is not installed \
         (install the Function Mesh CRDs: `meshops crds | kubectl apply --server-side -f -`)"
    )]
    CrdMissing { api_version: String, kind: String },
    #[error("namespace \"{namespace}\" does not exist; create it first (meshops never creates namespaces)")]
    NamespaceMissing { namespace: String },
    #[error("{verb} {object}: {message} (HTTP {code})")]
    Api {
        verb: &'static str,
        object: String,
        code: u16,
        message: String,
    },
    #[error("{verb} {object}: {source}")]
    Transport {
        verb: &'static str,
        object: String,
        source: kube::Error,
    },
}

impl ClusterError {
    /// Stable category, reused as Event reason and metric label.
    pub fn category(&self) -> &'static str {
        match self {
            ClusterError::Kubeconfig(_) | ClusterError::Connect(_) => "connect",
            ClusterError::CrdMissing { .. } => "crd-missing",
            ClusterError::NamespaceMissing { .. } => "namespace-missing",
            ClusterError::Api { code: 409, .. } => "conflict",
            ClusterError::Api { code: 422, .. } => "invalid",
            ClusterError::Api { .. } => "api",
            ClusterError::Transport { .. } => "transport",
        }
    }

    /// Worth another try: conflicts, throttling, server errors and transport failures.
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Api { code, .. } => *code == 409 || *code == 429 || *code >= 500,
            ClusterError::Transport { .. } => true,
            _ => false,
        }
    }

    /// The API server refused a change to an immutable field (fixture 12).
    pub fn is_immutable(&self) -> bool {
        matches!(self, ClusterError::Api { code: 422, message, .. } if message.contains("Forbidden") || message.contains("immutable"))
    }
}

fn api_error(verb: &'static str, object: &ObjectRef, error: kube::Error) -> ClusterError {
    match error {
        kube::Error::Api(status) => {
            if status.code == 404
                && status.message.contains("namespaces")
                && status.message.contains("not found")
            {
                return ClusterError::NamespaceMissing {
                    namespace: object.namespace.clone(),
                };
            }
            if status.code == 404 && status.reason == "Failed to parse error data" {
                // A plain-text 404 comes from an API path nobody serves (fixture 22).
                return ClusterError::CrdMissing {
                    api_version: object.api_version.clone(),
                    kind: object.kind.clone(),
                };
            }
            ClusterError::Api {
                verb,
                object: object.to_string(),
                code: status.code,
                message: status.message.clone(),
            }
        }
        other => ClusterError::Transport {
            verb,
            object: object.to_string(),
            source: other,
        },
    }
}

/// A connection to one cluster, with a discovery cache.
pub struct Cluster {
    client: Client,
    requests: RequestCounter,
    resources: Mutex<HashMap<String, Vec<(ApiResource, ApiCapabilities)>>>,
}

impl Cluster {
    /// Connects with the kubeconfig (optionally a context of it) or, inside a pod, the
    /// service account.
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        context: Option<&str>,
    ) -> Result<Cluster, ClusterError> {
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..Default::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| ClusterError::Kubeconfig(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?
            }
            None if context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?,
            None => Config::infer()
                .await
                .map_err(|e| ClusterError::Kubeconfig(e.to_string()))?,
        };
        let requests = RequestCounter::default();
        let counter = requests.clone();
        let layer = MapRequestLayer::new(move |request: Request<Body>| {
            counter.record(&request);
            request
        });
        let builder =
            ClientBuilder::try_from(config).map_err(|e| ClusterError::Connect(e.to_string()))?;
        let client = builder.with_layer(&layer).build();
        Ok(Cluster {
            client,
            requests,
            resources: Mutex::new(HashMap::new()),
        })
    }

    /// A cluster over any HTTP service: the test doubles use this.
    pub fn with_service<S>(service: S) -> Cluster
    where
        S: tower::Service<Request<Body>, Response = http::Response<Body>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let requests = RequestCounter::default();
        let counter = requests.clone();
        let layer = MapRequestLayer::new(move |request: Request<Body>| {
            counter.record(&request);
            request
        });
        let client = ClientBuilder::new(service, "default")
            .with_layer(&layer)
            .build();
        Cluster {
            client,
            requests,
            resources: Mutex::new(HashMap::new()),
        }
    }

    /// The underlying client, for what the engine does not wrap (tests simulate other writers).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn requests(&self) -> &RequestCounter {
        &self.requests
    }

    /// The API resource of `apiVersion` + `kind`, one discovery request per group-version.
    pub async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<ApiResource, ClusterError> {
        let missing = || ClusterError::CrdMissing {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        };
        let cached = self
            .resources
            .lock()
            .ok()
            .and_then(|c| c.get(api_version).cloned());
        let resources = match cached {
            Some(resources) => resources,
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
                        return Err(api_error("discover", &object, e));
                    }
                };
                let resources = group.versioned_resources(&gv.version);
                if let Ok(mut cache) = self.resources.lock() {
                    cache.insert(api_version.to_owned(), resources.clone());
                }
                resources
            }
        };
        resources
            .into_iter()
            .find(|(r, _)| r.kind == kind)
            .map(|(r, _)| r)
            .ok_or_else(missing)
    }

    fn api(&self, resource: &ApiResource, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, resource)
    }

    /// Every object of a kind in a namespace carrying `selector`: one LIST.
    pub async fn list(
        &self,
        resource: &ApiResource,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        let object = ObjectRef {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: namespace.into(),
            name: String::new(),
        };
        let list = self
            .api(resource, namespace)
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| api_error("list", &object, e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect())
    }

    /// Server-side apply with manager `meshops` and force; `dry_run` persists nothing.
    pub async fn apply(&self, value: &Value, dry_run: bool) -> Result<Value, ClusterError> {
        let object = ObjectRef::of(value);
        let resource = self.resource(&object.api_version, &object.kind).await?;
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = dry_run;
        let verb = if dry_run { "dry-run apply" } else { "apply" };
        let applied = self
            .api(&resource, &object.namespace)
            .patch(&object.name, &params, &Patch::Apply(value))
            .await
            .map_err(|e| api_error(verb, &object, e))?;
        serde_json::to_value(applied).map_err(|e| ClusterError::Api {
            verb,
            object: object.to_string(),
            code: 0,
            message: e.to_string(),
        })
    }

    /// Server-side apply to the status subresource (fixture 29: its own managedFields entry).
    pub async fn apply_status(&self, value: &Value) -> Result<Value, ClusterError> {
        let object = ObjectRef::of(value);
        let resource = self.resource(&object.api_version, &object.kind).await?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = self
            .api(&resource, &object.namespace)
            .patch_status(&object.name, &params, &Patch::Apply(value))
            .await
            .map_err(|e| api_error("apply status", &object, e))?;
        serde_json::to_value(applied).map_err(|e| ClusterError::Api {
            verb: "apply status",
            object: object.to_string(),
            code: 0,
            message: e.to_string(),
        })
    }

    /// Deletes an object; `foreground` waits for its dependents, background does not.
    pub async fn delete(&self, object: &ObjectRef, foreground: bool) -> Result<(), ClusterError> {
        let resource = self.resource(&object.api_version, &object.kind).await?;
        let params = DeleteParams {
            propagation_policy: Some(if foreground {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            }),
            ..Default::default()
        };
        match self
            .api(&resource, &object.namespace)
            .delete(&object.name, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(api_error("delete", object, e)),
        }
    }

    /// One object, or `None` when it does not exist.
    pub async fn get(&self, object: &ObjectRef) -> Result<Option<Value>, ClusterError> {
        let resource = self.resource(&object.api_version, &object.kind).await?;
        match self
            .api(&resource, &object.namespace)
            .get_opt(&object.name)
            .await
        {
            Ok(found) => Ok(found.and_then(|o| serde_json::to_value(o).ok())),
            Err(e) => Err(api_error("get", object, e)),
        }
    }
}
