//! The retry layer and the write fence through the real kube client, against a scripted HTTP
//! server on 127.0.0.1: each request that is not discovery takes the next scripted reply (an
//! error status, a reset connection, silence), and once the script is spent gets a plain 200.
//! Delays and the attempt timeout are shortened through `Cluster::connect_with`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use meshops::cluster::retry::RetryOptions;
use meshops::cluster::rollout::{self, RolloutError};
use meshops::cluster::{Cluster, ClusterError};
use meshops::plan::ObjectRef;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the server does with one request.
#[derive(Clone, Debug)]
enum Reply {
    /// An error status, with a `Retry-After` in seconds if given.
    Status(u16, Option<u64>),
    /// Reads the request, then resets the connection.
    Reset,
    /// Reads the request and never answers.
    Hang,
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    /// Every request but discovery, as `METHOD /path`.
    seen: Mutex<Vec<String>>,
}

#[derive(Clone, Default)]
struct Server(Arc<Script>);

impl Server {
    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.0.replies.lock().unwrap().extend(replies);
    }

    /// How many requests of `method` the server received (discovery aside).
    fn received(&self, method: &str) -> usize {
        let prefix = format!("{method} ");
        self.0
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .count()
    }

    async fn listen(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(server.clone().serve(stream));
            }
        });
        url
    }

    /// HTTP/1.1 with keep-alive, as much of it as the kube client uses.
    async fn serve(self, mut stream: TcpStream) {
        let mut buffer = Vec::new();
        loop {
            let Some((method, path, body)) = read_request(&mut stream, &mut buffer).await else {
                return;
            };
            let discovery = method == "GET" && matches!(path.as_str(), "/api/v1" | "/apis/apps/v1");
            let reply = if discovery {
                None
            } else {
                self.0.seen.lock().unwrap().push(format!("{method} {path}"));
                self.0.replies.lock().unwrap().pop_front()
            };
            let (code, retry_after, answer) = match reply {
                Some(Reply::Reset) => {
                    let _ = stream.set_zero_linger();
                    return;
                }
                Some(Reply::Hang) => {
                    std::future::pending::<()>().await;
                    return;
                }
                Some(Reply::Status(code, retry_after)) => (
                    code,
                    retry_after,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": format!("scripted {code}"), "reason": "Scripted", "code": code}),
                ),
                None => (200, None, answer(&method, &path, &body)),
            };
            let text = answer.to_string();
            let mut head = format!(
                "HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                text.len()
            );
            if let Some(seconds) = retry_after {
                head.push_str(&format!("retry-after: {seconds}\r\n"));
            }
            head.push_str("\r\n");
            if stream.write_all(head.as_bytes()).await.is_err()
                || stream.write_all(text.as_bytes()).await.is_err()
            {
                return;
            }
        }
    }
}

/// The next request on the connection: method, path (with query) and body.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(String, String, Vec<u8>)> {
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).to_string();
    let mut words = head.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[end..end + length].to_vec();
    buffer.drain(..end + length);
    Some((method, path, body))
}

/// The answer of a request that is not scripted: discovery, an empty list, or the object.
fn answer(method: &str, path: &str, body: &[u8]) -> Value {
    let resource = |name: &str, kind: &str| json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind, "verbs": ["create", "delete", "get", "list", "patch"]});
    match (method, path.split('?').next().unwrap_or_default()) {
        ("GET", "/api/v1") => {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
            "resources": [resource("configmaps", "ConfigMap"), resource("pods", "Pod")]})
        }
        ("GET", "/apis/apps/v1") => {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
            "resources": [resource("statefulsets", "StatefulSet")]})
        }
        ("GET", p) if p.ends_with("/pods") || p.ends_with("/configmaps") => {
            json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        }
        ("GET", p) if p.contains("/statefulsets/") => json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "fn-function", "namespace": "default", "uid": "uid-sts", "generation": 1},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "fn"}}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                       "currentRevision": "r1", "updateRevision": "r1"},
        }),
        ("POST", p) if p.ends_with("accessreviews") => {
            let mut review: Value = serde_json::from_slice(body).unwrap_or_default();
            review["status"] = json!({"allowed": true});
            review
        }
        ("PATCH" | "POST", _) => {
            let mut object: Value = serde_json::from_slice(body).unwrap_or_default();
            object["metadata"]["uid"] = json!("uid-1");
            object
        }
        _ => json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "settings", "namespace": "default", "uid": "uid-1"}}),
    }
}

