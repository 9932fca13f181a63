//! Running `meshops agent` in tests: a git repository to push to, the agent as a child
//! process (as a pod runs it), and a small HTTP client for its endpoints.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A repository with a work tree that the agent follows over `file://`.
pub struct GitRepo {
    pub dir: PathBuf,
}

impl GitRepo {
    pub fn init(dir: &Path) -> GitRepo {
        std::fs::create_dir_all(dir).unwrap();
        let repo = GitRepo {
            dir: dir.to_path_buf(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "user.name=meshops-test",
                "-c",
                "user.email=test@meshops.io",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn write(&self, path: &str, text: &str) {
        let path = self.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn edit(&self, path: &str, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.dir.join(path)).unwrap();
        assert!(text.contains(from), "{path} has no {from:?}");
        self.write(path, &text.replacen(from, to, 1));
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.join(path)).unwrap();
    }

    /// examples/staging under `deploy/` with the examples' meshops.yaml, its objects in
    /// `namespace`, and a README that is not a manifest (not committed yet).
    pub fn with_staging(dir: &Path, namespace: &str) -> GitRepo {
        let repo = GitRepo::init(dir);
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let settings = std::fs::read_to_string(examples.join("meshops.yaml")).unwrap();
        repo.write("deploy/meshops.yaml", &settings);
        for entry in std::fs::read_dir(examples.join("staging")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("namespace: staging", &format!("namespace: {namespace}"));
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            repo.write(&format!("deploy/{name}"), &text);
        }
        repo.write("README.md", "not a manifest\n");
        repo
    }

    /// Commits everything; the new commit's id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A free loopback port (bound then released; the agent binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// An HTTP answer with its headers (names in lower case).
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// `meshops agent` as a child process; killed on drop.
pub struct AgentProcess {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `meshops agent --config CONFIG --listen 127.0.0.1:PORT` plus `extra` flags, its
    /// log (at debug) in `log`.
    pub fn start(config: &Path, extra: &[&str], log: &Path) -> AgentProcess {
        let port = free_port();
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_meshops"))
            .args(["agent", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("MESHOPS_LOG", "meshops=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let agent = AgentProcess {
            child,
            port,
            log: log.to_path_buf(),
        };
        agent.wait_for("the HTTP server", Duration::from_secs(20), |a| {
            a.get("/healthz").is_some_and(|r| r.status == 200)
        });
        agent
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn answer(response: Result<http::Response<ureq::Body>, ureq::Error>) -> Option<Answer> {
        let mut response = response.ok()?;
        Some(Answer {
            status: response.status().as_u16(),
            body: response.body_mut().read_to_string().unwrap_or_default(),
        })
    }

    pub fn get(&self, path: &str) -> Option<Answer> {
        Self::answer(client().get(&self.url(path)).call())
    }

    /// POST from the loopback address `local` (any 127.x.y.z on Linux), so that the agent
    /// sees another client; the answer with its headers. Needs a Tokio runtime handle (a
    /// `spawn_blocking` thread has one).
    pub fn post_from(
        &self,
        local: std::net::Ipv4Addr,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawAnswer {
        let port = self.port;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let raw = tokio::runtime::Handle::current().block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((local, 0).into()).unwrap();
            let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            let mut out = Vec::new();
            stream.read_to_end(&mut out).await.unwrap();
            out
        });
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        RawAnswer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut request = client().post(&self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::answer(request.send(body)).unwrap_or_else(|| panic!("POST {path}: no answer"))
    }

    /// The source's entry in `GET /api/v1/sources`.
    /// Posts a GitHub webhook as GitHub does: `event`, a delivery id, the body signed with
    /// `secret`.
    pub fn webhook(&self, secret: &str, event: &str, delivery: &str, body: &[u8]) -> Answer {
        let signature = meshops::agent::webhook::sign(secret.as_bytes(), body);
        self.post(
            "/webhooks/github",
            &[
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &signature),
            ],
            body,
        )
    }

    pub fn source(&self, name: &str) -> Value {
        let answer = self.get("/api/v1/sources").expect("sources API");
        answer.json()["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no source {name}: {}", answer.body))
    }

    /// The value of one metric line (`name{labels}`) in `/metrics`, 0 when absent.
    pub fn metric(&self, line_start: &str) -> f64 {
        let text = self.get("/metrics").expect("metrics").body;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `done` holds, failing with the agent's log after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&AgentProcess) -> bool) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "waited {timeout:?} for {what}; agent log:\n{}",
            self.log_text()
        );
    }

    /// Waits until the source's last applied commit is `commit`.
    pub fn wait_applied(&self, source: &str, commit: &str) {
        self.wait_for(
            &format!("{source} at {commit}"),
            Duration::from_secs(30),
            |a| a.source(source)["lastAppliedCommit"] == commit,
        );
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the agent did not stop on SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GitHub push event for `full_name`'s `reference` at `after`, and its headers.
pub fn push_event(full_name: &str, clone_url: &str, reference: &str, after: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": reference, "before": "0".repeat(40), "after": after,
        "repository": {"full_name": full_name, "clone_url": clone_url,
                        "html_url": format!("https://github.com/{full_name}")},
        "pusher": {"name": "someone"},
    })
    .to_string()
    .into_bytes()
}

/// A GitHub pull_request event: #`number` against `main` of acme/functions at `head`, from
/// a branch of `head_repo` (`None`: a deleted fork), opened by someone whose
/// `author_association` is `association`.
pub fn pull_request_event(
    number: u64,
    head: &str,
    head_repo: Option<&str>,
    association: &str,
) -> Vec<u8> {
    serde_json::json!({"action": "opened", "number": number,
        "pull_request": {"head": {"sha": head,
                                  "repo": head_repo.map(|r| serde_json::json!({"full_name": r}))},
                         "base": {"ref": "main"},
                         "author_association": association},
        "repository": {"full_name": "acme/functions"}})
    .to_string()
    .into_bytes()
}
