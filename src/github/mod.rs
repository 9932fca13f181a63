//! The octocrab adapter: commit statuses, the sticky pull-request comment, check runs with
//! annotations. Authenticated by a token or as a GitHub App installation (octocrab signs the
//! RS256 JWT and refreshes the installation token before it expires).
//!
//! GitHub is never on the deploy path: the agent reaches this client through
//! `crate::report::Queue`, whose workers wait for it. Here every request is bounded in time
//! ([`REQUEST_TIMEOUT`]); requests that may be repeated (reads, edits, deletes, statuses) are
//! retried a few times on 5xx, rate limits and lost answers, honouring `Retry-After` and
//! `x-ratelimit-reset`; what is created (a comment, a check run) is never posted twice: after a
//! failed create it is looked up before another try, since GitHub may have created it and lost
//! only the answer. What still fails goes back to the queue, which tries again later. Tokens
//! never reach a log or an error message.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, StatusCode};
use octocrab::Octocrab;
use serde_json::{json, Value};

use crate::model::agent::GithubAccess;
use crate::report::{Annotation, PlanReport, ReportError, Sink, State, Status};

pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The longest one request may take, answer included. GitHub itself ends a request after 10 s;
/// the rest is room for a slow network or proxy (issue 15 saw answers 20 s late). It bounds how
/// long a source's report worker waits, never a deploy.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of one request before it is left to the queue (the first included).
const ATTEMPTS: u32 = 3;
/// The longest wait GitHub may ask for before a try; a longer one is left to the queue.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// GitHub takes at most this many annotations per check-run request.
const ANNOTATIONS_PER_REQUEST: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub access needs exactly one of tokenFile, tokenEnv or app")]
    NoCredentials,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("${0} is not set")]
    MissingEnv(String),
    #[error("the GitHub App private key {path} is not an RSA PEM key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot use the GitHub API at {url}: {reason}")]
    Client { url: String, reason: String },
    #[error("{method} {path} on {url}: {reason}")]
    Request {
        url: String,
        method: Method,
        path: String,
        reason: String,
    },
    #[error("{method} {path} on {url}: no answer within {after:?}")]
    Timeout {
        url: String,
        method: Method,
        path: String,
        after: Duration,
    },
    #[error("{method} {path} on {url}: HTTP {status}: {message}")]
    Refused {
        url: String,
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
        /// When trying again can help (5xx, rate limits): after how long.
        retry_after: Option<Duration>,
    },
}