/// Delays of a millisecond, so that a test of the budget does not wait out real backoff.
fn quick() -> RetryOptions {
    RetryOptions {
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        attempt_timeout: Duration::from_millis(300),
        ..RetryOptions::default()
    }
}

async fn connect(url: &str, options: RetryOptions) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: s\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: s\n  user: {{}}\ncontexts:\n- name: s\n  context: {{cluster: s, user: s}}\ncurrent-context: s\n"
        ),
    )
    .unwrap();
    let cluster = Cluster::connect_with(Some(&path), None, options)
        .await
        .unwrap();
    (cluster, dir)
}

async fn scripted(
    replies: impl IntoIterator<Item = Reply>,
    options: RetryOptions,
) -> (Server, Cluster, tempfile::TempDir) {
    let server = Server::default();
    server.script(replies);
    let url = server.listen().await;
    let (cluster, dir) = connect(&url, options).await;
    (server, cluster, dir)
}

fn settings() -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: "default".into(),
        name: "settings".into(),
    }
}

fn settings_value() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "1"}})
}

#[tokio::test]
async fn a_503_with_retry_after_is_sent_again_after_the_delay_the_server_asked() {
    let (server, cluster, _dir) = scripted(
        [Reply::Status(503, Some(1)), Reply::Status(503, Some(1))],
        RetryOptions::default(),
    )
    .await;
    let started = Instant::now();
    let found = cluster.get(&settings()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(found.unwrap()["metadata"]["uid"], "uid-1");
    assert_eq!(server.received("GET"), 3, "two 503s, then the answer");
    assert!(
        elapsed >= Duration::from_secs(2),
        "waited Retry-After twice: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(
        cluster.requests().snapshot().get("GET"),
        Some(&2),
        "discovery and the get, each counted once"
    );
    assert_eq!(cluster.requests().retries(), 2);
}

#[tokio::test]
async fn a_reset_connection_is_sent_again() {
    let (server, cluster, _dir) = scripted([Reply::Reset], quick()).await;
    let listed = cluster
        .list("v1", "ConfigMap", "default", "a=b")
        .await
        .unwrap();
    assert!(listed.is_empty());
    assert_eq!(server.received("GET"), 2);
    assert_eq!(cluster.requests().retries(), 1);
}

#[tokio::test]
async fn a_silent_server_costs_one_attempt_timeout_not_a_stalled_pass() {
    let (server, cluster, _dir) = scripted([Reply::Hang], quick()).await;
    let started = Instant::now();
    let applied = cluster.apply(&settings_value(), false).await.unwrap();
    assert_eq!(applied["metadata"]["uid"], "uid-1");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.received("PATCH"),
        2,
        "the hung attempt, then the answer"
    );
    assert_eq!(cluster.requests().retries(), 1);
}

#[tokio::test]
async fn ten_429s_spend_the_budget_and_surface_the_typed_error_naming_the_request() {
    let (server, cluster, _dir) = scripted(vec![Reply::Status(429, None); 10], quick()).await;
    let error = cluster.get(&settings()).await.unwrap_err();
    assert!(
        matches!(error, ClusterError::Api { code: 429, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "get ConfigMap (v1) \"settings\" in namespace \"default\" on {}: scripted 429 (HTTP 429)",
            cluster.endpoint()
        )
    );
    assert!(error.is_transient());
    assert_eq!(server.received("GET"), 10, "ten tries, no eleventh");
    assert_eq!(cluster.requests().retries(), 9);
    // The script is spent: the next request goes through at once.
    assert!(cluster.get(&settings()).await.unwrap().is_some());
    assert_eq!(server.received("GET"), 11);
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_budget_is_spent() {
    let url = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (cluster, _dir) = connect(&url, quick()).await;
    let error = cluster.get(&settings()).await.unwrap_err();
    assert!(
        matches!(&error, ClusterError::Unreachable { cause, .. } if cause.contains("refused")),
        "{error:?}"
    );
    assert_eq!(error.category(), "unreachable");
    // Discovery is the request that failed: ten tries, nine of them again.
    assert_eq!(cluster.requests().retries(), 9);
}

#[tokio::test]
async fn a_create_is_not_sent_again_after_a_500_but_is_after_a_429() {
    let (server, cluster, _dir) = scripted(
        [Reply::Status(500, None), Reply::Status(429, None)],
        quick(),
    )
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client().clone(), "default");
    let object: ConfigMap = serde_json::from_value(settings_value()).unwrap();
    let error = config_maps
        .create(&PostParams::default(), &object)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 500),
        "{error:?}"
    );
    assert_eq!(
        server.received("POST"),
        1,
        "a 500 may hide a created object"
    );
    // 429 is flow control refusing before any handler ran: safe to send again.
    config_maps
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    assert_eq!(server.received("POST"), 3);
    assert_eq!(cluster.requests().retries(), 1);
}

