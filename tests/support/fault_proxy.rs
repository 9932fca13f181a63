//! A fault-injecting proxy between one client (an agent) and kube-apiserver.
//!
//! The API server speaks only TLS, so a byte relay could cut connections but never answer a
//! request itself. The proxy therefore terminates TLS with the API server's own serving
//! certificate (it is for `127.0.0.1`/`localhost`, not for a port, so the client's kubeconfig
//! keeps the control plane's CA and verifies as before), reads HTTP/1.1 with hyper, and sends
//! each request on to the real server over TLS on a connection of its own (one upstream
//! connection per client connection, so keep-alive and watches behave as they would direct).
//! Nothing is re-encoded: method, path, headers and body bytes go through as they came
//! (compressed bodies stay compressed) and response bodies are relayed frame by frame, so a
//! watch streams.
//!
//! Faults, switched at runtime through the handle (they combine):
//! - `outage`: every open connection is reset at once (SO_LINGER 0, then closed: the client
//!   reads ECONNRESET, keep-alive connections included) and every new one is reset right
//!   after `accept`, until `heal`.
//! - `fail_share(p, statuses)`: a share `p` of requests, drawn per request from an RNG seeded
//!   at start, is answered with one of `statuses` (a Kubernetes `Status` body and
//!   `Retry-After: 1`) without being forwarded.
//! - `hang`: requests get no answer (and are not forwarded) until the hang ends.
//! - `latency(d)`: every request waits `d` before anything else happens to it.
//!
//! Every request is recorded with its method, path and outcome (forwarded, and when; answered
//! by the proxy; never answered), so a test can assert, say, that no write went through
//! after some instant. One proxy serves one client: give each agent its own.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The faults in force; they combine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    pub outage: bool,
    pub hang: bool,
    pub latency: Duration,
    /// The share of requests to answer with an error, and the statuses to pick from.
    pub fail: Option<(f64, Vec<u16>)>,
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Not answered (yet): held by a hang, or its connection was reset first.
    Pending,
    /// Sent to the API server; the status it answered, once known.
    Forwarded(Option<u16>),
    /// Answered by the proxy with this status, not forwarded.
    Injected(u16),
    /// Could not be sent upstream (answered 502).
    UpstreamError(String),
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub received: Instant,
    /// When it was forwarded or answered by the proxy.
    pub decided: Option<Instant>,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub outcome: Outcome,
}

impl Seen {
    pub fn is_write(&self) -> bool {
        is_write(&self.method)
    }

    pub fn forwarded(&self) -> bool {
        matches!(self.outcome, Outcome::Forwarded(_))
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} → {:?}", self.method, self.path, self.outcome)
    }
}

pub fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

struct Conn {
    task: AbortHandle,
    /// A duplicate of the client socket's descriptor: SO_LINGER is set through it, and the
    /// socket is only closed (and so reset) once both descriptors are.
    socket: std::net::TcpStream,
}

struct Shared {
    faults: Mutex<Faults>,
    /// Bumped at every change of the faults: held requests wait on it.
    generation: tokio::sync::watch::Sender<u64>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    log: Mutex<Vec<Seen>>,
    rng: Mutex<fastrand::Rng>,
    upstream: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    accepted: AtomicU64,
    resets: AtomicU64,
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running proxy; dropping it stops it and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _accept: AbortOnDrop,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client config trusting the CA in `ca_file`, speaking HTTP/1.1.
pub fn client_tls(ca_file: &Path) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{e:?}"))? {
        roots
            .add(cert.map_err(|e| format!("{e:?}"))?)
            .map_err(|e| e.to_string())?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS server config with the certificate chain and key of these PEM files, HTTP/1.1 only.
pub fn server_tls(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("{e:?}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{e:?}"))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{e:?}"))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Resets a TCP connection: SO_LINGER 0 makes the last close send RST instead of FIN.
fn set_linger_zero(socket: &std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor owned by `socket`, and a pointer to a live `linger` of the
    // size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An HTTP/1.1 connection over TLS to `addr`: the sender, and the task driving it.
pub async fn connect_upstream(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: &TlsConnector,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Incoming>,
        AbortHandle,
    ),
    String,
> {
    connect_http1(addr, server_name, connector).await
}

/// Like [`connect_upstream`] for any body type (tests use it as a plain client).
pub async fn connect_http1<B>(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: &TlsConnector,
) -> Result<(hyper::client::conn::http1::SendRequest<B>, AbortHandle), String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with {addr}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, driver.abort_handle()))
}