impl GithubError {
    /// How long to wait before trying the request again, or `None` when that cannot help;
    /// `backoff` when GitHub did not say.
    fn retry_in(&self, backoff: Duration) -> Option<Duration> {
        match self {
            GithubError::Request { .. } | GithubError::Timeout { .. } => Some(backoff),
            GithubError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// For the queue: what trying again later can fix is `Unavailable`, the rest `Refused`.
impl From<GithubError> for ReportError {
    fn from(err: GithubError) -> ReportError {
        let reason = err.to_string();
        match err {
            GithubError::Request { .. } | GithubError::Timeout { .. } => ReportError::Unavailable {
                reason,
                retry_after: None,
            },
            GithubError::Refused {
                retry_after: Some(after),
                ..
            } => ReportError::Unavailable {
                reason,
                retry_after: Some(after),
            },
            _ => ReportError::Refused { reason },
        }
    }
}

/// (repository, commit, context) of a status.
type StatusKey = (String, String, String);

/// What a create found: made now (GitHub's answer), or made by an earlier try whose answer
/// was lost (its id).
enum Created {
    Now(Value),
    Before(u64),
}

/// A GitHub API client for reports.
pub struct GitHub {
    crab: Octocrab,
    api_url: String,
    target_url: Option<String>,
    /// Check runs need a GitHub App.
    app: bool,
    request_timeout: Duration,
    /// The last state posted per (repository, commit, context): not posted again.
    posted: Mutex<HashMap<StatusKey, (State, String)>>,
}

fn read(path: &Path) -> Result<String, GithubError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| GithubError::Read {
            path: path.to_path_buf(),
            source,
        })
}

impl GitHub {
    /// A client from the agent's `github:` section.
    pub fn connect(access: &GithubAccess) -> Result<GitHub, GithubError> {
        let api_url = access.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
        let client = |reason: String| GithubError::Client {
            url: api_url.to_owned(),
            reason,
        };
        let builder = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| client(e.to_string()))?
            .set_connect_timeout(Some(Duration::from_secs(10)));
        let timeout = access
            .request_timeout
            .as_deref()
            .and_then(crate::model::agent::duration)
            .unwrap_or(REQUEST_TIMEOUT);
        let (crab, app) = match (&access.token_file, &access.token_env, &access.app) {
            (Some(file), None, None) => (builder.personal_token(read(file)?), false),
            (None, Some(var), None) => {
                let token = std::env::var(var).map_err(|_| GithubError::MissingEnv(var.clone()))?;
                (builder.personal_token(token.trim().to_owned()), false)
            }
            (None, None, Some(app)) => {
                let pem = read(&app.private_key_file)?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                    GithubError::Key {
                        path: app.private_key_file.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let as_app = builder
                    .app(app.app_id.into(), key)
                    .build()
                    .map_err(|e| client(e.to_string()))?;
                let installation = as_app
                    .installation(app.installation_id.into())
                    .map_err(|e| client(e.to_string()))?;
                return Ok(GitHub::new(installation, api_url, &access.target_url, true)
                    .with_request_timeout(timeout));
            }
            _ => return Err(GithubError::NoCredentials),
        };
        let crab = crab.build().map_err(|e| client(e.to_string()))?;
        Ok(GitHub::new(crab, api_url, &access.target_url, app).with_request_timeout(timeout))
    }

    /// A client authenticated by `token` (the CLI in CI: `GITHUB_TOKEN`).
    pub fn with_token(api_url: &str, token: String) -> Result<GitHub, GithubError> {
        let crab = Octocrab::builder()
            .base_uri(api_url)
            .and_then(|b| b.personal_token(token).build())
            .map_err(|e| GithubError::Client {
                url: api_url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(GitHub::new(crab, api_url, &None, false))
    }

    fn new(crab: Octocrab, api_url: &str, target_url: &Option<String>, app: bool) -> GitHub {
        GitHub {
            crab,
            api_url: api_url.trim_end_matches('/').to_owned(),
            target_url: target_url.clone(),
            app,
            request_timeout: REQUEST_TIMEOUT,
            posted: Mutex::default(),
        }
    }

    /// The same client with another bound on each request than [`REQUEST_TIMEOUT`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> GitHub {
        self.request_timeout = timeout;
        self
    }

    /// One request within `request_timeout`: the JSON answer of a 2xx, else an error that
    /// says whether trying again can help (`backoff`: the wait when GitHub does not say).
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        backoff: Duration,
    ) -> Result<Value, GithubError> {
        let failure = |reason: String| GithubError::Request {
            url: self.api_url.clone(),
            method: method.clone(),
            path: path.to_owned(),
            reason,
        };
        let exchange = async {
            let response = match *method {
                Method::POST => self.crab._post(path, body).await,
                Method::PATCH => self.crab._patch(path, body).await,
                Method::DELETE => self.crab._delete(path, body).await,
                _ => self.crab._get(path).await,
            }
            .map_err(|e| failure(e.to_string()))?;
            let status = response.status();
            let retry_after = retry_wait(status, response.headers(), backoff);
            let text = self
                .crab
                .body_to_string(response)
                .await
                .map_err(|e| failure(e.to_string()))?;
            if status.is_success() {
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            Err(GithubError::Refused {
                url: self.api_url.clone(),
                method: method.clone(),
                path: path.to_owned(),
                status,
                message,
                retry_after,
            })
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| GithubError::Timeout {
                url: self.api_url.clone(),
                method: method.clone(),
                path: path.to_owned(),
                after: self.request_timeout,
            })?
    }

    /// A request that may be sent twice without harm (a read, an edit, a delete, a status):
    /// retried on 5xx, 429, an exhausted rate limit and a lost answer, waiting what
    /// `Retry-After` or `x-ratelimit-reset` says, else 1 s, 2 s …
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, GithubError> {
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let err = match self.send_once(&method, path, body, backoff).await {
                Ok(answer) => return Ok(answer),
                Err(err) => err,
            };
            match err.retry_in(backoff) {
                Some(wait) if attempt < ATTEMPTS && wait <= MAX_WAIT => {
                    tracing::info!(path, attempt, wait = ?wait, error = %err, "GitHub request failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff *= 2;
                    attempt += 1;
                }
                _ => return Err(err),
            }
        }
    }

    /// Creates something with a POST to `path`. A POST whose answer is lost may still have
    /// created it, so before every try after the first `find` looks for it; what it finds is
    /// used instead of posting again. Never a twin.
    async fn create<F, Found>(
        &self,
        path: &str,
        body: &Value,
        find: F,
    ) -> Result<Created, GithubError>
    where
        F: Fn() -> Found,
        Found: Future<Output = Result<Option<u64>, GithubError>>,
    {
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let err = match self
                .send_once(&Method::POST, path, Some(body), backoff)
                .await
            {
                Ok(answer) => return Ok(Created::Now(answer)),
                Err(err) => err,
            };
            match err.retry_in(backoff) {
                Some(wait) if attempt < ATTEMPTS && wait <= MAX_WAIT => {
                    tracing::info!(path, attempt, wait = ?wait, error = %err, "GitHub create failed; looking it up before trying again");
                    tokio::time::sleep(wait).await;
                    if let Some(id) = find().await? {
                        return Ok(Created::Before(id));
                    }
                    backoff *= 2;
                    attempt += 1;
                }
                _ => return Err(err),
            }
        }
    }