#[tokio::test]
async fn a_fenced_cluster_refuses_writes_without_sending_them_and_still_reads() {
    let (server, cluster, _dir) = scripted([], quick()).await;
    let token = CancellationToken::new();
    cluster.fence(token.clone());
    cluster.apply(&settings_value(), false).await.unwrap();
    assert_eq!(
        server.received("PATCH"),
        1,
        "an open fence lets writes pass"
    );
    token.cancel();
    let error = cluster.apply(&settings_value(), false).await.unwrap_err();
    assert!(matches!(error, ClusterError::Fenced { .. }), "{error:?}");
    assert_eq!(error.category(), "stopped");
    assert!(!error.is_transient());
    assert!(
        error
            .to_string()
            .contains("apply ConfigMap (v1) \"settings\""),
        "{error}"
    );
    let error = cluster.delete(&settings(), Some("uid-1"), false).await;
    assert!(
        matches!(error, Err(ClusterError::Fenced { .. })),
        "{error:?}"
    );
    assert_eq!(server.received("PATCH"), 1, "nothing more sent");
    assert_eq!(server.received("DELETE"), 0);
    // Reads and RBAC questions change nothing: they pass.
    assert!(cluster.get(&settings()).await.unwrap().is_some());
    assert!(cluster
        .may("patch", "v1", "ConfigMap", None, "default")
        .await
        .unwrap());
    assert_eq!(server.received("GET"), 1);
    // The fence is shared by every clone of the client.
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client().clone(), "default");
    let object: ConfigMap = serde_json::from_value(settings_value()).unwrap();
    let error = config_maps
        .create(&PostParams::default(), &object)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("write fence"), "{error}");
    assert_eq!(server.received("POST"), 1, "only the access review");
}

#[tokio::test]
async fn a_closing_fence_ends_the_wait_between_attempts() {
    let (server, cluster, _dir) = scripted(
        [Reply::Status(503, Some(10)), Reply::Status(503, Some(10))],
        RetryOptions::default(),
    )
    .await;
    let token = CancellationToken::new();
    cluster.fence(token.clone());
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let write = cluster.apply(&settings_value(), false).await;
    assert!(
        matches!(write, Err(ClusterError::Fenced { .. })),
        "{write:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "no 10 s wait");
    assert_eq!(server.received("PATCH"), 1, "not sent again");
    // A read after the fence closed is answered, but a failure is not retried.
    let read = cluster.get(&settings()).await;
    assert!(
        matches!(read, Err(ClusterError::Api { code: 503, .. })),
        "{read:?}"
    );
    assert_eq!(server.received("GET"), 1);
    assert_eq!(cluster.requests().retries(), 0);
}

#[tokio::test]
async fn a_rollout_wait_outlasts_a_check_that_failed_transiently() {
    let options = RetryOptions {
        tries: 2,
        ..quick()
    };
    // The first check spends its budget on two 500s; the next poll finds the rollout done.
    let (server, cluster, _dir) = scripted(
        [Reply::Status(500, None), Reply::Status(500, None)],
        options,
    )
    .await;
    let statefulset = ObjectRef {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        namespace: "default".into(),
        name: "fn-function".into(),
    };
    rollout::wait(
        &cluster,
        std::slice::from_ref(&statefulset),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        server.received("GET"),
        4,
        "two 500s, the StatefulSet, its pods"
    );

    // Anything but a transient failure still ends the wait at once.
    server.script([Reply::Status(403, None)]);
    let error = rollout::wait(&cluster, &[statefulset], Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RolloutError::Cluster(ClusterError::Forbidden { .. })),
        "{error:?}"
    );
}
