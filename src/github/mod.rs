//! The octocrab adapter: commit statuses, the sticky pull-request comment, check runs with
//! annotations. Authenticated by a token or as a GitHub App installation (octocrab signs the
//! RS256 JWT and refreshes the installation token before it expires).
//!
//! GitHub never stops a sync: 5xx and rate limits are retried with backoff that honours
//! `Retry-After` and `x-ratelimit-reset`; a 401/403/404 is logged once per repository; the
//! [`Reporter`] implementation only logs. Tokens never reach a log or an error message.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, StatusCode};
use octocrab::Octocrab;
use serde_json::{json, Value};

use crate::agent::report::{Annotation, PlanReport, Reporter, State, Status};
use crate::model::agent::GithubAccess;

pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// Tries of one request before giving up (the first included).
const ATTEMPTS: u32 = 5;
/// The longest wait for a rate limit before giving up on a request (the sync goes on).
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
    #[error("{method} {path} on {url}: HTTP {status}: {message}")]
    Refused {
        url: String,
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
}

/// (repository, commit, context) of a status.
type StatusKey = (String, String, String);

/// A GitHub API client for reports.
pub struct GitHub {
    crab: Octocrab,
    api_url: String,
    target_url: Option<String>,
    /// Check runs need a GitHub App.
    app: bool,
    /// The last state posted per (repository, commit, context): not posted again.
    posted: Mutex<HashMap<StatusKey, (State, String)>>,
    /// Repositories that refused us (401/403/404), each logged once.
    refused: Mutex<HashSet<String>>,
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
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)));
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
                return Ok(GitHub::new(installation, api_url, &access.target_url, true));
            }
            _ => return Err(GithubError::NoCredentials),
        };
        let crab = crab.build().map_err(|e| client(e.to_string()))?;
        Ok(GitHub::new(crab, api_url, &access.target_url, app))
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
            posted: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    /// One request, retried on 5xx, 429 and an exhausted rate limit (waiting what
    /// `Retry-After` or `x-ratelimit-reset` says, else 1 s, 2 s, 4 s …); the JSON answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, GithubError> {
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let failure = |reason: String| GithubError::Request {
                url: self.api_url.clone(),
                method: method.clone(),
                path: path.to_owned(),
                reason,
            };
            let response = match method {
                Method::POST => self.crab._post(path, body).await,
                Method::PATCH => self.crab._patch(path, body).await,
                Method::DELETE => self.crab._delete(path, body).await,
                _ => self.crab._get(path).await,
            };
            let response = match response {
                Ok(response) => response,
                Err(err) if attempt < ATTEMPTS => {
                    tracing::info!(path, attempt, error = %err, "GitHub request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                    continue;
                }
                Err(err) => return Err(failure(err.to_string())),
            };
            let status = response.status();
            let wait = retry_wait(status, response.headers(), backoff);
            let text = self
                .crab
                .body_to_string(response)
                .await
                .map_err(|e| failure(e.to_string()))?;
            if status.is_success() {
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            match wait {
                Some(wait) if attempt < ATTEMPTS && wait <= MAX_WAIT => {
                    tracing::info!(path, %status, attempt, wait = ?wait, "GitHub asked to wait; retrying");
                    tokio::time::sleep(wait).await;
                    backoff *= 2;
                    attempt += 1;
                }
                _ => {
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| text.chars().take(200).collect());
                    return Err(GithubError::Refused {
                        url: self.api_url.clone(),
                        method,
                        path: path.to_owned(),
                        status,
                        message,
                    });
                }
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

    /// The sticky comment of `source` on pull request `number`: each part found by its hidden
    /// marker and edited in place, missing parts created, surplus parts of a longer earlier
    /// plan deleted — never a duplicate.
    pub async fn sticky_comment(
        &self,
        repo: &str,
        number: u64,
        source: &str,
        parts: &[String],
    ) -> Result<(), GithubError> {
        let mut existing: HashMap<usize, u64> = HashMap::new();
        let mut page = 1;
        loop {
            let path = format!("/repos/{repo}/issues/{number}/comments?per_page=100&page={page}");
            let listed = self.send(Method::GET, &path, None).await?;
            let comments = listed.as_array().cloned().unwrap_or_default();
            for comment in &comments {
                let body = comment["body"].as_str().unwrap_or_default();
                if let (Some(part), Some(id)) = (part_of(source, body), comment["id"].as_u64()) {
                    existing.entry(part).or_insert(id);
                }
            }
            if comments.len() < 100 {
                break;
            }
            page += 1;
        }
        for (index, body) in parts.iter().enumerate() {
            let payload = json!({ "body": body });
            match existing.remove(&(index + 1)) {
                Some(id) => {
                    let path = format!("/repos/{repo}/issues/comments/{id}");
                    self.send(Method::PATCH, &path, Some(&payload)).await?;
                }
                None => {
                    let path = format!("/repos/{repo}/issues/{number}/comments");
                    self.send(Method::POST, &path, Some(&payload)).await?;
                }
            }
        }
        for id in existing.into_values() {
            let path = format!("/repos/{repo}/issues/comments/{id}");
            self.send(Method::DELETE, &path, None).await?;
        }
        Ok(())
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
        let created = self
            .send(
                Method::POST,
                &format!("/repos/{repo}/check-runs"),
                Some(
                    &json!({"name": name, "head_sha": sha, "status": "completed",
                             "conclusion": conclusion, "output": output(first)}),
                ),
            )
            .await?;
        let Some(id) = created["id"].as_u64() else {
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

    /// Logs a failure: a refusal once per repository (it will not heal by itself), anything
    /// else every time.
    fn log(&self, repo: &str, err: &GithubError) {
        if let GithubError::Refused { status, .. } = err {
            if matches!(status.as_u16(), 401 | 403 | 404) {
                let first = self
                    .refused
                    .lock()
                    .map(|mut r| r.insert(repo.to_owned()))
                    .unwrap_or(true);
                if first {
                    tracing::error!(repo, error = %err, "GitHub refused the report (logged once for this repository)");
                }
                return;
            }
        }
        tracing::warn!(repo, error = %err, "could not report to GitHub");
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

impl Reporter for GitHub {
    fn status<'a>(&'a self, repo: &'a str, sha: &'a str, status: Status) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(err) = self.post_status(repo, sha, &status).await {
                self.log(repo, &err);
            }
        })
    }

    fn plan<'a>(&'a self, repo: &'a str, plan: PlanReport) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(err) = self.post_plan(repo, &plan).await {
                self.log(repo, &err);
            }
        })
    }
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