    /// Posts a commit status, unless the same state and description were posted last.
    pub async fn post_status(
        &self,
        repo: &str,
        sha: &str,
        status: &Status,
    ) -> Result<(), GithubError> {
        let key = (repo.to_owned(), sha.to_owned(), status.context.clone());
        let value = (status.state, status.description.clone());
        if self
            .posted
            .lock()
            .is_ok_and(|p| p.get(&key) == Some(&value))
        {
            return Ok(());
        }
        let mut body = json!({
            "state": status.state.as_str(),
            "context": status.context,
            "description": status.description,
        });
        if let Some(url) = &self.target_url {
            body["target_url"] = json!(url);
        }
        self.send(
            Method::POST,
            &format!("/repos/{repo}/statuses/{sha}"),
            Some(&body),
        )
        .await?;
        if let Ok(mut posted) = self.posted.lock() {
            posted.insert(key, value);
        }
        Ok(())
    }

    /// The parts of `source`'s sticky comment on pull request `number`, by part number: their
    /// comment ids, found by their hidden markers.
    async fn sticky_parts(
        &self,
        repo: &str,
        number: u64,
        source: &str,
    ) -> Result<HashMap<usize, u64>, GithubError> {
        let mut parts: HashMap<usize, u64> = HashMap::new();
        let mut page = 1;
        loop {
            let path = format!("/repos/{repo}/issues/{number}/comments?per_page=100&page={page}");
            let listed = self.send(Method::GET, &path, None).await?;
            let comments = listed.as_array().cloned().unwrap_or_default();
            for comment in &comments {
                let body = comment["body"].as_str().unwrap_or_default();
                if let (Some(part), Some(id)) = (part_of(source, body), comment["id"].as_u64()) {
                    parts.entry(part).or_insert(id);
                }
            }
            if comments.len() < 100 {
                return Ok(parts);
            }
            page += 1;
        }
    }