/// The `https://host:port` URL's socket address and TLS name.
fn upstream_of(url: &str) -> Result<(SocketAddr, ServerName<'static>), String> {
    let authority = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url}: not https://"))?
        .trim_end_matches('/');
    let addr: SocketAddr = authority
        .parse()
        .map_err(|e| format!("{url}: {e} (an IP address and port are expected)"))?;
    Ok((addr, ServerName::IpAddress(addr.ip().into())))
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`https://IP:PORT`),
    /// trusting `ca_file` upstream and serving `cert_file`/`key_file` to its client; `seed`
    /// seeds the RNG that picks the requests to fail.
    pub async fn start(
        upstream: &str,
        ca_file: &Path,
        cert_file: &Path,
        key_file: &Path,
        seed: u64,
    ) -> Result<FaultProxy, String> {
        let (upstream, server_name) = upstream_of(upstream)?;
        let connector = TlsConnector::from(Arc::new(client_tls(ca_file)?));
        let acceptor = TlsAcceptor::from(Arc::new(server_tls(cert_file, key_file)?));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            generation: tokio::sync::watch::Sender::new(0),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            upstream,
            server_name,
            connector,
            acceptor,
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            _accept: AbortOnDrop(accept.abort_handle()),
        })
    }

    /// A proxy in front of a control plane's API server, with its CA and serving certificate.
    pub async fn for_plane(
        plane: &super::control_plane::ControlPlane,
        seed: u64,
    ) -> Result<FaultProxy, String> {
        let (cert, key) = plane.serving_cert();
        FaultProxy::start(&plane.server, &plane.ca_file, &cert, &key, seed).await
    }

    /// `https://127.0.0.1:PORT`: the server URL for the client's kubeconfig.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.lock().unwrap().clone()
    }

    /// Changes the faults in force; an outage resets every open connection.
    pub fn set(&self, faults: Faults) {
        let outage = faults.outage;
        *self.shared.faults.lock().unwrap() = faults;
        if outage {
            self.shared.reset_all();
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }

    fn change(&self, change: impl FnOnce(&mut Faults)) {
        let mut faults = self.faults();
        change(&mut faults);
        self.set(faults);
    }

    /// Resets every open connection and every new one until [`FaultProxy::heal`].
    pub fn outage(&self) {
        self.change(|f| f.outage = true);
    }

    /// Ends the outage (other faults stay).
    pub fn heal(&self) {
        self.change(|f| f.outage = false);
    }

    /// Answers a share `share` (0..=1) of requests with one of `statuses`, not forwarding them.
    pub fn fail_share(&self, share: f64, statuses: &[u16]) {
        let fail = (share > 0.0 && !statuses.is_empty()).then(|| (share, statuses.to_vec()));
        self.change(|f| f.fail = fail);
    }

    /// Holds every request (unanswered, not forwarded) until `hang(false)`.
    pub fn hang(&self, on: bool) {
        self.change(|f| f.hang = on);
    }

    /// Delays every request by `delay`.
    pub fn latency(&self, delay: Duration) {
        self.change(|f| f.latency = delay);
    }

    /// No faults.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests with `method` (any when `None`) that were forwarded (or not).
    pub fn count(&self, method: Option<&str>, forwarded: bool) -> usize {
        self.requests()
            .iter()
            .filter(|s| method.is_none_or(|m| s.method == m) && s.forwarded() == forwarded)
            .count()
    }

    /// Writes (POST, PUT, PATCH, DELETE) forwarded to the API server at or after `since`.
    pub fn forwarded_writes_since(&self, since: Instant) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.is_write() && s.forwarded() && s.decided.is_some_and(|d| d >= since))
            .collect()
    }

    /// Requests forwarded at or after `since`.
    pub fn forwarded_since(&self, since: Instant) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.forwarded() && s.decided.is_some_and(|d| d >= since))
            .collect()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Connections accepted, and connections reset, so far.
    pub fn connection_counts(&self) -> (u64, u64) {
        (
            self.shared.accepted.load(Ordering::Relaxed),
            self.shared.resets.load(Ordering::Relaxed),
        )
    }

    /// A summary line: requests by method and outcome.
    pub fn summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for seen in self.requests() {
            let outcome = match seen.outcome {
                Outcome::Pending => "unanswered".to_owned(),
                Outcome::Forwarded(_) => "forwarded".to_owned(),
                Outcome::Injected(status) => format!("injected {status}"),
                Outcome::UpstreamError(_) => "upstream error".to_owned(),
            };
            *counts
                .entry(format!("{} {outcome}", seen.method))
                .or_default() += 1;
        }
        let (accepted, resets) = self.connection_counts();
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        format!(
            "{}; connections accepted {accepted}, reset {resets}",
            parts.join(", ")
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let conns: Vec<Conn> = self
            .shared
            .conns
            .lock()
            .map(|mut c| c.drain().map(|(_, conn)| conn).collect())
            .unwrap_or_default();
        for conn in conns {
            conn.task.abort();
        }
    }
}

