//! Real git servers on loopback for the git adapter's tests: smart HTTP through
//! `git-http-backend` behind basic auth, a server that accepts connections and never answers,
//! and Debian's `sshd` with its own config, host key and client key in a temp dir. Each is
//! stopped (and its processes reaped) when dropped.
// Only tests/git.rs uses these; the other test binaries that share tests/support do not.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};

pub const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";
pub const SSHD: &str = "/usr/sbin/sshd";

/// The user name a GitHub-style token is sent with.
const TOKEN_USER: &str = "x-access-token";

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// Runs `git` with a config that does not depend on the machine's, and panics with its
/// stderr when it fails; returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=meshops test",
            "-c",
            "user.email=test@meshops.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.symlinks=true",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Smart HTTP on 127.0.0.1: `git-http-backend` as a CGI for every repository under a project
/// root, reachable only with basic auth `x-access-token:<token>`.
///
/// A trickling server answers the ref advertisement normally, then answers the fetch with a
/// progress message every 200 ms, forever: data keeps flowing, so no read timeout fires and
/// only the fetch's own deadline can end it.
pub struct HttpGitServer {
    /// `http://127.0.0.1:PORT`; a repository `r.git` under the root is at `{base}/r.git`.
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpGitServer {
    pub fn start(project_root: &Path, token: &str) -> HttpGitServer {
        HttpGitServer::start_with(project_root, token, false)
    }

    pub fn start_trickling(project_root: &Path, token: &str) -> HttpGitServer {
        HttpGitServer::start_with(project_root, token, true)
    }

    fn start_with(project_root: &Path, token: &str, trickle: bool) -> HttpGitServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let root = project_root.to_path_buf();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_USER}:{token}"))
        );
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the HTTP git server");
            runtime.block_on(serve(listener, root, expected, trickle, stopped));
        });
        HttpGitServer {
            base,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

impl Drop for HttpGitServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    root: PathBuf,
    expected_authorization: String,
    trickle: bool,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let (root, expected) = (root.clone(), expected_authorization.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (root, expected) = (root.clone(), expected.clone());
                async move { Ok::<_, Infallible>(answer(request, &root, &expected, trickle).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    root: &Path,
    expected: &str,
    trickle: bool,
) -> Response<Body> {
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authorized {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                http::header::WWW_AUTHENTICATE,
                "Basic realm=\"meshops-test\"",
            )
            .body(full(&b"authentication required\n"[..]))
            .unwrap_or_default();
    }
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    // The request that ends negotiation is the one answered with the pack.
    if trickle && parts.uri.path().ends_with("/git-upload-pack") && body.ends_with(b"0009done\n") {
        return trickling_response();
    }
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || run_cgi(&parts, &body, &root))
        .await
        .unwrap_or_else(|e| error_response(&format!("CGI task: {e}")))
}

/// Runs git-http-backend for one request, per RFC 3875.
fn run_cgi(parts: &http::request::Parts, body: &[u8], root: &Path) -> Response<Body> {
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut command = Command::new(HTTP_BACKEND);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header(http::header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", TOKEN_USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let encoding = header(http::header::CONTENT_ENCODING);
    if !encoding.is_empty() {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let protocol = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !protocol.is_empty() {
        command.env("GIT_PROTOCOL", protocol);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return error_response(&format!("{HTTP_BACKEND}: {e}")),
    };
    // Written from another thread: the backend may start answering before it read everything.
    let writer = child.stdin.take().map(|mut stdin| {
        let body = body.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        })
    });
    let output = match child.wait_with_output() {
        Ok(output) => output,
        Err(e) => return error_response(&format!("{HTTP_BACKEND}: {e}")),
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    parse_cgi_output(&output.stdout).unwrap_or_else(|| {
        error_response(&format!(
            "{HTTP_BACKEND} answered no CGI headers: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    })
}

fn parse_cgi_output(output: &[u8]) -> Option<Response<Body>> {
    let (head_end, body_start) = find(output, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find(output, b"\n\n").map(|i| (i, i + 2)))?;
    let head = std::str::from_utf8(&output[..head_end]).ok()?;
    let mut response = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next()?.parse::<u16>().ok()?;
            response = response.status(code);
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .body(full(Bytes::copy_from_slice(&output[body_start..])))
        .ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn error_response(message: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .body(full(message.to_owned()))
        .unwrap_or_default()
}

/// An upload-pack result that never ends: NAK, then side-band progress messages (channel 2)
/// every 200 ms, as a server busy counting objects sends them.
fn trickling_response() -> Response<Body> {
    let preamble = Bytes::from_static(b"0008NAK\n");
    let progress = Bytes::from_static(b"0016\x02Counting objects\r");
    let frames = futures::stream::unfold(Some(preamble), move |first| {
        let progress = progress.clone();
        async move {
            match first {
                Some(preamble) => Some((Ok(Frame::data(preamble)), None)),
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((Ok(Frame::data(progress)), None))
                }
            }
        }
    });
    Response::builder()
        .header(
            http::header::CONTENT_TYPE,
            "application/x-git-upload-pack-result",
        )
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap_or_default()
}

/// Accepts TCP connections on 127.0.0.1 and never reads or writes: a hung server.
pub struct SilentServer {
    pub base: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SilentServer {
            base,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Debian's sshd on a free 127.0.0.1 port, run as root with a config, host key and
/// authorized client key of its own in a temp dir.
pub struct SshServer {
    pub port: u16,
    /// `ssh-ed25519 AAAA…` of the host key.
    pub host_key: String,
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub host_key_fingerprint: String,
    /// The authorized client's private key (unencrypted).
    pub client_key: PathBuf,
    child: Child,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl SshServer {
    pub fn available() -> bool {
        Path::new(SSHD).is_file()
    }

    pub fn start() -> Result<SshServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("meshops-sshd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = |name: &str| dir.path().join(name);
        generate_key(&path("host_key"))?;
        generate_key(&path("client_key"))?;
        std::fs::copy(path("client_key.pub"), path("authorized_keys"))
            .map_err(|e| format!("authorized_keys: {e}"))?;
        // sshd's privilege separation needs this directory; a fresh machine has no /run/sshd.
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {authorized}\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             LogLevel VERBOSE\n",
            host_key = path("host_key").display(),
            pid = path("sshd.pid").display(),
            authorized = path("authorized_keys").display(),
        );
        std::fs::write(path("sshd_config"), config).map_err(|e| e.to_string())?;
        let log = path("sshd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting {SSHD}: {e}"))?;
        let mut server = SshServer {
            port,
            host_key: public_key(&path("host_key.pub"))?,
            host_key_fingerprint: fingerprint(&path("host_key.pub"))?,
            client_key: path("client_key"),
            child,
            log,
            dir,
        };
        server.wait_until_listening()?;
        Ok(server)
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log_text().contains("Server listening on") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("sshd exited ({status}): {}", self.log_text()));
            }
            if Instant::now() > deadline {
                return Err(format!("sshd did not start: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The known_hosts name of this server: `[127.0.0.1]:PORT`.
    pub fn host_name(&self) -> String {
        format!("[127.0.0.1]:{}", self.port)
    }

    /// A URL for a repository at an absolute path on this machine.
    pub fn url(&self, repository: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, repository.display())
    }

    /// A directory that lives as long as the server, for keys and known_hosts files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes an unencrypted ed25519 key pair at `path` and `path.pub`; returns the public key.
pub fn generate_key(path: &Path) -> Result<String, String> {
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "meshops-test", "-f"])
        .arg(path)
        .output()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    public_key(&path.with_extension("pub"))
}

/// `type base64` of a `.pub` file, without its comment.
fn public_key(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fields: Vec<&str> = text.split_whitespace().take(2).collect();
    Ok(fields.join(" "))
}

/// What `ssh-keygen -l` prints as the key's SHA256 fingerprint.
pub fn fingerprint(public_key_file: &Path) -> Result<String, String> {
    let output = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_key_file)
        .output()
        .map_err(|e| format!("ssh-keygen -l: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| format!("ssh-keygen -l: {}", String::from_utf8_lossy(&output.stderr)))
}

/// Hashes the host names of a known_hosts file in place, as `ssh-keygen -H` does.
pub fn hash_known_hosts(path: &Path) -> Result<(), String> {
    let output = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(path)
        .output()
        .map_err(|e| format!("ssh-keygen -H: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "ssh-keygen -H: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let _ = std::fs::remove_file(path.with_extension("old"));
    Ok(())
}