    /// The sticky comment of `source` on pull request `number`: each part found by its hidden
    /// marker and edited in place, missing parts created, surplus parts of a longer earlier
    /// plan deleted — never a duplicate, even when a create's answer is lost.
    pub async fn sticky_comment(
        &self,
        repo: &str,
        number: u64,
        source: &str,
        parts: &[String],
    ) -> Result<(), GithubError> {
        let mut existing = self.sticky_parts(repo, number, source).await?;
        for (index, body) in parts.iter().enumerate() {
            let part = index + 1;
            let payload = json!({ "body": body });
            let id = match existing.remove(&part) {
                Some(id) => id,
                None => {
                    let path = format!("/repos/{repo}/issues/{number}/comments");
                    let find = move || async move {
                        let found = self.sticky_parts(repo, number, source).await?;
                        Ok::<_, GithubError>(found.get(&part).copied())
                    };
                    match self.create(&path, &payload, find).await? {
                        Created::Now(_) => continue,
                        Created::Before(id) => id,
                    }
                }
            };
            let path = format!("/repos/{repo}/issues/comments/{id}");
            self.send(Method::PATCH, &path, Some(&payload)).await?;
        }
        for id in existing.into_values() {
            let path = format!("/repos/{repo}/issues/comments/{id}");
            if let Err(err) = self.send(Method::DELETE, &path, None).await {
                // Gone already: deleted by an earlier try whose answer was lost, or by a person.
                let gone = matches!(&err, GithubError::Refused { status, .. } if *status == StatusCode::NOT_FOUND);
                if !gone {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// The id of the check run `name` on commit `sha`, if there is one.
    async fn find_check_run(
        &self,
        repo: &str,
        sha: &str,
        name: &str,
    ) -> Result<Option<u64>, GithubError> {
        let path = format!(
            "/repos/{repo}/commits/{sha}/check-runs?check_name={}&filter=latest",
            encode_query(name)
        );
        let listed = self.send(Method::GET, &path, None).await?;
        Ok(listed["check_runs"]
            .as_array()
            .and_then(|runs| runs.iter().find(|run| run["name"] == name))
            .and_then(|run| run["id"].as_u64()))
    }

    /// A completed check run whose annotations put every validation error at its file and
    /// line (50 per request, as GitHub takes them).
    pub async fn check_run(
        &self,
        repo: &str,
        sha: &str,
        name: &str,
        status: &Status,
        annotations: &[Annotation],
    ) -> Result<(), GithubError> {
        let conclusion = match status.state {
            State::Success => "success",
            State::Pending => "neutral",
            State::Failure | State::Error => "failure",
        };
        let annotation = |a: &Annotation| {
            json!({"path": a.path, "start_line": a.line, "end_line": a.line,
                   "annotation_level": "failure", "title": a.title, "message": a.message})
        };
        let output = |chunk: &[Annotation]| {
            json!({"title": status.description, "summary": status.description,
                   "annotations": chunk.iter().map(annotation).collect::<Vec<_>>()})
        };
        let mut chunks = annotations.chunks(ANNOTATIONS_PER_REQUEST);
        let first = chunks.next().unwrap_or(&[]);
        let body = json!({"name": name, "head_sha": sha, "status": "completed",
                          "conclusion": conclusion, "output": output(first)});
        let find = || self.find_check_run(repo, sha, name);
        // A run found after a lost answer was created with this same first chunk.
        let id = match self
            .create(&format!("/repos/{repo}/check-runs"), &body, find)
            .await?
        {
            Created::Now(created) => created["id"].as_u64(),
            Created::Before(id) => Some(id),
        };
        let Some(id) = id else {
            return Ok(());
        };
        for chunk in chunks {
            self.send(
                Method::PATCH,
                &format!("/repos/{repo}/check-runs/{id}"),
                Some(&json!({ "output": output(chunk) })),
            )
            .await?;
        }
        Ok(())
    }

    /// The head commit of a pull request.
    pub async fn pull_head(&self, repo: &str, number: u64) -> Result<String, GithubError> {
        let pull = self
            .send(Method::GET, &format!("/repos/{repo}/pulls/{number}"), None)
            .await?;
        Ok(pull["head"]["sha"].as_str().unwrap_or_default().to_owned())
    }

    /// Posts a plan: its status on the head commit, the sticky comment, and with App auth a
    /// check run with annotations.
    pub async fn post_plan(&self, repo: &str, plan: &PlanReport) -> Result<(), GithubError> {
        self.post_status(repo, &plan.head_sha, &plan.status).await?;
        self.sticky_comment(repo, plan.pull_request, &plan.source, &plan.comments)
            .await?;
        if self.app {
            let name = format!("meshops plan ({})", plan.source);
            self.check_run(repo, &plan.head_sha, &name, &plan.status, &plan.annotations)
                .await?;
        }
        Ok(())
    }
}

/// Which part of `source`'s sticky comment `body` is, by its hidden marker.
fn part_of(source: &str, body: &str) -> Option<usize> {
    let rest = body.strip_prefix(&format!("<!-- meshops:plan:{source}:"))?;
    rest.split_once(" -->")?.0.parse().ok()
}

/// How long to wait before retrying an answer with `status`, or `None` when retrying cannot
/// help.
fn retry_wait(
    status: StatusCode,
    headers: &http::HeaderMap,
    backoff: Duration,
) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && header("x-ratelimit-remaining") == Some(0));
    if let Some(seconds) =
        header("retry-after").filter(|_| rate_limited || status.is_server_error())
    {
        return Some(Duration::from_secs(seconds));
    }
    if rate_limited {
        let now = jiff::Timestamp::now().as_second().max(0) as u64;
        return Some(match header("x-ratelimit-reset") {
            Some(reset) => Duration::from_secs(reset.saturating_sub(now) + 1),
            None => backoff,
        });
    }
    status.is_server_error().then_some(backoff)
}

/// The queue's way to GitHub: failures are returned, for the queue to retry or drop.
impl Sink for GitHub {
    fn status<'a>(
        &'a self,
        repo: &'a str,
        sha: &'a str,
        status: &'a Status,
    ) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move { Ok(self.post_status(repo, sha, status).await?) })
    }