impl Shared {
    /// Resets every open connection: the client sees RST, whatever it was doing.
    fn reset_all(&self) {
        let conns: Vec<Conn> = self.conns.lock().unwrap().drain().map(|(_, c)| c).collect();
        for conn in conns {
            set_linger_zero(&conn.socket);
            conn.task.abort();
            self.resets.fetch_add(1, Ordering::Relaxed);
            // `conn.socket` closes here; the task's descriptor as it is dropped: the last
            // close sends the RST.
        }
    }

    fn record(&self, method: &str, path: &str) -> usize {
        let mut log = self.log.lock().unwrap();
        log.push(Seen {
            received: Instant::now(),
            decided: None,
            method: method.to_owned(),
            path: path.to_owned(),
            outcome: Outcome::Pending,
        });
        log.len() - 1
    }

    fn decide(&self, index: usize, outcome: Outcome) {
        if let Some(seen) = self.log.lock().unwrap().get_mut(index) {
            seen.decided = Some(Instant::now());
            seen.outcome = outcome;
        }
    }

    fn answered(&self, index: usize, status: u16) {
        if let Some(seen) = self.log.lock().unwrap().get_mut(index) {
            seen.outcome = Outcome::Forwarded(Some(status));
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(std_tcp) = tcp.into_std() else {
            continue;
        };
        let Ok(dup) = std_tcp.try_clone() else {
            continue;
        };
        // The table is locked before the outage flag is read: an outage that starts now
        // either is seen here or resets this connection once it is in the table.
        let mut conns = shared.conns.lock().unwrap();
        if shared.faults.lock().unwrap().outage {
            set_linger_zero(&dup);
            shared.resets.fetch_add(1, Ordering::Relaxed);
            drop((std_tcp, dup));
            continue;
        }
        let Ok(tcp) = TcpStream::from_std(std_tcp) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        // Registered before the task can finish (it deregisters itself under the same lock).
        let task = tokio::spawn(serve_connection(shared.clone(), id, tcp));
        conns.insert(
            id,
            Conn {
                task: task.abort_handle(),
                socket: dup,
            },
        );
    }
}

/// Removes a connection from the table when its task ends (or is aborted).
struct Deregister(Arc<Shared>, u64);

impl Drop for Deregister {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.0.conns.lock() {
            conns.remove(&self.1);
        }
    }
}