    fn plan<'a>(
        &'a self,
        repo: &'a str,
        plan: &'a PlanReport,
    ) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move { Ok(self.post_plan(repo, plan).await?) })
    }
}

/// `text` as a query-string value: what is not unreserved is percent-encoded.
fn encode_query(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_names_source_and_part() {
        assert_eq!(
            part_of("prod", "<!-- meshops:plan:prod:2 -->\nbody"),
            Some(2)
        );
        assert_eq!(part_of("prod", "<!-- meshops:plan:production:1 -->"), None);
        assert_eq!(part_of("prod", "a comment by a person"), None);
    }

    #[test]
    fn waits_follow_retry_after_and_the_rate_limit_reset() {
        let headers = |pairs: &[(&'static str, String)]| {
            let mut map = http::HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, v.parse().unwrap());
            }
            map
        };
        let second = Duration::from_secs(1);
        assert_eq!(
            retry_wait(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", "7".into())]),
                second
            ),
            Some(Duration::from_secs(7))
        );
        let reset = (jiff::Timestamp::now().as_second() + 10).to_string();
        let wait = retry_wait(
            StatusCode::FORBIDDEN,
            &headers(&[
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset),
            ]),
            second,
        )
        .unwrap();
        assert!(
            wait >= Duration::from_secs(9) && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        assert_eq!(
            retry_wait(StatusCode::BAD_GATEWAY, &headers(&[]), second),
            Some(second)
        );
        assert_eq!(
            retry_wait(StatusCode::FORBIDDEN, &headers(&[]), second),
            None
        );
        assert_eq!(
            retry_wait(StatusCode::NOT_FOUND, &headers(&[]), second),
            None
        );
        assert_eq!(
            retry_wait(StatusCode::UNAUTHORIZED, &headers(&[]), second),
            None
        );
    }
}