/// The per-connection upstream: opened on the first request, reopened when it closed.
struct Upstream {
    sender: Option<hyper::client::conn::http1::SendRequest<Incoming>>,
    driver: Option<AbortOnDrop>,
}

type Answer = Response<Either<Incoming, Full<Bytes>>>;

async fn serve_connection(shared: Arc<Shared>, id: u64, tcp: TcpStream) {
    let _deregister = Deregister(shared.clone(), id);
    let tls = match tokio::time::timeout(Duration::from_secs(10), shared.acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    let upstream = Arc::new(tokio::sync::Mutex::new(Upstream {
        sender: None,
        driver: None,
    }));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        let upstream = upstream.clone();
        async move { Ok::<_, Infallible>(handle(shared, upstream, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

fn injected(status: u16) -> Answer {
    let reason = match status {
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("injected by the fault proxy ({status})"),
        "reason": reason, "details": {"retryAfterSeconds": 1}, "code": status,
    })
    .to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("retry-after", "1")
        .body(Either::Right(Full::new(Bytes::from(body))))
        .unwrap()
}

fn bad_gateway(message: &str) -> Answer {
    Response::builder()
        .status(502)
        .header("content-type", "text/plain")
        .body(Either::Right(Full::new(Bytes::from(message.to_owned()))))
        .unwrap()
}

async fn handle(
    shared: Arc<Shared>,
    upstream: Arc<tokio::sync::Mutex<Upstream>>,
    request: Request<Incoming>,
) -> Answer {
    let method = request.method().as_str().to_owned();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let index = shared.record(&method, &path);

    let latency = shared.faults.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // A hang holds the request until it ends (an outage kills this task instead).
    let mut generation = shared.generation.subscribe();
    loop {
        let held = {
            let faults = shared.faults.lock().unwrap();
            faults.hang || faults.outage
        };
        if !held {
            break;
        }
        if generation.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    let fail = shared.faults.lock().unwrap().fail.clone();
    if let Some((share, statuses)) = fail {
        let picked = {
            let mut rng = shared.rng.lock().unwrap();
            (rng.f64() < share).then(|| statuses[rng.usize(..statuses.len())])
        };
        if let Some(status) = picked {
            // Read the body so the connection stays usable, as a server's error would.
            let _ = request.into_body().collect().await;
            shared.decide(index, Outcome::Injected(status));
            return injected(status);
        }
    }

    let mut upstream = upstream.lock().await;
    let usable = upstream.sender.as_ref().is_some_and(|s| !s.is_closed());
    if !usable {
        match connect_upstream(
            shared.upstream,
            shared.server_name.clone(),
            &shared.connector,
        )
        .await
        {
            Ok((sender, driver)) => {
                upstream.sender = Some(sender);
                upstream.driver = Some(AbortOnDrop(driver));
            }
            Err(e) => {
                shared.decide(index, Outcome::UpstreamError(e.clone()));
                return bad_gateway(&e);
            }
        }
    }
    let sender = upstream.sender.as_mut().expect("connected above");
    if let Err(e) = sender.ready().await {
        upstream.sender = None;
        let message = format!("upstream connection: {e}");
        shared.decide(index, Outcome::UpstreamError(message.clone()));
        return bad_gateway(&message);
    }
    shared.decide(index, Outcome::Forwarded(None));
    let response = sender.send_request(request);
    // The lock is held while the headers come back only: the body streams without it (and
    // HTTP/1.1 sends the next request of this connection only after this one's response).
    drop(upstream);
    match response.await {
        Ok(response) => {
            shared.answered(index, response.status().as_u16());
            response.map(Either::Left)
        }
        Err(e) => bad_gateway(&format!("upstream: {e}")),
    }
}
